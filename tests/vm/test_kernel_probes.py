"""The agent's kernel probes, proven in a QEMU guest running Debian's stock kernel: kprobes,
kretprobes, fentry/fexit, the `attach` choice, kretprobe misses, and the kprobe examples.

Counts are deltas taken around the test's own events and filtered to this process (pid), so the
agent's own start-up reads (BCC reads BTF and kallsyms through vfs_read) never count.
"""

import os
import socket
import subprocess
import threading
import time

import pytest
import yaml

from probeset_agent.features import detect
from probeset_agent.program import ProbeSetProgram
from probeset_api.spec import parse_probeset
from tests.support import FakePods, counts, status

pytestmark = pytest.mark.kernel_vm

N, M, P = 1000, 300, 5          # reads of /dev/zero, reads of /dev/null, blocking pipe reads
PIPE_DELAY = 0.05               # seconds each pipe read blocks
PROFILE_READS = 2               # vfs_read calls of one read of kprobe_profile: the text, then EOF


def totals(prog, probe, by="function"):
    return counts(prog, probe, by=by)


def delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


class ReadMix:
    """N one-byte reads of /dev/zero (return 1), M reads of /dev/null (return 0), and P reads of a
    pipe that block PIPE_DELAY seconds each before two bytes arrive (return 2). Files are opened and
    the writer thread started before the measurement (thread start-up reads /proc files)."""

    def __init__(self):
        self.zero, self.null = os.open("/dev/zero", os.O_RDONLY), os.open("/dev/null", os.O_RDONLY)
        self.r, self.w = os.pipe()
        self.go = threading.Event()
        self.writer = threading.Thread(target=self._write)
        self.writer.start()

    def _write(self):
        self.go.wait()
        for _ in range(P):
            time.sleep(PIPE_DELAY)
            os.write(self.w, b"ab")

    def run(self):
        for _ in range(N):
            os.read(self.zero, 1)
        for _ in range(M):
            os.read(self.null, 1)
        self.go.set()
        for _ in range(P):
            assert os.read(self.r, 2) == b"ab"
        self.writer.join()
        for fd in (self.zero, self.null, self.r, self.w):
            os.close(fd)


def latency_sum(prog, probe):
    rp = next(r for r in prog.resolved if r.probe.name == probe)
    series = prog.read_series()[rp.id]
    return sum(s.count for s in series), sum(s.sum_ns for s in series)


def test_guest_supports_kprobes_and_fentry():
    f = detect()
    assert f.kprobe.ok and f.fentry.ok, f


@pytest.mark.parametrize("attaches", [("auto", "fentry"), ("kprobe",)])
def test_counts_retval_split_and_latency(run_probeset, attaches):
    """For each `attach` value: a count on entry, a retval split on return, a latency histogram.
    auto and fentry share one program (one compile, which is slow under emulation)."""
    pid = os.getpid()
    probes = []
    for attach in attaches:
        probes += [{"name": f"read_{attach}", "kprobe": "vfs_read", "pid": pid, "attach": attach},
                   {"name": f"ret_{attach}", "kretprobe": "vfs_read", "pid": pid, "attach": attach,
                    "groupBy": ["retval"]},
                   {"name": f"lat_{attach}", "kprobe": "vfs_read", "pid": pid, "attach": attach, "latency": True}]
    prog = run_probeset(probes)
    via = {"auto": "fentry", "fentry": "fentry", "kprobe": "kprobe"}   # the guest supports both
    for attach in attaches:
        for name in (f"read_{attach}", f"ret_{attach}", f"lat_{attach}"):
            st = status(prog, name)
            assert st.error is None and st.via == via[attach] and st.functions == {"vfs_read": True}, st
    from probeset_agent.exposition import MetricsCollector
    text = MetricsCollector([prog], "guest").render()
    for attach in attaches:
        assert (f'probeset_probe_attached{{probeset="test",probe="read_{attach}",function="vfs_read",'
                f'via="{via[attach]}"}} 1') in text
    mix = ReadMix()
    before = {a: (totals(prog, f"read_{a}"), totals(prog, f"ret_{a}", by="retval"), latency_sum(prog, f"lat_{a}"))
              for a in attaches}
    mix.run()
    for attach in attaches:
        before_read, before_ret, (before_count, before_sum) = before[attach]
        count, sum_ns = latency_sum(prog, f"lat_{attach}")
        seen = (delta(totals(prog, f"read_{attach}"), before_read),
                delta(totals(prog, f"ret_{attach}", by="retval"), before_ret), count - before_count)
        assert seen == ({"vfs_read": N + M + P}, {"1": N, "0": M, "2": P}, N + M + P), attach
        blocked = (sum_ns - before_sum) / 1e9
        # P reads blocked at least PIPE_DELAY each; the N + M fast reads add well under a second.
        assert P * PIPE_DELAY <= blocked < P * PIPE_DELAY + 5.0, (attach, blocked)
        lat_id = status(prog, f"lat_{attach}").index
        assert prog.read_missed()[(lat_id, "unpaired_return")] == 0


