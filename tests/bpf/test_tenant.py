"""A namespaced ProbeSet learns nothing outside its pods: the leaks found by review, reproduced
through the cluster code path (pod index, pod selection, value policy, program) with fake pods,
now rejected with the field and the reason, or allowed only where the administrator says so."""

import platform

import pytest

from probeset_agent.attribution import Attribution, CgroupTree
from probeset_agent.pods import PodIndex, PodSelection
from probeset_api.spec import parse_probeset, restrict_values, value_policy
from tests.bpf.test_attribution import WORKLOAD, by_labels
from tests.support import status


def _task_context_missing() -> str | None:
    from probeset_agent.taskcontext import task_context
    layout, why = task_context()
    return None if layout else f"namespaced kernel probes need the task-context check, unavailable here: {why}"


# A namespaced set's kernel probes run only where the agent can tell task context from interrupts
# (taskcontext.py); elsewhere they are refused with that reason, and these tests cannot count.
needs_task_context = pytest.mark.skipif(_task_context_missing() is not None, reason=str(_task_context_missing()))


def start_namespaced(start_program, fake_pods, probes, allowed=frozenset(), scope=None, mine=None):
    """A ProbeSet of namespace team-a whose one pod on the node is `mine` (a new fake pod if None)."""
    pods = PodIndex()
    mine = mine or fake_pods.add("team-a")
    pods.update(mine.info())
    spec = {"probes": probes, "labels": list(WORKLOAD)}
    if scope:
        spec["scope"] = scope
    pset = parse_probeset({"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet",
                           "metadata": {"name": "leak", "namespace": "team-a"}, "spec": spec})
    policy = value_policy(pset, allowed)
    selection = PodSelection(pods, None if scope == "Node" else "team-a", None)
    prog = start_program(restrict_values(pset, policy), policy=policy, selection=selection,
                         attribution=Attribution(CgroupTree(fake_pods.root), pods, rescan_interval=0))
    return prog, mine


LEAKS = [
    ({"tracepoint": "sched:sched_switch", "groupBy": ["next_comm"]},
     "spec.probes[0].groupBy[0]: field next_comm of sched:sched_switch is a string (char[16])"),
    ({"tracepoint": "syscalls:sys_enter_clock_nanosleep", "groupBy": ["which_clock"]},
     "spec.probes[0].groupBy[0]: field which_clock of syscalls:sys_enter_clock_nanosleep is a 8-byte const clockid_t"),
    ({"tracepoint": "sched:sched_switch", "groupBy": ["next_pid"]},
     "spec.probes[0].groupBy[0]: field next_pid of sched:sched_switch is pid_t next_pid: it can be another task's identity"),
    ({"tracepoint": "kmem:kmalloc", "groupBy": ["call_site"]},
     "spec.probes[0].groupBy[0]: field call_site of kmem:kmalloc is a 8-byte unsigned long: it can hold a kernel address"),
    ({"tracepoint": "kmem:kmalloc", "groupBy": ["ptr"]},
     "spec.probes[0].groupBy[0]: field ptr of kmem:kmalloc is a pointer (const void *): a kernel address"),
    ({"tracepoint": "net:net_dev_xmit", "groupBy": ["skbaddr"]},
     "spec.probes[0].groupBy[0]: field skbaddr of net:net_dev_xmit is a pointer (void *): a kernel address"),
    ({"kretprobe": "vfs_read", "groupBy": ["retval"]},
     "spec.probes[0].groupBy[0]: retval of kernel function vfs_read can be a kernel address or another task's data"),
    ({"kprobe": "vfs_read", "groupBy": ["arg0"]},
     "spec.probes[0].groupBy[0]: arg0 of kernel function vfs_read can be a kernel address or another task's data"),
    # What a probe compares tells as much as what it records: a filter counts bits of a field, a
    # span's key tests it for equality. Kernel functions' are refused by the API (restrict_values).
    ({"start": {"kprobe": "tcp_sendmsg", "key": ["tid"], "filter": {"field": "arg0", "op": "&", "value": 4096}},
      "end": {"kretprobe": "tcp_sendmsg", "key": ["tid"]}},
     "spec.probes[0].start.filter.field: arg0 of kernel function tcp_sendmsg can be a kernel address"),
    ({"start": {"tracepoint": "syscalls:sys_enter_clock_nanosleep", "key": ["__syscall_nr"]},
      "end": {"kprobe": "tcp_sendmsg", "key": ["arg2"]}},
     "spec.probes[0].end.key[0]: arg2 of kernel function tcp_sendmsg can be a kernel address or another task's data"),
    ({"start": {"tracepoint": "kmem:kmalloc", "key": ["ptr"]}, "end": {"tracepoint": "kmem:kfree", "key": ["ptr"]}},
     "spec.probes[0].start.key[0]: field ptr of kmem:kmalloc is a pointer (const void *): a kernel address"),
    ({"start": {"tracepoint": "kmem:kmalloc", "key": ["tid"], "filter": {"field": "call_site", "op": "&", "value": 4096}},
      "end": {"tracepoint": "syscalls:sys_exit_clock_nanosleep", "key": ["tid"]}},
     "spec.probes[0].start.filter.field: field call_site of kmem:kmalloc is a 8-byte unsigned long: it can hold a "
     "kernel address"),
    ({"start": {"tracepoint": "sched:sched_wakeup", "key": ["pid"]},      # runqlat's: the woken task's pid
      "end": {"tracepoint": "sched:sched_switch", "key": ["next_pid"]}},
     "spec.probes[0].start.key[0]: field pid of sched:sched_wakeup is pid_t pid: it can be another task's identity"),
    ({"start": {"tracepoint": "syscalls:sys_enter_clock_nanosleep", "key": ["__syscall_nr"]},
      "end": {"tracepoint": "sched:sched_switch", "key": ["next_pid"]}},
     "spec.probes[0].end.key[0]: field next_pid of sched:sched_switch is pid_t next_pid: it can be another task's "
     "identity"),
    ({"start": {"tracepoint": "syscalls:sys_enter_clock_nanosleep", "key": ["tid"]},
      "end": {"tracepoint": "sched:sched_switch", "key": ["tid"], "filter": {"field": "next_pid", "op": "==", "value": 1}}},
     "spec.probes[0].end.filter.field: field next_pid of sched:sched_switch is pid_t next_pid: it can be another "
     "task's identity"),
    ({"tracepoint": "sched:sched_wakeup", "filter": {"field": "pid", "op": "==", "value": 1234}},
     "spec.probes[0].filter.field: field pid of sched:sched_wakeup is pid_t pid: it can be another task's identity"),
]


