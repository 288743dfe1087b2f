"""A real node for tests: containerd 1.6 and a kubelet v1.20.2, registered with a KubeCluster.

Pods on it run for real (runc containers from images imported into containerd), with the
kubelet's own cgroups, mounts, logs and status. What this machine allows shapes it
(docs/cluster-tier.md says more):

- Traffic only to 127.0.0.0/8 (or network namespaces the tests make): pods use ``hostNetwork``.
  containerd gets a CNI configuration directory of its own with a placeholder network whose plugin
  does not exist, so the runtime reports its network ready (the kubelet marks the node Ready) and a
  pod without hostNetwork fails to start, naming the missing plugin, instead of touching the host's
  network. In-cluster clients must be given ``KUBERNETES_SERVICE_HOST/PORT`` = the API server's
  loopback address (``KubeletNode.in_cluster_env()``): the kubelet sets them to the ``kubernetes``
  Service's ClusterIP, which nothing here routes.
- The node is named ``127.0.0.1``: a kubelet takes a hostname override that is an IP address as its
  InternalIP without the loopback check that ``--node-ip`` applies; so hostNetwork pods get pod IP
  127.0.0.1 (what Prometheus' pod discovery scrapes) and the API server reaches the kubelet (logs,
  exec) on loopback.
- One kubelet per machine at a time: the kubelet owns the ``kubepods`` cgroups and removes pod
  cgroups it does not know. ``start()`` takes a machine-wide lock (waiting for another session's
  node to stop). containerd's root (content, unpacked images) is kept between sessions under the
  image cache, so a warm start imports nothing.
- The kubelet sets six sysctls when it starts (vm.overcommit_memory, kernel.panic_on_oops, ...);
  they are put back once the node is Ready and again on stop.

``missing_reason()`` says what is missing to start one, if anything.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from tests.k8s.cluster import ClusterError, Component, KubeCluster, free_ports, kube_bin_dir
from tests.k8s.cluster import missing_reason as cluster_missing_reason

IMAGES_CACHE = Path(os.environ.get("PROBESET_IMAGES_CACHE") or "/var/cache/probeset-images")
NODE_NAME = "127.0.0.1"
NAMESPACE = "k8s.io"   # containerd namespace the CRI plugin uses
# Where the kubelet (v1.20, fixed paths) writes container logs, whatever its root directory.
POD_LOGS = Path("/var/log/pods")
CONTAINER_LOGS = Path("/var/log/containers")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Set by the kubelet's container manager at start (KernelTunableModify); restored by us.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
WORKDIR_PREFIX = "probeset-node-"
LOCK_PATH = Path("/run/lock/probeset-node.lock")
REQUIRED_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr")
IMAGE_KINDS = ("pause", "workload", "project")
_UID_IN_PARENS = re.compile(r"\(([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\)")
NO_REGISTRY = "http://127.0.0.1:9"   # nothing listens there (discard's port): see _start_containerd


class NodeError(ClusterError):
    pass


def images_manifest() -> dict:
    """tests/cluster/build-images' record of the cached images: {kind: {name, archive, digest, ...}}."""
    path = IMAGES_CACHE / "images.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def missing_reason(images: bool = True) -> str | None:
    """Why no node can be started here, or None (``images=False``: leave the images out)."""
    if os.geteuid() != 0:
        return "needs root (containerd, the kubelet, cgroups, mounts): run the cluster tier as root"
    reason = cluster_missing_reason()
    if reason:
        return reason
    for binary in ("kubelet", "kubectl"):
        path = kube_bin_dir() / binary
        if not os.access(path, os.X_OK):
            return f"{path} not built: run tests/k8s/build-kube (as root)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed: run scripts/setup --test (apt-get install containerd runc)"
    manifest = images_manifest()
    for kind in IMAGE_KINDS if images else ():
        record = manifest.get(kind)
        if not record or not Path(record["archive"]).is_file():
            return f"the {kind} image is not built: run tests/cluster/build-images (as root)"
    if cgroup2_root() is None:
        return "no cgroup v2 hierarchy mounted (the agent's pod attribution needs one)"
    return None


def cgroup2_root() -> Path | None:
    """The cgroup v2 mount (pure v2: /sys/fs/cgroup; hybrid, as here: /sys/fs/cgroup/unified)."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            return Path(parts[1])
    return None


def cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers and the v2 one)."""
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] in ("cgroup", "cgroup2"):
            out.append(Path(parts[1]))
    return out


