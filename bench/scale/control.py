"""The real parts of the scale simulation: a KubeCluster (etcd, kube-apiserver, controllers,
scheduler) with an audit log, what the Helm chart installs (CRD, kopf peering, RBAC), N Node
objects, the real operator as a process with its ServiceAccount's token, and the readings: process
CPU and memory from /proc, the API server's request counts per user from its audit log, etcd's
database size from its /metrics."""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import datetime
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common import free_port  # noqa: E402  (bench/common.py: simulate.py puts bench/ on the path)
from probeset_api.kube import Kube, KubeError

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_NS = "probeset-system"
GROUP, VERSION, PLURAL = "probeset.io", "v1alpha1", "probesets"
CLK_TCK = os.sysconf("SC_CLK_TCK")

AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Request
  users: ["system:serviceaccount:probeset-system:probeset-operator"]
  verbs: ["patch"]
  resources: [{group: probeset.io, resources: ["probesets/status", "probesets"]}]
- level: Request
  users: ["system:serviceaccount:probeset-system:probeset-agent"]
  verbs: ["patch"]
  resources: [{group: probeset.io, resources: ["probesetnodes/status"]}]
- level: Metadata
"""

# Users of the API, as the audit log names them.
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NS}:probeset-operator"
AGENT_USER = f"system:serviceaccount:{OPERATOR_NS}:probeset-agent"
ADMIN_USER = "admin"


def who(user: str) -> str:
    if user == OPERATOR_USER:
        return "operator"
    if user == AGENT_USER:
        return "agents"
    if user == ADMIN_USER:
        return "harness"
    return "control-plane"


# --- processes ----------------------------------------------------------------------------------

def proc_cpu(pid: int) -> float:
    """utime + stime of a process (its threads included), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def proc_threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


class Usage:
    """CPU seconds and RSS of named processes between two readings."""

    def __init__(self, pids: dict[str, int]):
        self.pids = {k: v for k, v in pids.items() if v}

    def read(self) -> dict:
        out = {}
        for name, pid in self.pids.items():
            try:
                out[name] = {"cpu_s": proc_cpu(pid), "rss": proc_rss(pid)}
            except OSError:
                out[name] = {"cpu_s": None, "rss": None}
        out["_t"] = time.monotonic()
        return out

    @staticmethod
    def delta(before: dict, after: dict) -> dict:
        out = {"seconds": round(after["_t"] - before["_t"], 2)}
        for name in before:
            if name == "_t":
                continue
            b, a = before[name], after[name]
            if a["cpu_s"] is None or b["cpu_s"] is None:
                continue
            out[name] = {"cpu_s": round(a["cpu_s"] - b["cpu_s"], 2), "rss_mb": round(a["rss"] / 2**20, 1)}
        return out


# --- the cluster --------------------------------------------------------------------------------

def start_cluster(workdir: Path):
    """A KubeCluster with an audit log; the node lifecycle controller off (no kubelet heartbeats
    here: it would mark every Node Unknown and taint it after 40 s) and with it the admission
    plugin that taints new Nodes not-ready until that controller sees them Ready; faster controller clients,
    so that the DaemonSet's N pods are created and bound in minutes."""
    sys.path.insert(0, str(ROOT))
    from tests.k8s.cluster import KubeCluster, missing_reason
    reason = missing_reason()
    if reason:
        raise SystemExit(f"no API server: {reason}")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "audit-policy.yaml").write_text(AUDIT_POLICY)
    qps = ["--kube-api-qps=200", "--kube-api-burst=400"]
    cluster = KubeCluster(
        workdir=workdir / "kube",
        apiserver_args=[f"--audit-policy-file={workdir / 'audit-policy.yaml'}",
                        f"--audit-log-path={workdir / 'audit.log'}", "--audit-log-mode=batch",
                        "--audit-log-maxsize=100000", "--audit-log-maxbackup=0",
                        # Nodes are created Ready, and nothing would lift the not-ready taint this
                        # plugin puts on a new Node (that is the node lifecycle controller's job).
                        "--disable-admission-plugins=TaintNodesByCondition"],
        controller_manager_args=["--controllers=*,-nodelifecycle", *qps],
        scheduler_args=qps,
        keep_workdir=True)
    (workdir / "kube").mkdir(parents=True, exist_ok=True)
    cluster.start(ready_timeout=120)
    return cluster


