"""The operator against a real kube-apiserver: CRD, reconcile, invalid sets, peering, restart, and a
real agent started from its pod spec by a test "node runner", attaching real uprobes on this host."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from kubernetes import client, utils
from kubernetes.client.exceptions import ApiException

from probeset_operator.crd import build_crd
from probeset_operator.rbac import peering_objects, role_objects
from probeset_operator.render import daemonset_name

pytestmark = pytest.mark.k8s

OPERATOR_NS = "probeset-system"
GROUP, VERSION, PLURAL = "probeset.io", "v1alpha1", "probesets"
PROBESET = [sys.executable, "-m", "probeset_agent.cli"]


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


@pytest.fixture(scope="module")
def installed(kube):
    """CRDs (ours and kopf's peering), the operator namespace, RBAC: what the Helm chart installs."""
    with kube.api_client() as api:
        core = client.CoreV1Api(api)
        try:
            core.create_namespace({"metadata": {"name": OPERATOR_NS}})
        except ApiException as e:
            if e.status != 409:
                raise
        crd, peering_crd, peering = build_crd(), *peering_objects()
        ext = client.ApiextensionsV1Api(api)
        for item in (crd, peering_crd):
            try:
                ext.create_custom_resource_definition(item)
            except ApiException as e:
                if e.status != 409:
                    raise

        def established(name):
            conds = ext.read_custom_resource_definition(name).status.conditions or []
            return any(c.type == "Established" and c.status == "True" for c in conds)
        wait_for("CRDs established", lambda: established(crd["metadata"]["name"]) and
                 established(peering_crd["metadata"]["name"]))
        try:
            client.CustomObjectsApi(api).create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", peering)
        except ApiException as e:
            if e.status != 409:
                raise
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
        self.log.flush()
        return open(self.log_path).read()

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


@pytest.fixture
def start_operator(installed, tmp_path):
    kubeconfig = service_account_kubeconfig(installed, tmp_path, "probeset-operator")
    running = []

    # A peering object per test: replicas of earlier tests leave records behind for a minute.
    peering = f"probeset-{len(os.listdir(tmp_path.parent))}-{int(time.time() * 1000) % 10**8}"
    with installed.api_client() as api:
        client.CustomObjectsApi(api).create_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings",
            {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": peering}})

    def start(index=0):
        env = dict(os.environ, KUBECONFIG=kubeconfig, PROBESET_OPERATOR_NAMESPACE=OPERATOR_NS,
                   PROBESET_AGENT_IMAGE="registry.example/probeset:test", PROBESET_PEERING=peering)
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
    core.delete_namespace(name)


def probeset(name, probes, **spec):
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ProbeSet", "metadata": {"name": name},
            "spec": {"probes": probes, **spec}}


def get_ps(api, ns, name):
    return client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


def get_ds(api, ns, name):
    try:
        return client.AppsV1Api(api).read_namespaced_daemon_set(daemonset_name(ns, name), OPERATOR_NS)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def condition(obj, ctype):
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), None)


def test_schema_invalid_probeset_is_rejected_by_the_api_server(api, namespace):
    objs = client.CustomObjectsApi(api)
    with pytest.raises(ApiException) as e:
        objs.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                             probeset("bad", [{"name": "x", "uprobe": "libc:getaddrinfo; rm"}]))
    assert e.value.status == 422
    assert "spec.probes.uprobe" in e.value.body or "spec.probes[0].uprobe" in e.value.body
    with pytest.raises(ApiException) as e:
        objs.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset("empty", []))
    assert e.value.status == 422 and "spec.probes" in e.value.body


