"""Two-point latency (start/end probes paired by a key) on this host: pairs exact, the sum within
the program's own sleeps, unmatched starts aged out and counted exactly, the pending map bounded,
and run-queue latency of a task the test wakes N times."""

import os
import time

from probeset_agent.histogram import bucket_upper_ns
from tests.bpf.lang import example_for, one_series
from tests.support import status, wait_for


def span(lang, **extra):
    return {"name": "span", "start": {"uprobe": f"{lang.path}:lang_begin", "key": ["arg0"]},
            "end": {"uprobe": f"{lang.path}:lang_end", "key": ["arg0"]}, "pid": lang.pid, **extra}


def missed(prog, reason):
    return prog.read_missed()[(0, reason)]


def test_pairs_by_key_with_their_time_between(lang, run_probeset):
    prog = run_probeset([span(lang)])
    assert status(prog, "span").functions == {"lang_begin->lang_end": True}
    lang.run("pair 20 2000")                  # begin(i); usleep(2 ms); end(i)
    s = one_series(prog, "span")
    assert (s.count, sum(s.buckets.values())) == (20, 20)
    assert 20 * 2_000_000 <= s.sum_ns <= 20 * 50_000_000
    assert min(bucket_upper_ns(b) for b in s.buckets) >= 2_000_000
    lang.run("begin 10 100")                  # starts 100..109, then their ends in reverse key order
    lang.run("end 10 100")
    lang.run("end 5 500")                     # ends without a start record nothing
    assert one_series(prog, "span").count == 30
    assert (missed(prog, "pending_full"), missed(prog, "start_expired")) == (0, 0)


def test_unmatched_starts_are_aged_out_and_counted(lang, run_probeset):
    prog = run_probeset([span(lang, maxAgeSeconds=5)])
    lang.run("begin 7 1000")                  # never ended
    lang.run("pair 3 10")
    assert prog.age_pending() == 0            # younger than 5 s
    assert prog.age_pending(time.monotonic_ns() + 6 * 10**9) == 7
    assert missed(prog, "start_expired") == 7
    lang.run("end 7 1000")                    # their starts are gone
    assert one_series(prog, "span").count == 3


def test_pending_starts_are_bounded(lang, run_probeset):
    prog = run_probeset([span(lang, maxPending=5)])
    lang.run("begin 8 2000")
    assert missed(prog, "pending_full") == 3
    lang.run("end 8 2000")
    assert one_series(prog, "span").count == 5


def test_bad_spans_fail_alone(lang, run_probeset):
    probes = [{"name": "nokey", "start": {"tracepoint": "sched:sched_wakeup", "key": ["pid"]},
               "end": {"tracepoint": "sched:sched_switch", "key": ["woken_pid"]}},
              {"name": "nosym", "start": {"uprobe": f"{lang.path}:lang_nothing", "key": ["arg0"]},
               "end": {"uprobe": f"{lang.path}:lang_end", "key": ["arg0"]}},
              {"name": "counts", "start": {"uprobe": f"{lang.path}:lang_begin", "key": ["arg0"]},
               "end": {"uprobe": f"{lang.path}:lang_end", "key": ["arg0", "tid"]}},
              span(lang)]
    prog = run_probeset(probes)
    assert status(prog, "nokey").error.startswith(
        "spec.probes[0].end.key[0]: tracepoint sched:sched_switch has no field 'woken_pid', so this end cannot see "
        "the key (fields: ")
    assert status(prog, "nosym").error.endswith(": no function symbol 'lang_nothing'")
    assert status(prog, "counts").error == ("spec.probes[2].end.key: 2 field(s), but start.key has 1: the keys are "
                                            "compared field by field")
    lang.run("pair 4 10")
    assert one_series(prog, "span").count == 4


def state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_runqlat_of_a_task_woken_n_times(lang, run_probeset):
    """sched_wakeup (key: the woken task's pid) -> sched_switch to it (key: next_pid): one sample
    per wakeup. The test wakes the program N times by writing one byte while it sleeps in read()."""
    n = 25
    prog = run_probeset([{"name": "runq", "start": {"tracepoint": "sched:sched_wakeup", "key": ["pid"],
                                                    "filter": {"field": "pid", "op": "==", "value": lang.pid}},
                          "end": {"tracepoint": "sched:sched_switch", "key": ["next_pid"]}}])
    assert status(prog, "runq").error is None, status(prog, "runq").error
    for data in [f"wait {n}\n".encode()] + [b"x"] * n:     # the command line wakes it too: n + 1 wakeups
        wait_for(lambda: state(lang.pid) == "S", 10, "the program asleep in read()", interval=0.001)
        os.write(lang.proc.stdin.fileno(), data)
    assert lang.proc.stdout.readline().strip() == "done"
    s = one_series(prog, "runq")
    assert (s.count, sum(s.buckets.values())) == (n + 1, n + 1)
    assert s.sum_ns > 0


def test_tcpconnlat_example_times_each_connect(start_program):
    import socket

    prog = start_program(example_for("examples/tcpconnlat.yaml", os.getpid()))    # the start's task: us
    assert status(prog, "tcpconnlat").error is None, status(prog, "tcpconnlat").error
    server = socket.create_server(("127.0.0.1", 0))
    try:
        for _ in range(15):
            socket.create_connection(server.getsockname()).close()
            server.accept()[0].close()
    finally:
        server.close()
    s = one_series(prog, "tcpconnlat")
    assert (s.count, sum(s.buckets.values())) == (15, 15)


def test_biolatency_and_runqlat_examples_attach(start_program):
    import yaml

    from probeset_api.spec import parse_probeset
    for path, name in (("examples/biolatency.yaml", "biolatency"), ("examples/runqlat.yaml", "runqlat")):
        with open(path) as f:
            prog = start_program(parse_probeset(yaml.safe_load(f)))
        assert status(prog, name).error is None and all(status(prog, name).functions.values()), path