def tls_for(cluster) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cluster.ca_file))


def admin_kube(cluster) -> Kube:
    return Kube(cluster.server, tls_for(cluster), cluster.token)


def install(cluster) -> None:
    """What the Helm chart installs: the operator namespace, our CRD, kopf's peering CRD and
    object, the RBAC of operator and agents (operator/probeset_operator/rbac.py)."""
    from kubernetes import client, utils
    from kubernetes.client.exceptions import ApiException
    from probeset_api.crd import build_crds
    from probeset_operator.rbac import peering_objects, role_objects
    with cluster.api_client() as api:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": OPERATOR_NS}})
        peering_crd, peering = peering_objects()
        ext = client.ApiextensionsV1Api(api)
        for item in (*build_crds(), peering_crd):
            ext.create_custom_resource_definition(item)
        deadline = time.monotonic() + 60
        names = [c["metadata"]["name"] for c in build_crds()] + [peering_crd["metadata"]["name"]]
        while True:
            conds = [ext.read_custom_resource_definition(n).status.conditions or [] for n in names]
            if all(any(c.type == "Established" and c.status == "True" for c in cs) for cs in conds):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("CRDs not established")
            time.sleep(0.2)
        for _ in range(100):
            try:
                client.CustomObjectsApi(api).create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings",
                                                                          peering)
                break
            except ApiException as e:
                if e.status != 404:
                    raise
                time.sleep(0.1)
        for obj in role_objects(OPERATOR_NS):
            utils.create_from_dict(api, obj)


def service_account_token(cluster, sa: str, timeout: float = 60) -> str:
    from kubernetes import client
    deadline = time.monotonic() + timeout
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        while True:
            secrets = core.read_namespaced_service_account(sa, OPERATOR_NS).secrets
            if secrets:
                data = core.read_namespaced_secret(secrets[0].name, OPERATOR_NS).data
                if data and data.get("token"):
                    return base64.b64decode(data["token"]).decode()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no token for ServiceAccount {sa}")
            time.sleep(0.2)


def token_kubeconfig(cluster, token: str, user: str, path: Path) -> Path:
    return cluster.write_kubeconfig(path, user, token=token)


def node_name(i: int) -> str:
    """EKS-style names (ip-10-x-y-z.<region>.compute.internal, 38-42 characters): in the design
    before ProbeSetNodes, the name was written twice per node into the ProbeSet (status.agents and
    managedFields)."""
    return f"ip-10-{i // 65536 % 256}-{i // 256 % 256}-{i % 256}.eu-west-1.compute.internal"


def node_labels(i: int, name: str) -> dict:
    return {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "sim.probeset.io/pool": "a" if i % 2 == 0 else "b", "topology.kubernetes.io/zone": f"zone-{i % 3}"}


