"""Who caused an event: cgroup id (recorded in the kernel) -> cgroup v2 path -> pod UID and
container ID, from the kubelet's cgroup naming (systemd and cgroupfs drivers; containerd, CRI-O,
docker). Standalone mode stops there: `pod` is the pod UID, `container` the container ID and
`namespace` empty (mapping them to names from the API server is the cluster-mode step).

A cgroup id is the inode number of the cgroup's directory in the cgroup v2 hierarchy.
"""

from __future__ import annotations

import os
import re
import threading
import time

# kubepods-burstable-pod1234abcd_5678_....slice (systemd) or pod1234abcd-5678-... (cgroupfs)
_POD_RE = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
# cri-containerd-<id>.scope, crio-<id>.scope, docker-<id>.scope (systemd) or <id> (cgroupfs)
_CONTAINER_RE = re.compile(r"^(?:(?:cri-containerd|crio|docker)-)?([0-9a-f]{64})(?:\.scope)?$")


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
    """{"pod": uid, "container": id} for a kubelet cgroup path; empty for host processes."""
    if "kubepods" not in path:
        return {}
    out = {}
    for part in path.split("/"):
        m = _POD_RE.search(part)
        if m:
            out["pod"] = m.group(1).replace("_", "-")
        m = _CONTAINER_RE.match(part)
        if m and "pod" in out:
            out["container"] = m.group(1)
    return out


class CgroupAttribution:
    """cgroup id -> workload labels, by scanning the cgroup v2 tree when an unknown id appears (at
    most once per `rescan_interval` seconds). A cgroup that vanished keeps the labels last seen;
    an id not found (yet) gives None, so callers do not cache its empty labels."""

    def __init__(self, root: str | None = None, rescan_interval: float = 10.0):
        self.root = root if root is not None else cgroup2_root()
        self.rescan_interval = rescan_interval
        self._paths: dict[int, str] = {}
        self._last_scan = float("-inf")
        self._lock = threading.Lock()

    def _scan(self) -> None:
        paths = {}
        for dirpath, _dirs, _files in os.walk(self.root):
            try:
                paths[os.stat(dirpath).st_ino] = "/" + os.path.relpath(dirpath, self.root).lstrip(".")
            except OSError:
                continue   # removed while walking
        self._paths.update(paths)
        self._last_scan = time.monotonic()

    def workload(self, cgroup_id: int) -> dict[str, str] | None:
        if not self.root:
            return {}
        with self._lock:
            path = self._paths.get(cgroup_id)
            if path is None and time.monotonic() - self._last_scan >= self.rescan_interval:
                self._scan()
                path = self._paths.get(cgroup_id)
        return workload_of_path(path) if path is not None else None
