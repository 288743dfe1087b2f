"""Issue 13's probe language where kprobes are needed, in the QEMU guest (Debian 6.1 kernel):
kretprobe values (bytes read), errors by errno name, and latency paired per nesting level on a
stacked file system. Exact counts, filtered to this process."""

import dataclasses
import errno
import os

import pytest
import yaml

from probeset_api.spec import parse_probeset
from tests.support import counts, status

pytestmark = pytest.mark.kernel_vm


def example(path):
    with open(path) as f:
        (pset,) = [parse_probeset(d) for d in yaml.safe_load_all(f) if d]
    pset.probes[:] = [dataclasses.replace(p, pid=os.getpid()) for p in pset.probes]
    return pset


def series(prog, name):
    rp = next(r for r in prog.resolved if r.probe.name == name)
    assert status(prog, name).error is None, status(prog, name).error
    return prog.read_series()[rp.id], rp.id


def test_read_bytes_example_sums_vfs_read_returns(start_program):
    prog = start_program(example("examples/read-bytes.yaml"))
    zero = os.open("/dev/zero", os.O_RDONLY)
    r, w = os.pipe()
    os.set_blocking(r, False)
    (before,), probe_id = series(prog, "vfs_read")
    for _ in range(100):
        os.read(zero, 4096)
    for _ in range(7):
        with pytest.raises(BlockingIOError):
            os.read(r, 10)                 # -EAGAIN: counted, not summed
    (after,), _ = series(prog, "vfs_read")
    assert (after.count - before.count, after.sum_ns - before.sum_ns) == (107, 100 * 4096)
    assert prog.read_missed()[(probe_id, "negative_value")] == 7


def test_errors_by_errno_example_names_the_errors(start_program):
    prog = start_program(example("examples/errors-by-errno.yaml"))
    for _ in range(3):
        with pytest.raises(FileNotFoundError):
            open("/nonexistent-probeset", "rb")
    for _ in range(2):
        with pytest.raises(NotADirectoryError):
            open("/etc/passwd/x", "rb")
    assert counts(prog, "open_errors", by="retval") == {"ENOENT": 3, "ENOTDIR": 2}
    assert counts(prog, "openat_errors", by="ret") == {"ENOENT": 3, "ENOTDIR": 2}
    assert errno.ENOENT == 2


def test_fsync_on_overlay_pairs_each_level(run_probeset):
    """vfs_fsync_range on the guest's overlay root calls vfs_fsync_range of the lower file system:
    two nested calls per fsync, each timed (before depth pairing: half of them unpaired)."""
    prog = run_probeset([{"name": "fsync", "kprobe": "vfs_fsync_range", "latency": True, "pid": os.getpid()}])
    path = "/probeset-nesting.tmp"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(100):
            os.write(fd, b"x")
            os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(path)
    (s,), probe_id = series(prog, "fsync")
    missed = prog.read_missed()
    assert (s.count, missed[(probe_id, "unpaired_return")], missed[(probe_id, "nesting_too_deep")]) == (200, 0, 0)


def virtio_disk():
    """The guest's virtio-blk scratch disk (tests/vm/run-in-vm attaches it): its /dev path and the
    kernel's dev_t of it (major << 20 | minor, what block tracepoints carry). Found by its driver,
    not by name."""
    disks = [name for name in sorted(os.listdir("/sys/block"))
             if os.path.basename(os.path.realpath(f"/sys/block/{name}/device/driver")) == "virtio_blk"]
    assert len(disks) == 1, f"want one virtio_blk disk in the guest, found {disks} (tests/vm/run-in-vm, init)"
    with open(f"/sys/block/{disks[0]}/dev") as f:
        major, minor = map(int, f.read().split(":"))
    path = f"/dev/{disks[0]}"
    assert os.stat(path).st_rdev == os.makedev(major, minor)
    return path, major << 20 | minor


def test_biolatency_example_times_each_direct_write(start_program):
    """N O_DIRECT writes to the guest's virtio-blk disk -> exactly N issue -> complete samples
    (completed by the device's interrupt), told apart from other devices by dev."""
    import mmap

    path, dev = virtio_disk()
    with open("examples/biolatency.yaml") as f:
        (doc,) = [d for d in yaml.safe_load_all(f) if d]
    doc["spec"]["probes"][0]["start"]["filter"] = {"field": "dev", "op": "==", "value": dev}
    prog = start_program(parse_probeset(doc))
    assert status(prog, "biolatency").error is None, status(prog, "biolatency").error
    n = 64
    buf = mmap.mmap(-1, 4096)                          # page-aligned, as O_DIRECT wants
    buf.write(b"p" * 4096)
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        for i in range(n):
            assert os.pwritev(fd, [buf], i * 4096) == 4096
    finally:
        os.close(fd)
    (s,), probe_id = series(prog, "biolatency")
    assert s.labels["dev"] == str(dev)
    assert (s.count, sum(s.buckets.values())) == (n, n)
    missed = prog.read_missed()
    assert (missed[(probe_id, "pending_full")], missed[(probe_id, "start_expired")]) == (0, 0)


def test_sizes_passed_to_tcp_sendmsg_bucket_by_bucket(run_probeset):
    """kprobe tcp_sendmsg(sk, msg, size): value arg2 as a histogram, exact per bucket, for this
    process's sends over loopback."""
    import socket

    from probeset_agent.histogram import kernel_bucket
    prog = run_probeset([{"name": "send_sizes", "kprobe": "tcp_sendmsg", "pid": os.getpid(), "value": "arg2",
                          "aggregate": "histogram", "unit": "bytes"}])
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    sizes = [1] * 5 + [100] * 7 + [1000] * 3 + [5000] * 2
    try:
        for size in sizes:
            assert client.send(b"x" * size) == size
            got = 0
            while got < size:
                got += len(peer.recv(65536))
    finally:
        for s in (client, peer, server):
            s.close()
    (s,), _ = series(prog, "send_sizes")
    want = {}
    for size in sizes:
        want[kernel_bucket(size, 1)] = want.get(kernel_bucket(size, 1), 0) + 1
    assert (s.count, s.sum_ns, s.buckets) == (len(sizes), sum(sizes), want)
