"""What every set's summary reads, kept current by watches instead of read per summary: the agent
DaemonSet, the nodes, the agent pods and every node's ProbeSetNode (its agent's reports).

At thousands of nodes, listing nodes and pods for each summary would cost the API server more than
the agents' reports themselves (docs/scale.md); one list and one watch each cost it nothing at
rest. Objects are kept trimmed to the fields the summary reads, so the operator's memory grows by
a few hundred bytes per node. The watches use the agent's reflector (probeset_api.reflector.follow:
list once, watch from the last version, list again only after a 410).
"""

from __future__ import annotations

import logging
import threading
import time

from probeset_api.kube import Kube
from probeset_api.reflector import follow
from probeset_api import API_GROUP, API_VERSION
from probeset_api.crd import NODE_PLURAL
from probeset_api.status import NodeReport

from .fleet import ClusterView
from .render import AGENT_DAEMONSET, SELECTOR

log = logging.getLogger(__name__)


def trim_node(node: dict) -> dict:
    meta, spec = node.get("metadata") or {}, node.get("spec") or {}
    return {"metadata": {"name": meta.get("name"), "labels": meta.get("labels") or {}},
            "spec": {"taints": spec.get("taints") or []}}


def trim_pod(pod: dict) -> dict:
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    return {"metadata": {k: meta[k] for k in ("name", "deletionTimestamp", "ownerReferences") if k in meta},
            "spec": {k: spec[k] for k in ("nodeName", "affinity") if k in spec},
            "status": {k: status[k] for k in ("phase", "conditions", "containerStatuses") if k in status}}


class _Store:
    """One watched kind: name -> trimmed object; `synced` once listed."""

    def __init__(self, trim, on_change):
        self.trim, self.on_change = trim, on_change
        self.items: dict[str, dict] = {}
        self.synced = False
        self.lock = threading.Lock()

    def listed(self, items: list[dict]) -> None:
        with self.lock:
            self.items = {o["metadata"]["name"]: self.trim(o) for o in items}
            self.synced = True
        self.on_change()

    def event(self, kind: str, obj: dict) -> None:
        name = obj["metadata"]["name"]
        with self.lock:
            if kind == "DELETED":
                self.items.pop(name, None)
            else:
                self.items[name] = self.trim(obj)
        self.on_change()

    def values(self) -> list[dict]:
        with self.lock:
            return list(self.items.values())


def _reports_of(obj: dict) -> dict:
    sets = (obj.get("status") or {}).get("sets")
    return {"metadata": {"name": obj["metadata"]["name"]}, "sets": sets if isinstance(sets, dict) else {}}


class ClusterCache:
    """Watches of the operator's namespace (DaemonSet, agent pods, ProbeSetNodes) and of the nodes;
    `view()` and `reports()` read them without a request."""

    def __init__(self, kube: Kube, namespace: str):
        self.kube, self.namespace = kube, namespace
        self.version = 0                 # counts changes: a summary of unchanged inputs is not redone
        self.stopping = threading.Event()
        self.daemonsets = _Store(lambda o: o, self._changed)
        self.nodes = _Store(trim_node, self._changed)
        self.pods = _Store(trim_pod, self._changed)
        self.node_reports = _Store(_reports_of, self._changed)

    def _changed(self) -> None:
        self.version += 1

    def start(self) -> None:
        ns = f"/namespaces/{self.namespace}"
        watches = [
            (f"/apis/apps/v1{ns}/daemonsets", {"fieldSelector": f"metadata.name={AGENT_DAEMONSET}"}, self.daemonsets,
             "the agent DaemonSet"),
            ("/api/v1/nodes", {}, self.nodes, "nodes"),
            (f"/api/v1{ns}/pods", {"labelSelector": ",".join(f"{k}={v}" for k, v in SELECTOR.items())}, self.pods,
             "agent pods"),
            (f"/apis/{API_GROUP}/{API_VERSION}{ns}/{NODE_PLURAL}", {}, self.node_reports, "ProbeSetNodes"),
        ]
        for path, params, store, what in watches:
            threading.Thread(target=follow, args=(self.kube, path, params, store.listed, store.event, self.stopping,
                                                  what), name=f"probeset-cache-{what.split()[-1]}", daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()

    @property
    def synced(self) -> bool:
        return all(s.synced for s in (self.daemonsets, self.nodes, self.pods, self.node_reports))

    def view(self) -> ClusterView:
        """The DaemonSet (None: there is none), the nodes and the DaemonSet's own pods."""
        ds = next(iter(self.daemonsets.values()), None)
        if ds is None:
            return ClusterView(None, [], [], time.monotonic())
        uid = ds["metadata"].get("uid")
        own = [p for p in self.pods.values()
               if any(o.get("uid") == uid and o.get("controller") for o in p["metadata"].get("ownerReferences") or [])]
        return ClusterView(ds, self.nodes.values(), own, time.monotonic())

    def reports(self, namespace: str, name: str) -> dict[str, NodeReport]:
        """Every node's report on the set, by node."""
        key = f"{namespace}/{name}"
        out = {}
        for obj in self.node_reports.values():
            entry = obj["sets"].get(key)
            if isinstance(entry, dict):
                out[obj["metadata"]["name"]] = NodeReport.from_status(entry)
        return out
