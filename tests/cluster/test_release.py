"""The user's path on a real node: `helm install` of the chart with the image built from the
Dockerfile, ProbeSets applied with kubectl, agents run by the kubelet in containerd, real pods'
events counted exactly and named from the kubelet's own cgroups, Prometheus finding the agents by
Kubernetes service discovery, the agent pod deleted and the API server stopped under it, and
everything gone after `kubectl delete` and `helm uninstall`.

The chart is installed as the README says, plus only what this machine needs (RELEASE_VALUES):
no pod network here, so the operator and the agents use the node's network, and in-cluster
clients reach the API server at its loopback address instead of the kubernetes Service's ClusterIP,
which nothing routes here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.cluster.node import pod_manifest
from tests.support import namespace_with_token, wait_for

client = pytest.importorskip("kubernetes.client", reason="the kubernetes Python client is not installed")
try:
    import helm_python as helm
except (ImportError, OSError) as e:   # not installed, or its bundled libhelm_c.so does not load
    pytest.skip(f"PyPI package helm-python-sdk is not importable ({e}); pip install helm-python-sdk",
                allow_module_level=True)

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "probeset"
NS, RELEASE = "probeset-system", "probeset"
GROUP, VERSION, PLURAL = "probeset.io", "v1alpha1", "probesets"
METRICS = "http://127.0.0.1:9437/metrics"
CALLS = 300


def release_values(node_cluster) -> dict:
    api = node_cluster.in_cluster_env()
    return {
        "hostNetwork": True,                   # no pod network (CNI) on this machine
        "extraEnv": api,                        # the API server at 127.0.0.1, not the Service's ClusterIP
        "agent": {"hostNetwork": True, "extraEnv": api},
    }


def metrics_text() -> str:
    with urllib.request.urlopen(METRICS, timeout=5) as r:
        return r.read().decode()


def samples(name: str, **labels) -> list:
    from prometheus_client.parser import text_string_to_metric_families
    try:
        text = metrics_text()
    except OSError:
        return []
    return [s for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def total(name: str, **labels) -> float:
    return sum(s.value for s in samples(name, **labels))


def report(api, namespace: str, name: str, node: str) -> dict | None:
    """The node's agent's report on the set (its ProbeSetNode), for the set's current generation."""
    objs = client.CustomObjectsApi(api)
    obj = objs.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    try:
        reports = objs.get_namespaced_custom_object(GROUP, VERSION, NS, "probesetnodes", node)
    except client.exceptions.ApiException as e:
        if e.status == 404:
            return None
        raise
    entry = ((reports.get("status") or {}).get("sets") or {}).get(f"{namespace}/{name}")
    return entry if entry and entry.get("generation") == obj["metadata"]["generation"] else None


def condition(api, namespace: str, name: str, ctype: str) -> dict:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def agent_pods(api) -> list:
    return [p for p in client.CoreV1Api(api).list_namespaced_pod(
        NS, label_selector="app.kubernetes.io/component=agent").items if p.metadata.deletion_timestamp is None]


