"""One agent per node, with many ProbeSets: memory and the time from `kubectl apply` to probes served.

A real kube-apiserver (tests/k8s/cluster.py; binaries from tests/k8s/build-kube), the CRD, a Node
named bench-node, and `probeset agent` run here with an admin kubeconfig, as its pod runs it. Ten
ProbeSets (the five examples and five variations, scope Node so they attach to this host) are
created one at a time; after each, the time until /metrics serves every probe of the new set
(a probeset_probe_attached line per probe; probes this kernel cannot attach count, with 0), and
the agent's VmRSS once that set is served and scraped twice. Medians over repetitions.

  chrt -f 50 .venv/bin/python bench/node_agent.py [--reps 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import os
import signal
import subprocess
import sys
import tempfile
import time

import yaml
from common import ROOT, loadavg, machine, median, save_json
from startup import PROBESET, free_port, memory_mb, scrape

sys.path.insert(0, str(ROOT))          # tests.k8s.cluster

NAMESPACE, NODE = "bench", "bench-node"


def probesets() -> list[dict]:
    """The five examples (the first document of each file) and a variation of each."""
    docs = []
    for name in ("gethostlatency", "malloc-count", "syscalls", "tcp-drop-path", "vfsstat"):
        with open(ROOT / "examples" / f"{name}.yaml") as f:
            docs.append(next(yaml.safe_load_all(f)))
    variations = []
    for doc in docs:
        v = copy.deepcopy(doc)
        v["metadata"]["name"] += "-v2"
        v["spec"]["labels"] = ["node"] if v["spec"].get("labels") != ["node"] else ["node", "comm"]
        variations.append(v)
    out = []
    for doc in docs + variations:
        doc["metadata"]["namespace"] = NAMESPACE
        doc["spec"]["scope"] = "Node"
        out.append(doc)
    return out


def setup(cluster) -> None:
    from kubernetes import client
    from probeset_api.crd import build_crd
    with cluster.api_client() as api:
        client.ApiextensionsV1Api(api).create_custom_resource_definition(build_crd())
        client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
        client.CoreV1Api(api).create_node({"metadata": {"name": NODE, "labels": {"kubernetes.io/os": "linux"}}})


def create(cluster, doc: dict) -> None:
    from kubernetes import client
    with cluster.api_client() as api:
        for _ in range(100):   # the CRD is served a moment after it is created
            try:
                client.CustomObjectsApi(api).create_namespaced_custom_object(
                    "probeset.io", "v1alpha1", NAMESPACE, "probesets", doc)
                return
            except client.exceptions.ApiException as e:
                if e.status != 404:
                    raise
                time.sleep(0.1)
    raise RuntimeError("the ProbeSet CRD was not served")


def delete_all(cluster) -> None:
    from kubernetes import client
    with cluster.api_client() as api:
        client.CustomObjectsApi(api).delete_collection_namespaced_custom_object(
            "probeset.io", "v1alpha1", NAMESPACE, "probesets")


def served(body: bytes, doc: dict) -> bool:
    text = body.decode()
    name = doc["metadata"]["name"]
    return all(f'probeset_probe_attached{{probeset="{name}",probeset_namespace="{NAMESPACE}",probe="{p["name"]}"'
               in text for p in doc["spec"]["probes"])


def one_run(cluster) -> dict:
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), NODE_NAME=NODE,
               PROBESET_NODE_WIDE_NAMESPACES=NAMESPACE)
    port = free_port()
    sets = probesets()
    result = {"apply_s": [], "rss_mb": []}
    with tempfile.TemporaryFile(mode="w+") as log:
        agent = subprocess.Popen([str(PROBESET), "agent", "--listen", f"127.0.0.1:{port}"],
                                 stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT, env=env)
        try:
            deadline = time.monotonic() + 60
            while not scrape(port):
                if agent.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"agent did not start: {log.read()[-2000:]}")
                time.sleep(0.05)
            time.sleep(2)          # let the watches settle: the idle agent's memory
            result["idle_rss_mb"] = memory_mb(agent.pid)["VmRSS"]
            for doc in sets:
                t0 = time.monotonic()
                create(cluster, doc)
                while not served(scrape(port) or b"", doc):
                    if agent.poll() is not None or time.monotonic() - t0 > 120:
                        log.seek(0)
                        raise RuntimeError(f"{doc['metadata']['name']} not served: {log.read()[-3000:]}")
                    time.sleep(0.01)
                result["apply_s"].append(time.monotonic() - t0)
                scrape(port)
                scrape(port)
                result["rss_mb"].append(memory_mb(agent.pid)["VmRSS"])
            t0 = time.monotonic()
            delete_all(cluster)
            while b"probeset_probe_attached{" in (scrape(port) or b"probeset_probe_attached{"):
                if time.monotonic() - t0 > 60:
                    raise RuntimeError("sets not detached after deletion")
                time.sleep(0.01)
            result["delete_all_s"] = time.monotonic() - t0
            result["rss_after_delete_mb"] = memory_mb(agent.pid)["VmRSS"]
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)
    result["names"] = [d["metadata"]["name"] for d in sets]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    from tests.k8s.cluster import KubeCluster, missing_reason
    reason = missing_reason()
    if reason:
        raise SystemExit(f"no API server: {reason}")
    print(f"{machine()}, load average {loadavg()}")
    runs = []
    with KubeCluster() as cluster:
        setup(cluster)
        for _ in range(args.reps):
            runs.append(one_run(cluster))
    names = runs[0]["names"]
    print(f"idle agent (no ProbeSet): VmRSS {median([r['idle_rss_mb'] for r in runs]):.0f} MB")
    print(f"{'sets':>4}  {'ProbeSet created':<22} {'apply -> served':>15} {'VmRSS':>8}")
    for i, name in enumerate(names):
        apply_s = median([r["apply_s"][i] for r in runs])
        rss = median([r["rss_mb"][i] for r in runs])
        print(f"{i + 1:>4}  {name:<22} {apply_s:>13.2f} s {rss:>5.0f} MB")
    one, ten = median([r["rss_mb"][0] for r in runs]), median([r["rss_mb"][-1] for r in runs])
    print(f"median of {args.reps}: one set {one:.0f} MB, ten sets {ten:.0f} MB, "
          f"{(ten - one) / (len(names) - 1):.1f} MB per further set; all deleted: detached in "
          f"{median([r['delete_all_s'] for r in runs]):.2f} s, VmRSS {median([r['rss_after_delete_mb'] for r in runs]):.0f} MB")
    save_json(args.json, {"machine": machine(), "runs": runs})


if __name__ == "__main__":
    main()
