"""The cheapest hook and map (hooks.py, mapshape.py), with exact counts: a test program makes N
events, every series says N, on the array path and on the hash path, through a raw tracepoint and
a classic one; `attach` forces either, and an impossible one is refused naming the field."""

import subprocess
import sys

import yaml

from tests.support import Target, counts, status

# Renames itself N times (prctl PR_SET_NAME, always to the same name): tracepoint task:task_rename,
# a tracepoint that is also a raw tracepoint, with the same comm on every event.
RENAME_C = r"""
#include <stdio.h>
#include <sys/prctl.h>
int main(void) {
    char cmd[16];
    long n;
    setvbuf(stdout, NULL, _IONBF, 0);
    prctl(PR_SET_NAME, "psren");
    printf("ready\n");
    while (scanf("%15s %ld", cmd, &n) == 2) {
        for (long i = 0; i < n; i++) prctl(PR_SET_NAME, "psren");
        printf("done\n");
    }
    return 0;
}
"""


def renamer(build_c, targets) -> Target:
    return targets(build_c("probeset_rename", RENAME_C))


def test_field_less_tracepoint_counts_exactly_on_a_raw_tracepoint_and_array(build_c, targets, run_probeset):
    t = renamer(build_c, targets)
    prog = run_probeset([{"name": "auto", "tracepoint": "task:task_rename", "pid": t.pid},
                         {"name": "classic", "tracepoint": "task:task_rename", "pid": t.pid, "attach": "tracepoint"},
                         {"name": "by_comm", "tracepoint": "task:task_rename", "filter": {"field": "tid", "op": "==",
                                                                                          "value": t.pid},
                          "groupBy": ["comm"]},
                         # task_rename has a field pid: a filter on pid compares the event's, so classic
                         {"name": "by_pid", "tracepoint": "task:task_rename", "filter": {"field": "pid", "op": "==",
                                                                                         "value": t.pid}}])
    assert [st.error for st in prog.probe_statuses()] == [None] * 4
    assert [st.via for st in prog.probe_statuses()] == ["raw_tracepoint", "tracepoint", "raw_tracepoint", "tracepoint"]
    assert "event field pid" in status(prog, "by_pid").via_reason
    assert "reads no event field" in status(prog, "auto").via_reason
    assert status(prog, "classic").via_reason == "attach: tracepoint (forced)"
    shapes = prog.program.shapes
    assert (shapes[0].counts, shapes[1].counts, shapes[2].counts) == ("array", "array", "hash")
    for n in (1, 999, 25000):
        before = {p: sum(counts(prog, p).values()) for p in ("auto", "classic", "by_comm", "by_pid")}
        t.run(f"rename {n}")
        assert {p: sum(counts(prog, p).values()) - before[p] for p in before} == {
            "auto": n, "classic": n, "by_comm": n, "by_pid": n}
    assert counts(prog, "by_comm", by="comm") == {"psren": 1 + 999 + 25000}
    assert counts(prog, "auto") == {"task:task_rename": 26000}
    from probeset_agent.exposition import MetricsCollector
    text = MetricsCollector([prog], "testnode").render()
    assert ('probeset_probe_attached{probeset="test",probe="auto",function="task:task_rename",'
            'via="raw_tracepoint"} 1') in text
    assert ('probeset_probe_attached{probeset="test",probe="classic",function="task:task_rename",'
            'via="tracepoint"} 1') in text
    assert 'probeset_events_total{probeset="test",probe="auto",function="task:task_rename",node="testnode"} 26000' in text


def test_uprobe_counts_exactly_in_arrays_and_hashes(target, run_probeset):
    fns = f"{target.path}:probeset_target_*"
    prog = run_probeset([
        {"name": "one", "uprobe": f"{target.path}:probeset_target_work", "pid": target.pid},       # array, 1 slot
        {"name": "glob", "uprobe": fns, "pid": target.pid},                                          # array, 5 slots
        {"name": "args", "uprobe": f"{target.path}:probeset_target_alpha", "pid": target.pid,
         "groupBy": ["arg0"]},                                                                        # hash
        {"name": "lat", "uprobe": f"{target.path}:probeset_target_alpha", "pid": target.pid, "latency": True},
    ])
    assert [st.error for st in prog.probe_statuses()] == [None] * 4
    assert [(s.counts, s.hist) for s in prog.program.shapes.values()] == [
        ("array", "array"), ("array", "array"), ("hash", "hash"), ("array", "array")]
    target.run("work 1000")
    target.run("alpha 777")
    target.run("beta 3")
    assert counts(prog, "one") == {"probeset_target_work": 1000}
    assert counts(prog, "glob") == {"probeset_target_work": 1000, "probeset_target_alpha": 777,
                                    "probeset_target_beta": 3}        # functions never called: no series
    assert sum(counts(prog, "args", by="arg0").values()) == 777 and len(counts(prog, "args", by="arg0")) == 777
    (lat,) = prog.read_series()[3]
    assert lat.count == sum(lat.buckets.values()) == 777