def state_of_release(api) -> str:
    """What the release's pods, DaemonSet and logs say: shown when a wait fails."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    lines = [f"DaemonSets: {[(d.metadata.name, d.status.to_dict()) for d in apps.list_namespaced_daemon_set(NS).items]}"]
    for pod in core.list_namespaced_pod(NS).items:
        lines.append(f"pod {pod.metadata.name}: {pod.status.phase} {pod.status.container_statuses}")
        try:
            log = core.read_namespaced_pod_log(pod.metadata.name, NS, tail_lines=30)
        except client.ApiException as e:
            log = f"<no log: {e.status}>"
        lines.append(f"--- log of {pod.metadata.name} ---\n{log}")
    events = core.list_namespaced_event(NS).items
    lines += [f"event {e.involved_object.name}: {e.reason}: {e.message}" for e in events[-15:]]
    return "\n".join(lines)


def running_agent(api):
    """The agent pod, Running and Ready."""
    def ready():
        pods = [p for p in agent_pods(api) if p.status.phase == "Running" and
                all(c.ready for c in p.status.container_statuses or [])]
        return pods[0] if len(pods) == 1 else None
    try:
        return wait_for(ready, 180, "the agent pod Running and Ready")
    except BaseException:
        print(state_of_release(api), file=sys.stderr)
        raise


def uprobe_links_of_agents() -> int:
    """uprobe_multi links held by any `probeset agent` process on this host."""
    from tests.support import uprobe_links
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"agent" in cmdline and any(part.endswith(b"probeset") for part in cmdline):
            try:
                n += uprobe_links(pid)
            except OSError:
                continue
    return n


def workload(node_cluster, run_pod, name: str, function: str):
    pod = run_pod(pod_manifest(name, node_cluster.images["workload"], [str(CALLS), function], container="worker"))
    wait_for(lambda: "ready pid 1 " in node_cluster.node.pod_log(pod, "worker"), 30, f"{name} ready")
    return pod


def serving_attached(api, probeset: str, functions: int) -> None:
    """Wait until one agent pod runs (the one of an earlier, deleted DaemonSet may still be going,
    and still serving the node's port: it may even take up the new set and lose its counts when it
    exits) and /metrics shows the set's `functions` attached."""
    running_agent(api)
    wait_for(lambda: sum(s.value for s in samples("probeset_probe_attached", probeset=probeset)) == functions, 120,
             f"{probeset}: {functions} functions attached in the agent serving the node's port")


def call_round(node_cluster, pod, round_: int, function: str) -> None:
    node_cluster.node.signal_container(pod, "worker", signal.SIGUSR1)
    wait_for(lambda: f"done {round_} {CALLS} {function}" in node_cluster.node.pod_log(pod, "worker"), 30,
             f"round {round_} of {pod.metadata.name}")


@pytest.fixture(scope="module")
def release(node_cluster):
    """`helm install probeset charts/probeset -n probeset-system --create-namespace` with
    release_values(); the operator Deployment Ready. Uninstalled by the last test (which checks
    what remains), or here if it did not run."""
    with helm.Chart.load(CHART) as chart, helm.Config(kubeconfig_path=node_cluster.kubeconfig, namespace=NS) as cfg:
        cfg.uninstall(RELEASE, ignore_not_found=True)
        cfg.install(chart, RELEASE, release_values(node_cluster), namespace=NS, create_namespace=True, timeout=180)
        with node_cluster.api_client() as api:
            def operator_ready():
                dep = client.AppsV1Api(api).read_namespaced_deployment("probeset-operator", NS)
                return (dep.status.ready_replicas or 0) >= 1
            wait_for(operator_ready, 180, "the operator Deployment Ready")
        state = {"cfg": cfg, "uninstalled": False}
        yield state
        if not state["uninstalled"]:
            cfg.uninstall(RELEASE, ignore_not_found=True, timeout=180)


@pytest.fixture
def other_namespace(cluster_api):
    yield from namespace_with_token(cluster_api, "t", grace_period_seconds=0)


def apply(node_cluster, namespace: str, doc: dict) -> None:
    node_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))


