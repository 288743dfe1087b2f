"""What the operator and agent tests against a real kube-apiserver share: the installed CRDs and RBAC,
the operator as a process with its ServiceAccount's credentials, and small helpers."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml
from kubernetes import client, utils
from kubernetes.client.exceptions import ApiException

from probeset_api.crd import NODE_PLURAL, build_crds
from probeset_operator.rbac import peering_objects, role_objects
from probeset_operator.render import AGENT_DAEMONSET

OPERATOR_NS = "probeset-system"
GROUP, VERSION, PLURAL = "probeset.io", "v1alpha1", "probesets"
PROBESET = [sys.executable, "-m", "probeset_cli"]


def wait_for(what, predicate, timeout=45.0, interval=0.3):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except ApiException as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def create_if_absent(create, *args) -> None:
    """Call a kubernetes client create_* method; an object that already exists (409) is fine."""
    try:
        create(*args)
    except ApiException as e:
        if e.status != 409:
            raise


def wait_established(api, *crd_names) -> None:
    """Wait until the API server serves these CRDs."""
    ext = client.ApiextensionsV1Api(api)

    def established(name):
        conds = ext.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conds)
    wait_for(f"CRDs {', '.join(crd_names)} established", lambda: all(established(n) for n in crd_names))


@pytest.fixture(scope="module")
def installed(kube):
    """CRDs (ours and kopf's peering), the operator namespace, RBAC: what the Helm chart installs."""
    with kube.api_client() as api:
        create_if_absent(client.CoreV1Api(api).create_namespace, {"metadata": {"name": OPERATOR_NS}})
        peering_crd, peering = peering_objects()
        ext = client.ApiextensionsV1Api(api)
        for item in (*build_crds(), peering_crd):
            create_if_absent(ext.create_custom_resource_definition, item)
        wait_established(api, *(c["metadata"]["name"] for c in build_crds()), peering_crd["metadata"]["name"])
        create_if_absent(client.CustomObjectsApi(api).create_cluster_custom_object,
                         "kopf.dev", "v1", "clusterkopfpeerings", peering)
        for obj in role_objects(OPERATOR_NS):
            try:
                utils.create_from_dict(api, obj)
            except utils.FailToCreateError as e:
                if not all(x.status == 409 for x in e.api_exceptions):
                    raise
    return kube


def service_account_kubeconfig(kube, tmp_path, sa):
    """A kubeconfig with the ServiceAccount's own token: the role runs with exactly its RBAC."""
    with kube.api_client() as api:
        core = client.CoreV1Api(api)
        secret_name = wait_for(f"token of {sa}", lambda: (core.read_namespaced_service_account(
            sa, OPERATOR_NS).secrets or [None])[0]).name
        import base64
        token = base64.b64decode(core.read_namespaced_secret(secret_name, OPERATOR_NS).data["token"]).decode()
    path = tmp_path / f"{sa}.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": kube.server, "certificate-authority": str(kube.ca_file)}}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": sa}}]}))
    return str(path)


