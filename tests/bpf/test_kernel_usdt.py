"""USDT probes on this host: a test program's own DTRACE_PROBE points (exact counts, grouped,
summed and filtered by their arguments), Python's gc__start/gc__done (semaphores raised by the
kernel while the probe is attached), libstdc++'s throw, and bad input."""

import os
import shutil
import subprocess

import pytest

from tests.bpf.lang import one_series
from tests.support import counts, status

USDT_C = r"""
#include <stdio.h>
#include <string.h>
#include <sys/sdt.h>

/* "hit N M": N hits of probeset:hit with arguments (i % M, i); answers "done". */
int main(void) {
    char cmd[16];
    long n, m;
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("ready\n");
    while (scanf("%15s %ld %ld", cmd, &n, &m) == 3) {
        for (long i = 0; i < n; i++) {
            long k = i % m;
            DTRACE_PROBE2(probeset, hit, k, i);
        }
        printf("done\n");
    }
    return 0;
}
"""

THROW_CC = r"""
#include <cstdio>
#include <stdexcept>
int main(int argc, char **argv) {
    int n = std::atoi(argv[1]), caught = 0;
    for (int i = 0; i < n; i++) {
        try { throw std::runtime_error("x"); } catch (const std::exception &) { caught++; }
    }
    std::printf("%d\n", caught);
    return 0;
}
"""


@pytest.fixture(scope="session")
def usdt_binary(build_c):
    if not os.path.exists("/usr/include/x86_64-linux-gnu/sys/sdt.h") and not os.path.exists("/usr/include/sys/sdt.h"):
        pytest.skip("<sys/sdt.h> missing: apt-get install systemtap-sdt-dev")
    return build_c("probeset_usdt", USDT_C)


@pytest.fixture
def usdt_target(usdt_binary, targets):
    return targets(usdt_binary)


def test_own_probe_counted_grouped_summed_and_filtered_exactly(usdt_target, run_probeset):
    t = usdt_target
    probe = {"usdt": f"{t.path}:probeset:hit", "pid": t.pid}
    prog = run_probeset([{"name": "hits", **probe},
                         {"name": "by_k", **probe, "groupBy": ["arg0"]},
                         {"name": "sum_i", **probe, "value": "arg1"},
                         {"name": "k_is_1", **probe, "filter": {"field": "arg0", "op": "==", "value": 1}}])
    assert status(prog, "hits").error is None, status(prog, "hits").error
    t.run("hit 300 3")
    assert counts(prog, "hits") == {"probeset:hit": 300}
    assert counts(prog, "by_k", by="arg0") == {"0": 100, "1": 100, "2": 100}
    s = one_series(prog, "sum_i")
    assert (s.count, s.sum_ns) == (300, sum(range(300)))
    assert counts(prog, "k_is_1") == {"probeset:hit": 100}


def test_bad_usdt_probes_fail_alone(usdt_target, run_probeset):
    t = usdt_target
    prog = run_probeset([{"name": "missing", "usdt": f"{t.path}:probeset:miss"},
                         {"name": "no_arg3", "usdt": f"{t.path}:probeset:hit", "groupBy": ["arg3"]},
                         {"name": "retval", "usdt": f"{t.path}:probeset:hit", "value": "retval"},
                         {"name": "ok", "usdt": f"{t.path}:probeset:hit", "pid": t.pid}])
    assert status(prog, "missing").error == (f"spec.probes[0].usdt: no USDT probe probeset:miss in {t.path} "
                                             "(it has: probeset:hit)")
    assert status(prog, "no_arg3").error == ("spec.probes[1].groupBy[0]: USDT probe probeset:hit has 2 argument(s), "
                                             "so no arg3")
    assert status(prog, "retval").error.startswith("spec.probes[2].value: retval needs a return probe")
    t.run("hit 5 2")
    assert counts(prog, "ok") == {"probeset:hit": 5}