def test_reconcile_create_update_delete(api, namespace, start_operator):
    op = start_operator()
    objs = client.CustomObjectsApi(api)
    objs.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
        "dns", [{"name": "dns", "uprobe": "libc:getaddrinfo", "latency": True}],
        nodeSelector={"probeset-test": "none"}))
    ds = wait_for("DaemonSet", lambda: get_ds(api, namespace, "dns"))
    (container,) = ds.spec.template.spec.containers
    assert container.image == "registry.example/probeset:test"
    assert container.security_context.privileged and ds.spec.template.spec.host_pid
    assert {e.name: e.value for e in container.env if e.value} == {"PROBESET_NAMESPACE": namespace,
                                                                   "PROBESET_NAME": "dns"}
    assert ds.spec.template.spec.node_selector == {"probeset-test": "none"}
    uid = ds.metadata.uid
    obj = wait_for("Valid condition", lambda: condition(get_ps(api, namespace, "dns"), "Valid") and
                   get_ps(api, namespace, "dns"))
    assert condition(obj, "Valid")["status"] == "True"
    assert "probeset.io/agents" in obj["metadata"]["finalizers"]

    objs.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "dns",
                                        {"spec": {"nodeSelector": {"probeset-test": "other"}}})
    ds = wait_for("DaemonSet update", lambda: (d := get_ds(api, namespace, "dns")) and
                  d.spec.template.spec.node_selector == {"probeset-test": "other"} and d)
    assert ds.metadata.uid == uid                       # rolled out, not recreated

    objs.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "dns")
    wait_for("DaemonSet deleted", lambda: get_ds(api, namespace, "dns") is None)
    wait_for("ProbeSet gone", lambda: not objs.list_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL)["items"])
    assert op.proc.poll() is None, op.text()


def test_invalid_probeset_gets_valid_false_and_an_event_and_no_agents(api, namespace, start_operator):
    start_operator()
    # Passes the schema (which cannot say "exactly one of"), fails the model.
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
        "two", [{"name": "both", "kprobe": "vfs_read", "uprobe": "libc:malloc"}]))
    obj = wait_for("Valid=False", lambda: (o := get_ps(api, namespace, "two")) and
                   (c := condition(o, "Valid")) and c["status"] == "False" and o)
    assert condition(obj, "Valid")["reason"] == "InvalidSpec"
    assert "spec.probes[0]: exactly one of" in condition(obj, "Valid")["message"]
    events = wait_for("Event", lambda: [e for e in client.CoreV1Api(api).list_namespaced_event(namespace).items
                                        if e.involved_object.name == "two" and e.reason == "InvalidSpec"])
    assert events[0].type == "Warning" and "exactly one of" in events[0].message
    assert get_ds(api, namespace, "two") is None


def test_restart_is_idempotent(api, namespace, start_operator):
    first = start_operator(0)
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
        "again", [{"name": "t", "tracepoint": "sched:sched_process_exec"}], nodeSelector={"probeset-test": "none"}))
    ds = wait_for("DaemonSet", lambda: get_ds(api, namespace, "again"))
    assert first.stop() == 0
    second = start_operator(1)
    wait_for("the restarted operator to resume the ProbeSet", lambda: "unchanged" in second.text(), timeout=90)
    assert get_ds(api, namespace, "again").metadata.resource_version == ds.metadata.resource_version


def test_two_replicas_do_not_both_act(api, namespace, start_operator):
    replicas = start_operator(0), start_operator(1)
    # kopf peering: replicas start paused; the one with the highest priority resumes, the other
    # stays paused while the first keeps its peering record alive.
    wait_for("a replica to resume", lambda: any("Resuming operations" in p.text() for p in replicas))
    time.sleep(5)
    active = [p for p in replicas if "Resuming operations" in p.text()]
    assert len(active) == 1, [p.text()[-3000:] for p in replicas]
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
        "pair", [{"name": "t", "tracepoint": "sched:sched_process_exec"}], nodeSelector={"probeset-test": "none"}))
    wait_for("DaemonSet", lambda: get_ds(api, namespace, "pair"))
    time.sleep(3)
    created = f"DaemonSet {OPERATOR_NS}/{daemonset_name(namespace, 'pair')} created"
    assert [p for p in replicas if created in p.text()] == active, [p.text()[-3000:] for p in replicas]
    # The standby takes over when the active one stops.
    active[0].stop()
    standby = next(p for p in replicas if p is not active[0])
    wait_for("the standby to resume", lambda: "Resuming operations" in standby.text(), timeout=90)


def test_liveness_endpoint(start_operator):
    op = start_operator()
    def live():
        with urllib.request.urlopen(f"http://127.0.0.1:{op.liveness}/healthz", timeout=2) as r:
            return r.status == 200
    wait_for("liveness", lambda: _try(live))


def _try(fn):
    try:
        return fn()
    except OSError:
        return False