def test_a_namespaced_probeset_counts_its_own_pods_exactly(node_cluster, release, cluster_api, cluster_namespace,
                                                           other_namespace, run_pod):
    """A uprobe on the container's own libc and a syscall tracepoint, namespaced in A: exactly the
    calls of A's pod, named with its namespace, pod and container; nothing from B's pod (same
    image, same node) or from a host process."""
    mine = workload(node_cluster, run_pod, "mine", "getpid")
    core = client.CoreV1Api(cluster_api)
    core.create_namespaced_pod(other_namespace, pod_manifest("theirs", node_cluster.images["workload"],
                                                             [str(CALLS), "getpid"], container="worker"))
    theirs = wait_for(lambda: (p := core.read_namespaced_pod("theirs", other_namespace)).status.phase == "Running"
                      and p, 60, "theirs Running")
    apply(node_cluster, cluster_namespace, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ProbeSet", "metadata": {"name": "getpid"},
        "spec": {"labels": ["node", "namespace", "pod", "container"], "probes": [
            {"name": "libc_getpid", "uprobe": "libc:getpid"},
            {"name": "sys_getpid", "tracepoint": "syscalls:sys_enter_getpid"}]}})
    running_agent(cluster_api)
    node = node_cluster.node.name
    wait_for(lambda: (r := report(cluster_api, cluster_namespace, "getpid", node)) and r["attached"] == 2, 180,
             "the agent's report: both probes attached")
    wait_for(lambda: condition(cluster_api, cluster_namespace, "getpid", "Ready").get("status") == "True", 60,
             "Ready=True")
    wait_for(lambda: "ready pid 1 " in node_cluster.node.pod_log(theirs, "worker"), 30, "theirs ready")

    call_round(node_cluster, mine, 1, "getpid")
    call_round(node_cluster, theirs, 1, "getpid")
    subprocess.run(["python3", "-c", f"import os\nfor _ in range({CALLS}): os.getpid()"], check=True)
    who = {"namespace": cluster_namespace, "pod": "mine", "container": "worker", "node": node}
    wait_for(lambda: total("probeset_events_total", probe="sys_getpid", **who) == CALLS, 30, "the tracepoint's count")
    assert total("probeset_events_total", probe="libc_getpid", **who) == CALLS
    for probe in ("libc_getpid", "sys_getpid"):
        assert total("probeset_events_total", probeset="getpid", probe=probe) == CALLS, probe   # nothing else
    (s,) = [s for s in samples("probeset_events_total", probe="libc_getpid") if s.labels["pod"] == "mine"]
    assert s.labels["probeset_namespace"] == cluster_namespace

    # kubectl shows the node's result.
    row = node_cluster.kubectl("get", "probesets", "-n", cluster_namespace, "--no-headers").stdout.split()
    assert row[:3] == ["getpid", "1/1", "2/2"], row

    # kubectl delete: the probes leave the node, the agent stays for other sets.
    links = uprobe_links_of_agents()
    node_cluster.kubectl("delete", "probeset", "getpid", "-n", cluster_namespace)
    wait_for(lambda: not samples("probeset_probe_attached", probeset="getpid"), 30, "the set's series gone")
    wait_for(lambda: uprobe_links_of_agents() == links - 1, 30, "its uprobe released")


def test_the_example_applied_with_kubectl_attaches_and_counts(node_cluster, release, cluster_api,
                                                              cluster_namespace, run_pod):
    """examples/gethostlatency.yaml as the README applies it, in a namespace whose pod resolves names:
    every probe attached, the latency histogram counts the pod's calls exactly."""
    pod = workload(node_cluster, run_pod, "resolver", "getaddrinfo")
    node_cluster.kubectl("apply", "-n", cluster_namespace, "-f", str(REPO / "examples" / "gethostlatency.yaml"))
    node = node_cluster.node.name
    wait_for(lambda: (r := report(cluster_api, cluster_namespace, "gethostlatency", node)) and r["attached"] == 3,
             180, "gethostlatency: the three probes attached")
    serving_attached(cluster_api, "gethostlatency", 3)
    call_round(node_cluster, pod, 1, "getaddrinfo")
    count = "probeset_latency_seconds_count"
    wait_for(lambda: total(count, probeset="gethostlatency", probe="getaddrinfo") == CALLS, 30, "getaddrinfo's count")
    assert total(count, probeset="gethostlatency", probe="gethostbyname") == 0
    node_cluster.kubectl("delete", "-n", cluster_namespace, "-f", str(REPO / "examples" / "gethostlatency.yaml"))
    wait_for(lambda: not samples("probeset_probe_attached", probeset="gethostlatency"), 30, "the example detached")


