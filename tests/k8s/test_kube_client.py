"""The agent's own client (probeset_api.kube) against the real API server, with the two kinds of
credentials it meets: the agent's ServiceAccount token (exactly its RBAC), and an admin client
certificate (a second cluster that trusts client certificates: the shared one takes only tokens).
Changes are made, and results checked, with the `kubernetes` package."""

import base64
import queue
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass

import pytest
import yaml
from kubernetes import client

from probeset_api.kube import Kube, KubeError
from probeset_agent.pods import PodIndex, PodWatcher
from probeset_agent.nodestatus import NodeStatus
from probeset_api.crd import NODE_PLURAL, build_crds
from probeset_api.status import NodeReport
from tests.k8s.cluster import KubeCluster
from tests.k8s.operator_env import (GROUP, OPERATOR_NS, PLURAL, VERSION, api, installed, namespace,  # noqa: F401
                                    probeset, service_account_kubeconfig, wait_established, wait_for)

pytestmark = pytest.mark.k8s
AGENT_USER = f"system:serviceaccount:{OPERATOR_NS}:probeset-agent"


@dataclass
class Target:
    """`kube` is the client under test; `admin` (a kubernetes ApiClient) makes and checks changes;
    `refused` is a client of user `refused_user` that may not list secrets."""
    kube: Kube
    admin: object
    namespace: str
    refused: Kube
    refused_user: str


@pytest.fixture(scope="module")
def cert_cluster(kube, tmp_path_factory):
    """A cluster whose API server trusts client certificates from its CA; CRDs installed."""
    workdir = tmp_path_factory.mktemp("cert-cluster")
    cluster = KubeCluster(workdir=workdir, apiserver_args=[f"--client-ca-file={workdir / 'ca.crt'}"])
    cluster.start()
    try:
        with cluster.api_client() as admin:
            for crd in build_crds():
                client.ApiextensionsV1Api(admin).create_custom_resource_definition(crd)
            wait_established(admin, *(crd["metadata"]["name"] for crd in build_crds()))
            client.CoreV1Api(admin).create_namespace({"metadata": {"name": OPERATOR_NS}})
        yield cluster
    finally:
        cluster.stop()


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def certificate_kubeconfig(cluster, directory, user: str, group: str | None) -> str:
    """A kubeconfig with a client certificate (CN=user, O=group) signed by the cluster's CA."""
    subject = f"/CN={user}" + (f"/O={group}" if group else "")
    key, csr, crt = (directory / f"{user}.{x}" for x in ("key", "csr", "crt"))
    for args in (["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", subject,
                  "-keyout", str(key), "-out", str(csr)],
                 ["x509", "-req", "-in", str(csr), "-CA", str(cluster.ca_file),
                  "-CAkey", str(cluster.workdir / "ca.key"), "-CAcreateserial", "-days", "1", "-out", str(crt)]):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    path = directory / f"{user}.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": cluster.server,
                                               "certificate-authority-data": b64(cluster.ca_file)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(crt), "client-key-data": b64(key)}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": user}}]}))
    return str(path)


@pytest.fixture(params=["service-account token", "client certificate"])
def target(request, tmp_path):
    ns = f"kube-client-{uuid.uuid4().hex[:8]}"
    if request.param == "service-account token":
        cluster = request.getfixturevalue("installed")
        agent = Kube.from_environment(service_account_kubeconfig(cluster, tmp_path, "probeset-agent"))
        clients = lambda: (agent, agent, AGENT_USER)
    else:
        cluster = request.getfixturevalue("cert_cluster")
        clients = lambda: (
            Kube.from_environment(certificate_kubeconfig(cluster, tmp_path, "probeset-admin", "system:masters")),
            Kube.from_environment(certificate_kubeconfig(cluster, tmp_path, "nobody", None)), "nobody")
    with cluster.api_client() as admin:
        client.CoreV1Api(admin).create_namespace({"metadata": {"name": ns}})
        kube, refused, refused_user = clients()
        yield Target(kube, admin, ns, refused, refused_user)
        # ProbeSets first: an operator a later test starts must not pick them up while the namespace goes.
        client.CustomObjectsApi(admin).delete_collection_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
        client.CoreV1Api(admin).delete_namespace(ns)