def test_check_says_which_mechanism_auto_picks(tmp_path, capsys):
    from probeset_cli import main
    path = tmp_path / "auto.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet", "metadata": {"name": "auto"},
        "spec": {"probes": [{"name": "read", "kprobe": "vfs_read"},
                            {"name": "forced", "kretprobe": "vfs_read", "attach": "kprobe"}]}}))
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "kernel: kprobe yes, fentry yes" in out
    assert "ok    read: fentry vfs_read" in out
    assert "ok    forced: kretprobe vfs_read" in out


def test_glob_counts_per_function(run_probeset):
    prog = run_probeset([{"name": "vfs", "kprobe": "vfs_*", "attach": "kprobe", "pid": os.getpid()}])
    st = status(prog, "vfs")
    assert st.via == "kprobe" and len(st.functions) > 50 and st.functions["vfs_write"], st
    zero, null = os.open("/dev/zero", os.O_RDONLY), os.open("/dev/null", os.O_WRONLY)
    before = totals(prog, "vfs")
    for _ in range(N):
        os.read(zero, 1)
    for _ in range(M):
        os.write(null, b"x")
    os.close(zero)
    os.close(null)
    assert delta(totals(prog, "vfs"), before) == {"vfs_read": N, "vfs_write": M}


def test_kretprobe_instance_shortage_is_reported(run_probeset):
    """maxActive=1: one thread blocked in read() holds the only kretprobe instance; every other
    return in the meantime is missed, and the agent reports exactly the kernel's count. A second
    ProbeSet of the same process has its own kretprobe on the same function (its own tracefs name
    and instance pool): it sees every return and misses none."""
    prog = run_probeset([{"name": "ret", "kretprobe": "vfs_read", "attach": "kprobe", "maxActive": 1,
                          "pid": os.getpid()}])
    other = run_probeset([{"name": "ret", "kretprobe": "vfs_read", "attach": "kprobe", "pid": os.getpid()}],
                         name="other")
    assert status(prog, "ret").via == "kprobe"
    assert status(other, "ret").error is None and status(other, "ret").functions == {"vfs_read": True}
    r, w = os.pipe()
    blocked = threading.Thread(target=os.read, args=(r, 1))
    blocked.start()
    time.sleep(0.5)                     # let it enter vfs_read and take the instance
    zero = os.open("/dev/zero", os.O_RDONLY)
    before_missed = prog.read_missed()[(0, "kretprobe_maxactive")]
    before = totals(prog, "ret")
    before_other = totals(other, "ret")
    for _ in range(N):
        os.read(zero, 1)
    counted_other = delta(totals(other, "ret"), before_other)
    missed = prog.read_missed()[(0, "kretprobe_maxactive")] - before_missed
    os.close(zero)
    counted = delta(totals(prog, "ret"), before)
    os.write(w, b"x")
    blocked.join()
    os.close(r)
    os.close(w)
    # The agent's own read of kprobe_profile for before_missed returns after the kernel printed the
    # count: its two reads (the text, then end of file) are misses too.
    assert missed == N + PROFILE_READS
    assert counted == {}                # none of those returns reached the program
    assert counted_other == {"vfs_read": N}
    assert other.read_missed()[(0, "kretprobe_maxactive")] == 0


def test_vfsstat_example_attaches_and_counts(tmp_path):
    with open("examples/vfsstat.yaml") as f:
        docs = [parse_probeset(d) for d in yaml.safe_load_all(f) if d]
    progs = [ProbeSetProgram(p, "guest") for p in docs]
    try:
        for prog in progs:
            prog.start()
            for st in prog.probe_statuses():
                assert st.error is None and all(st.functions.values()), st
        vfsstat, vfs_all = progs
        before = {st.name: sum(totals(vfsstat, st.name).values()) for st in vfsstat.probe_statuses()}
        path = tmp_path / "f"
        with open(path, "w") as f:          # open + create + write + fsync
            f.write("data")
            f.flush()
            os.fsync(f.fileno())
        with open(path) as f:
            f.read()
        for st in vfsstat.probe_statuses():
            assert sum(totals(vfsstat, st.name).values()) > before[st.name], st.name
        assert totals(vfs_all, "vfs")["vfs_read"] > 0
    finally:
        for prog in progs:
            prog.stop()


