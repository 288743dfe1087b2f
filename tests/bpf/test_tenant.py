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


def start_namespaced(start_program, fake_pods, probes, allowed=frozenset(), scope=None):
    pods = PodIndex()
    mine = fake_pods.add("team-a")
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
]


@pytest.mark.parametrize("probe,reason", LEAKS, ids=[r.split(": ")[1][:40] for _, r in LEAKS])
def test_values_that_leak_are_refused_with_the_field(start_program, fake_pods, probe, reason):
    prog, _ = start_namespaced(start_program, fake_pods, [{"name": "leak", **probe}])
    error = status(prog, "leak").error
    assert error.startswith(reason), error
    assert "a namespaced ProbeSet may not record it" in error and "tenantAllowedValues: " in error
    assert prog.compiled == []                 # nothing was generated for it


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
