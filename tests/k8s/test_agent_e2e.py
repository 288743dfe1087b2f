"""End to end in a real API server: a Node named after this host, the operator's agent DaemonSet, and
a test "node runner" that starts the scheduled pod's container command here, as a kubelet would
(same args, same env, the agent ServiceAccount's credentials). Pods of this node are played too
(fake_kubelet.py): Pod objects with container IDs in their status, processes in cgroups named after
them. The agent attaches real uprobes on this host, counts only its namespace's pods (named
namespace/pod/container), reports its node in the ProbeSet's status, serves exact counts, keeps
counting unchanged probes across an edit, detaches when the ProbeSet is deleted, and refuses a
scope it is not granted. tests/k8s/test_node_agent.py runs several sets in one agent."""

import os
import signal
import socket
import sys
import urllib.request

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from probeset_operator.render import AGENT_DAEMONSET, METRICS_PORT, AgentSettings, render_daemonset
from tests.k8s.fake_kubelet import fake_kubelet  # noqa: F401
from tests.k8s.operator_env import (GROUP, OPERATOR_NS, PLURAL, VERSION, Process, agent_pod_running, api,  # noqa: F401
                                    condition, get_ps, installed, namespace, node_reports, probeset,
                                    service_account_kubeconfig, start_operator, wait_for)
from tests.support import TARGET_C, bcc_missing_reason

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
def target_binary(build_c):
    return build_c("probeset_target", TARGET_C)


@pytest.fixture
def other_namespace(api, namespace):
    name = f"{namespace}-other"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def run_container_here(container: dict, node: str, kubeconfig: str, log_path):
    """Start a pod's container command (API field names) on this host with its environment, like a
    kubelet."""
    env = {"PATH": os.environ["PATH"], "KUBECONFIG": kubeconfig}
    for e in container.get("env") or []:
        if e.get("valueFrom") is not None:
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
            env[e["name"]] = node
        else:
            env[e["name"]] = e["value"]
    # The image's entrypoint is `probeset`; here, this checkout's. The node's / that the pod mounts
    # at /host is this host's own /.
    args = list(container["args"])
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
    if "--host-root" in args and mounts.get(args[args.index("--host-root") + 1]) == "host-root":
        args[args.index("--host-root") + 1] = "/"
    argv = [sys.executable, "-m", "probeset_cli", *args]
    return Process(argv, env, log_path)


def run_pod_here(api, pod, kubeconfig, log_path):
    (container,) = api.sanitize_for_serialization(pod)["spec"]["containers"]
    return run_container_here(container, pod.spec.node_name, kubeconfig, log_path)


def stop_agent(agent) -> int:
    code = agent.stop(signal.SIGTERM)
    print(f"----- agent log -----\n{agent.text()[-4000:]}", file=sys.stderr)
    return code


def metrics():
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as r:
        text = r.read().decode()
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


