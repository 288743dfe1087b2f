"""Hostile input the agent must survive without losing other probes or sets: a workload's binary
with symbols that are not text, a bad or busy --listen, tracefs gone at shutdown, more probes or
map memory than the agent allows; and how uprobes are placed (links, or perf events)."""

import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.bpf.test_cli import PROBESET, free_port, sample, scrape, write_set
from tests.support import counts, status


def non_utf8_copy(target_binary: str, tmp_path) -> str:
    """The target with one function symbol renamed to bytes that are not UTF-8 (same length, so
    the ELF stays valid): probeset_target_beta -> probeset_target_bet\\xff."""
    data = open(target_binary, "rb").read()
    assert b"probeset_target_beta\0" in data
    path = tmp_path / "hostile_target"
    path.write_bytes(data.replace(b"probeset_target_beta\0", b"probeset_target_bet\xff\0"))
    shutil.copymode(target_binary, path)
    return str(path)


def test_symbol_that_is_not_text_is_skipped_not_fatal(target_binary, tmp_path, run_probeset, build_c):
    from tests.support import Target
    path = non_utf8_copy(target_binary, tmp_path)
    target = Target(path)
    try:
        prog = run_probeset([{"name": "glob", "uprobe": f"{path}:probeset_target_*", "pid": target.pid},
                             {"name": "other", "uprobe": f"{path}:probeset_target_alpha", "pid": target.pid}])
        assert status(prog, "glob").error is None and status(prog, "other").error is None
        functions = set(status(prog, "glob").functions)
        assert "probeset_target_work" in functions and not any("bet" in f for f in functions)
        target.run("work 7")
        target.run("alpha 3")
        target.run("beta 5")           # the skipped symbol: not probed
        assert counts(prog, "glob")["probeset_target_work"] == 7
        assert counts(prog, "other") == {"probeset_target_alpha": 3}
    finally:
        target.close()


