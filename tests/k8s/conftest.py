"""API-server tier: tests marked ``k8s`` run against a real kube-apiserver v1.20.2 + etcd +
kube-controller-manager + kube-scheduler started once per session (tests/k8s/cluster.py).
Without the binaries, etcd or the kubernetes client they are skipped with a reason saying what to
do (usually: run tests/k8s/build-kube as root, once; the binaries are cached outside the repo).
"""

import os
import sys
import time

import pytest

from tests.k8s.cluster import KubeCluster, missing_reason


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "k8s: runs against a real kube-apiserver, etcd and controllers (tests/k8s/build-kube)")


def cluster_unavailable_reason() -> str | None:
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        return "the kubernetes Python client is not installed (pip install kubernetes)"
    return missing_reason()


@pytest.fixture(scope="session")
def kube():
    """A running KubeCluster (``.server``, ``.token``, ``.kubeconfig``, ``.api_client()``), shared by
    the session. Set PROBESET_KUBE_KEEP=1 to keep its work directory (logs, kubeconfig) afterwards."""
    reason = cluster_unavailable_reason()
    if reason:
        pytest.skip(reason)
    keep = os.environ.get("PROBESET_KUBE_KEEP") == "1"
    cluster = KubeCluster(keep_workdir=keep)
    cluster.start()
    try:
        print(f"\nkube cluster ready: {cluster.server}; "
              + ", ".join(f"{k} {v:.1f} s" for k, v in cluster.timings.items())
              + f"; work dir {cluster.workdir}", file=sys.stderr)
        yield cluster
    finally:
        t = time.monotonic()
        cluster.stop()
        print(f"\nkube cluster stopped in {time.monotonic() - t:.1f} s", file=sys.stderr)


@pytest.fixture
def kube_api(kube):
    """An admin ApiClient for one test, closed afterwards."""
    with kube.api_client() as api:
        yield api