def samples(name, **labels):
    return [s for s in metrics() if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def gauge(name, **labels):
    """The value of the one sample of `name` with these labels, or None."""
    found = samples(name, **labels)
    assert len(found) <= 1, found
    return found[0].value if found else None


WORKLOAD = ("node", "namespace", "pod", "container")


def events_of(probe, by=WORKLOAD):
    """{(label values of `by`): events} of one probe."""
    out = {}
    for s in samples("probeset_events_total", probe=probe):
        key = tuple(s.labels[name] for name in by)
        out[key] = out.get(key, 0) + s.value
    return out


def agent_report(api, namespace, name):
    """The set, and this node's report on it (its ProbeSetNode's status.sets entry) or None."""
    return get_ps(api, namespace, name), node_reports(api, NODE).get(f"{namespace}/{name}")


def test_agent_from_the_daemonset_counts_its_namespaces_pods_reports_reloads_and_detaches(
        api, namespace, other_namespace, node, fake_kubelet, target_binary, targets, start_operator,
        installed, tmp_path):
    """Scope Namespace (the default): events of the namespace's pod are counted and named
    namespace/pod/container; the same function called by a host process and by a pod of another
    namespace on the node is not counted (the in-kernel cgroup filter)."""
    start_operator()
    objs = client.CustomObjectsApi(api)
    # The neighbours: a pod of another namespace on this node, and a process of the host.
    neighbour = fake_kubelet.run_pod(other_namespace, "other-1")
    t_neighbour, t_host = targets(target_binary, neighbour.cgroup()), targets(target_binary)

    work = {"name": "work", "uprobe": f"{target_binary}:probeset_target_work"}
    objs.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
        "e2e", [work], nodeSelector={"probeset-test": "e2e"}, labels=list(WORKLOAD)))
    pod = wait_for("agent pod bound to this node", lambda: next(iter(
        p for p in client.CoreV1Api(api).list_namespaced_pod(
            OPERATOR_NS, label_selector="app.kubernetes.io/component=agent").items if p.spec.node_name == NODE), None))

    agent_kubeconfig = service_account_kubeconfig(installed, tmp_path, "probeset-agent")
    agent = run_pod_here(api, pod, agent_kubeconfig, tmp_path / "agent.log")
    agent_pod_running(api, NODE)
    try:
        # No pod of the namespace has the binary yet: the node says so (not attached, with the reason).
        obj, report = wait_for("the agent's report", lambda: (r := agent_report(api, namespace, "e2e"))[1] and
                               r[1].get("failed") and r, timeout=60)
        assert report["generation"] == obj["metadata"]["generation"] and report["attached"] == 0
        assert report["failed"][0]["error"].startswith(f"no selected pod has {target_binary} (yet)")
        assert gauge("probeset_allowed_cgroups", probeset="e2e") == 0

        # A pod of the namespace starts after the agent: the pod watch and the housekeeping follow it
        # (its two cgroups, the pod's and the container's, into the filter; its copy of the binary),
        # and the node reports the probe attached.
        app = fake_kubelet.run_pod(namespace, "app-1")
        t_app = targets(target_binary, app.cgroup())
        wait_for("the pod in the filter and its copy probed", lambda:
                 gauge("probeset_allowed_cgroups", probeset="e2e") == 2 and
                 gauge("probeset_uprobe_files", probeset="e2e", probe="work") == 1, timeout=30)
        obj = wait_for("Ready", lambda: (o := get_ps(api, namespace, "e2e")) and
                       (condition(o, "Ready") or {}).get("status") == "True" and o, timeout=30)
        assert obj["status"]["nodes"]["summary"] == "1/1" and obj["status"]["probes"] == "1/1"
        report = agent_report(api, namespace, "e2e")[1]
        assert report["attached"] == 1 and "failed" not in report and "failedNodes" not in obj["status"]
        mine = (NODE, namespace, "app-1", "app")

        t_app.run("work 123")
        t_neighbour.run("work 70")
        t_host.run("work 50")
        counts = wait_for("the pod's events, named", lambda: (c := events_of("work")) and mine in c and c)
        assert counts == {mine: 123}
        assert gauge("probeset_unknown_cgroups", probeset="e2e") == 0

        # Edit: add a probe. It is attached in a program of its own; work keeps counting, without a
        # reset; the agent reports the new generation.
        ret = {"name": "ret", "uretprobe": f"{target_binary}:probeset_target_work", "groupBy": ["retval"]}
        objs.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "e2e",
                                            {"spec": {"probes": [work, ret]}})
        wait_for("the reloaded agent's report", lambda: (r := agent_report(api, namespace, "e2e"))[1] and
                 r[1].get("generation") == r[0]["metadata"]["generation"] and r[1].get("attached") == 2, timeout=60)
        assert gauge("probeset_allowed_cgroups", probeset="e2e") == 2
        assert gauge("probeset_uprobe_files", probeset="e2e", probe="ret") == 1
        for t in (t_app, t_neighbour, t_host):
            t.run("work 30")
        assert events_of("work") == {mine: 153}
        assert events_of("ret", WORKLOAD + ("retval",)) == {mine + ("1",): 10, mine + ("0",): 20}

        # A probe that cannot attach: the node reports it, the set is Degraded with the reason (here
        # the pod's copy of the binary has no such function).
        missing = {"name": "missing", "uprobe": f"{target_binary}:no_such_function"}
        objs.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "e2e",
                                            {"spec": {"probes": [work, ret, missing]}})
        obj = wait_for("Degraded", lambda: (o := get_ps(api, namespace, "e2e")) and
                       (condition(o, "Degraded") or {}).get("status") == "True" and o, timeout=60)
        assert "no function no_such_function" in condition(obj, "Degraded")["message"]
        (failed,) = agent_report(api, namespace, "e2e")[1]["failed"]
        assert failed["name"] == "missing"
        assert failed["error"] == f"no function no_such_function in {target_binary} in pod {namespace}/app-1"
        # The set's own status names the node and the reason (its owner cannot read ProbeSetNodes).
        (shown,) = obj["status"]["failedNodes"]
        assert (shown["node"], shown["attached"], shown["total"], shown["failed"][0]["error"]) == (
            NODE, 2, 3, failed["error"])
        wait_for("ProbesFailed event", lambda: [e for e in client.CoreV1Api(api).list_namespaced_event(namespace).items
                                                if e.reason == "ProbesFailed" and NODE in e.message])
        for t in (t_app, t_neighbour, t_host):
            t.run("work 5")
        assert events_of("work") == {mine: 158}    # the good probes kept working, still filtered

        # Delete the last set: the agent detaches it, and the operator deletes the DaemonSet.
        objs.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "e2e")
        wait_for("the agent to detach", lambda: "detaching" in agent.text() and not samples("probeset_events_total"))
        wait_for("DaemonSet deleted", lambda: not [d for d in client.AppsV1Api(api).list_namespaced_daemon_set(
            OPERATOR_NS).items if d.metadata.name == AGENT_DAEMONSET])
    finally:
        code = stop_agent(agent)
    assert code == 0


