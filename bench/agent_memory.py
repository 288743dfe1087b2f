"""Memory of the cluster-mode agent (`probeset agent`, what each DaemonSet pod runs): a real
kube-apiserver (tests/k8s/cluster.py, the binaries built by tests/k8s/build-kube), the CRD, a
ProbeSet with examples/gethostlatency.yaml's probes (scope Node, so they attach to this host's
libc), and the agent run here with an admin kubeconfig, as its pod would run it. Like
bench/startup.py, it polls /metrics until the probes are served, then reads VmRSS, VmHWM, RssAnon
and RssFile from /proc/PID/status, right then and after 5 more scrapes. Medians over repetitions.

  chrt -f 50 .venv/bin/python bench/agent_memory.py [--reps 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import yaml
from common import ROOT, loadavg, machine, median, save_json
from startup import measure_agent

sys.path.insert(0, str(ROOT))          # tests.k8s.cluster
sys.path.insert(0, str(ROOT / "operator"))

NAMESPACE, NAME = "bench", "gethostlatency"


def setup(cluster) -> None:
    from kubernetes import client
    from probeset_api.crd import build_crd
    with cluster.api_client() as api:
        client.ApiextensionsV1Api(api).create_custom_resource_definition(build_crd())
        client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
        doc = yaml.safe_load(open(ROOT / "examples" / "gethostlatency.yaml"))
        doc["metadata"]["namespace"] = NAMESPACE
        doc["spec"]["scope"] = "Node"
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


def one_run(kubeconfig: str) -> dict:
    env = dict(os.environ, KUBECONFIG=kubeconfig, NODE_NAME="bench-node", PROBESET_NAMESPACE=NAMESPACE,
               PROBESET_NAME=NAME, PROBESET_NODE_WIDE_NAMESPACES=NAMESPACE)
    marker = b'probeset_probe_attached{probeset="gethostlatency"'
    result, body, log, _ = measure_agent(["agent"], lambda body: marker in body, env)
    attached = [line for line in body.decode().splitlines() if line.startswith(marker.decode())]
    if not all(line.endswith(" 1") for line in attached):
        raise RuntimeError(f"a probe did not attach: {attached}\n{log[-2000:]}")
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
    with KubeCluster() as cluster:
        setup(cluster)
        runs = [one_run(str(cluster.kubeconfig)) for _ in range(args.reps)]
    for r in runs:
        print("  " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))
    med = {k: median([r[k] for r in runs]) for k in runs[0]}
    print(f"median of {args.reps}: probeset agent VmRSS {med['rss_mb']:.0f} MB (anon {med['rss_anon_mb']:.0f}, "
          f"file {med['rss_file_mb']:.0f}), after 5 scrapes {med['rss_after_scrapes_mb']:.0f} MB, "
          f"HWM {med['hwm_after_scrapes_mb']:.0f} MB; probes served after {med['first_response_s']:.2f} s")
    save_json(args.json, {"machine": machine(), "runs": runs, "median": med})


if __name__ == "__main__":
    main()
