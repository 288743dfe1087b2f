"""Who caused an event: cgroup id (recorded in the kernel) -> cgroup v2 path -> pod UID and
container ID, from the kubelet's cgroup naming (systemd and cgroupfs drivers; containerd, CRI-O,
docker) -> namespace, pod and container names from the pods of this node (cluster mode, pods.py).
Standalone there are no names: `pod` is the pod UID, `container` the container ID, `namespace`
empty.

A cgroup id is the inode number of the cgroup's directory in the cgroup v2 hierarchy. Cgroups
come and go with containers; everything here is bounded by what exists now plus what vanished
within `retention` seconds:
  live     the directory exists: labels from its path (and the pod index)
  gone     it existed at an earlier scan: its last labels are kept until `retention` has passed
  unknown  never seen (created and removed between two scans, or not a cgroup v2 id): folded into
           one series per probe whose workload labels are UNKNOWN
"""

from __future__ import annotations

import os
import re
import threading
import time

UNKNOWN = "__unknown__"
WORKLOAD_LABELS = ("namespace", "pod", "container")

_UID = r"([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
# The kubelet's layout, component by component, from the hierarchy's root:
#   kubepods | kubepods.slice                                        the kubelet's cgroup root
#   [burstable | besteffort | kubepods-<qos>.slice]                  QoS class (none: Guaranteed)
#   pod<uid> | kubepods[-<qos>]-pod<uid_with_underscores>.slice        the pod
#   <id> | cri-containerd-<id>.scope | crio-<id>.scope | docker-<id>.scope   a container
_KUBEPODS = ("kubepods", "kubepods.slice")
_QOS = ("burstable", "besteffort", "kubepods-burstable.slice", "kubepods-besteffort.slice")
_POD_RE = re.compile(rf"(?:pod{_UID}|kubepods(?:-burstable|-besteffort)?-pod{_UID}\.slice)")
_CONTAINER_RE = re.compile(r"(?:(?:cri-containerd|crio|docker)-)?([0-9a-f]{64})(?:\.scope)?")


def cgroup2_root() -> str | None:
    """Where the cgroup v2 hierarchy is mounted (pure v2: /sys/fs/cgroup; hybrid: .../unified)."""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "cgroup2":
                    return parts[1]
    except OSError:
        pass
    return None


def workload_of_path(path: str) -> dict[str, str]:
    """{"pod": uid, "container": id} for a cgroup path in the kubelet's layout (relative to the
    cgroup v2 root); empty for anything else (host processes). Anchored: kubepods must be the
    first component and the pod and container the components the kubelet puts them at, so a
    cgroup a workload creates inside its own (say .../pod<uid>/<id>/pod<other uid>) belongs to
    the container that made it, never to the pod it names."""
    parts = path.strip("/").split("/")
    if len(parts) < 2 or parts[0] not in _KUBEPODS:
        return {}
    rest = parts[2:] if parts[1] in _QOS else parts[1:]
    pod = _POD_RE.fullmatch(rest[0]) if rest else None
    if pod is None:
        return {}
    out = {"pod": (pod.group(1) or pod.group(2)).replace("_", "-")}
    container = _CONTAINER_RE.fullmatch(rest[1]) if len(rest) > 1 else None
    if container:
        out["container"] = container.group(1)
    return out


def _cgroup_dirs(root: str) -> dict[int, str]:
    """cgroup id -> path (relative to the hierarchy's root) of every cgroup. The ids come from the
    directory entries themselves (a cgroup's id is its directory's inode number, which readdir
    returns): no stat per cgroup."""
    try:
        out = {os.stat(root).st_ino: "/"}
    except OSError:
        return {}
    stack = [(root, "")]
    while stack:
        path, rel = stack.pop()
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        sub = f"{rel}/{entry.name}"
                        out[entry.inode()] = sub
                        stack.append((entry.path, sub))
        except OSError:
            continue   # removed while walking
    return out