def test_agent_refuses_node_scope_outside_the_granted_namespaces(api, namespace, installed, tmp_path):
    """The operator runs no agent for such a set (test_operator.py); an agent that gets one anyway
    (its spec edited under it: the agent sees the edit before the operator) refuses it itself."""
    objs = client.CustomObjectsApi(api)
    obj = objs.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
        "wide", [{"name": "execs", "tracepoint": "sched:sched_process_exec"}], scope="Node", labels=["node"]))
    # The agent container as the operator renders it (its own namespace; nodeWideNamespaces unset).
    (container,) = render_daemonset([obj], OPERATOR_NS, AgentSettings())["spec"]["template"]["spec"]["containers"]
    agent = run_container_here(container, NODE, service_account_kubeconfig(installed, tmp_path, "probeset-agent"),
                               tmp_path / "agent.log")
    try:
        _, report = wait_for("the agent's refusal", lambda: (r := agent_report(api, namespace, "wide"))[1] and r,
                             timeout=60)
        assert (report["generation"], report["attached"], report["total"]) == (obj["metadata"]["generation"], 0, 1)
        assert report["reason"] == "InvalidSpec"
        (failed,) = report["failed"]
        assert failed["name"] == "(spec)" and not failed["attached"]
        assert "spec.scope" in failed["error"] and OPERATOR_NS in failed["error"] and namespace in failed["error"]
        assert not samples("probeset_probe_attached") and not samples("probeset_events_total")

        # Back to the default scope: the agent runs it, and the refusal leaves the report.
        objs.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "wide", {"spec": {"scope": "Namespace"}})
        _, report = wait_for("the agent's report", lambda: (r := agent_report(api, namespace, "wide"))[1] and
                             r[1]["generation"] == r[0]["metadata"]["generation"] and r, timeout=60)
        assert report["attached"] == 1 and "failed" not in report
        assert gauge("probeset_probe_attached", probeset="wide", probe="execs") == 1
        assert agent.proc.poll() is None
    finally:
        code = stop_agent(agent)
    assert code == 0
