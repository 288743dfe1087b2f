"""Shared test helpers. Tiers: unit/ (no privileges), bpf/ (root + BCC on this host's kernel),
vm/ (kprobes/fentry in a QEMU guest), e2e/ (a real Prometheus)."""

import os
import shutil
import subprocess
import sys
import time

import pytest


@pytest.fixture(scope="session")
def build_c(tmp_path_factory):
    """Compile a C source text with gcc into an executable; returns its absolute path."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (apt-get install gcc)")
    out_dir = tmp_path_factory.mktemp("cbin")

    def build(name: str, source: str, *flags: str) -> str:
        src = out_dir / f"{name}.c"
        src.write_text(source)
        exe = out_dir / name
        subprocess.run(["gcc", "-O1", "-g", "-o", str(exe), str(src), *flags], check=True)
        return str(exe)
    return build


@pytest.fixture
def start_program():
    """Start a parsed ProbeSet on this host; stops it (detaching everything) after the test."""
    from probeset_agent.program import ProbeSetProgram
    started = []

    def start(pset, node="testnode", **program_args):
        prog = ProbeSetProgram(pset, node, **program_args)
        started.append(prog)
        prog.start()
        return prog
    yield start
    for prog in started:
        prog.stop()


@pytest.fixture
def targets():
    """Start tests.support.Target processes (in a cgroup or not); all are closed at the end."""
    from tests.support import Target
    started = []

    def start(argv, cgroup=None):
        t = Target(argv, cgroup)
        started.append(t)
        return t
    yield start
    for t in started:
        if t.proc.poll() is None:
            t.close()


@pytest.fixture
def run_probeset(start_program):
    """Start a ProbeSet made of these probes and spec fields (labels: [node] unless given);
    `program` holds ProbeSetProgram arguments (attribution, selection)."""
    from probeset_api.spec import parse_probeset

    def start(probes, name="test", namespace=None, program=None, **spec):
        meta = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
        doc = {"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet", "metadata": meta,
               "spec": {"probes": probes, "labels": ["node"], **spec}}
        return start_program(parse_probeset(doc), **(program or {}))
    return start


# --- the real API server (tests/k8s/cluster.py), one per session, shared by tests/k8s and tests/helm ---

def cluster_unavailable_reason() -> str | None:
    from tests.k8s.cluster import missing_reason
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
    from tests.k8s.cluster import KubeCluster
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