def mounts_under(*roots: Path) -> list[str]:
    """Mount points at or below ``roots``, deepest first (the order to unmount them in)."""
    prefixes = [str(Path(r).resolve()) for r in roots]
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == p or point.startswith(p + "/") for p in prefixes):
            points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2


def unmount_all(*roots: Path) -> list[str]:
    """Unmount everything at or below ``roots`` (lazily if busy); returns what failed."""
    failed = []
    for _ in range(3):   # a mount can hide another at the same point
        points = mounts_under(*roots)
        if not points:
            break
        for point in points:
            if _libc.umount2(point.encode(), 0) != 0 and _libc.umount2(point.encode(), _MNT_DETACH) != 0:
                failed.append(f"{point}: {os.strerror(ctypes.get_errno())}")
    return failed


def remove_cgroup_tree(path: Path) -> bool:
    """rmdir a cgroup and everything below it, deepest first (cgroup directories hold only
    kernel files, which rmdir removes with them). False if one is still in use."""
    ok = True
    for dirpath, dirnames, _ in sorted(os.walk(path), key=lambda t: t[0].count("/"), reverse=True):
        del dirnames
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass
        except OSError:
            ok = False
    return ok


KEPT_MARK = "KEPT"   # in a work directory kept on purpose (keep_workdir): not stale