@pytest.mark.parametrize("probe,reason", LEAKS,
                         ids=[r.split(": ")[0].removeprefix("spec.probes[0].") + " " + r.split(": ")[1][:40]
                              for _, r in LEAKS])
def test_values_that_leak_are_refused_with_the_field(start_program, fake_pods, probe, reason):
    prog, _ = start_namespaced(start_program, fake_pods, [{"name": "leak", **probe}])
    error = status(prog, "leak").error
    assert error.startswith(reason), error
    assert "a namespaced ProbeSet may not record it" in error and "tenantAllowedValues: " in error
    assert prog.compiled == []                 # nothing was generated for it


@needs_task_context
def test_safe_fields_and_own_values_still_count(start_program, fake_pods, targets, target_binary):
    prog, mine = start_namespaced(start_program, fake_pods, [
        {"name": "sleeps", "tracepoint": "syscalls:sys_enter_clock_nanosleep", "groupBy": ["__syscall_nr"]},
        {"name": "args", "uprobe": f"{target_binary}:probeset_target_arg", "groupBy": ["arg0"]},
        {"name": "names", "tracepoint": "syscalls:sys_enter_clock_nanosleep", "groupBy": ["comm"]}])
    t_mine, host = targets(target_binary, mine.cgroup()), targets(target_binary)
    prog.refresh()         # the pod's process runs now: its copy of the binary gets the uprobe
    assert [st.error for st in prog.probe_statuses()] == [None, None, None]
    for t in (t_mine, host):
        t.run("sleep 3 1")
        t.run("arg 6 2")
    name = mine.info().name
    nr = {"x86_64": "230", "aarch64": "115"}[platform.machine()]                 # __NR_clock_nanosleep
    assert by_labels(prog, 0, ("pod", "__syscall_nr")) == {(name, nr): 3}       # an int: allowed; own pod only
    assert by_labels(prog, 1, ("pod", "arg0")) == {(name, "0"): 3, (name, "1"): 3}
    assert by_labels(prog, 2, ("pod", "comm")) == {(name, "probeset_target"): 3}


@needs_task_context
def test_the_admin_can_allow_one_value(start_program, fake_pods, targets, target_binary):
    prog, mine = start_namespaced(
        start_program, fake_pods,
        [{"name": "allowed", "tracepoint": "sched:sched_process_exec", "groupBy": ["pid"]},
         {"name": "other", "tracepoint": "sched:sched_process_exec", "groupBy": ["old_pid"]}],
        allowed=frozenset({"tracepoint:sched:sched_process_exec:pid"}))
    assert status(prog, "allowed").error is None
    assert status(prog, "other").error.startswith("spec.probes[1].groupBy[0]: field old_pid of sched:sched_process_exec")


def test_scope_node_is_not_restricted(start_program, fake_pods):
    prog, _ = start_namespaced(start_program, fake_pods,
                               [{"name": "wide", "tracepoint": "sched:sched_switch", "groupBy": ["next_comm"]}],
                               scope="Node")
    assert status(prog, "wide").error is None
    assert len(prog.snapshot().runs) == 1     # node-wide figures are for scope Node (docs/metrics.md)