def create_nodes(kube: Kube, count: int, start: int = 0, threads: int = 8) -> list[str]:
    """`count` Node objects with a Ready condition and allocatable resources (nothing posts
    heartbeats; the node lifecycle controller is off)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def one(i: int) -> str:
        name = node_name(i)
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": node_labels(i, name)},
                "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                           "lastHeartbeatTime": now, "lastTransitionTime": now}],
                           "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                           "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"}}}
        for attempt in range(5):
            try:
                kube.post("/api/v1/nodes", body)
                return name
            except KubeError as e:
                if e.status == 409:
                    return name
                if attempt == 4:
                    raise
                time.sleep(1)
        return name
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(start, start + count)))


def count_bound_agent_pods(kube: Kube) -> tuple[int, int]:
    """(agent pods, of which bound to a node)."""
    items = kube.get(f"/api/v1/namespaces/{OPERATOR_NS}/pods",
                     {"labelSelector": "app.kubernetes.io/component=agent"}).get("items") or []
    return len(items), sum(1 for p in items if (p.get("spec") or {}).get("nodeName"))


def mark_agent_pods_running(kube: Kube, threads: int = 8) -> int:
    """Play each node's kubelet for its agent pod: status Running and Ready, as once its container
    started (the operator counts a node's report only while its agent pod lives), as
    tests/k8s/operator_env.py's agent_pod_running does for one pod. Returns how many were marked."""
    items = kube.get(f"/api/v1/namespaces/{OPERATOR_NS}/pods",
                     {"labelSelector": "app.kubernetes.io/component=agent"}).get("items") or []

    def one(pod: dict) -> None:
        name, image = pod["metadata"]["name"], pod["spec"]["containers"][0]["image"]
        body = {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                           "containerStatuses": [{"name": pod["spec"]["containers"][0]["name"], "ready": True,
                                                  "restartCount": 0, "image": image, "imageID": "",
                                                  "containerID": "containerd://" + "0" * 64,
                                                  "state": {"running": {}}}]}}
        for attempt in range(5):
            try:
                kube.patch(f"/api/v1/namespaces/{OPERATOR_NS}/pods/{name}/status", body,
                           "application/strategic-merge-patch+json")
                return
            except KubeError:
                if attempt == 4:
                    raise
                time.sleep(1)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, items))
    return len(items)