def _remove_stale_workdirs(base: Path) -> None:
    """Work directories of node processes killed without stopping: unmount and delete."""
    for path in base.glob(f"{WORKDIR_PREFIX}*-*"):
        pid = path.name.removeprefix(WORKDIR_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and not (path / KEPT_MARK).exists():
            unmount_all(path)
            shutil.rmtree(path, ignore_errors=True)


class KubeletNode:
    """containerd + kubelet on this machine, registered as node ``127.0.0.1`` with ``cluster``
    (which must have been created with ``KubeCluster(kubelets=True)`` and started).

    After ``start()``: ``name``, ``socket`` (containerd's CRI/gRPC socket), ``images``
    ({kind: image name} of what build-images made and containerd holds), ``api_host``/``api_port``
    (the API server's loopback address, for in-cluster clients), ``workdir`` (logs:
    ``containerd.log``, ``kubelet.log``), ``timings``. Use as a context manager, or ``stop()``.
    """

    def __init__(self, cluster: KubeCluster, *, workdir: Path | None = None, keep_workdir: bool = False,
                 containerd_root: Path | None = None, lock_timeout: float = 1800.0,
                 kubelet_config: dict | None = None, kubelet_args: Iterable[str] = ()):
        """``kubelet_config`` entries override the KubeletConfiguration below; ``kubelet_args`` are
        appended to its command line."""
        if not cluster.kubelets:
            raise NodeError("the cluster must be made with KubeCluster(kubelets=True)")
        self.cluster = cluster
        self.name = NODE_NAME
        base = Path(tempfile.gettempdir())
        _remove_stale_workdirs(base)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(
            tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-", dir=base))
        self.keep_workdir = keep_workdir
        self.containerd_root = Path(containerd_root) if containerd_root else IMAGES_CACHE / "containerd"
        self.containerd_state = Path("/run/probeset-node/containerd")
        self.socket = self.containerd_state / "containerd.sock"
        self.kubelet_root = self.workdir / "kubelet"
        self.lock_timeout = lock_timeout
        self.kubelet_config_overrides = dict(kubelet_config or {})
        self.kubelet_args = list(kubelet_args)
        self.images: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self.components: list[Component] = []
        self._lock_fd: int | None = None
        self._sysctls: dict[str, str] = {}
        self._logs_before: set[str] = set()
        self._containers_logs_before: set[str] = set()
        self.kubelet_port = 0
        self.healthz_port = 0

    @property
    def api_host(self) -> str:
        return "127.0.0.1"

    @property
    def api_port(self) -> int:
        return self.cluster.port

    def in_cluster_env(self) -> list[dict]:
        """Container env entries pointing in-cluster clients at the API server's loopback address
        (instead of the ClusterIP the kubelet puts there). A pod's own env wins over the kubelet's."""
        return [{"name": "KUBERNETES_SERVICE_HOST", "value": self.api_host},
                {"name": "KUBERNETES_SERVICE_PORT", "value": str(self.api_port)}]

    # ---- lifecycle ----

    def __enter__(self) -> "KubeletNode":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, ready_timeout: float = 120.0) -> None:
        """Lock the machine's node slot, start containerd, import the images it lacks, start the
        kubelet and wait until the Node is Ready. On failure, stop everything and raise NodeError
        with the end of the failing component's log."""
        t0 = time.monotonic()
        try:
            self._lock()
            self.timings["lock"] = time.monotonic() - t0
            self._logs_before = set(os.listdir(POD_LOGS)) if POD_LOGS.is_dir() else set()
            self._containers_logs_before = set(os.listdir(CONTAINER_LOGS)) if CONTAINER_LOGS.is_dir() else set()
            self._sysctls = {name: Path("/proc/sys", name).read_text() for name in KUBELET_SYSCTLS
                             if Path("/proc/sys", name).exists()}
            self._start_containerd(ready_timeout)
            self.timings["containerd_ready"] = time.monotonic() - t0
            self._remove_leftover_containers()
            self._import_images()
            self.timings["images_imported"] = time.monotonic() - t0
            self._start_kubelet(ready_timeout)
            self.timings["node_ready"] = time.monotonic() - t0
            self._restore_sysctls()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the kubelet, kill every pod's containers, stop containerd, and remove what pods
        left: mounts, pod cgroups, log directories; put the sysctls back; release the lock."""
        if self._lock_fd is None:
            return
        try:
            kubelet = self._component("kubelet")
            if kubelet:
                kubelet.stop()
            if self._component("containerd"):
                self._remove_leftover_containers()
            for component in reversed(self.components):
                component.stop()
            self.components.clear()
            unmount_all(self.kubelet_root, self.containerd_state, self.containerd_root)
            self._remove_pod_cgroups()
            self._remove_pod_logs()
            self._restore_sysctls()
            if self._own_workdir and not self.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            elif self._own_workdir:
                (self.workdir / KEPT_MARK).write_text("kept for inspection (keep_workdir); delete by hand\n")
        finally:
            os.close(self._lock_fd)
            self._lock_fd = None

    def check_running(self) -> None:
        for c in self.components:
            if not c.running():
                raise NodeError(f"{c.name} exited with code {c.proc.returncode}; "
                                f"end of {c.log_path}:\n{c.log_tail()}")

    def _component(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)

    def _lock(self) -> None:
        LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    os.close(fd)
                    holder = LOCK_PATH.read_text().strip() or "another process"
                    raise NodeError(f"another test node runs on this machine ({holder}) and did not stop "
                                    f"within {self.lock_timeout:.0f} s; one kubelet per machine")
                time.sleep(1)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}, work dir {self.workdir}\n".encode())
        self._lock_fd = fd

    # ---- containerd ----

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        """Run ``ctr`` against this node's containerd, in the CRI's namespace."""
        result = subprocess.run(["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *args],
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def _start_containerd(self, timeout: float) -> None:
        # An own CNI configuration: one placeholder network whose plugin is not installed (see the
        # module's doc). Never /etc/cni/net.d: podman's bridge network lives there.
        cni_conf, cni_bin = self.workdir / "cni/net.d", self.workdir / "cni/bin"
        cni_conf.mkdir(parents=True)
        cni_bin.mkdir(parents=True)
        (cni_conf / "10-host-network-only.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "host-network-only",
            "plugins": [{"type": "probeset-host-network-only"}]}) + "\n")
        self.containerd_root.mkdir(parents=True, exist_ok=True)
        self.containerd_state.mkdir(parents=True, exist_ok=True)
        # What differs from `containerd config default` (containerd merges a file over its defaults;
        # the result is in containerd.effective.toml).
        config = self.workdir / "containerd.toml"
        config.write_text(f'''version = 2
root = "{self.containerd_root}"
state = "{self.containerd_state}"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{self.containerd_root}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # The kubelet asks oom_score_adj -998 for sandboxes; without CAP_SYS_RESOURCE (this sandbox)
  # runc then fails every sandbox ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  sandbox_image = "registry.k8s.io/pause:3.6"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
''')
        dump = subprocess.run(["containerd", "--config", str(config), "config", "dump"],
                              capture_output=True, text=True)
        (self.workdir / "containerd.effective.toml").write_text(dump.stdout + dump.stderr)
        # No registry is reachable and no traffic may leave: containerd's registry client goes
        # through a "proxy" on a closed loopback port, so an image that was not imported fails to
        # pull at once ("proxyconnect tcp: dial tcp 127.0.0.1:9: connect: connection refused"),
        # without even a DNS lookup of the registry. (containerd 1.6 has no default hosts.toml.)
        proxy = [f"{name}={NO_REGISTRY}" for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")]
        containerd = self._add("containerd", ["env", *proxy, "NO_PROXY=", "no_proxy=",
                                              "containerd", "--config", str(config)], stop_timeout=15)
        deadline = time.monotonic() + timeout
        while True:
            if not containerd.running():
                raise NodeError(f"containerd exited with code {containerd.proc.returncode}; "
                                f"end of {containerd.log_path}:\n{containerd.log_tail()}")
            if self.socket.exists() and subprocess.run(
                    ["ctr", "--address", str(self.socket), "version"], capture_output=True).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise NodeError(f"containerd: no answer on {self.socket} after {timeout:.0f} s; "
                                f"end of {containerd.log_path}:\n{containerd.log_tail()}")
            time.sleep(0.1)

    def _remove_leftover_containers(self) -> None:
        """Kill and delete every container in the CRI's namespace: at start, those a killed session
        left (their shims outlive it); at stop, every pod's (the kubelet does not stop pods when it
        stops)."""
        for task in self.ctr("tasks", "ls", "-q", check=False).split():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            tasks = self.ctr("tasks", "ls", check=False).splitlines()[1:]
            if all("STOPPED" in t for t in tasks):
                break
            time.sleep(0.1)
        for task in self.ctr("tasks", "ls", "-q", check=False).split():
            self.ctr("tasks", "delete", "--force", task, check=False)
        containers = self.ctr("containers", "ls", "-q", check=False).split()
        if containers:
            self.ctr("containers", "delete", *containers, check=False)

    def _import_images(self) -> None:
        """Import each cached image archive unless containerd already has that name at that
        manifest digest. Other images go first, garbage-collected at once (--sync): the root is
        kept between sessions and would otherwise grow by an image per source edit."""
        manifest = images_manifest()
        wanted = {manifest[kind]["digest"] for kind in IMAGE_KINDS}
        # This root holds only the cached images: any reference to another digest is a previous
        # build's (or the CRI's image-ID reference to one).
        stale = [name for name, digest in self._image_refs().items() if digest not in wanted]
        if stale:
            self.ctr("images", "rm", "--sync", *stale)
        have = self._image_refs()
        for kind in IMAGE_KINDS:
            record = manifest[kind]
            self.images[kind] = record["name"]
            if have.get(record["name"]) == record["digest"]:
                continue
            t = time.monotonic()
            self.ctr("images", "import", record["archive"])
            self.timings[f"import_{kind}"] = time.monotonic() - t

    def _image_refs(self) -> dict[str, str]:
        """{image reference: manifest digest} in containerd's k8s.io namespace."""
        refs = {}
        for line in self.ctr("images", "ls").splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3:
                refs[parts[0]] = parts[2]
        return refs

    # ---- kubelet ----

    def kubelet_configuration(self) -> dict:
        return {
            "kind": "KubeletConfiguration", "apiVersion": "kubelet.config.k8s.io/v1beta1",
            # Served on loopback, on free ports: the API server reaches it at the InternalIP.
            "address": "127.0.0.1", "port": self.kubelet_port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": self.healthz_port,
            # Clients: the API server with its kubelet-client certificate (system:masters), bearer
            # tokens checked with the API server; what they may do, asked of the API server too.
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.cluster.ca_file)}},
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",   # no systemd here
            "failSwapOn": False,
            # This shared machine's disk may be fuller than a kubelet likes: evict only when nearly full.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "nodefs.inodesFree": "1%", "imagefs.available": "1%"},
            # Never garbage-collect the locally built images (nothing can pull them again).
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            # No iptables chains, no hairpin on the host's interfaces.
            "makeIPTablesUtilChains": False, "hairpinMode": "none",
            "clusterDomain": "cluster.local", "resolvConf": "/etc/resolv.conf",
            "registerNode": True, "serializeImagePulls": False,
            "nodeStatusUpdateFrequency": "4s", "syncFrequency": "10s",
            "rotateCertificates": False, "serverTLSBootstrap": False,
            **self.kubelet_config_overrides,
        }

    def _start_kubelet(self, timeout: float) -> None:
        w = self.workdir
        user = f"system:node:{self.name}"
        crt, key = self.cluster.client_certificate(user, ["system:nodes"], directory=w, stem="kubelet-client")
        kubeconfig = self.cluster.write_kubeconfig(w / "kubelet.kubeconfig", user, certificate=crt, key=key)
        self.kubelet_port, self.healthz_port = free_ports(2)
        config = w / "kubelet-config.json"   # JSON is YAML
        config.write_text(json.dumps(self.kubelet_configuration(), indent=2) + "\n")
        self.kubelet_root.mkdir(parents=True, exist_ok=True)
        kubelet = self._add("kubelet", [
            # The AWS SDK in the kubelet's ECR credential provider would ask 169.254.169.254.
            "env", "AWS_EC2_METADATA_DISABLED=true", str(kube_bin_dir() / "kubelet"),
            f"--config={config}", f"--kubeconfig={kubeconfig}",
            "--container-runtime=remote", f"--container-runtime-endpoint=unix://{self.socket}",
            f"--hostname-override={self.name}",   # an IP: becomes the InternalIP (see the module's doc)
            f"--root-dir={self.kubelet_root}", f"--cert-dir={w / 'kubelet-pki'}",
            "--v=2", *self.kubelet_args,
        ], stop_timeout=15)
        from kubernetes import client
        with self.cluster.api_client() as api:
            core = client.CoreV1Api(api)

            def ready() -> bool:
                try:
                    node = core.read_node(self.name)
                except client.ApiException as e:
                    if e.status == 404:
                        return False
                    raise
                return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or ())
            deadline = time.monotonic() + timeout
            while not ready():
                for c in self.components:
                    if not c.running():
                        raise NodeError(f"{c.name} exited with code {c.proc.returncode} before the node was "
                                        f"Ready; end of {c.log_path}:\n{c.log_tail()}")
                if time.monotonic() > deadline:
                    raise NodeError(f"node {self.name} not Ready after {timeout:.0f} s; end of "
                                    f"{kubelet.log_path}:\n{kubelet.log_tail()}")
                time.sleep(0.2)

    def _add(self, name: str, argv: list[str], stop_timeout: float) -> Component:
        component = Component(name, argv, self.workdir / f"{name}.log", stop_timeout)
        self.components.append(component)
        component.start()
        return component

    # ---- clean-up of what pods leave ----

    def _restore_sysctls(self) -> None:
        for name, value in self._sysctls.items():
            try:
                path = Path("/proc/sys", name)
                if path.read_text() != value:
                    path.write_text(value)
            except OSError:
                pass

    def _remove_pod_cgroups(self) -> None:
        """Pod cgroups under kubepods in every hierarchy, for the pods this kubelet ran (from its
        log, and those left in the v1 hierarchies, which only a real kubelet makes): the kubelet
        v1.20 removes a deleted pod's v1 cgroups but not its v2 directory (runc made that one, in
        this hybrid layout), and none when it is stopped. tests/k8s/fake_kubelet.py's v2-only
        pods are left alone."""
        hierarchies = cgroup_hierarchies()
        v2 = cgroup2_root()
        pods: set[str] = set()
        for h in hierarchies:
            if h == v2:
                continue
            for qos in ("", "besteffort", "burstable"):
                base = h / "kubepods" / qos
                if base.is_dir():
                    pods.update(p.name for p in base.iterdir() if p.is_dir() and p.name.startswith("pod"))
        pods.update(self._pod_uids_seen())
        for h in hierarchies:
            for qos in ("", "besteffort", "burstable"):
                for pod in pods:
                    path = h / "kubepods" / qos / pod
                    if path.is_dir():
                        remove_cgroup_tree(path)
            for qos in ("besteffort", "burstable", ""):   # the QoS cgroups, if nothing else is there
                try:
                    (h / "kubepods" / qos).rmdir()
                except OSError:
                    pass

    def _pod_uids_seen(self) -> set[str]:
        """pod<uid> names of every pod the kubelet was given (its log: `SyncLoop (ADD, "api"):
        "name_namespace(uid)", ...`) and of those whose log directories appeared meanwhile."""
        out = set()
        try:
            log = (self.workdir / "kubelet.log").read_text(errors="replace")
        except OSError:
            log = ""
        for line in log.splitlines():
            if "SyncLoop (ADD" in line:
                out.update("pod" + uid for uid in _UID_IN_PARENS.findall(line))
        if POD_LOGS.is_dir():
            for entry in set(os.listdir(POD_LOGS)) - self._logs_before:
                out.add("pod" + entry.rsplit("_", 1)[-1])
        return out

    def _remove_pod_logs(self) -> None:
        if CONTAINER_LOGS.is_dir():
            for entry in set(os.listdir(CONTAINER_LOGS)) - self._containers_logs_before:
                (CONTAINER_LOGS / entry).unlink(missing_ok=True)
        if POD_LOGS.is_dir():
            for entry in set(os.listdir(POD_LOGS)) - self._logs_before:
                shutil.rmtree(POD_LOGS / entry, ignore_errors=True)

    # ---- looking at pods ----

    def container_id(self, pod, container: str) -> str:
        """The container ID (64 hex digits) of ``container`` in ``pod`` (a V1Pod) from its status."""
        for status in (pod.status.container_statuses or []) + (pod.status.init_container_statuses or []):
            if status.name == container and status.container_id:
                return status.container_id.split("://", 1)[-1]
        raise NodeError(f"pod {pod.metadata.namespace}/{pod.metadata.name} has no running container {container!r}")

    def container_cgroup(self, pod, container: str) -> Path:
        """The container's cgroup v2 directory, as the kubelet (cgroupfs driver) and runc make it:
        <v2 root>/kubepods[/besteffort|/burstable]/pod<uid>/<container id>."""
        qos = {"BestEffort": "besteffort", "Burstable": "burstable"}.get(pod.status.qos_class, "")
        path = cgroup2_root() / "kubepods" / qos / f"pod{pod.metadata.uid}" / self.container_id(pod, container)
        return Path(os.path.normpath(path))

    def container_pids(self, pod, container: str) -> list[int]:
        """Host pids of the container's processes (from its cgroup)."""
        procs = self.container_cgroup(pod, container) / "cgroup.procs"
        return [int(p) for p in procs.read_text().split()]

    def pod_log(self, pod, container: str) -> str:
        """What the container wrote (the kubelet's CRI log file: one "<time> <stream> <tag> <text>"
        line per line; only the text is returned). Read on the node, as `kubectl logs` would."""
        directory = POD_LOGS / f"{pod.metadata.namespace}_{pod.metadata.name}_{pod.metadata.uid}" / container
        lines = []
        for path in sorted(directory.glob("*.log"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1):
            for line in path.read_text(errors="replace").splitlines():
                parts = line.split(" ", 3)
                lines.append(parts[3] if len(parts) == 4 else line)
        return "\n".join(lines)

    def signal_container(self, pod, container: str, sig: int = signal.SIGUSR1) -> int:
        """Send ``sig`` to the container's first process (its PID 1); returns its host pid."""
        for pid in self.container_pids(pod, container):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
            if nspid and nspid[-1] == "1":
                os.kill(pid, sig)
                return pid
        raise NodeError(f"no PID 1 among the processes of {self.container_cgroup(pod, container)}")


def pod_manifest(name: str, image: str, args: list[str] | None = None, *, command: list[str] | None = None,
                 env: list[dict] | None = None, security_context: dict | None = None,
                 pod_security_context: dict | None = None, volumes: list[dict] | None = None,
                 volume_mounts: list[dict] | None = None, restart_policy: str = "Never",
                 container: str = "main", host_pid: bool = False) -> dict:
    """A one-container pod as the node can run it: hostNetwork (no pod network here), the image
    never pulled (only imported images exist), deleted at once (no grace period)."""
    spec_container = {"name": container, "image": image, "imagePullPolicy": "Never"}
    for key, value in (("args", args), ("command", command), ("env", env),
                       ("securityContext", security_context), ("volumeMounts", volume_mounts)):
        if value is not None:
            spec_container[key] = value
    spec = {"hostNetwork": True, "hostPID": host_pid, "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 0, "containers": [spec_container],
            "automountServiceAccountToken": False}
    if pod_security_context is not None:
        spec["securityContext"] = pod_security_context
    if volumes is not None:
        spec["volumes"] = volumes
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
