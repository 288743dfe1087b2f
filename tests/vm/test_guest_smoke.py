"""Proves the kernel-VM harness: the guest runs Debian's kernel, and BCC kprobes/kretprobes work
there and count exactly (plain BCC, independent of the agent's code)."""

import os
import subprocess

import pytest

pytestmark = pytest.mark.kernel_vm

N = 1000

# Counts the events of this process only (pid = thread group id); PID is substituted as an integer.
COUNTER_C = """
BPF_ARRAY(counts, u64, 1);

int count_own(struct pt_regs *ctx) {
    if (bpf_get_current_pid_tgid() >> 32 != PID)
        return 0;
    int zero = 0;
    u64 *n = counts.lookup(&zero);
    if (n)
        __sync_fetch_and_add(n, 1);
    return 0;
}
"""


def count_reads(attach):
    """Attach count_own with attach(bpf), then do N one-byte reads of /dev/zero; returns the count."""
    from bcc import BPF  # here, so that collecting on a host without BCC works
    # BCC warns (DeprecationWarning) about str arguments: pass bytes.
    with BPF(text=COUNTER_C.replace("PID", str(os.getpid())).encode()) as bpf:
        attach(bpf)
        counts = bpf[b"counts"]
        # Zero after attaching, so that only the reads below are counted (reading the map
        # afterwards goes through bpf(2), not vfs_read).
        counts[counts.Key(0)] = counts.Leaf(0)
        fd = os.open("/dev/zero", os.O_RDONLY)
        try:
            for _ in range(N):
                assert os.read(fd, 1) == b"\0"
        finally:
            os.close(fd)
        return counts[counts.Key(0)].value


def test_guest_runs_debian_kernel():
    release = subprocess.run(["uname", "-r"], capture_output=True, text=True, check=True).stdout.strip()
    assert release.startswith("6.1.") and release.endswith("-amd64"), release
    assert release == os.uname().release
    # BCC in the guest compiles against the headers installed for exactly this kernel.
    assert os.path.isdir(f"/lib/modules/{release}/build/include")


def test_kprobe_counts_exactly():
    assert count_reads(lambda b: b.attach_kprobe(event=b"vfs_read", fn_name=b"count_own")) == N


def test_kretprobe_counts_exactly():
    assert count_reads(lambda b: b.attach_kretprobe(event=b"vfs_read", fn_name=b"count_own")) == N
