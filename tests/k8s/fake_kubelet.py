"""Playing the kubelet for pods of a fake node: the Pod object (bound to the node, its status patched
to Running with container IDs, as a kubelet reports them) and the cgroup v2 directories a kubelet
with the cgroupfs driver and containerd would make for it (kubepods/besteffort/pod<UID>/<container
ID>), named from the pod's real UID. A process started in a container's directory is, to the
agent, that container of that pod. (tests/bpf uses the systemd driver's names; both are parsed by
attribution.workload_of_path.)"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from probeset_agent.attribution import cgroup2_root
from tests.k8s.operator_env import wait_for
from tests.support import remove_cgroup, remove_empty_cgroup_parents

QOS_DIR = ("kubepods", "besteffort")    # a pod without resources is BestEffort


@dataclass
class FakePod:
    namespace: str
    name: str
    uid: str                                               # metadata.uid, from the API server
    path: str                                              # the pod's cgroup directory
    containers: dict[str, tuple[str, str]] = field(default_factory=dict)   # name -> (ID, cgroup dir)

    def cgroup(self, container: str = "app") -> str:
        return self.containers[container][1]


def wait_for_default_service_account(core: client.CoreV1Api, namespace: str) -> None:
    """v1.20's ServiceAccount admission rejects pods until the namespace's default ServiceAccount
    (and its token Secret) exist."""
    wait_for(f"{namespace}/default ServiceAccount token", lambda: _default_sa_ready(core, namespace))


def _default_sa_ready(core, namespace) -> bool:
    try:
        return bool(core.read_namespaced_service_account("default", namespace).secrets)
    except ApiException as e:
        if e.status == 404:
            return False
        raise


class FakeKubelet:
    """Creates running pods on `node` (API objects plus cgroups); removes both at the end."""

    def __init__(self, api, node: str, root: str):
        self.core = client.CoreV1Api(api)
        self.node, self.root = node, root
        self.pods: list[FakePod] = []

    def run_pod(self, namespace: str, name: str, containers=("app",), labels=None) -> FakePod:
        wait_for_default_service_account(self.core, namespace)
        body = {"metadata": {"name": name, "labels": labels or {}},
                "spec": {"nodeName": self.node, "terminationGracePeriodSeconds": 0,
                         "automountServiceAccountToken": False,
                         "containers": [{"name": c, "image": "registry.example/app:test"} for c in containers]}}
        uid = self.core.create_namespaced_pod(namespace, body).metadata.uid
        ids = {c: secrets.token_hex(32) for c in containers}   # 64 hex digits, as containerd's
        path = os.path.join(self.root, *QOS_DIR, f"pod{uid}")
        pod = FakePod(namespace, name, uid, path, {c: (cid, os.path.join(path, cid)) for c, cid in ids.items()})
        self.pods.append(pod)
        for _, cgroup in pod.containers.values():
            os.makedirs(cgroup)
        self.core.patch_namespaced_pod_status(name, namespace, {"status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {"name": c, "containerID": f"containerd://{cid}", "ready": True, "restartCount": 0,
                 "image": "registry.example/app:test", "imageID": "registry.example/app@sha256:" + "0" * 64,
                 "state": {"running": {}}} for c, cid in ids.items()]}})
        return pod

    def remove(self, pod: FakePod) -> None:
        for name in list(pod.containers):
            self._rmdir(pod.containers.pop(name)[1])
        self._rmdir(pod.path)
        try:
            self.core.delete_namespaced_pod(pod.name, pod.namespace, grace_period_seconds=0)
        except ApiException as e:
            if e.status != 404:
                raise
        self.pods.remove(pod)

    def _rmdir(self, path: str) -> None:
        remove_cgroup(self.root, path)

    def cleanup(self) -> None:
        for pod in list(self.pods):
            self.remove(pod)
        base = os.path.join(self.root, *QOS_DIR)
        remove_empty_cgroup_parents(base, os.path.dirname(base))


@pytest.fixture
def fake_kubelet(api, node):
    """A FakeKubelet for the `node` fixture's node."""
    root = cgroup2_root()
    if root is None:
        pytest.skip("no cgroup v2 hierarchy mounted (the agent's pod attribution needs one)")
    kubelet = FakeKubelet(api, node, root)
    yield kubelet
    kubelet.cleanup()