def test_tcp_drop_path_example_attaches_and_counts():
    """Loopback TCP drives xmit, eth_type_trans (loopback_xmit calls it), the receive core and
    tcp_v4_rcv; a veth pair with GRO on drives napi_gro_receive; a closed port drives kfree_skb."""
    with open("examples/tcp-drop-path.yaml") as f:
        (pset,) = [parse_probeset(d) for d in yaml.safe_load_all(f) if d]
    prog = ProbeSetProgram(pset, "guest")
    prog.start()
    try:
        for st in prog.probe_statuses():
            assert st.error is None and all(st.functions.values()), st
        server = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
        for _ in range(20):
            client.sendall(b"x" * 100)
            conn.recv(100)
        for s in (client, conn, server):
            s.close()
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.sendto(b"drop me", ("127.0.0.1", port))
        udp.close()
        _veth_gro_traffic()
        seen = {st.name: sum(totals(prog, st.name).values()) for st in prog.probe_statuses()}
        assert all(n > 0 for n in seen.values()), seen
        assert totals(prog, "xmit", by="name").get("lo", 0) > 0
        assert totals(prog, "drops", by="reason").get("NO_SOCKET", 0) >= 1
    finally:
        prog.stop()


def _veth_gro_traffic():
    """UDP across a veth pair into a network namespace, GRO on at the receiving end (which makes
    veth receive through NAPI and napi_gro_receive; UDP skbs of a TSO-capable sender qualify only
    with rx-udp-gro-forwarding). Addresses from 198.18.0.0/15, the
    benchmarking range, on this guest's own veth pair."""
    # The guest's root is the host's: its kernel modules live in the VM cache (tests/vm/setup).
    cache = os.environ.get("PROBESET_VM_CACHE", "/var/cache/probeset-vm")
    sh = ["sh", "-ec", f"""
        modprobe -d {cache}/{os.uname().release} veth
        ip netns add psrx
        ip link add psa type veth peer name psb netns psrx
        ip addr add 198.18.0.1/30 dev psa
        ip link set psa up
        ip -n psrx addr add 198.18.0.2/30 dev psb
        ip -n psrx link set psb up
        ip netns exec psrx ethtool -K psb gro on rx-udp-gro-forwarding on
    """]
    subprocess.run(sh, check=True)
    try:
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(20):
            tx.sendto(b"gro" * 100, ("198.18.0.2", 9))
        tx.close()
        time.sleep(0.2)
    finally:
        subprocess.run(["ip", "link", "del", "psa"], check=False)
        subprocess.run(["ip", "netns", "del", "psrx"], check=False)


READS_C = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    char b;
    int fd = open("/dev/zero", O_RDONLY);
    for (long i = 0; i < n; i++) read(fd, &b, 1);
    return 0;
}
"""


def test_namespaced_kernel_probes_count_only_the_namespaces_pods(run_probeset, build_c):
    """The in-kernel cgroup filter holds for kprobes and fentry too: a namespaced set counts the
    vfs_read() calls of its namespace's pod, not those of another namespace's pod or of the host
    (which reads all the time)."""
    from probeset_agent.attribution import Attribution, CgroupTree, cgroup2_root
    from probeset_agent.pods import PodIndex, PodSelection
    from probeset_agent.taskcontext import task_context
    if task_context()[0] is None:
        pytest.skip(f"namespaced kernel probes need the task-context check, unavailable here: {task_context()[1]}")
    root = cgroup2_root()
    assert root, "the guest mounts cgroup2 (tests/vm/init)"
    exe = build_c("reads_n", READS_C)
    fake, pods = FakePods(root), PodIndex()
    try:
        mine, other = fake.add("team-a", "mine"), fake.add("team-b", "other")
        for pod in (mine, other):
            pods.update(pod.info())
        prog = run_probeset(
            [{"name": "kp", "kprobe": "vfs_read", "attach": "kprobe"},
             {"name": "fe", "kprobe": "vfs_read", "attach": "fentry"}],
            namespace="team-a", labels=["namespace", "pod", "container"],
            program={"attribution": Attribution(CgroupTree(root), pods),
                     "selection": PodSelection(pods, "team-a", None)})
        for name, via in (("kp", "kprobe"), ("fe", "fentry")):
            st = status(prog, name)
            assert st.error is None and st.via == via, st

        def run_in(cgroup, n):
            def enter():
                with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            subprocess.run([exe, str(n)], check=True, preexec_fn=enter if cgroup else None)

        def seen(probe):
            rp = next(r for r in prog.resolved if r.probe.name == probe)
            return {(s.labels["namespace"], s.labels["pod"], s.labels["container"]): s.count
                    for s in prog.read_series()[rp.id]}
        run_in(mine.cgroup(), 0)                 # the program's own start-up reads (the loader's)
        startup = {probe: seen(probe).get(("team-a", "mine", "app"), 0) for probe in ("kp", "fe")}
        run_in(mine.cgroup(), 40)
        run_in(other.cgroup(), 25)
        run_in(None, 15)                         # a host process
        for probe in ("kp", "fe"):
            assert seen(probe) == {("team-a", "mine", "app"): 2 * startup[probe] + 40}, (probe, startup)
    finally:
        fake.cleanup()