def test_prometheus_finds_the_agent_by_kubernetes_service_discovery(node_cluster, release, cluster_api,
                                                                     cluster_namespace, run_pod, tmp_path):
    """Debian's Prometheus, discovering pods through the API server (role pod; see prometheus.py for
    why through http_sd), scrapes the agent pod the DaemonSet runs; PromQL gives the exact count;
    every panel of the chart's dashboard has data. The BPF run time panel's comes from the
    administrator's copy of the set (scope: Node, in the operator's namespace): a namespaced set
    shows no node-wide figure (docs/metrics.md)."""
    from tests.cluster.prometheus import Prometheus, dashboard_queries
    pod = workload(node_cluster, run_pod, "resolver", "getaddrinfo")
    node_cluster.kubectl("apply", "-n", cluster_namespace, "-f", str(REPO / "examples" / "gethostlatency.yaml"))
    admins = yaml.safe_load((REPO / "examples" / "gethostlatency.yaml").read_text())
    admins["metadata"]["name"], admins["spec"]["scope"] = "gethostlatency-node", "Node"
    (tmp_path / "node-wide.yaml").write_text(yaml.safe_dump(admins))
    node_cluster.kubectl("apply", "-n", NS, "-f", str(tmp_path / "node-wide.yaml"))
    node = node_cluster.node.name
    for namespace, name in ((cluster_namespace, "gethostlatency"), (NS, "gethostlatency-node")):
        last = {}

        def attached():
            last["r"] = report(cluster_api, namespace, name, node)
            return last["r"] and last["r"]["attached"] == 3
        try:
            wait_for(attached, 180, f"{name} attached")
        except BaseException:
            status = client.CustomObjectsApi(cluster_api).get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name).get("status")
            print(f"{namespace}/{name}: the agent's report {last.get('r')}, status {status}", file=sys.stderr)
            raise
    serving_attached(cluster_api, "gethostlatency", 3)
    with Prometheus(tmp_path, cluster_api, NS) as prom:
        agent = running_agent(cluster_api).metadata.name    # (an earlier test's agent may still be going)
        wait_for(lambda: [t for t in prom.targets() if t["labels"].get("agent_pod") == agent and t["health"] == "up"],
                 60, f"the agent pod {agent} discovered and scraped")
        for round_ in (1, 2):
            call_round(node_cluster, pod, round_, "getaddrinfo")
        query = (f'sum(probeset_latency_seconds_count{{probeset_namespace="{cluster_namespace}",'
                 f'probeset="gethostlatency",probe="getaddrinfo",comm="workload"}})')
        prom.wait_value(query, 2 * CALLS)
        # A rate needs two samples of a series: a panel may be empty for a scrape or two after the
        # series appeared; none may stay empty.
        panels = dashboard_queries(CHART)
        empty = dict(panels)

        def every_panel_has_data():
            for title in list(empty):
                if prom.query(panels[title]):
                    del empty[title]
            return not empty
        try:
            wait_for(every_panel_has_data, 30, "data in every dashboard panel")
        except BaseException:
            print(f"dashboard panels without data: {empty}", file=sys.stderr)
            raise
    node_cluster.kubectl("delete", "-n", cluster_namespace, "-f", str(REPO / "examples" / "gethostlatency.yaml"))
    node_cluster.kubectl("delete", "-n", NS, "-f", str(tmp_path / "node-wide.yaml"))


