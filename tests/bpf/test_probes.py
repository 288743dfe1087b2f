"""Real probes on this host's kernel, exact counts filtered to the test's own processes."""

import os
import socket

import pytest

from tests.support import Target, counts, status

N = 1000


def test_uprobe_counts_exactly(target, run_probeset):
    prog = run_probeset([{"name": "work", "uprobe": f"{target.path}:probeset_target_work", "pid": target.pid}])
    assert status(prog, "work").error is None
    target.run(f"work {N}")
    assert counts(prog, "work") == {"probeset_target_work": N}
    target.run("work 7")
    assert counts(prog, "work") == {"probeset_target_work": N + 7}


def test_pid_filter_excludes_other_processes(target_binary, target, run_probeset):
    other = Target(target_binary)
    try:
        prog = run_probeset([{"name": "work", "uprobe": f"{target.path}:probeset_target_work", "pid": target.pid}])
        other.run("work 500")
        target.run("work 10")
        assert counts(prog, "work") == {"probeset_target_work": 10}
    finally:
        other.close()


def test_uretprobe_grouped_by_retval(target, run_probeset):
    prog = run_probeset([{"name": "ret", "uretprobe": f"{target.path}:probeset_target_work", "pid": target.pid,
                          "groupBy": ["retval"]}])
    target.run("work 300")           # returns 1 when i % 3 == 0
    assert counts(prog, "ret", by="retval") == {"1": 100, "0": 200}


def test_latency_histogram_count_and_sum(target, run_probeset):
    prog = run_probeset([{"name": "sleep", "uprobe": f"{target.path}:probeset_target_sleep", "pid": target.pid,
                          "latency": True}])
    target.run("sleep 20 2000")      # 20 calls of usleep(2000)
    (series,) = prog.read_series()[0]
    assert series.count == 20
    assert sum(series.buckets.values()) == 20
    assert 20 * 2_000_000 <= series.sum_ns <= 20 * 50_000_000
    from probeset_agent.histogram import bucket_upper_ns
    assert min(bucket_upper_ns(i) for i in series.buckets) >= 2_000_000
    assert prog.read_missed()[(0, "unpaired_return")] == 0


def test_glob_uprobe_counts_per_function(target, run_probeset):
    prog = run_probeset([{"name": "fns", "uprobe": f"{target.path}:probeset_target_[ab]*", "pid": target.pid}])
    # '[' is not a valid glob character in the model: the probe is rejected, and says why
    assert "spec.probes[0].uprobe" in status(prog, "fns").error
    prog = run_probeset([{"name": "fns", "uprobe": f"{target.path}:probeset_target_*", "pid": target.pid}],
                        name="test2")
    assert sorted(status(prog, "fns").functions) == ["probeset_target_alpha", "probeset_target_arg",
                                                     "probeset_target_beta", "probeset_target_sleep",
                                                     "probeset_target_work"]
    target.run("alpha 7")
    target.run("beta 11")
    target.run("work 3")
    assert counts(prog, "fns") == {"probeset_target_alpha": 7, "probeset_target_beta": 11,
                                   "probeset_target_work": 3}


def test_groupby_arg_and_cardinality_budget(target, run_probeset):
    prog = run_probeset([{"name": "args", "uprobe": f"{target.path}:probeset_target_arg", "pid": target.pid,
                          "groupBy": ["arg0"]}], maxSeriesPerProbe=5)
    target.run("arg 100 10")         # arg0 = i % 10: 10 values, 10 calls each
    by_function = counts(prog, "args")
    by_arg = counts(prog, "args", by="arg0")
    assert sum(by_function.values()) == 100
    # 5 series fit the budget, the other values fold into __overflow__
    assert len([v for v in by_arg.values()]) == 6
    assert by_function["__overflow__"] == 50 and by_function["probeset_target_arg"] == 50


def test_tracepoint_openat_exact(tmp_path, run_probeset):
    path = tmp_path / "f"
    path.write_text("x")
    prog = run_probeset([{"name": "openat", "tracepoint": "syscalls:sys_enter_openat", "pid": os.getpid()}])
    before = counts(prog, "openat").get("syscalls:sys_enter_openat", 0)
    for _ in range(N):
        os.close(os.open(path, os.O_RDONLY))
    assert counts(prog, "openat")["syscalls:sys_enter_openat"] - before == N


def test_udp_over_loopback_grouped_by_device(run_probeset):
    prog = run_probeset([{"name": "xmit", "tracepoint": "net:net_dev_xmit", "pid": os.getpid(),
                          "groupBy": ["name"]}])
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    before = counts(prog, "xmit", by="name").get("lo", 0)
    for _ in range(200):
        tx.sendto(b"ping", rx.getsockname())
    tx.close()
    rx.close()
    assert counts(prog, "xmit", by="name")["lo"] - before == 200


def test_tracepoint_symbolic_field_decoded(run_probeset):
    """skb:kfree_skb reason values are shown by name, from the tracepoint's own print format."""
    prog = run_probeset([{"name": "drops", "tracepoint": "skb:kfree_skb", "pid": os.getpid(),
                          "groupBy": ["reason"]}])
    rp = prog.resolved[0]
    assert rp.symbols["reason"][2] == "NOT_SPECIFIED"
    # A UDP datagram to a closed port is dropped with reason NO_SOCKET... in this process's context.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(5):
        tx.sendto(b"x", ("127.0.0.1", port))
    tx.close()
    assert counts(prog, "drops", by="reason").get("NO_SOCKET", 0) == 5


def test_kprobes_unsupported_here_do_not_break_the_rest(target, run_probeset):
    from probeset_agent.features import detect
    if detect().kprobe.ok or detect().fentry.ok:
        pytest.skip("this kernel supports kprobes or fentry: the unsupported path is tested in tests/vm")
    prog = run_probeset([
        {"name": "vfs", "kprobe": "vfs_read"},
        {"name": "work", "uprobe": f"{target.path}:probeset_target_work", "pid": target.pid},
        {"name": "vfsret", "kretprobe": "vfs_read", "attach": "kprobe"},
    ])
    assert "supports neither kprobes" in status(prog, "vfs").error
    assert "kprobes are not supported on this kernel" in status(prog, "vfsret").error
    target.run("work 42")
    assert counts(prog, "work") == {"probeset_target_work": 42}


def test_stale_bcc_tracefs_probes_are_removed(target):
    from probeset_agent.host import remove_stale_bcc_probes
    dead_pid = 4194303   # above pid_max's default: never a live process here
    with open("/proc/sys/kernel/pid_max") as f:
        assert int(f.read()) <= dead_pid or not os.path.exists(f"/proc/{dead_pid}")
    from probeset_agent.host import elf_functions, write_tracefs
    ((_, offset),) = elf_functions(target.path, "probeset_target_work")
    name = f"p_probeset_test_bcc_{dead_pid}"
    live = f"p_probeset_live_bcc_{os.getpid()}"
    for event in (name, live):
        write_tracefs("/sys/kernel/tracing/uprobe_events", f"p:uprobes/{event} {target.path}:{offset:#x}\n")
    try:
        assert name in remove_stale_bcc_probes()
        with open("/sys/kernel/tracing/uprobe_events") as f:
            text = f.read()
        assert name not in text and live in text      # a live process's probe is left alone
    finally:
        write_tracefs("/sys/kernel/tracing/uprobe_events", f"-:uprobes/{live}\n")