def probesets_path(ns: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}"


def create_probeset(target, name):
    return client.CustomObjectsApi(target.admin).create_namespaced_custom_object(
        GROUP, VERSION, target.namespace, PLURAL,
        probeset(name, [{"name": "opens", "tracepoint": "syscalls:sys_enter_openat"}]))


def test_get_an_object_and_404(target):
    created = create_probeset(target, "one")
    assert target.kube.get(f"{probesets_path(target.namespace)}/one") == created
    listing = target.kube.get(probesets_path(target.namespace), {"fieldSelector": "metadata.name=one"})
    assert [item["metadata"]["uid"] for item in listing["items"]] == [created["metadata"]["uid"]]
    with pytest.raises(KubeError) as e:
        target.kube.get(f"{probesets_path(target.namespace)}/missing")
    assert (e.value.status, e.value.reason) == (404, f'{PLURAL}.{GROUP} "missing" not found')


def test_list_then_watch_sees_added_modified_deleted_exactly(target):
    path = probesets_path(target.namespace)
    listing = target.kube.get(path)
    events, stop = queue.Queue(), threading.Event()

    def watch():
        try:
            for item in target.kube.watch(path, listing["metadata"]["resourceVersion"], timeout_seconds=60, stop=stop):
                events.put(item)
            events.put(("ENDED", None))
        except KubeError as e:
            events.put(("FAILED", e))
    watcher = threading.Thread(target=watch)
    watcher.start()
    objs = client.CustomObjectsApi(target.admin)
    try:
        added = create_probeset(target, "watched")
        closes = [{"name": "closes", "tracepoint": "syscalls:sys_enter_close"}]
        modified = objs.patch_namespaced_custom_object(GROUP, VERSION, target.namespace, PLURAL, "watched",
                                                       {"spec": {"probes": closes}})
        objs.delete_namespaced_custom_object(GROUP, VERSION, target.namespace, PLURAL, "watched")
        seen = [events.get(timeout=10) for _ in range(3)]
    finally:
        stop.set()
        t = time.monotonic()
        watcher.join(10)
    assert time.monotonic() - t < 2, "stop did not end the watch"
    assert events.get_nowait() == ("ENDED", None)
    assert seen[:2] == [("ADDED", added), ("MODIFIED", modified)]
    kind, deleted = seen[2]
    # The deletion's own resourceVersion; otherwise the last state.
    assert kind == "DELETED"
    assert int(deleted["metadata"].pop("resourceVersion")) > int(modified["metadata"].pop("resourceVersion"))
    assert deleted == modified


def test_a_watch_from_a_compacted_version_raises_410(target):
    """The API server answers a resourceVersion older than its watch cache with an ERROR event."""
    with pytest.raises(KubeError) as e:
        list(target.kube.watch(probesets_path(target.namespace), "1", timeout_seconds=5))
    assert e.value.status == 410 and "too old resource version" in e.value.reason