class Process:
    def __init__(self, argv, env, log_path):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def text(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def remove_agent_daemonset(api) -> None:
    """Delete the agent DaemonSet, if any, and wait until it is gone: the one DaemonSet outlives the
    test whose operator made it (its sets are removed after its operator stopped)."""
    apps = client.AppsV1Api(api)
    try:
        apps.delete_namespaced_daemon_set(AGENT_DAEMONSET, OPERATOR_NS, propagation_policy="Background")
    except ApiException as e:
        if e.status != 404:
            raise
    wait_for("no agent DaemonSet", lambda: get_ds(api) is None)


@pytest.fixture
def start_operator(installed, tmp_path):
    kubeconfig = service_account_kubeconfig(installed, tmp_path, "probeset-operator")
    running = []
    with installed.api_client() as api:
        remove_agent_daemonset(api)

    # A peering object per test: replicas of earlier tests leave records behind for a minute.
    peering = f"probeset-{len(os.listdir(tmp_path.parent))}-{int(time.time() * 1000) % 10**8}"
    with installed.api_client() as api:
        client.CustomObjectsApi(api).create_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings",
            {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": peering}})

    def start(index=0, **settings):
        """An operator replica; `settings` are extra environment (e.g. PROBESET_AGENT_RESOURCES)."""
        env = dict(os.environ, KUBECONFIG=kubeconfig, PROBESET_OPERATOR_NAMESPACE=OPERATOR_NS,
                   PROBESET_AGENT_IMAGE="registry.example/probeset:test", PROBESET_PEERING=peering, **settings)
        env.pop("PROBESET_NODE_WIDE_NAMESPACES", None)   # the default: the operator's namespace only
        port = free_port()
        p = Process(PROBESET + ["operator", "--liveness", f"http://127.0.0.1:{port}/healthz"], env,
                    tmp_path / f"operator-{index}-{len(running)}.log")
        p.liveness = port
        running.append(p)
        return p
    yield start
    for p in running:
        p.stop()
        # Shown by pytest when the test failed.
        text = open(p.log_path).read()
        shown = text if len(text) < 6000 else text[:3000] + "\n[...]\n" + text[-3000:]
        print(f"----- {p.log_path.name} -----\n{shown}", file=sys.stderr)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def api(installed):
    with installed.api_client() as a:
        yield a


@pytest.fixture
def namespace(api, request):
    name = "t-" + request.node.name.lower().replace("_", "-")[:40].rstrip("-")
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    # ProbeSets left behind carry the operator's finalizer, and no operator of this test runs any
    # more: delete them and drop the finalizer, or the namespace (and, in a later test, the CRD)
    # could never be deleted. Deleted first: a later test's operator must not resume them.
    objs = client.CustomObjectsApi(api)
    for obj in objs.list_namespaced_custom_object(GROUP, VERSION, name, PLURAL)["items"]:
        for step in (lambda n: objs.delete_namespaced_custom_object(GROUP, VERSION, name, PLURAL, n),
                     lambda n: objs.patch_namespaced_custom_object(GROUP, VERSION, name, PLURAL, n,
                                                                   {"metadata": {"finalizers": None}})):
            try:
                step(obj["metadata"]["name"])
            except ApiException as e:
                if e.status != 404:
                    raise
    core.delete_namespace(name)


def probeset(name, probes, **spec):
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ProbeSet", "metadata": {"name": name},
            "spec": {"probes": probes, **spec}}


def get_ps(api, ns, name):
    return client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


def get_ds(api):
    """The one agent DaemonSet, or None."""
    try:
        return client.AppsV1Api(api).read_namespaced_daemon_set(AGENT_DAEMONSET, OPERATOR_NS)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def agent_pod_running(api, node_name):
    """Play the kubelet for the agent pod bound to `node_name`: status Running and Ready, as once
    its container started (the test runs that container itself, or stands for it). The pod."""
    core = client.CoreV1Api(api)
    pod = wait_for(f"the agent pod bound to {node_name}", lambda: next(iter(
        p for p in core.list_namespaced_pod(OPERATOR_NS, label_selector="app.kubernetes.io/component=agent").items
        if p.spec.node_name == node_name and p.metadata.deletion_timestamp is None), None))
    core.patch_namespaced_pod_status(pod.metadata.name, OPERATOR_NS, {"status": {
        "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "agent", "ready": True, "restartCount": 0, "image": pod.spec.containers[0].image,
                               "imageID": "", "containerID": "containerd://" + "0" * 64,
                               "state": {"running": {}}}]}})
    return pod


def condition(obj, ctype):
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), None)




def node_reports(api, node) -> dict:
    """status.sets of the node's ProbeSetNode ({} when it has none)."""
    try:
        obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, OPERATOR_NS, NODE_PLURAL, node)
    except ApiException as e:
        if e.status == 404:
            return {}
        raise
    return (obj.get("status") or {}).get("sets") or {}


def write_node_report(api, node, namespace, name, report) -> None:
    """Report on a set as the node's agent would (its ProbeSetNode, made if absent)."""
    objs = client.CustomObjectsApi(api)
    create_if_absent(objs.create_namespaced_custom_object, GROUP, VERSION, OPERATOR_NS, NODE_PLURAL,
                     {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ProbeSetNode", "metadata": {"name": node}})
    objs.patch_namespaced_custom_object_status(GROUP, VERSION, OPERATOR_NS, NODE_PLURAL, node,
                                               {"status": {"sets": {f"{namespace}/{name}": report}}})
