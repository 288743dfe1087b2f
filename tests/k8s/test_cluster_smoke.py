"""The API-server tier's cluster does what the operator tests rely on: DaemonSet pods are created
for Node objects and bound to them, the garbage collector cascades deletions, service-account tokens
are issued and RBAC denies what they were not granted."""

import base64
import time
import uuid

import pytest

from tests.support import holds_for, namespace_with_token, wait_for

client = pytest.importorskip("kubernetes.client", reason="the kubernetes Python client is not installed")

pytestmark = pytest.mark.k8s


@pytest.fixture
def namespace(kube_api):
    """A fresh namespace whose default ServiceAccount has its token Secret (pods mount it: before
    that, v1.20's ServiceAccount admission rejects pods and controllers back off); the namespace
    controller empties it in the background afterwards."""
    yield from namespace_with_token(kube_api, "smoke")


@pytest.fixture
def node(kube_api):
    """A Node object with a Ready condition and no kubelet behind it. The node lifecycle controller
    marks it Unknown (and taints it) after --node-monitor-grace-period, 40 s by default: use it
    within that time."""
    core = client.CoreV1Api(kube_api)
    name = f"node-{uuid.uuid4().hex[:6]}"
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    core.create_node({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        # Nodes accept status on create (there is no kubelet to post it).
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
        },
    })
    yield name
    core.delete_node(name)


def test_version_is_stamped(kube_api):
    info = client.VersionApi(kube_api).get_code()
    assert (info.git_version, info.major, info.minor) == ("v1.20.2", "1", "20")


def test_daemonset_schedules_onto_node_and_is_garbage_collected(kube_api, namespace, node):
    core, apps = client.CoreV1Api(kube_api), client.AppsV1Api(kube_api)
    labels = {"app": "smoke"}
    apps.create_namespaced_daemon_set(namespace, {
        "metadata": {"name": "smoke"},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    # Only our node: other tests' nodes may exist in this session-wide cluster.
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "containers": [{"name": "sleep", "image": "busybox:1.36", "command": ["sleep", "3600"]}],
                    # No kubelet will ever confirm a graceful termination: with the default 30 s grace
                    # period a deleted pod would stay Terminating forever. 0 deletes it at once.
                    "terminationGracePeriodSeconds": 0,
                },
            },
        },
    })

    def pods():
        return core.list_namespaced_pod(namespace, label_selector="app=smoke").items
    created = wait_for(pods, 30, "the DaemonSet controller to create a pod")
    # That no second pod follows only time can show: 2 s is long enough for a wrong one to show up.
    holds_for(lambda: len(pods()) == 1, 2, "a single pod for the single node")
    created = pods()
    assert len(created) == 1, [p.metadata.name for p in created]
    pod = created[0]
    # The DaemonSet controller pins its pod to the node with an affinity on metadata.name ...
    term = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms[0]
    assert (term.match_fields[0].key, term.match_fields[0].values) == ("metadata.name", [node])
    # ... and the scheduler binds it there.
    pod = wait_for(lambda: (p := core.read_namespaced_pod(pod.metadata.name, namespace)).spec.node_name and p,
                   30, "the scheduler to bind the pod")
    assert pod.spec.node_name == node
    assert pod.status.phase == "Pending"   # nothing runs it
    owner = pod.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.controller) == ("DaemonSet", "smoke", True)

    ds = wait_for(lambda: (d := apps.read_namespaced_daemon_set("smoke", namespace)).status.desired_number_scheduled
                  and d, 15, "the DaemonSet status to count the node")
    assert ds.status.desired_number_scheduled == 1
    assert ds.status.current_number_scheduled == 1

    # Foreground: the DaemonSet stays (with a deletionTimestamp) until the GC has deleted its pods.
    apps.delete_namespaced_daemon_set("smoke", namespace, propagation_policy="Foreground")

    def daemonset_gone():
        try:
            apps.read_namespaced_daemon_set("smoke", namespace)
        except client.ApiException as e:
            if e.status == 404:
                return True
            raise
        return False
    wait_for(lambda: not pods(), 30, "the garbage collector to delete the pod")
    wait_for(daemonset_gone, 30, "the DaemonSet to go once its pod is gone")


def test_rbac_denies_a_service_account_without_roles(kube, kube_api, namespace):
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})

    # v1.20's token controller (in kube-controller-manager) creates a token Secret for each
    # ServiceAccount and lists it in .secrets.
    def token_secret():
        sa = core.read_namespaced_service_account("nobody", namespace)
        return sa.secrets and sa.secrets[0].name
    secret = core.read_namespaced_secret(wait_for(token_secret, 30, "the ServiceAccount's token Secret"), namespace)
    assert secret.type == "kubernetes.io/service-account-token"
    token = base64.b64decode(secret.data["token"]).decode()

    with kube.api_client_for_token(token) as api:
        sa_core = client.CoreV1Api(api)
        # 403, not 401: the token authenticates, and RBAC denies.
        with pytest.raises(client.ApiException) as denied:
            sa_core.list_namespaced_secret(namespace)
        assert denied.value.status == 403
        assert f"system:serviceaccount:{namespace}:nobody" in denied.value.body

        # The same call is allowed once a Role grants it.
        rbac = client.RbacAuthorizationV1Api(kube_api)
        rbac.create_namespaced_role(namespace, {
            "metadata": {"name": "secret-reader"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]})
        rbac.create_namespaced_role_binding(namespace, {
            "metadata": {"name": "nobody-reads-secrets"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secret-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}]})

        def allowed():
            try:
                return sa_core.list_namespaced_secret(namespace).items is not None
            except client.ApiException as e:
                if e.status == 403:
                    return False
                raise
        wait_for(allowed, 10, "the RoleBinding to take effect")
        with pytest.raises(client.ApiException) as still_denied:
            sa_core.list_namespaced_secret("default")   # a Role is namespaced
        assert still_denied.value.status == 403


def test_kubeconfig_and_token(kube):
    """What other tests and tools use: the kubeconfig file, the server URL and the admin token."""
    from kubernetes import config
    api = config.new_client_from_config(config_file=str(kube.kubeconfig))
    with api:
        assert client.CoreV1Api(api).read_namespace("kube-system").metadata.name == "kube-system"
    with kube.api_client_for_token(kube.token) as api:
        assert client.CoreV1Api(api).read_namespace("default").status.phase == "Active"
    with kube.api_client_for_token("not-a-token") as api:
        with pytest.raises(client.ApiException) as unauthorized:
            client.CoreV1Api(api).read_namespace("default")
        assert unauthorized.value.status == 401
    assert kube.server.startswith("https://127.0.0.1:")