def test_node_status_writes_once_per_flush_and_takes_over_after_a_restart(target):
    """The agent's ProbeSetNode (nodestatus.py) through this client: made on the first flush, one
    merge patch per flush for every set that changed, none when nothing did; a restarted agent
    deletes what its predecessor reported and it does not; an object deleted by hand is made
    again."""
    node, objs = f"node-{uuid.uuid4().hex[:8]}", client.CustomObjectsApi(target.admin)

    def stored():
        obj = objs.get_namespaced_custom_object(GROUP, VERSION, OPERATOR_NS, NODE_PLURAL, node)
        return obj["status"]["sets"], obj["status"]["summary"]

    def report(attached, **kw):
        out = NodeReport(generation=1, attached=attached, total=2, updated="2026-12-01T00:00:00Z", **kw).to_status()
        return out, {k: v for k, v in out.items() if v is not None}     # sent, stored (null deletes a key)

    (x, want_x), (y, want_y) = report(2), report(0, reason="OverBudget")
    status = NodeStatus(target.kube, node, OPERATOR_NS)
    status.wanted = {"web/x": x, "web/y": y}
    try:
        assert status.flush() and status.writes == 1
        assert stored() == ({"web/x": want_x, "web/y": want_y}, "1/2")
        status.put("web/y", None)
        assert status.flush() and status.writes == 2 and stored() == ({"web/x": want_x}, "1/1")
        assert status.flush() and status.writes == 2                   # nothing changed: nothing written
        restarted = NodeStatus(target.kube, node, OPERATOR_NS)
        restarted.wanted = {"web/z": x}
        assert restarted.flush() and restarted.writes == 1 and stored() == ({"web/z": want_x}, "1/1")
        objs.delete_namespaced_custom_object(GROUP, VERSION, OPERATOR_NS, NODE_PLURAL, node)
        restarted.wanted["web/z"] = y
        assert not restarted.flush() and restarted.pending             # 404: made again on the next flush
        assert restarted.flush() and stored() == ({"web/z": want_y}, "0/1")
    finally:
        objs.delete_namespaced_custom_object(GROUP, VERSION, OPERATOR_NS, NODE_PLURAL, node)


def test_a_forbidden_call_is_403_with_the_servers_message(target):
    with pytest.raises(KubeError) as e:
        target.refused.get(f"/api/v1/namespaces/{target.namespace}/secrets")
    assert e.value.status == 403
    assert e.value.reason == (f'secrets is forbidden: User "{target.refused_user}" cannot list resource "secrets" '
                              f'in API group "" in the namespace "{target.namespace}"')


def test_pod_watcher_follows_the_pods_of_its_node(installed, api, namespace, tmp_path):  # noqa: F811
    """The ported PodWatcher, with the agent's credentials: a pod bound to its node appears, its
    label change is seen, its deletion too; a pod of another node never appears."""
    core = client.CoreV1Api(api)
    wait_for("the default ServiceAccount's token",
             lambda: core.read_namespaced_service_account("default", namespace).secrets)
    node = f"kube-client-{uuid.uuid4().hex[:8]}"
    index, changes = PodIndex(), threading.Event()
    watcher = PodWatcher(Kube.from_environment(service_account_kubeconfig(installed, tmp_path, "probeset-agent")),
                         node, index, on_change=changes.set)
    thread = threading.Thread(target=watcher.run)
    thread.start()

    def pod(name, on):
        return core.create_namespaced_pod(namespace, {"metadata": {"name": name, "labels": {"app": "a"}}, "spec": {
            "nodeName": on, "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": "registry.example/none:1"}]}})
    try:
        assert index.synced.wait(10)
        mine, other = pod("mine", node), pod("other", node + "-other")
        wait_for("the pod in the index",
                 lambda: index.selected(namespace, {"matchLabels": {"app": "a"}}) == [mine.metadata.uid])
        core.patch_namespaced_pod("mine", namespace, {"metadata": {"labels": {"app": "b"}}})
        wait_for("the label change",
                 lambda: index.selected(namespace, {"matchLabels": {"app": "b"}}) == [mine.metadata.uid])
        core.delete_namespaced_pod("mine", namespace, grace_period_seconds=0)
        wait_for("the deletion", lambda: index.selected(namespace, None) == [])
        assert index.names(other.metadata.uid, None) is None
        assert index.names(mine.metadata.uid, None) == ({"namespace": namespace, "pod": "mine", "container": ""}, True)
    finally:
        watcher.stop()
        thread.join(10)
    assert not thread.is_alive(), "stop did not end the pod watch"
