"""This node's ProbeSetNode: the agent's reports on every set, in one object of its own.

One object per node (named after it, in the operator's namespace, owned by the Node) holds
status.sets["<namespace>/<name>"] = NodeReport for every set the agent runs or was asked to run.
The agent changes its reports in memory (`put`) and writes them with `flush`: one JSON merge patch
for everything that changed since the last write, so a spec change costs one write per node
whatever the number of sets, and ProbeSets stay small at any number of nodes (docs/scale.md).

The first flush reads what an earlier agent of this node left (a restart) and deletes the entries
of sets it no longer reports; a write that fails is kept for the next flush (`pending`).
"""

from __future__ import annotations

import logging

from probeset_api import API_GROUP, API_VERSION
from probeset_api.crd import NODE_KIND, NODE_PLURAL
from probeset_api.status import NodeReport

from probeset_api.kube import Kube, KubeError

log = logging.getLogger(__name__)


def summary_of(sets: dict[str, dict]) -> str:
    """"ready/reported": sets that run here with every probe attached, for kubectl get."""
    ready = sum(1 for r in sets.values() if not r.get("reason") and not r.get("failed")
                and r.get("attached") == r.get("total"))
    return f"{ready}/{len(sets)}"


class NodeStatus:
    """The reports this agent wants on the API (`wanted`) and what it last wrote (`written`; None
    until the object was read once)."""

    def __init__(self, kube: Kube, node: str, namespace: str):
        self.kube, self.node, self.namespace = kube, node, namespace
        self.node_uid: str | None = None     # the Node's uid, for the owner reference (from its watch)
        self.wanted: dict[str, dict] = {}
        self.written: dict[str, dict] | None = None
        self.writes = 0

    @property
    def path(self) -> str:
        return f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{self.namespace}/{NODE_PLURAL}/{self.node}"

    def put(self, key: str, report: NodeReport | None) -> None:
        """Report `report` for the set `key` ("<namespace>/<name>"); None removes its entry."""
        if report is None:
            self.wanted.pop(key, None)
        else:
            self.wanted[key] = report.to_status()

    @property
    def pending(self) -> bool:
        return self.written is None or self._changes() != {}

    def _changes(self) -> dict[str, dict | None]:
        written = self.written or {}
        changes: dict[str, dict | None] = {k: v for k, v in self.wanted.items() if written.get(k) != v}
        changes.update({k: None for k in written if k not in self.wanted})
        return changes

    def flush(self) -> bool:
        """Write what changed; True when the API has it all (or nothing changed). A failure is
        logged and left pending: the probes keep running, the next flush tries again."""
        try:
            if self.written is None:
                self.written = self._read_or_create()
            changes = self._changes()
            if not changes:
                return True
            body = {"status": {"summary": summary_of(self.wanted), "sets": changes}}
            self.kube.patch(f"{self.path}/status", body)
            self.writes += 1
            self.written = dict(self.wanted)
            return True
        except KubeError as e:
            if e.status == 404:
                self.written = None     # deleted by someone: made again on the next flush
            log.warning("cannot write ProbeSetNode %s/%s: %s", self.namespace, self.node, e)
            return False

    def _read_or_create(self) -> dict[str, dict]:
        try:
            obj = self.kube.get(self.path)
        except KubeError as e:
            if e.status != 404:
                raise
            meta: dict = {"name": self.node, "namespace": self.namespace,
                          "labels": {"app.kubernetes.io/name": "probeset", "app.kubernetes.io/component": "agent"}}
            if self.node_uid:   # deleted with its Node by the garbage collector
                meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": self.node,
                                            "uid": self.node_uid}]
            try:
                obj = self.kube.post(self.path.rsplit("/", 1)[0], {"apiVersion": f"{API_GROUP}/{API_VERSION}",
                                                                   "kind": NODE_KIND, "metadata": meta})
            except KubeError as e2:
                if e2.status != 409:    # 409: made meanwhile (an agent that just restarted): read it
                    raise
                obj = self.kube.get(self.path)
        sets = (obj.get("status") or {}).get("sets")
        return dict(sets) if isinstance(sets, dict) else {}
