"""The operator's side of the proposed design (docs/scale.md, "Proposal"), as a stand-in process for
measuring it: not the product's operator.

Agents no longer write status.agents.<node> into each ProbeSet. Each agent writes one small
object of its own, a ProbeSetNode named after its node in the operator's namespace, whose
status.sets["<namespace>/<name>"] is the same NodeReport as today. This process keeps an
in-memory index of those reports from one list+watch (follow(), as the agents watch), and writes
each ProbeSet's summary (observedGeneration, nodes, probes, Ready, message naming the first
failing nodes) at most once per --debounce seconds per set, only when it changed. Which nodes
should run a set comes from one list+watch of the Nodes (labels vs nodeSelector); the real
operator would keep its DaemonSet/taint logic (scheduling.runs_on) on that same cache.

  python aggregator.py --kubeconfig FILE --namespace probeset-system [--debounce 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT / "agent"), str(ROOT / "api")]

from probeset_agent.cluster import PROBESETS, follow  # noqa: E402
from probeset_agent.kube import KubeError, from_kubeconfig  # noqa: E402

GROUP, VERSION = "probeset.io", "v1alpha1"
NODE_REPORTS = "probesetnodes"
NODE_GROUP = "scale.probeset.io"
MAX_NAMED_FAILURES = 10

log = logging.getLogger("aggregator")


class Index:
    def __init__(self):
        self.lock = threading.Lock()
        self.sets: dict[tuple[str, str], dict] = {}          # key -> ProbeSet object
        self.reports: dict[str, dict] = {}                   # node -> status.sets
        self.labels: dict[str, dict] = {}                    # node -> labels
        self.dirty = threading.Event()
        self.events = 0

    # ProbeSets
    def sets_listed(self, items):
        with self.lock:
            self.sets = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in items}
        self.dirty.set()

    def set_event(self, kind, obj):
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        with self.lock:
            self.events += 1
            if kind == "DELETED":
                self.sets.pop(key, None)
            else:
                self.sets[key] = obj
        self.dirty.set()

    # ProbeSetNodes
    def reports_listed(self, items):
        with self.lock:
            self.reports = {o["metadata"]["name"]: ((o.get("status") or {}).get("sets") or {}) for o in items}
        self.dirty.set()

    def report_event(self, kind, obj):
        with self.lock:
            self.events += 1
            if kind == "DELETED":
                self.reports.pop(obj["metadata"]["name"], None)
            else:
                self.reports[obj["metadata"]["name"]] = (obj.get("status") or {}).get("sets") or {}
        self.dirty.set()

    # Nodes
    def nodes_listed(self, items):
        with self.lock:
            self.labels = {o["metadata"]["name"]: (o["metadata"].get("labels") or {}) for o in items}
        self.dirty.set()

    def node_event(self, kind, obj):
        with self.lock:
            if kind == "DELETED":
                self.labels.pop(obj["metadata"]["name"], None)
            else:
                self.labels[obj["metadata"]["name"]] = obj["metadata"].get("labels") or {}
        self.dirty.set()


def summarize(obj: dict, reports: dict[str, dict], labels: dict[str, dict]) -> dict:
    """The bounded status of one set: counts, and at most MAX_NAMED_FAILURES nodes named."""
    meta, spec = obj["metadata"], obj.get("spec") or {}
    key = f"{meta['namespace']}/{meta['name']}"
    gen, total = meta.get("generation"), len(spec.get("probes") or [])
    selector = spec.get("nodeSelector") or {}
    desired = [n for n, lab in labels.items() if all(lab.get(k) == v for k, v in selector.items())]
    ready, failing, declined = 0, [], []
    for node in desired:
        r = (reports.get(node) or {}).get(key)
        if not isinstance(r, dict) or r.get("generation") != gen:
            continue
        if r.get("reason"):
            declined.append((node, r))
        elif r.get("failed"):
            failing.append((node, r))
        elif r.get("attached") == total:
            ready += 1
    is_ready = bool(desired) and ready == len(desired)
    if failing:
        node, r = sorted(failing, key=lambda x: x[0])[0]
        f = r["failed"][0]
        message = f"{len(failing)} node(s) with failed probes; {node}: {f.get('name')}: {f.get('error')}"
    elif declined:
        node, r = sorted(declined, key=lambda x: x[0])[0]
        message = f"{len(declined)} node(s) do not run it; {node}: {r.get('reason')}"
    else:
        message = "" if is_ready else f"waiting for agents: {ready}/{len(desired)} nodes report every probe attached"
    return {"observedGeneration": gen,
            "nodes": {"desired": len(desired), "ready": ready, "failing": len(failing),
                      "summary": f"{ready}/{len(desired)}"},
            "probes": f"{total if ready else 0}/{total}", "message": message[:300],
            "conditions": [{"type": "Ready", "status": "True" if is_ready else "False",
                            "reason": "AgentsReady" if is_ready else "AgentsNotReady", "message": message[:300],
                            "observedGeneration": gen}]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--namespace", default="probeset-system")
    ap.add_argument("--debounce", type=float, default=1.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    kube = from_kubeconfig(args.kubeconfig)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    index = Index()
    for path, params, on_list, on_event in (
            (PROBESETS, {}, index.sets_listed, index.set_event),
            (f"/apis/{NODE_GROUP}/{VERSION}/namespaces/{args.namespace}/{NODE_REPORTS}", {}, index.reports_listed,
             index.report_event),
            ("/api/v1/nodes", {}, index.nodes_listed, index.node_event)):
        threading.Thread(target=follow, args=(kube, path, params, on_list, on_event, stopping, path),
                         daemon=True).start()
    written: dict[tuple[str, str], str] = {}
    patches = 0
    while not stopping.is_set():
        if not index.dirty.wait(0.5):
            continue
        index.dirty.clear()
        with index.lock:
            sets, reports, labels = dict(index.sets), index.reports, dict(index.labels)
            reports = dict(reports)
        for key, obj in sets.items():
            status = summarize(obj, reports, labels)
            text = json.dumps(status, sort_keys=True)
            if written.get(key) == text:
                continue
            old = next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), {})
            status["conditions"][0]["lastTransitionTime"] = old.get("lastTransitionTime") \
                if old.get("status") == status["conditions"][0]["status"] and old.get("lastTransitionTime") else \
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            try:
                kube.patch(f"/apis/{GROUP}/{VERSION}/namespaces/{key[0]}/probesets/{key[1]}/status",
                           {"status": status})
                written[key] = text
                patches += 1
            except KubeError as e:
                log.warning("summary of %s/%s: %s", *key, e)
                index.dirty.set()
        stopping.wait(args.debounce)       # at most one summary write per set per debounce period
    print(json.dumps({"patches": patches, "events": index.events}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