def test_agent_pod_deleted_and_api_server_away(node_cluster, release, cluster_api, cluster_namespace, run_pod):
    """`kubectl delete pod` of the agent: the DaemonSet starts another, nothing of the old one stays
    on the node, counting resumes. The API server stopped for 30 s: the agent keeps serving; once
    it is back, the agent follows an edit and reports it."""
    mine = workload(node_cluster, run_pod, "mine", "getpid")
    doc = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ProbeSet", "metadata": {"name": "getpid"},
           "spec": {"labels": ["namespace", "pod"], "probes": [{"name": "libc_getpid", "uprobe": "libc:getpid"}]}}
    apply(node_cluster, cluster_namespace, doc)
    node = node_cluster.node.name
    wait_for(lambda: (r := report(cluster_api, cluster_namespace, "getpid", node)) and r["attached"] == 1, 180,
             "attached")
    old = running_agent(cluster_api)
    call_round(node_cluster, mine, 1, "getpid")
    wait_for(lambda: total("probeset_events_total", probe="libc_getpid", pod="mine") == CALLS, 30, "first count")

    node_cluster.kubectl("delete", "pod", "-n", NS, old.metadata.name)
    new = wait_for(lambda: (p := running_agent(cluster_api)) and p.metadata.uid != old.metadata.uid and p, 180,
                   "a new agent pod")
    assert new.metadata.name != old.metadata.name
    wait_for(lambda: uprobe_links_of_agents() == 1, 60, "one uprobe on the node: the new agent's")
    wait_for(lambda: samples("probeset_probe_attached", probeset="getpid", probe="libc_getpid"), 60, "served again")
    call_round(node_cluster, mine, 2, "getpid")
    wait_for(lambda: total("probeset_events_total", probe="libc_getpid", pod="mine") == CALLS, 30,
             "the new agent's count (a new process counts from zero)")

    apiserver = next(c for c in node_cluster.kube.components if c.name == "kube-apiserver")
    apiserver.stop()
    try:
        down = time.monotonic()
        scrapes = 0
        while time.monotonic() - down < 30:    # the outage itself is what is tested: 30 s of it
            assert samples("probeset_probe_attached", probeset="getpid"), "the agent stopped serving"
            scrapes += 1
            time.sleep(1)
        call_round(node_cluster, mine, 3, "getpid")
        wait_for(lambda: total("probeset_events_total", probe="libc_getpid", pod="mine") == 2 * CALLS, 30,
                 "counting while the API server is away")
    finally:
        apiserver.start()
        wait_for(lambda: node_cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0, 120,
                 "the API server back")
        # The controllers too, as a control plane's static pods restart after losing their lease
        # (the token controller does not always recover from the outage: the next tests need it).
        for component in node_cluster.kube.components:
            if component.name in ("kube-controller-manager", "kube-scheduler"):
                component.stop()
                component.start()
    doc["spec"]["probes"].append({"name": "sys_getpid", "tracepoint": "syscalls:sys_enter_getpid"})
    apply(node_cluster, cluster_namespace, doc)
    wait_for(lambda: (r := report(cluster_api, cluster_namespace, "getpid", node)) and r["attached"] == 2, 120,
             "the edit after the outage, reported")
    assert total("probeset_events_total", probe="libc_getpid", pod="mine") == 2 * CALLS   # kept across the edit
    node_cluster.kubectl("delete", "probeset", "getpid", "-n", cluster_namespace)


@contextlib.contextmanager
def port_taken_from_the_agent(api, port: int):
    """Delete the agent pod and take its port on the node as soon as the old agent lets it go (the
    DaemonSet's next agent then cannot bind it); released at the end."""
    core = client.CoreV1Api(api)
    (old,) = agent_pods(api)
    core.delete_namespaced_pod(old.metadata.name, NS)
    holder = socket.socket()
    # As the agent's own server does: the old agent's closed connections (TIME_WAIT) must not keep
    # us out; a listening socket keeps the next agent out all the same.
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    deadline = time.monotonic() + 60
    while True:
        try:
            holder.bind(("0.0.0.0", port))
            holder.listen()
            break
        except OSError:
            if time.monotonic() > deadline:
                holder.close()
                pytest.fail(f"port {port} not released by the old agent within 60 s")
            time.sleep(0.02)
    try:
        yield
    finally:
        holder.close()


