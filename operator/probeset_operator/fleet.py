"""The operator's side of the cluster: the one agent DaemonSet (apply, delete, owner), the
ProbeSets listed, and the shared state of the handlers (Fleet: serialized recomputes, the last
refusal, the watched view of nodes, DaemonSet, agent pods and agents' reports: cache.py).
handlers.py is the kopf glue.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from probeset_api import API_GROUP, API_VERSION, PLURAL
from probeset_api.crd import NODE_PLURAL
from probeset_api.status import NodeReport

from .render import AGENT_DAEMONSET, LABELS
from .scheduling import runs_on

FIELD_MANAGER = "probeset-operator"
API_RETRY_DELAY = 10.0
REJECTED_RETRY_DELAY = 60.0     # a refused DaemonSet needs an admin's change: retry, but not often
SUMMARY_MAX_AGE = 60.0          # a set's summary is redone at least this often, even on unchanged inputs
PROGRESS_INTERVAL = 10.0        # while nodes report a generation, its counts are written this often
OPERATOR_DEPLOYMENT_ENV = "PROBESET_OPERATOR_DEPLOYMENT"
# Per-set DaemonSets of operator versions before the single one carried this label.
_OLD_PER_SET_LABEL = f"{API_GROUP}/probeset-uid"


@dataclass
class ClusterView:
    """What every set's summary reads (from the ClusterCache): the agent DaemonSet (None: there is
    none), the nodes and the DaemonSet's pods, as API dicts."""

    daemonset: dict | None
    nodes: list[dict]
    pods: list[dict]
    at: float


class Fleet:
    """What all handlers share (kopf gives each object a shallow copy of the memo, so this one
    object carries it): the API client, the lock that serializes recomputes, the last refusal of
    the DaemonSet (until an apply succeeds), the owner reference and the ClusterCache (set at
    start-up; its watches feed every summary)."""

    def __init__(self, deployment: str | None = None):
        self.lock = threading.Lock()
        self.rejection: str | None = None
        self._rejected_at = 0.0
        self._retry_lock = threading.Lock()
        self.deployment = deployment
        self.owner: dict | None = None       # {} once looked up and not found
        self.migrated = False
        self._api: client.ApiClient | None = None
        self.cache = None                    # cache.ClusterCache, started by the start-up handler
        self._summarized: dict[str, tuple[tuple, float]] = {}   # set uid -> (inputs, when)
        self._written: dict[str, float] = {}                     # set uid -> when its summary was written

    @property
    def api(self) -> client.ApiClient:
        # Made on first use: kopf's login, which configures the client, runs after start-up.
        if self._api is None:
            self._api = client.ApiClient()
        return self._api

    def refused(self, message: str | None) -> None:
        """Remember the API server's refusal of the DaemonSet (None: the last apply succeeded)."""
        self.rejection, self._rejected_at = message, time.monotonic()

    def retry_due(self) -> bool:
        """True for one caller once REJECTED_RETRY_DELAY has passed since the last refusal."""
        with self._retry_lock:
            if self.rejection is None or time.monotonic() - self._rejected_at < REJECTED_RETRY_DELAY:
                return False
            self._rejected_at = time.monotonic()
            return True

    @property
    def synced(self) -> bool:
        """Whether every watch of the cache has listed once (summaries wait for it)."""
        return self.cache is not None and self.cache.synced

    def summarized(self, uid: str, inputs: tuple) -> bool:
        """Whether the set's summary was computed from these inputs (the cache's version, the
        set's generation and spec) less than SUMMARY_MAX_AGE ago; else remember them. At thousands
        of nodes a summary costs tens of milliseconds: every set's timer redoes it only on change."""
        now = time.monotonic()
        inputs = (self.cache.version, *inputs)
        last = self._summarized.get(uid)
        if last is not None and last[0] == inputs and now - last[1] < SUMMARY_MAX_AGE:
            return True
        if len(self._summarized) > 10_000:     # uids of deleted sets
            self._summarized.clear()
        self._summarized[uid] = (inputs, now)
        return False

    def forget_summary(self, uid: str) -> None:
        self._summarized.pop(uid, None)

    def wrote(self, uid: str) -> None:
        if len(self._written) > 10_000:
            self._written.clear()
        self._written[uid] = time.monotonic()

    def wrote_recently(self, uid: str) -> bool:
        return time.monotonic() - self._written.get(uid, -PROGRESS_INTERVAL) < PROGRESS_INTERVAL

    def view(self) -> ClusterView:
        return self.cache.view()

    def reports(self, namespace: str, name: str) -> dict[str, NodeReport]:
        """Every node's report on the set namespace/name, by node."""
        return self.cache.reports(namespace, name)


def api_call(what: str, call, *args, **kwargs):
    """An API call whose failure is retried by kopf after a delay; a 404 returns None."""
    try:
        return call(*args, **kwargs)
    except ApiException as e:
        if e.status == 404:
            return None
        raise kopf.TemporaryError(f"{what}: {e.status} {e.reason}", delay=API_RETRY_DELAY) from e


