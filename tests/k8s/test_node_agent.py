"""One agent per node, against the real API server: the agent (run here as the DaemonSet's container
runs it, with the agent ServiceAccount's credentials) runs every ProbeSet that selects this node,
each as its own program, serves them all on one /metrics, follows the Node's labels, edits sets
make-before-break, detaches deleted sets, and keeps to its limits with a clear status."""

import pytest
from kubernetes import client

from probeset_api.admission import Admission
from probeset_operator.render import AgentSettings, render_daemonset
from tests.k8s.operator_env import (GROUP, OPERATOR_NS, PLURAL, VERSION, api, installed, namespace,  # noqa: F401
                                    probeset, service_account_kubeconfig, wait_for)
from tests.k8s.test_agent_e2e import (NODE, agent_report, node, other_namespace, run_container_here,  # noqa: F401
                                      samples, stop_agent, target_binary)
from tests.support import Caller, bcc_missing_reason, uprobe_links

pytestmark = [pytest.mark.k8s,
              pytest.mark.skipif(bcc_missing_reason() is not None, reason=bcc_missing_reason() or "")]


def events(name, probe):
    return sum(s.value for s in samples("probeset_events_total", probeset=name, probe=probe))


def reported(api, ns, name, attached=None):
    """The agent's report for the set's current generation (with `attached` probes), or None."""
    obj, report = agent_report(api, ns, name)
    if report and report.get("generation") == obj["metadata"]["generation"] and \
            (attached is None or report.get("attached") == attached):
        return report
    return None


def start_agent(installed, tmp_path, namespaces, **settings):
    """The agent container as the operator renders it, with scope Node granted to `namespaces`."""
    admission = Admission(OPERATOR_NS, frozenset(namespaces))
    ds = render_daemonset([], OPERATOR_NS, AgentSettings(admission=admission, **settings))
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    return run_container_here(container, NODE, service_account_kubeconfig(installed, tmp_path, "probeset-agent"),
                              tmp_path / "agent.log")


def test_one_agent_runs_every_set_that_selects_its_node(api, namespace, other_namespace, node, installed,  # noqa: F811
                                                        target_binary, targets, tmp_path):
    objs = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)

    def create(ns, name, probes, **spec):
        objs.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, probeset(
            name, probes, scope="Node", labels=["node"], **spec))

    def uprobe(name, function):
        return {"name": name, "uprobe": f"{target_binary}:probeset_target_{function}"}

    create(namespace, "a", [uprobe("work", "work")], nodeSelector={"probeset-test": "e2e"})
    create(other_namespace, "b", [uprobe("alpha", "alpha")])
    create(other_namespace, "c", [uprobe("beta", "beta")], nodeSelector={"probeset-extra": "yes"})
    create(namespace, "broken", [uprobe("missing", "no_such_function")])
    target = targets(target_binary)
    agent = start_agent(installed, tmp_path, {namespace, other_namespace})
    try:
        wait_for("a and b attached", lambda: reported(api, namespace, "a", 1) and reported(api, other_namespace, "b", 1),
                 timeout=60)
        broken = wait_for("broken reported", lambda: reported(api, namespace, "broken"))
        assert broken["attached"] == 0 and "no_such_function" in broken["failed"][0]["error"]
        assert agent_report(api, other_namespace, "c")[1] is None        # not selected: nothing for this node

        # One endpoint serves both sets, each with its namespace; the broken set stops neither.
        target.run("work 11")
        target.run("alpha 13")
        target.run("beta 17")
        assert events("a", "work") == 11 and events("b", "alpha") == 13 and events("c", "beta") == 0
        (work,) = [s for s in samples("probeset_events_total", probe="work") if s.labels["function"] != "__overflow__"]
        assert work.labels["probeset_namespace"] == namespace

        # Make-before-break: a probe added while work is called without pause; work's count
        # stays exact across the edit (its program and maps are kept).
        with Caller(target, "work 10", 10) as caller:
            objs.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "a", {"spec": {"probes": [
                uprobe("work", "work"), uprobe("alpha", "alpha")]}})
            wait_for("a's new generation attached", lambda: reported(api, namespace, "a", 2), timeout=60)
            caller.wait_for(caller.calls + 100)     # and calls go on after the switch
        assert events("a", "work") == 11 + caller.calls
        target.run("alpha 3")
        assert events("a", "alpha") == 3 and events("b", "alpha") == 16

        # The Node gains a label: c starts within seconds; it loses a label: a stops and its
        # report for this node goes.
        core.patch_node(NODE, {"metadata": {"labels": {"probeset-extra": "yes"}}})
        wait_for("c attached", lambda: reported(api, other_namespace, "c", 1), timeout=30)
        target.run("beta 5")
        assert events("c", "beta") == 5
        core.patch_node(NODE, {"metadata": {"labels": {"probeset-test": None}}})
        wait_for("a's report removed", lambda: agent_report(api, namespace, "a")[1] is None, timeout=30)
        assert not samples("probeset_events_total", probeset="a")

        # Delete b: its uprobe is released at once, the others still count.
        links = uprobe_links(agent.proc.pid)
        objs.delete_namespaced_custom_object(GROUP, VERSION, other_namespace, PLURAL, "b")
        wait_for("b's uprobe released", lambda: uprobe_links(agent.proc.pid) == links - 1, timeout=10)
        assert not samples("probeset_events_total", probeset="b")
        target.run("beta 2")
        target.run("alpha 4")
        assert events("c", "beta") == 7 and events("b", "alpha") == 0
        assert agent.proc.poll() is None
    finally:
        code = stop_agent(agent)
    assert code == 0


def test_over_its_limit_the_newest_set_waits_and_says_why(api, namespace, node, installed,  # noqa: F811
                                                           target_binary, targets, tmp_path):
    objs = client.CustomObjectsApi(api)
    probes = [{"name": "work", "uprobe": f"{target_binary}:probeset_target_work"}]
    for name in ("first", "second"):
        objs.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
            name, probes, scope="Node", labels=["node"]))
        wait_for(f"{name} created", lambda: objs.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
    agent = start_agent(installed, tmp_path, {namespace}, max_probesets=1)
    target = targets(target_binary)
    try:
        wait_for("first attached", lambda: reported(api, namespace, "first", 1), timeout=60)
        second = wait_for("second refused", lambda: reported(api, namespace, "second"))
        assert second["reason"] == "OverBudget" and second["attached"] == 0
        assert "runs 1 ProbeSets, the most it may (--max-probesets, Helm agent.maxProbeSets)" in \
            second["failed"][0]["error"]
        target.run("work 9")
        assert events("first", "work") == 9 and not samples("probeset_events_total", probeset="second")

        # Another set goes: the waiting one starts.
        objs.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "first")
        report = wait_for("second attached", lambda: reported(api, namespace, "second", 1), timeout=30)
        assert "reason" not in report or report["reason"] is None
        target.run("work 4")
        assert events("second", "work") == 4
    finally:
        code = stop_agent(agent)
    assert code == 0