@needs_task_context
def test_task_fields_the_event_lacks_are_the_tasks_own(start_program, fake_pods, targets, target_binary):
    """pid on sys_enter_clock_nanosleep (a field it does not have) is the current process's own."""
    mine = fake_pods.add("team-a")
    t_mine, host = targets(target_binary, mine.cgroup()), targets(target_binary)
    prog, _ = start_namespaced(start_program, fake_pods, [
        {"name": "own", "tracepoint": "syscalls:sys_enter_clock_nanosleep",
         "filter": {"field": "pid", "op": "==", "value": t_mine.pid}, "groupBy": ["__syscall_nr"]}], mine=mine)
    assert status(prog, "own").error is None
    for t in (t_mine, host):
        t.run("sleep 3 1")
    nr = {"x86_64": "230", "aarch64": "115"}[platform.machine()]                 # __NR_clock_nanosleep
    assert by_labels(prog, 0, ("pod", "__syscall_nr")) == {(mine.info().name, nr): 3}


# A start/end probe whose unlabelled end (the start with labelsFrom: end, the end with labelsFrom:
# start) may run outside the tenant's pods: the key (__syscall_nr, the same at entry and exit)
# pairs any start with any end, and the filters take starts of probeset_lang only and ends of
# probeset_target only, so each pair is one sleep of each.
def sleeps_between(labels_from: str) -> dict:
    return {"name": "between", "labelsFrom": labels_from,
            "start": {"tracepoint": "syscalls:sys_enter_clock_nanosleep", "key": ["__syscall_nr"],
                      "filter": {"field": "comm", "op": "==", "value": "probeset_lang"}},
            "end": {"tracepoint": "syscalls:sys_exit_clock_nanosleep", "key": ["__syscall_nr"],
                    "filter": {"field": "comm", "op": "==", "value": "probeset_target"}}}


@needs_task_context
@pytest.mark.parametrize("labels_from", ["start", "end"])
@pytest.mark.parametrize("other_end_in_pod", [True, False])
def test_both_ends_of_a_span_must_be_the_pods(start_program, fake_pods, targets, target_binary, lang_binary,
                                              labels_from, other_end_in_pod):
    """Else a tenant times (and so sees) the sleeps of any process on the node that its own pair with."""
    n = 5
    mine = fake_pods.add("team-a")
    prog, _ = start_namespaced(start_program, fake_pods, [sleeps_between(labels_from)], mine=mine)
    assert status(prog, "between").error is None, status(prog, "between").error
    pod, other = mine.cgroup(), mine.cgroup() if other_end_in_pod else None      # None: a host process
    starter = targets(lang_binary, pod if labels_from == "start" else other)       # comm probeset_lang
    ender = targets(target_binary, pod if labels_from == "end" else other)         # comm probeset_target
    for _ in range(n):
        starter.run("pair 1 1")           # one clock_nanosleep: a start
        ender.run("sleep 1 1")            # one: an end, which takes that start
    assert by_labels(prog, 0, ("pod",)) == ({(mine.info().name,): n} if other_end_in_pod else {})
    assert prog.snapshot().runs == []     # a namespaced set shows no node-wide figure (docs/metrics.md)


# Loopback TCP sends from the pod's process: each raises the NET_RX softirq, which the kernel runs
# on that process's CPU as soon as it re-enables bottom halves, while it is the current task.
LOOPBACK_SENDS = """
import socket
server = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(server.getsockname())
peer, _ = server.accept()
for _ in range(2000):
    client.sendall(b"x" * 100)
    peer.recv(100)
"""


@needs_task_context
def test_interrupts_are_not_the_pods_events(start_program, fake_pods, targets, target_binary):
    """A softirq, an interrupt or an NMI runs on behalf of anyone (a packet for another pod, a disk
    completion), on whichever task it came upon. A set that only selects the pod (an
    administrator's) counts the softirqs that ran on the pod's process; the namespaced set counts
    none of them, and still every event the pod's process makes itself."""
    import subprocess
    import sys
    from probeset_api.spec import ValuePolicy
    probes = [{"name": "softirqs", "tracepoint": "irq:softirq_entry"},
              {"name": "sleeps", "tracepoint": "syscalls:sys_enter_clock_nanosleep"}]
    mine = fake_pods.add("team-a")
    tenant, _ = start_namespaced(start_program, fake_pods, probes, mine=mine)
    assert [st.error for st in tenant.probe_statuses()] == [None, None]
    pods = PodIndex()
    pods.update(mine.info())
    admin_set = parse_probeset({"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet",
                                "metadata": {"name": "admin", "namespace": "team-a"},
                                "spec": {"probes": probes, "labels": list(WORKLOAD), "scope": "Node"}})
    admin = start_program(admin_set, policy=ValuePolicy(), selection=PodSelection(pods, "team-a", None),
                          attribution=Attribution(CgroupTree(fake_pods.root), pods, rescan_interval=0))

    def enter():
        with open(f"{mine.cgroup()}/cgroup.procs", "w") as f:
            f.write("0")
    subprocess.run([sys.executable, "-c", LOOPBACK_SENDS], check=True, preexec_fn=enter, timeout=60)
    targets(target_binary, mine.cgroup()).run("sleep 3 1")
    pod = (mine.info().name,)
    assert by_labels(admin, 0, ("pod",)).get(pod, 0) > 0        # softirqs did run on the pod's process
    assert by_labels(tenant, 0, ("pod",)) == {}
    assert by_labels(tenant, 1, ("pod",)) == {pod: 3}
    assert by_labels(admin, 1, ("pod",)) == {pod: 3}