class Operator:
    """`python -m probeset_cli operator` with the operator ServiceAccount's kubeconfig, as
    tests/k8s/operator_env.py's start_operator runs it."""

    def __init__(self, kubeconfig: Path, log_path: Path, argv: list[str] | None = None, **env):
        self.log_path = log_path
        self.log = open(log_path, "w")
        environ = dict(os.environ, KUBECONFIG=str(kubeconfig), PROBESET_OPERATOR_NAMESPACE=OPERATOR_NS,
                       PROBESET_AGENT_IMAGE="registry.example/probeset:sim", PROBESET_PEERING="probeset", **env)
        environ.pop("PROBESET_NODE_WIDE_NAMESPACES", None)
        environ["PYTHONPATH"] = os.pathsep.join(str(ROOT / d) for d in ("agent", "api", "operator", "cli"))
        self.proc = subprocess.Popen(argv or [sys.executable, "-m", "probeset_cli", "operator", "--liveness",
                                              f"http://127.0.0.1:{free_port()}/healthz"],
                                     env=environ, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text()[-chars:]
        except OSError:
            return ""


# --- the API server's and etcd's own figures ----------------------------------------------------

def apiserver_metrics(cluster) -> dict[str, float]:
    """apiserver_request_total summed by 'VERB resource[/subresource]' (every client together)."""
    request = urllib.request.Request(f"{cluster.server}/metrics", headers={"Authorization": f"Bearer {cluster.token}"})
    with urllib.request.urlopen(request, timeout=30, context=tls_for(cluster)) as r:
        text = r.read().decode()
    out: dict[str, float] = collections.Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        key = f"{labels.get('verb')} {labels.get('resource')}" + (f"/{labels['subresource']}"
                                                                  if labels.get("subresource") else "")
        out[key] += float(line.rsplit(" ", 1)[1])
    return dict(out)


def etcd_metrics(cluster) -> dict[str, float]:
    wanted = ("etcd_mvcc_db_total_size_in_bytes", "etcd_mvcc_db_total_size_in_use_in_bytes", "etcd_mvcc_put_total",
              "etcd_server_quota_backend_bytes", "etcd_debugging_mvcc_db_compaction_keys_total",
              "etcd_mvcc_txn_total", "etcd_mvcc_range_total")
    out = {}
    with urllib.request.urlopen(f"{cluster.etcd_url}/metrics", timeout=30) as r:
        for line in r.read().decode().splitlines():
            name = line.split(" ")[0].split("{")[0]
            if name in wanted and not line.startswith("#"):
                out[name] = float(line.rsplit(" ", 1)[1])
    return out


def _stamp(text: str) -> float:
    return datetime.datetime.strptime(text[:26].rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f").replace(
        tzinfo=datetime.timezone.utc).timestamp()


class AuditLog:
    """Requests per user (operator, agents, harness, control-plane) and 'VERB resource[/sub]' in a
    time window, from the API server's audit log (one record per request: its ResponseComplete
    stage, or ResponseStarted for a watch, which stays open)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.records: list[tuple[float, str, str, int, float]] = []   # (time, who, what, code, seconds)
        self.patched: list[tuple[float, str]] = []               # (time, status keys the operator patched)

    def read(self) -> None:
        if not self.path.exists():
            return
        with open(self.path) as f:
            f.seek(self.offset)
            while True:
                line = f.readline()
                if not line or not line.endswith("\n"):
                    break
                self.offset = f.tell()
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                verb, stage = e.get("verb", ""), e.get("stage")
                if (verb == "watch") != (stage == "ResponseStarted"):
                    continue
                ref = e.get("objectRef") or {}
                what = f"{verb} {ref.get('resource', e.get('requestURI', '?').split('?')[0])}" + (
                    f"/{ref['subresource']}" if ref.get("subresource") else "")
                body = e.get("requestObject")
                if isinstance(body, dict):
                    keys = sorted(k for part in ("status", "metadata") for k in (body.get(part) or {}))
                    self.patched.append((_stamp(e["stageTimestamp"]), f"{what}: {','.join(keys)}"))
                done = _stamp(e.get("stageTimestamp") or e["requestReceivedTimestamp"])
                self.records.append((done, who((e.get("user") or {}).get("username", "")), what,
                                     (e.get("responseStatus") or {}).get("code", 0),
                                     done - _stamp(e["requestReceivedTimestamp"])))

    def window(self, t0: float, t1: float) -> dict:
        """{who: {"total": n, "VERB resource": n, ...}} for wall-clock times [t0, t1)."""
        self.read()
        out: dict = {}
        latencies: dict = collections.defaultdict(list)
        for t, user, what, code, seconds in self.records:
            if t0 <= t < t1:
                d = out.setdefault(user, collections.Counter())
                d["total"] += 1
                d[what] += 1
                if code >= 400:
                    d[f"errors {code}"] += 1
                if what.startswith("patch"):
                    latencies[f"{user}: {what}"].append(seconds)
        for what, xs in latencies.items():
            xs.sort()
            out.setdefault("patch latency (s): p50 p90 max", {})[what] = [
                round(xs[len(xs) // 2], 3), round(xs[int(len(xs) * 0.9)], 3), round(xs[-1], 3)]
        patched = collections.Counter(what for t, what in self.patched if t0 <= t < t1)
        if patched:
            out["operator patches (keys)"] = patched
        return {k: dict(v) for k, v in out.items()}

    def forget_before(self, t: float) -> None:
        self.records = [r for r in self.records if r[0] >= t]


def kubectl(cluster, *args: str, timeout: float = 120) -> tuple[str, float]:
    """kubectl's output (build-kube caches v1.20.2 next to the API server) and the seconds it took."""
    binary = Path("/var/cache/probeset-kube/bin/kubectl")
    if not binary.exists():
        return "(no kubectl in /var/cache/probeset-kube/bin)", 0.0
    t0 = time.monotonic()
    r = subprocess.run([str(binary), "--kubeconfig", str(cluster.kubeconfig), *args], capture_output=True, text=True,
                       timeout=timeout)
    return (r.stdout + r.stderr).rstrip(), time.monotonic() - t0
