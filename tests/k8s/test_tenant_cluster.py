"""Tenant safety through the real API server: a namespaced ProbeSet whose probes would record
another task's data or kernel addresses. The operator rejects what the spec alone shows (kernel
function values: Valid=False, InvalidProbes); the agent, run as its DaemonSet runs it, rejects the
tracepoint fields the node's formats show to be pointers, strings or identities, reports each with
its field and reason in its node's report (ProbeSetNode), and runs the rest."""

import pytest
from kubernetes import client

from probeset_operator.render import AgentSettings, render_daemonset
from tests.k8s.operator_env import (GROUP, OPERATOR_NS, PLURAL, VERSION, api, condition, get_ps,  # noqa: F401
                                    installed, namespace, probeset, service_account_kubeconfig, start_operator,
                                    wait_for)
from tests.k8s.test_agent_e2e import NODE, agent_report, gauge, run_container_here, samples, stop_agent
from tests.support import bcc_missing_reason

pytestmark = [pytest.mark.k8s,
              pytest.mark.skipif(bcc_missing_reason() is not None, reason=bcc_missing_reason() or "")]

LEAKS = [
    {"name": "next_comm", "tracepoint": "sched:sched_switch", "groupBy": ["next_comm"]},
    {"name": "call_site", "tracepoint": "kmem:kmalloc", "groupBy": ["call_site"]},
    {"name": "ptr", "tracepoint": "kmem:kmalloc", "groupBy": ["ptr"]},
    {"name": "safe", "tracepoint": "sched:sched_process_exec"},
]


def test_the_operator_rejects_kernel_values_of_a_namespaced_set(api, namespace, start_operator):  # noqa: F811
    start_operator()
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
        "ret", [{"name": "reads", "kretprobe": "vfs_read", "groupBy": ["retval"]},
                {"name": "execs", "tracepoint": "sched:sched_process_exec"}], nodeSelector={"probeset-test": "none"}))
    obj = wait_for("Valid=False", lambda: (o := get_ps(api, namespace, "ret")) and
                   (condition(o, "Valid") or {}).get("status") == "False" and o)
    valid = condition(obj, "Valid")
    assert valid["reason"] == "InvalidProbes"
    assert valid["message"].startswith("spec.probes[0].groupBy[0]: retval of kernel function vfs_read can be a "
                                       "kernel address or another task's data: a namespaced ProbeSet may not record it")


def test_the_agent_rejects_leaking_tracepoint_fields(api, namespace, installed, tmp_path):  # noqa: F811
    obj = client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
        "leaks", LEAKS, labels=["node", "namespace", "pod"]))
    (container,) = render_daemonset([obj], OPERATOR_NS, AgentSettings())["spec"]["template"]["spec"]["containers"]
    agent = run_container_here(container, NODE, service_account_kubeconfig(installed, tmp_path, "probeset-agent"),
                               tmp_path / "agent.log")
    try:
        _, report = wait_for("the agent's report", lambda: (r := agent_report(api, namespace, "leaks"))[1] and r,
                             timeout=60)
        assert (report["attached"], report["total"]) == (1, 4)
        errors = {f["name"]: f["error"] for f in report["failed"]}
        assert errors["next_comm"].startswith(
            "spec.probes[0].groupBy[0]: field next_comm of sched:sched_switch is a string (char[16])")
        assert errors["call_site"].startswith(
            "spec.probes[1].groupBy[0]: field call_site of kmem:kmalloc is a 8-byte unsigned long")
        assert errors["ptr"].startswith("spec.probes[2].groupBy[0]: field ptr of kmem:kmalloc is a pointer")
        assert all("a namespaced ProbeSet may not record it" in e for e in errors.values())
        assert gauge("probeset_probe_attached", probeset="leaks", probe="safe") == 1
        assert not [s for s in samples("probeset_events_total") if s.labels.get("probe") != "safe"]
    finally:
        code = stop_agent(agent)
    assert code == 0