def test_agents_that_cannot_run_say_why_on_the_probeset(node_cluster, release, cluster_api, cluster_namespace):
    """An agent image that cannot be pulled, then agents that crash-loop (the node's metrics port is
    taken): each shows on the ProbeSet as Ready=False with the reason, and in kubectl's READY
    column; then it is Ready again. (Pod Security admission does not exist in v1.20; a
    DaemonSet the API server refuses is tested in tests/k8s/test_operator.py.)"""
    cfg, values = release["cfg"], release_values(node_cluster)
    apply(node_cluster, cluster_namespace, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ProbeSet", "metadata": {"name": "execs"},
        "spec": {"probes": [{"name": "execs", "tracepoint": "sched:sched_process_exec"}]}})
    ready = lambda: condition(cluster_api, cluster_namespace, "execs", "Ready")   # noqa: E731
    wait_for(lambda: ready().get("status") == "True", 180, "Ready with good values")

    def upgrade(extra: dict) -> None:
        merged = {**values, "agent": {**values["agent"], **extra}}
        with helm.Chart.load(CHART) as chart:
            cfg.upgrade(chart, RELEASE, merged, namespace=NS, timeout=180)
    try:
        upgrade({"image": "docker.io/library/probeset:no-such-tag"})
        try:
            wait_for(lambda: ready().get("reason") == "ImagePullFailed", 120, "Ready=False ImagePullFailed")
        except BaseException:
            print(f"Ready: {ready()}\n{state_of_release(cluster_api)}", file=sys.stderr)
            raise
        assert ready()["status"] == "False" and "no-such-tag" in ready()["message"]
        row = node_cluster.kubectl("get", "probesets", "-n", cluster_namespace, "--no-headers").stdout.split()
        assert row[:2] == ["execs", "0/1"], row

        upgrade({})
        wait_for(lambda: ready().get("status") == "True", 180, "Ready again with the good image")

        # The node's port 9437 taken by something else: the next agent cannot serve, waits 20 s for
        # it (commands.PORT_WAIT_SECONDS), exits, and is restarted until the port is free again.
        with port_taken_from_the_agent(cluster_api, 9437):
            wait_for(lambda: ready().get("reason") == "AgentsCrashLooping", 180, "Ready=False AgentsCrashLooping")
            assert "CrashLoopBackOff" in ready()["message"]
            row = node_cluster.kubectl("get", "probesets", "-n", cluster_namespace, "--no-headers").stdout.split()
            assert row[:2] == ["execs", "0/1"], row
    finally:
        upgrade({})
    wait_for(lambda: ready().get("status") == "True", 180, "Ready again with good values")
    node_cluster.kubectl("delete", "probeset", "execs", "-n", cluster_namespace)


def test_uninstall_leaves_nothing(node_cluster, release, cluster_api):
    """`helm uninstall`: no object of the chart remains (the operator's DaemonSet goes with its
    Deployment), and no probe remains on the node. Runs last in this module."""
    apps, core = client.AppsV1Api(cluster_api), client.CoreV1Api(cluster_api)
    release["cfg"].uninstall(RELEASE, timeout=180)
    release["uninstalled"] = True
    wait_for(lambda: not apps.list_namespaced_daemon_set(NS).items, 120, "the agent DaemonSet gone")
    wait_for(lambda: not core.list_namespaced_pod(NS).items, 180, "no pod of the release left")
    assert not apps.list_namespaced_deployment(NS).items
    for name in ("probeset-operator", "probeset-agent"):
        with pytest.raises(client.ApiException) as e:
            client.RbacAuthorizationV1Api(cluster_api).read_cluster_role(name)
        assert e.value.status == 404
    assert uprobe_links_of_agents() == 0
    events = Path("/sys/kernel/tracing/uprobe_events").read_text()
    assert "bcc_" not in events, events
