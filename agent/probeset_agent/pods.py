"""The pods of this node, from the API server: names for the pod UIDs and container IDs found in
cgroups, and pod labels for podSelector. Deleted pods are remembered for `retention` seconds so
the series of a finished pod keep their names until they age out."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field

from probeset_api.kube import Kube
from probeset_api.reflector import follow

log = logging.getLogger(__name__)

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"   # static pods: the kubelet's UID for the pod
SOURCE_ANNOTATION = "kubernetes.io/config.source"   # where the kubelet got the pod: file, http, api


@dataclass(frozen=True)
class PodInfo:
    uid: str                    # the UID in the pod's cgroup names (a static pod's config hash)
    namespace: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    containers: dict[str, str] = field(default_factory=dict)   # container ID -> container name
    api_uid: str = ""           # metadata.uid; differs from uid only for a trusted mirror pod

    def __post_init__(self):
        if not self.api_uid:
            object.__setattr__(self, "api_uid", self.uid)

    @property
    def mirrored(self) -> bool:
        return self.uid != self.api_uid


def trusted_mirror(meta: dict) -> str | None:
    """The UID a static pod's cgroups carry, from its mirror pod, if the mirror is the kubelet's.
    Anyone who may create pods can write annotations, so the annotation alone names nothing: the
    kubelet's mirror pods also say their source is not the API (file, http) and are controlled by
    their Node (an owner reference the kubelet sets). A claim of a UID that a pod of the API holds
    is refused by the PodIndex."""
    annotations = meta.get("annotations") or {}
    mirror = annotations.get(MIRROR_ANNOTATION)
    if not mirror or annotations.get(SOURCE_ANNOTATION) in (None, "", "api"):
        return None
    owners = meta.get("ownerReferences") or []
    if not any(o.get("kind") == "Node" and o.get("apiVersion") == "v1" and o.get("controller") for o in owners):
        return None
    return mirror


def pod_info(pod: dict) -> PodInfo:
    """From a Pod as JSON (API field names)."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    containers = {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or []:
            cid = (cs.get("containerID") or "").rpartition("://")[2]
            if cid:
                containers[cid] = cs.get("name", "")
    api_uid = meta.get("uid", "")
    return PodInfo(trusted_mirror(meta) or api_uid, meta.get("namespace", ""), meta.get("name", ""),
                   dict(meta.get("labels") or {}), containers, api_uid)


def selector_matches(selector: dict | None, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions); None or {} matches everything."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for req in selector.get("matchExpressions") or []:
        key, op, values = req["key"], req["operator"], req.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


