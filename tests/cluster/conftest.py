"""One-node cluster tier: tests marked ``cluster`` run pods for real, on a kubelet v1.20.2 with
containerd 1.6 on this machine, registered with a control plane of its own (tests/k8s/cluster.py
with ``kubelets=True``; tests/cluster/node.py). Images come from tests/cluster/build-images, cached
by content; the session fixture builds the ones whose inputs changed (the project image after an
edit of its sources) before it starts the node. Without root, the binaries, containerd, podman or
the images' tools, every test here is skipped with the reason and what to run.

Fixtures:
  node_cluster       (session) NodeCluster: .kube (KubeCluster), .node (KubeletNode), .api_client(),
                     .kubeconfig, .api_host/.api_port (the API server for pods: 127.0.0.1:<port>),
                     .in_cluster_env() (env entries for in-cluster clients), .images ({kind: name}),
                     .kubectl(*args) (kubectl v1.20.2 with the admin kubeconfig)
  cluster_api        an admin ApiClient for one test
  cluster_namespace  a fresh namespace (its default ServiceAccount has its token), deleted after
  run_pod            create a pod (hostNetwork, images never pulled), wait for a phase; deleted after
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import namespace_with_token, wait_for

HERE = Path(__file__).resolve().parent


@dataclass
class NodeCluster:
    kube: object    # tests.k8s.cluster.KubeCluster
    node: object    # tests.cluster.node.KubeletNode

    @property
    def kubeconfig(self) -> Path:
        return self.kube.kubeconfig

    @property
    def api_host(self) -> str:
        return self.node.api_host

    @property
    def api_port(self) -> int:
        return self.node.api_port

    @property
    def images(self) -> dict[str, str]:
        return self.node.images

    def api_client(self):
        return self.kube.api_client()

    def in_cluster_env(self) -> list[dict]:
        return self.node.in_cluster_env()

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess:
        """build-kube's kubectl v1.20.2 with the admin kubeconfig; output as text."""
        from tests.k8s.cluster import kube_bin_dir
        result = subprocess.run([str(kube_bin_dir() / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
                                input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result


def _unavailable_reason() -> str | None:
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        return "the kubernetes Python client is not installed (pip install kubernetes)"
    from tests.cluster.node import missing_reason
    reason = missing_reason(images=False)
    if reason:
        return reason
    # Images whose inputs changed are rebuilt first (a warm check takes a fraction of a second).
    result = subprocess.run([str(HERE / "build-images")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(result.stdout, file=sys.stderr, end="")
    if result.returncode != 0:
        missing = [line for line in result.stdout.splitlines() if "not installed" in line or "not built" in line]
        if missing:
            return missing[0].removeprefix("[build-images] ")
        pytest.fail(f"tests/cluster/build-images failed:\n{result.stdout[-4000:]}", pytrace=False)
    return missing_reason()


@pytest.fixture(scope="session")
def node_cluster():
    """API server, controllers and scheduler (tests/k8s/cluster.py) plus a kubelet and containerd,
    node Ready, images imported. PROBESET_KUBE_KEEP=1 keeps both work directories (logs)."""
    reason = _unavailable_reason()
    if reason:
        pytest.skip(reason)
    from tests.cluster.node import KubeletNode
    from tests.k8s.cluster import KubeCluster
    keep = os.environ.get("PROBESET_KUBE_KEEP") == "1"
    t = time.monotonic()
    kube = KubeCluster(keep_workdir=keep, kubelets=True)
    kube.start()
    try:
        node = KubeletNode(kube, keep_workdir=keep)
        node.start()
        try:
            print(f"\ncluster ready in {time.monotonic() - t:.1f} s: {kube.server}, node {node.name}; "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in node.timings.items())
                  + f"; work dirs {kube.workdir} {node.workdir}", file=sys.stderr)
            yield NodeCluster(kube, node)
        finally:
            t = time.monotonic()
            node.stop()
            print(f"\nnode stopped in {time.monotonic() - t:.1f} s", file=sys.stderr)
    finally:
        kube.stop()


@pytest.fixture
def cluster_api(node_cluster):
    """An admin ApiClient for one test, closed afterwards."""
    with node_cluster.api_client() as api:
        yield api


@pytest.fixture
def cluster_namespace(cluster_api):
    """A fresh namespace whose default ServiceAccount has its token Secret; deleted afterwards."""
    yield from namespace_with_token(cluster_api, "t", grace_period_seconds=0)


@pytest.fixture
def run_pod(cluster_api, cluster_namespace):
    """run_pod(manifest, until=("Running",), timeout=60) -> V1Pod: create the pod in the test's
    namespace and wait until its phase is one of ``until`` (a failure phase that is not wanted
    fails at once, with the pod's status). Pods are deleted afterwards."""
    from kubernetes import client
    core = client.CoreV1Api(cluster_api)
    created = []

    def run(manifest: dict, until=("Running",), timeout: float = 60):
        pod = core.create_namespaced_pod(cluster_namespace, manifest)
        created.append(pod.metadata.name)

        def reached():
            p = core.read_namespaced_pod(pod.metadata.name, cluster_namespace)
            if p.status.phase in until:
                return p
            if p.status.phase in ("Failed", "Succeeded"):
                pytest.fail(f"pod {p.metadata.name} ended {p.status.phase}, wanted {until}: {p.status}")
            return None
        return wait_for(reached, timeout, f"pod {pod.metadata.name} {'/'.join(until)}")
    yield run
    for name in created:
        try:
            core.delete_namespaced_pod(name, cluster_namespace, grace_period_seconds=0)
        except client.ApiException as e:
            if e.status != 404:
                raise