class DaemonSetRejected(Exception):
    """The API server refused the agents' DaemonSet (its message says why: policy, quota, ...)."""


def _refusal(e: ApiException) -> str:
    try:
        return json.loads(e.body or "{}").get("message") or str(e.reason)
    except ValueError:
        return str(e.reason)


def apply_daemonset(manifest: dict, api: client.ApiClient | None = None) -> str:
    """Server-side apply: the API server merges, and a manifest equal to what runs changes nothing
    (no rollout). Returns what happened, for the log: created, unchanged or updated; raises
    DaemonSetRejected when the API server refuses the manifest (4xx other than a conflict)."""
    meta = manifest["metadata"]
    what = f"DaemonSet {meta['namespace']}/{meta['name']}"
    apps = client.AppsV1Api(api)
    before = api_call(f"reading {what}", apps.read_namespaced_daemon_set, meta["name"], meta["namespace"])
    try:
        after = apps.patch_namespaced_daemon_set(meta["name"], meta["namespace"], manifest, field_manager=FIELD_MANAGER,
                                                 force=True, _content_type="application/apply-patch+yaml")
    except ApiException as e:
        if e.status in (400, 403, 422):
            raise DaemonSetRejected(f"the API server refused the agents' DaemonSet: {_refusal(e)}") from None
        raise kopf.TemporaryError(f"applying {what}: {e.status} {e.reason}", delay=API_RETRY_DELAY) from e
    if before is None:
        return "created"
    # Not the resourceVersion: a no-op apply still rewrites managedFields' time on v1.20 servers.
    kept = [(m.generation, m.labels, m.annotations, m.owner_references) for m in (before.metadata, after.metadata)] \
        if after else []
    return "unchanged" if kept and kept[0] == kept[1] else "updated"


def delete_daemonset(namespace: str, name: str, api: client.ApiClient | None = None) -> bool:
    """True if there was one to delete."""
    return api_call(f"deleting DaemonSet {namespace}/{name}", client.AppsV1Api(api).delete_namespaced_daemon_set,
                     name, namespace, propagation_policy="Background") is not None


def list_probesets(api: client.ApiClient | None = None) -> list[dict]:
    """Every ProbeSet of the cluster, as API dicts."""
    found = api_call("listing ProbeSets", client.CustomObjectsApi(api).list_cluster_custom_object,
                      API_GROUP, API_VERSION, PLURAL)
    return (found or {}).get("items") or []


def owner_reference(fleet: Fleet, namespace: str, logger: logging.Logger) -> dict | None:
    """The ownerReference to the operator's Deployment (read once), so that uninstalling the
    operator garbage-collects its DaemonSet; None without PROBESET_OPERATOR_DEPLOYMENT."""
    if fleet.deployment and fleet.owner is None:
        dep = api_call(f"reading Deployment {namespace}/{fleet.deployment}",
                        client.AppsV1Api(fleet.api).read_namespaced_deployment, fleet.deployment, namespace)
        if dep is None:
            logger.warning("Deployment %s/%s (%s) not found: the agent DaemonSet gets no owner", namespace,
                           fleet.deployment, OPERATOR_DEPLOYMENT_ENV)
        fleet.owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep.metadata.name,
                       "uid": dep.metadata.uid} if dep else {}
    return fleet.owner or None


def remove_per_set_daemonsets(fleet: Fleet, namespace: str, logger: logging.Logger) -> None:
    """Once per process: delete the per-ProbeSet DaemonSets an older operator made (their agents
    would run next to the one DaemonSet's)."""
    if fleet.migrated:
        return
    apps = client.AppsV1Api(fleet.api)
    selector = f"app.kubernetes.io/managed-by={LABELS['app.kubernetes.io/managed-by']},{_OLD_PER_SET_LABEL}"
    old = api_call(f"listing DaemonSets in {namespace}", apps.list_namespaced_daemon_set, namespace,
                    label_selector=selector)
    for ds in (old.items if old else []):
        if ds.metadata.name != AGENT_DAEMONSET and delete_daemonset(namespace, ds.metadata.name, fleet.api):
            logger.info("deleted DaemonSet %s/%s of an older operator (one per ProbeSet)", namespace,
                        ds.metadata.name)
    fleet.migrated = True


def delete_node_reports(namespace: str, api: client.ApiClient | None = None) -> None:
    """Delete every ProbeSetNode: with the DaemonSet gone, no agent reports any more."""
    api_call(f"deleting the ProbeSetNodes of {namespace}",
             client.CustomObjectsApi(api).delete_collection_namespaced_custom_object, API_GROUP, API_VERSION,
             namespace, NODE_PLURAL)


def desired_nodes(view: ClusterView, selector: dict[str, str]) -> set[str]:
    """The nodes where the DaemonSet runs an agent that should run a set with this nodeSelector."""
    pod_spec = view.daemonset["spec"]["template"]["spec"]
    return {n["metadata"]["name"] for n in view.nodes if runs_on(n, selector, pod_spec)}