class PodIndex:
    """`clock` gives the seconds that deletion times and retention are measured in (monotonic)."""

    def __init__(self, retention: float = 300.0, clock=time.monotonic):
        self.retention = retention
        self._clock = clock
        self._pods: dict[str, PodInfo] = {}
        self._deleted: dict[str, float] = {}    # uid -> when deleted
        self._lock = threading.Lock()
        self.version = 0                         # bumped on every change that can alter labels
        self.synced = threading.Event()          # set once the first listing is in

    @staticmethod
    def _put(pods: dict[str, PodInfo], pod: PodInfo) -> None:
        """Index a pod by the UID its cgroups carry. A mirror pod's claim of a UID that an API pod
        holds (or another mirror claims) is refused: it is indexed by its own metadata.uid."""
        held = pods.get(pod.uid)
        if pod.mirrored and held is not None and held.api_uid != pod.api_uid:
            log.warning("pod %s/%s claims UID %s as a static pod, which pod %s/%s holds: claim ignored",
                        pod.namespace, pod.name, pod.uid, held.namespace, held.name)
            pod = dataclasses.replace(pod, uid=pod.api_uid)
        elif held is not None and held.mirrored and held.api_uid != pod.api_uid:
            log.warning("pod %s/%s claimed UID %s as a static pod, which pod %s/%s holds: claim ignored",
                        held.namespace, held.name, pod.uid, pod.namespace, pod.name)
            pods[held.api_uid] = dataclasses.replace(held, uid=held.api_uid)
        pods[pod.uid] = pod

    def replace(self, pods: list[PodInfo]) -> None:
        """The full listing: pods missing from it count as deleted now."""
        now = self._clock()
        with self._lock:
            current: dict[str, PodInfo] = {}
            for p in sorted(pods, key=lambda p: p.mirrored):     # API pods first: they hold their UIDs
                self._put(current, p)
            for uid in current.keys() & self._deleted.keys():
                del self._deleted[uid]                    # listed again
            for uid in self._pods.keys() - current.keys():
                self._deleted.setdefault(uid, now)
                current[uid] = self._pods[uid]
            self._pods = current
            self._expire(now)
            self.version += 1
        self.synced.set()

    def update(self, pod: PodInfo) -> None:
        with self._lock:
            if self._pods.get(pod.uid) == pod and pod.uid not in self._deleted:
                return
            self._put(self._pods, pod)
            self._deleted.pop(pod.uid, None)
            self._expire(self._clock())
            self.version += 1

    def delete(self, api_uid: str) -> None:
        """The pod with this metadata.uid was deleted (it may be indexed by its mirror UID)."""
        with self._lock:
            uid = next((k for k, p in self._pods.items() if p.api_uid == api_uid), None)
            if uid is not None:
                self._deleted.setdefault(uid, self._clock())
                self.version += 1

    def _expire(self, now: float) -> None:
        for uid in [u for u, t in self._deleted.items() if now - t > self.retention]:
            del self._deleted[uid]
            self._pods.pop(uid, None)

    def expire(self) -> None:
        with self._lock:
            before = len(self._pods)
            self._expire(self._clock())
            if len(self._pods) != before:
                self.version += 1

    def __len__(self) -> int:
        return len(self._pods)

    def names(self, uid: str, container_id: str | None) -> tuple[dict[str, str], bool] | None:
        """({namespace, pod, container} names, settled), or None while the pod is not known. A
        container ID not (yet) in the pod's statuses (a container just started, or the pod's
        sandbox) gives an empty container name, not settled: asked again later."""
        with self._lock:
            pod = self._pods.get(uid)
        if pod is None:
            return None
        container = pod.containers.get(container_id, "") if container_id else ""
        settled = not container_id or container_id in pod.containers
        return {"namespace": pod.namespace, "pod": pod.name, "container": container}, settled

    def selected(self, namespace: str | None, selector: dict | None) -> list[str]:
        """UIDs of the running (not deleted) pods in `namespace` (None: any) matching `selector`."""
        with self._lock:
            return [p.uid for p in self._pods.values() if p.uid not in self._deleted
                    and (namespace is None or p.namespace == namespace) and selector_matches(selector, p.labels)]


@dataclass(frozen=True)
class PodSelection:
    """Which pods a ProbeSet observes in cluster mode: `namespace` (None: every namespace) and
    `selector`. `host` is True when host processes are observed too (node scope without a
    podSelector); then no in-kernel filter is needed."""

    pods: PodIndex
    namespace: str | None
    selector: dict | None

    @property
    def host(self) -> bool:
        return self.namespace is None and not self.selector

    def uids(self) -> list[str]:
        return self.pods.selected(self.namespace, self.selector)


class PodWatcher:
    """Lists and watches the pods of `node` into `index`; `on_change` runs after each change."""

    def __init__(self, kube: Kube, node: str, index: PodIndex, on_change=None):
        self.kube, self.node, self.index, self.on_change = kube, node, index, on_change
        self.stopping = threading.Event()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:   # a failing consumer must not end the watch
                log.exception("pod change handler failed")

    def run(self) -> None:
        follow(self.kube, "/api/v1/pods", {"fieldSelector": f"spec.nodeName={self.node}"}, self._listed,
               self._event, self.stopping, f"pods of node {self.node}")

    def _listed(self, items: list[dict]) -> None:
        self.index.replace([pod_info(p) for p in items])
        self._changed()

    def _event(self, kind: str, pod: dict) -> None:
        info = pod_info(pod)
        if kind == "DELETED":
            self.index.delete(info.api_uid)
        else:
            self.index.update(info)
        self._changed()

    def stop(self) -> None:
        self.stopping.set()