def test_glob_beyond_the_series_budget_keeps_the_overflow_series(target, run_probeset):
    """5 functions, maxSeriesPerProbe 3: a hash (an array would hold all 5): the excess folds."""
    prog = run_probeset([{"name": "glob", "uprobe": f"{target.path}:probeset_target_*", "pid": target.pid}],
                        maxSeriesPerProbe=3)
    assert prog.program.shapes[0].counts == "hash"
    for fn in ("work 5", "alpha 6", "beta 7", "arg 8 2"):
        target.run(fn)
    got = counts(prog, "glob")
    assert got == {"probeset_target_work": 5, "probeset_target_alpha": 6, "probeset_target_beta": 7,
                   "__overflow__": 8}


def test_same_counts_with_cgroup_labels(target, run_probeset):
    """Workload labels vary per event: a hash keyed by the cgroup, still exact."""
    prog = run_probeset([{"name": "one", "uprobe": f"{target.path}:probeset_target_work", "pid": target.pid}],
                        labels=["node", "namespace", "pod", "container"])
    assert prog.program.shapes[0].counts == "hash"
    target.run("work 4321")
    assert sum(counts(prog, "one").values()) == 4321


def test_impossible_attach_is_refused_naming_the_field(run_probeset):
    prog = run_probeset([{"name": "sys", "tracepoint": "syscalls:sys_enter_getppid", "attach": "raw_tracepoint"},
                         {"name": "wake", "tracepoint": "sched:sched_wakeup", "attach": "raw_tracepoint",
                          "filter": {"field": "pid", "op": "==", "value": 1}},
                         {"name": "fields", "tracepoint": "sched:sched_switch", "attach": "raw_tracepoint",
                          "groupBy": ["prev_pid"]},
                         {"name": "ok", "tracepoint": "syscalls:sys_enter_getppid"}])
    assert status(prog, "sys").error.startswith("spec.probes[0].attach: attach: raw_tracepoint is impossible: "
                                                "syscalls:sys_enter_getppid is a syscall tracepoint")
    # sched_wakeup has a field pid: the event's wins, and a raw tracepoint cannot read it
    assert status(prog, "wake").error.startswith("spec.probes[1].attach: attach: raw_tracepoint is impossible: "
                                                 "it reads event field pid")
    assert status(prog, "fields").error.startswith("spec.probes[2].attach: raw_tracepoint sees no event field")
    assert status(prog, "ok").error is None and status(prog, "ok").via == "tracepoint"
    assert "syscall tracepoint" in status(prog, "ok").via_reason


def test_check_says_which_hook_and_why(tmp_path):
    path = tmp_path / "hooks.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet",
                                    "metadata": {"name": "hooks"}, "spec": {"labels": ["node"], "probes": [
                                        {"name": "exec", "tracepoint": "sched:sched_process_exec"},
                                        {"name": "sw", "tracepoint": "sched:sched_switch", "groupBy": ["prev_comm"]}]}}))
    out = subprocess.run([sys.executable, "-m", "probeset_cli", "check", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok    exec: raw_tracepoint sched_process_exec (of sched:sched_process_exec)" in out.stdout
    assert "exec: via raw_tracepoint: auto: it reads no event field" in out.stdout
    assert "sw: via tracepoint: auto: classic tracepoint, since it reads event field prev_comm" in out.stdout
    assert "exec: counts in a per-CPU array of 1 slot: the key is only the function index" in out.stdout
    assert "sw: counts in a per-CPU hash: groupBy prev_comm makes the key space open" in out.stdout