def test_python_gc_pauses_from_gc_start_to_gc_done(run_probeset, tmp_path):
    """Python's probes have semaphores: they fire only while a tracer raised them (the kernel
    does, for a uprobe_multi link with a ref_ctr_offset)."""
    script = tmp_path / "gc_driver.py"
    script.write_text("import gc, sys\ngc.disable()\nprint('ready', flush=True)\nn = int(sys.stdin.readline())\n"
                      "for _ in range(n):\n    gc.collect()\nprint('done', flush=True)\nsys.stdin.readline()   # exit (its own collections) only when told\n")
    proc = subprocess.Popen(["/usr/bin/python3.11", str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        prog = run_probeset([
            {"name": "gc_pause", "start": {"usdt": "/usr/bin/python3.11:python:gc__start", "key": ["tid"]},
             "end": {"usdt": "/usr/bin/python3.11:python:gc__done", "key": ["tid"]}, "pid": proc.pid},
            {"name": "gc_by_generation", "usdt": "/usr/bin/python3.11:python:gc__start", "pid": proc.pid,
             "groupBy": ["arg0"]}])
        assert status(prog, "gc_pause").error is None, status(prog, "gc_pause").error
        proc.stdin.write("40\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "done"
        s = one_series(prog, "gc_pause")
        assert (s.count, sum(s.buckets.values())) == (40, 40)    # automatic collections are off: only ours
        assert counts(prog, "gc_by_generation", by="arg0") == {"2": 40}
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def test_cpp_exceptions_thrown(build_c, run_probeset, tmp_path):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed (apt-get install g++)")
    src = tmp_path / "thrower.cc"
    src.write_text(THROW_CC)
    exe = tmp_path / "thrower"
    subprocess.run(["g++", "-O1", "-o", str(exe), str(src)], check=True)
    prog = run_probeset([{"name": "throws", "usdt": "libstdc++:libstdcxx:throw", "comm": "thrower"}])
    assert status(prog, "throws").error is None, status(prog, "throws").error
    out = subprocess.run([str(exe), "37"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "37"
    assert counts(prog, "throws") == {"libstdcxx:throw": 37}


def test_usdt_in_each_selected_containers_own_copy(fake_pods, targets, usdt_binary, tmp_path, run_probeset):
    """A namespaced set: the probe is placed in the pod's own copy of the program (another inode,
    in its own root), typed from that copy's notes; the host's copy is not probed."""
    import shutil

    from probeset_agent.attribution import Attribution, CgroupTree
    from probeset_agent.pods import PodIndex, PodSelection
    from tests.bpf.test_attribution import WORKLOAD, by_labels
    root = tmp_path / "rootfs"
    root.mkdir()
    shutil.copy(usdt_binary, root / "usdt")
    ldd = subprocess.run(["ldd", usdt_binary], capture_output=True, text=True, check=True).stdout
    for path in (p for line in ldd.splitlines() for p in line.split() if p.startswith("/")):
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(path), dest)
    pods = PodIndex()
    ctr = fake_pods.add("team-a")
    pods.update(ctr.info())
    inside = targets(["unshare", "--mount", "chroot", str(root), "/usdt"], ctr.cgroup())
    on_host = targets(usdt_binary)
    prog = run_probeset(
        [{"name": "hits", "usdt": "/usdt:probeset:hit"},
         {"name": "by_k", "usdt": "/usdt:probeset:hit", "groupBy": ["arg0"]}], namespace="team-a", labels=WORKLOAD,
        program={"attribution": Attribution(CgroupTree(fake_pods.root), pods, rescan_interval=0),
                 "selection": PodSelection(pods, "team-a", None)})
    assert status(prog, "hits").error is None, status(prog, "hits").error
    points = prog.user_points()
    assert [prog.copies(p) for p in points] == [1]
    placed = os.stat(root / "usdt")
    assert prog.placement.attached_files(points[0]) == [(placed.st_dev, placed.st_ino)]
    inside.run("hit 30 3")
    on_host.run("hit 50 3")
    assert by_labels(prog) == {("team-a", ctr.name, "app"): 30}
    assert counts(prog, "by_k", by="arg0") == {"0": 10, "1": 10, "2": 10}