def test_check_and_run_survive_such_a_binary(target_binary, tmp_path):
    path = non_utf8_copy(target_binary, tmp_path)
    spec = write_set(tmp_path, [{"name": "glob", "uprobe": f"{path}:probeset_target_*"}])
    out = subprocess.run(PROBESET + ["check", spec], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "symbol(s) matching 'probeset_target_*' skipped" in out.stderr


def test_bad_listen_fails_before_attaching(tmp_path):
    spec = write_set(tmp_path, [{"name": "tp", "tracepoint": "sched:sched_process_exec"}])
    for listen, reason in (("19418", "expected HOST:PORT"), (":9437", "expected HOST:PORT"),
                           ("127.0.0.1:99999", "port must be")):
        t = time.monotonic()
        out = subprocess.run(PROBESET + ["run", spec, "--listen", listen], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and reason in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and "ProbeSet cli" not in out.stdout   # nothing was attached
        assert time.monotonic() - t < 10
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(PROBESET + ["run", spec, "--listen", f"127.0.0.1:{port}"], capture_output=True,
                             text=True, timeout=30)
    assert out.returncode == 2 and "Address already in use" in out.stderr and "Traceback" not in out.stderr
    assert "ProbeSet cli" not in out.stdout


def test_tracefs_unmounted_at_shutdown_still_detaches_cleanly(tmp_path, target):
    """The agent runs in a mount namespace of its own, where tracefs is then unmounted (the
    host's mount stays): SIGTERM must still end with exit 0, no traceback."""
    spec = write_set(tmp_path, [{"name": "work", "uprobe": f"{target.path}:probeset_target_work", "pid": target.pid},
                                {"name": "tp", "tracepoint": "sched:sched_process_exec"}])
    port = free_port()
    agent = subprocess.Popen(["unshare", "--mount", "--propagation", "private", *PROBESET, "run", spec,
                              "--listen", f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                scrape(port)
                break
            except OSError:
                assert agent.poll() is None and time.monotonic() < deadline, agent.stdout.read() if agent.poll() else ""
                time.sleep(0.2)
        target.run("work 5")
        assert sample(scrape(port), "probeset_events_total", probe="work", function="probeset_target_work") == 5
        subprocess.run(["nsenter", "-t", str(agent.pid), "-m", "umount", "/sys/kernel/tracing"], check=True)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
    log = agent.stdout.read()
    assert "Traceback" not in log and "detached" in log
    with open("/sys/kernel/tracing/uprobe_events") as f:      # the host's tracefs is still there
        f.read()


def test_probe_budget_is_shared_and_names_what_does_not_fit(target, run_probeset):
    """BCC allows a process a fixed number of kprobe/uprobe attachments; every set of the agent
    shares them, reserved probe by probe: the probe that does not fit is the one reported."""
    from probeset_agent.budget import ProbeBudget
    budget = ProbeBudget(limit=12)
    first = run_probeset([{"name": "five", "uprobe": f"{target.path}:probeset_target_*", "pid": target.pid},
                          {"name": "tp", "tracepoint": "sched:sched_process_exec"},        # not counted
                          {"name": "pair", "uprobe": f"{target.path}:probeset_target_work", "latency": True,
                           "pid": target.pid}],
                         name="first", program={"budget": budget})
    assert [status(first, n).error for n in ("five", "tp", "pair")] == [None, None, None]
    assert budget.used == 6          # 5 uprobes + the return of `work` (its entry is five's: one attach point)
    second = run_probeset([{"name": "six", "uprobe": f"{target.path}:probeset_target_*", "latency": True,
                            "pid": target.pid},
                           {"name": "one", "uprobe": f"{target.path}:probeset_target_alpha", "pid": target.pid}],
                          name="second", program={"budget": budget})
    error = status(second, "six").error
    assert error.startswith("needs 10 kprobe/uprobe/fentry attachment(s), and the agent holds 6 of the 12")
    assert status(second, "one").error is None and budget.used == 7
    target.run("alpha 4")
    assert counts(second, "one") == {"probeset_target_alpha": 4}
    assert counts(first, "five")["probeset_target_alpha"] == 4
    second.stop()
    assert budget.used == 6                                                # given back when a set stops


def test_check_says_what_run_will_do_with_the_budget(tmp_path, target, monkeypatch):
    a = write_set(tmp_path, [{"name": "five", "uprobe": f"{target.path}:probeset_target_*"}], "a")
    b = write_set(tmp_path, [{"name": "more", "uprobe": f"{target.path}:probeset_target_*"},
                             {"name": "tp", "tracepoint": "sched:sched_process_exec"}], "b")
    env = {**__import__("os").environ, "BCC_PROBE_LIMIT": "8"}
    out = subprocess.run(PROBESET + ["check", a, b], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 1
    assert "ok    five:" in out.stdout and "ok    tp:" in out.stdout
    assert "FAIL  more: needs 5 kprobe/uprobe/fentry attachment(s), and the agent holds 5 of the 8" in out.stdout
    port = free_port()
    agent = subprocess.Popen(PROBESET + ["run", a, b, "--listen", f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                text = scrape(port)
                break
            except OSError:
                assert agent.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        assert sample(text, "probeset_probe_attached", probeset="a", probe="five",
                      function="probeset_target_work") == 1
        assert sample(text, "probeset_probe_attached", probe="more", function="probeset_target_work") == 0
        assert sample(text, "probeset_probe_attached", probe="tp") == 1
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)


def memlock(prog, table: str) -> int:
    """The kernel's own account of a map's memory (fdinfo memlock)."""
    with open(f"/proc/self/fdinfo/{prog.bpf[table].map_fd}") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("memlock:"))


def test_map_memory_is_an_upper_bound_of_the_kernels_own_account(run_probeset):
    """maxSeriesPerProbe 100000 with latency: the estimate matches the kernel for preallocated maps
    and bounds the ones that grow (the histogram's buckets only, until it fills)."""
    from probeset_agent import codegen
    from probeset_agent.memory import possible_cpus
    prog = run_probeset([{"name": "lat", "uprobe": "libc:malloc", "latency": True, "groupBy": ["arg0"]},
                         {"name": "sw", "tracepoint": "sched:sched_switch", "groupBy": ["prev_comm"]}],
                        labels=["node", "pod", "comm"], maxSeriesPerProbe=100000)
    assert [st.error for st in prog.probe_statuses()] == [None, None]
    cpus, (lat, sw) = possible_cpus(), prog.compiled
    for rp, tables in ((sw, ["counts_p1"]), (lat, ["counts_p0", "hist_p0", "start_p0"])):
        estimate = codegen.probe_memory(rp, prog.pset.labels, 100000, cpus)
        kernel = sum(memlock(prog, t) for t in tables)
        assert kernel <= estimate, (rp.probe.name, kernel, estimate)
    assert 0 <= codegen.probe_memory(sw, prog.pset.labels, 100000, cpus) - memlock(prog, "counts_p1") < 4096
    kernel_total = sum(memlock(prog, t) for t in ("counts_p0", "hist_p0", "start_p0", "counts_p1", "missed"))
    assert kernel_total <= prog.map_memory < 2 * kernel_total


def test_map_memory_budget_refuses_the_probe_that_does_not_fit(target, run_probeset):
    from probeset_agent.budget import MIB, MemoryBudget
    memory = MemoryBudget(limit=10 * MIB)
    prog = run_probeset([{"name": "small", "uprobe": f"{target.path}:probeset_target_work", "pid": target.pid},
                         # groupBy: a hash of 20,000 series (keyed by the function only, it would be an array)
                         {"name": "big", "uprobe": f"{target.path}:probeset_target_alpha", "latency": True,
                          "pid": target.pid, "groupBy": ["arg0"]},
                         {"name": "tp", "tracepoint": "sched:sched_process_exec"}],
                        maxSeriesPerProbe=20000, program={"memory": memory})
    assert status(prog, "small").error is None and status(prog, "tp").error is None
    assert status(prog, "big").error.startswith("its maps may take up to ")
    assert "of the 10 MiB it allows (--map-memory)" in status(prog, "big").error
    assert memory.used == prog.map_memory <= 10 * MIB
    target.run("work 9")
    assert counts(prog, "small") == {"probeset_target_work": 9}
    prog.stop()
    assert memory.used == 0


def test_uprobes_fall_back_to_perf_events_where_links_are_missing(target, run_probeset, monkeypatch):
    """Kernels before 6.6 have no uprobe_multi links: the first failure switches the program to
    BCC's perf-event uprobes, and counting is the same."""
    import errno

    from probeset_agent import uprobe_links

    def no_links(*_):
        raise OSError(errno.EINVAL, "Invalid argument")
    monkeypatch.setattr(uprobe_links, "_link_create", no_links)
    prog = run_probeset([{"name": "work", "uprobe": f"{target.path}:probeset_target_work", "pid": target.pid,
                          "latency": True}])
    assert status(prog, "work").error is None and prog.links.usable is False
    assert len(prog.bpf.uprobe_fds) == 2 and prog.links.count() == 0        # entry and return, as perf events
    target.run("work 12")
    assert counts(prog, "work") == {"probeset_target_work": 12}


def test_uprobes_are_links_where_the_kernel_has_them(target, run_probeset):
    prog = run_probeset([{"name": "work", "uprobe": f"{target.path}:probeset_target_work", "pid": target.pid,
                          "latency": True}])
    if prog.links.usable is False:
        pytest.skip("this kernel has no uprobe_multi links (Linux >= 6.6)")
    assert prog.links.count() == 2 and not prog.bpf.uprobe_fds
    target.run("work 7")
    assert counts(prog, "work") == {"probeset_target_work": 7}
    assert sum(s.count for s in prog.read_series()[0]) == 7


def test_clearing_a_map_whose_program_deletes_entries_first(monkeypatch):
    """At start the agent empties each latency probe's start and depth maps. A busy function's
    return probe deletes entries all the while: BCC's clear() raised KeyError when one went between
    the walk and the delete (seen with a latency probe on libc:malloc, under load), failing the set's
    start. maps.clear_rows deletes what one batch read found, and a row gone already is no error."""
    import ctypes

    from bcc import BPF

    from probeset_agent import maps
    bpf = BPF(text="BPF_HASH(t, u64, u64, 1024);")
    try:
        table = bpf["t"]
        for k in range(100):
            table[ctypes.c_uint64(k)] = ctypes.c_uint64(k)
        found = list(maps.read_raw(table))
        for k in range(0, 100, 2):
            del table[ctypes.c_uint64(k)]           # what the program's return probe does meanwhile
        monkeypatch.setattr(maps, "read_raw", lambda t: iter(found))
        maps.clear_rows(table)
        monkeypatch.undo()
        assert len(found) == 100 and list(maps.read_raw(table)) == []
    finally:
        bpf.cleanup()


def test_a_latency_probe_on_a_busy_function_starts(run_probeset):
    """The same, end to end: two processes call malloc without pause while latency probes on it
    start. Before maps.clear_rows, 6 of 8 such starts failed with KeyError here."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while 1: b = [bytearray(200) for _ in range(100)]"])
            for _ in range(2)]
    try:
        for i in range(4):
            prog = run_probeset([{"name": "malloc", "uprobe": "libc:malloc", "latency": True}], name=f"busy{i}")
            assert status(prog, "malloc").error is None and status(prog, "malloc").functions == {"malloc": True}
            prog.stop()
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