class CgroupTree:
    """The cgroup v2 tree as last scanned: id -> path, which pod each belongs to, and which ids
    vanished when (forgotten `retention` seconds later)."""

    def __init__(self, root: str | None = None, retention: float = 300.0):
        self.root = root if root is not None else cgroup2_root()
        self.retention = retention
        self.live: dict[int, str] = {}
        self.gone: dict[int, tuple[str, float]] = {}        # id -> (last path, when found gone)
        self.pod_ids: dict[str, set[int]] = {}               # pod UID -> ids of its cgroups (pod + containers)
        self.last_scan = float("-inf")
        self.lock = threading.Lock()

    def scan(self) -> None:
        if not self.root:
            return
        started = time.monotonic()   # anything that existed at this moment and still does is found
        paths = _cgroup_dirs(self.root)
        pod_ids: dict[str, set[int]] = {}
        for cid, path in paths.items():
            pod = workload_of_path(path).get("pod")
            if pod:
                pod_ids.setdefault(pod, set()).add(cid)
        with self.lock:
            for cid, path in self.live.items():
                if cid not in paths:
                    self.gone[cid] = (path, started)
            for cid in [c for c, (_, t) in self.gone.items() if c in paths or started - t > self.retention]:
                del self.gone[cid]
            self.live, self.pod_ids, self.last_scan = paths, pod_ids, started

    def path(self, cgroup_id: int) -> tuple[str | None, str]:
        """(path, state) with state "live", "gone" or "unknown"."""
        with self.lock:
            path = self.live.get(cgroup_id)
            if path is not None:
                return path, "live"
            if cgroup_id in self.gone:
                return self.gone[cgroup_id][0], "gone"
        return None, "unknown"

    def ids_of_pods(self, uids) -> set[int]:
        with self.lock:
            return set().union(*(self.pod_ids.get(uid, set()) for uid in uids))

    def pids_of_pod(self, uid: str) -> list[int]:
        """The processes in the pod's cgroups now."""
        with self.lock:
            paths = sorted(self.live[c] for c in self.pod_ids.get(uid, ()) if c in self.live)
        pids = []
        for path in paths:
            try:
                with open(os.path.join(self.root, path.lstrip("/"), "cgroup.procs")) as f:
                    pids += [int(line) for line in f if line.strip()]
            except OSError:
                continue   # removed since the scan
        return pids


class Attribution:
    """cgroup id -> workload labels {namespace, pod, container}. An id not found triggers a rescan
    (at most once per `rescan_interval` seconds). `pods` (a pods.PodIndex) supplies names."""

    def __init__(self, tree: CgroupTree | None = None, pods=None, rescan_interval: float = 1.0):
        self.tree = tree if tree is not None else CgroupTree()
        self.pods = pods
        self.rescan_interval = rescan_interval
        self._scan_lock = threading.Lock()

    @property
    def version(self) -> int:
        """Changes whenever names may have changed (labels decoded before must be decoded again)."""
        return self.pods.version if self.pods is not None else 0

    @property
    def available(self) -> bool:
        """Whether cgroup ids can be attributed here (a cgroup v2 hierarchy is mounted)."""
        return bool(self.tree.root)

    @property
    def last_scan(self) -> float:
        """When the last scan began (time.monotonic())."""
        return self.tree.last_scan

    def state(self, cgroup_id: int) -> str:
        """"live", "gone" (kept for the retention) or "unknown"."""
        return self.tree.path(cgroup_id)[1]

    def cgroups_of_pods(self, uids) -> set[int]:
        return self.tree.ids_of_pods(uids)

    def pids_of_pod(self, uid: str) -> list[int]:
        return self.tree.pids_of_pod(uid)

    def rescan(self, force: bool = False) -> None:
        with self._scan_lock:
            if force or time.monotonic() - self.tree.last_scan >= self.rescan_interval:
                self.tree.scan()

    def lookup(self, cgroup_id: int) -> tuple[dict[str, str], bool]:
        """(labels, settled). Not settled: ask again later (unknown id, or a pod whose names have
        not arrived yet); a caller must not cache unsettled labels."""
        if not self.tree.root:
            return {}, True
        path, state = self.tree.path(cgroup_id)
        if state == "unknown":
            self.rescan()
            path, state = self.tree.path(cgroup_id)
        if state == "unknown":
            return {name: UNKNOWN for name in WORKLOAD_LABELS}, False
        found = workload_of_path(path)
        if not found:
            return {}, True                      # a host process
        labels = {"namespace": "", "pod": found["pod"], "container": found.get("container", "")}
        if self.pods is None:
            return labels, True
        named = self.pods.names(found["pod"], found.get("container"))
        if named is None:
            return labels, False                 # not in the pod index (yet): UID and ID meanwhile
        return named
