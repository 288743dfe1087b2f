"""End to end in a real API server: a Node named after this host, the operator's DaemonSet, and a
test "node runner" that starts the scheduled pod's container command here, as a kubelet would
(same args, same env, the agent ServiceAccount's credentials). The agent attaches real uprobes on
this host, reports its node in the ProbeSet's status, serves exact counts, hot-reloads on edit,
and detaches when the ProbeSet is deleted."""

import os
import signal
import socket
import sys
import urllib.request

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from probeset_operator.render import LABEL_UID, METRICS_PORT
from tests.k8s.operator_env import (GROUP, OPERATOR_NS, PLURAL, VERSION, Process, api, condition,  # noqa: F401
                                    get_ds, get_ps, installed, namespace, probeset, service_account_kubeconfig,
                                    start_operator, wait_for)
from tests.support import TARGET_C, Target, bcc_missing_reason

pytestmark = [pytest.mark.k8s,
              pytest.mark.skipif(bcc_missing_reason() is not None, reason=bcc_missing_reason() or "")]

NODE = socket.gethostname()


@pytest.fixture
def node(api):
    """This host as a Ready Node (no kubelet: the test plays it)."""
    core = client.CoreV1Api(api)
    body = {"metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE, "probeset-test": "e2e"}}}
    core.create_node(body)
    resources = {"cpu": str(os.cpu_count()), "memory": "8Gi", "pods": "110"}   # what a kubelet reports
    core.patch_node_status(NODE, {"status": {"capacity": resources, "allocatable": resources, "conditions": [
        {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "played by the test"}]}})
    yield NODE
    core.delete_node(NODE)


@pytest.fixture
def target(build_c):
    t = Target(build_c("probeset_target", TARGET_C))
    yield t
    t.close()


def run_pod_here(api, pod, kubeconfig, log_path):
    """Start the pod's container command on this host with its environment, like a kubelet."""
    (container,) = pod.spec.containers
    env = {"PATH": os.environ["PATH"], "KUBECONFIG": kubeconfig}
    for e in container.env:
        if e.value_from is not None:
            assert e.value_from.field_ref.field_path == "spec.nodeName"
            env[e.name] = pod.spec.node_name
        else:
            env[e.name] = e.value
    # The image's entrypoint is `probeset`; here, this checkout's.
    argv = [sys.executable, "-m", "probeset_agent.cli", *container.args]
    return Process(argv, env, log_path)


def metrics():
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as r:
        text = r.read().decode()
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


def events_of(probe, by="function"):
    return {s.labels[by]: s.value for s in metrics() if s.name == "probeset_events_total" and s.labels["probe"] == probe}


def test_agent_from_the_daemonset_attaches_reports_reloads_and_detaches(api, namespace, node, target,
                                                                          start_operator, installed, tmp_path):
    start_operator()
    objs = client.CustomObjectsApi(api)
    work = {"name": "work", "uprobe": f"{target.path}:probeset_target_work", "pid": target.pid}
    objs.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
        "e2e", [work], nodeSelector={"probeset-test": "e2e"}, labels=["node"]))
    uid = wait_for("ProbeSet", lambda: get_ps(api, namespace, "e2e"))["metadata"]["uid"]
    pod = wait_for("agent pod bound to this node", lambda: next(iter(
        p for p in client.CoreV1Api(api).list_namespaced_pod(OPERATOR_NS, label_selector=f"{LABEL_UID}={uid}").items
        if p.spec.node_name == NODE), None))

    agent_kubeconfig = service_account_kubeconfig(installed, tmp_path, "probeset-agent")
    agent = run_pod_here(api, pod, agent_kubeconfig, tmp_path / "agent.log")
    try:
        obj = wait_for("the agent's report", lambda: (o := get_ps(api, namespace, "e2e")) and
                       (o.get("status") or {}).get("agents", {}).get(NODE, {}).get("attached") == 1 and o, timeout=60)
        assert obj["status"]["agents"][NODE]["generation"] == obj["metadata"]["generation"]
        assert "failed" not in obj["status"]["agents"][NODE]
        obj = wait_for("Ready", lambda: (o := get_ps(api, namespace, "e2e")) and
                       (condition(o, "Ready") or {}).get("status") == "True" and o)
        assert obj["status"]["nodes"]["summary"] == "1/1" and obj["status"]["probes"] == "1/1"

        target.run("work 123")
        assert events_of("work") == {"probeset_target_work": 123}

        # Edit: add a probe. The agent reloads (counters restart) and reports the new generation.
        ret = {"name": "ret", "uretprobe": f"{target.path}:probeset_target_work", "pid": target.pid,
               "groupBy": ["retval"]}
        objs.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "e2e",
                                            {"spec": {"probes": [work, ret]}})
        wait_for("the reloaded agent's report", lambda: (o := get_ps(api, namespace, "e2e")) and
                 o["status"]["agents"][NODE].get("generation") == o["metadata"]["generation"] and
                 o["status"]["agents"][NODE].get("attached") == 2, timeout=60)
        target.run("work 30")
        assert events_of("work") == {"probeset_target_work": 30}
        assert events_of("ret", by="retval") == {"1": 10, "0": 20}

        # A probe that cannot attach: the node reports it, the set is Degraded with the reason.
        missing = {"name": "missing", "uprobe": f"{target.path}:no_such_function"}
        objs.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "e2e",
                                            {"spec": {"probes": [work, ret, missing]}})
        obj = wait_for("Degraded", lambda: (o := get_ps(api, namespace, "e2e")) and
                       (condition(o, "Degraded") or {}).get("status") == "True" and o, timeout=60)
        assert "no_such_function" in condition(obj, "Degraded")["message"]
        assert obj["status"]["agents"][NODE]["failed"][0]["name"] == "missing"
        wait_for("ProbeFailed event", lambda: [e for e in client.CoreV1Api(api).list_namespaced_event(namespace).items
                                               if e.reason == "ProbeFailed" and NODE in e.message])
        target.run("work 5")
        assert events_of("work") == {"probeset_target_work": 5}      # the good probes kept working

        # Delete: the agent detaches, the DaemonSet goes.
        objs.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "e2e")
        wait_for("the agent to detach", lambda: "detaching" in agent.text() and not [
            s for s in metrics() if s.name == "probeset_events_total"])
        wait_for("DaemonSet deleted", lambda: get_ds(api, namespace, "e2e") is None)
    finally:
        code = agent.stop(signal.SIGTERM)
        print(f"----- agent log -----\n{agent.text()[-4000:]}", file=sys.stderr)
    assert code == 0
