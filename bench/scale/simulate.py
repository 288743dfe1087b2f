"""N simulated node agents against a real kube-apiserver + etcd and the real operator: the figures of
docs/scale.md.

For each N: a fresh KubeCluster (tests/k8s/cluster.py: etcd, kube-apiserver v1.20.2 with an audit
log, controller manager without the node lifecycle controller, scheduler), the CRD, kopf's
peering and the RBAC of operator and agents; N Node objects (Ready, labelled: half of them
sim.probeset.io/pool=a); the real operator (`python -m probeset_cli operator`, its
ServiceAccount's token); two ProbeSets in namespace `sim`: `all` (3 probes, every node) and `half`
(2 probes, nodeSelector pool=a). The operator makes the agent DaemonSet, the DaemonSet controller
its N pods, the scheduler binds them (no kubelet: they stay Pending, as the operator's summary
only needs them bound). Then N simulated agents (simagents.py: the real NodeAgent with a fake
BPF program) start, and the run measures:

  converge   time from the agents' start to both sets' summary being correct on the CR
  rest       a quiet minute: requests per user and minute, operator/API server/etcd CPU
  change     K spec edits of `all` (a probe replaced): per edit, time until observedGeneration
             and until the summary (nodes.ready = N, probes k/k, Ready=True at that generation) is
             on the CR; requests per user; watch events each agent receives; CPU; etcd growth
  size       the ProbeSet `all` as stored (JSON bytes; status; managedFields), one ProbeSetNode
  kubectl    `kubectl get probesets -A` and its time
  lists      what the agents' re-lists (after a 410) cost the API server at this N

  .venv/bin/python bench/scale/simulate.py --nodes 100 1000 5000 --workers 32 --changes 3 \
      --json bench/scale/results/probesetnode.json
  .venv/bin/python bench/scale/simulate.py --nodes 100 --mode threads     # each agent its own watches

Every process it starts (etcd, API server, controllers, operator) is stopped at the end, also on
failure or Ctrl-C; each phase has a time limit (--timeout for the whole of one N).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT / "bench"), str(ROOT / "agent"), str(ROOT / "api"), str(ROOT / "operator"),
                str(ROOT)]

import control  # noqa: E402
from control import GROUP, OPERATOR_NS, PLURAL, VERSION, AuditLog, Usage  # noqa: E402

NAMESPACE = "sim"
BASE_PROBES = [
    {"name": "open", "tracepoint": "syscalls:sys_enter_openat"},
    {"name": "exec", "tracepoint": "sched:sched_process_exec"},
    {"name": "xmit", "tracepoint": "net:net_dev_xmit"},
]
HALF_PROBES = [
    {"name": "fork", "tracepoint": "sched:sched_process_fork"},
    {"name": "exit", "tracepoint": "sched:sched_process_exit"},
]

log = logging.getLogger("simulate")


class Deadline(Exception):
    pass


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait(what: str, predicate, deadline: float, interval: float = 0.5):
    last = None
    while True:
        try:
            last = predicate()
        except Exception as e:    # the API busy: try again until the deadline
            last = e
            if isinstance(e, Deadline):
                raise
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise Deadline(f"timed out waiting for {what}; last: {last!r}"[:2000])
        time.sleep(interval)


def ps_path(name: str, sub: str = "") -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}/{name}{sub}"


def probeset(name: str, probes: list[dict], **spec) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ProbeSet", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"labels": ["node", "namespace", "pod"], "probes": probes, **spec}}


def summary_state(obj: dict, desired: int, total: int) -> dict:
    """What the CR says, and whether it is the correct summary for this generation."""
    status = obj.get("status") or {}
    gen = obj["metadata"]["generation"]
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    nodes = status.get("nodes") or {}
    ok = (status.get("observedGeneration") == gen and nodes.get("desired") == desired and nodes.get("ready") == desired
          and status.get("probes") == f"{total}/{total}" and ready.get("status") == "True"
          and ready.get("observedGeneration") == gen)
    return {"generation": gen, "observed": status.get("observedGeneration") == gen, "ok": ok,
            # nodes whose report on this generation counts (the operator's summary of the ProbeSetNodes;
            # its counts describe this generation once the Ready condition it writes with them does)
            "reported": sum(nodes.get(k) or 0 for k in ("ready", "failing", "declined"))
            if ready.get("observedGeneration") == gen else 0,
            "nodes": nodes, "probes": status.get("probes"), "ready": ready.get("status"),
            "ready_reason": ready.get("reason"), "message": status.get("message")}


def object_size(obj: dict) -> dict:
    meta = obj.get("metadata") or {}
    return {"bytes": len(json.dumps(obj, separators=(",", ":"))),
            "status_bytes": len(json.dumps(obj.get("status") or {}, separators=(",", ":"))),
            "managed_fields_bytes": len(json.dumps(meta.get("managedFields") or [], separators=(",", ":")))}


class Run:
    """One N: everything started here is stopped in close()."""

    def __init__(self, n: int, args):
        self.n, self.args = n, args
        self.t_start = time.monotonic()
        self.deadline = self.t_start + args.timeout
        self.workdir = Path(tempfile.mkdtemp(prefix=f"probeset-scale-{n}-", dir=args.workdir))
        self.cluster = self.operator = self.fleet = None
        self.result: dict = {"nodes": n, "design": "probesetnode", "mode": args.mode, "commit": commit(),
                             "watch_bytes_counted_once": True,
                             "workers": args.workers if args.mode == "shared" else None}

    def close(self) -> None:
        if self.fleet is not None:
            say("stopping the simulated agents")
            self.fleet.stop()
        if self.operator is not None:
            self.result["operator_log_tail"] = self.operator.tail(2000)
            self.operator.stop()
        if self.cluster is not None:
            say("stopping the cluster")
            self.cluster.stop()
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            say(f"kept {self.workdir}")

    def left(self, at_most: float) -> float:
        """A phase's deadline: at most `at_most` seconds, within the run's."""
        return min(self.deadline, time.monotonic() + at_most)

    # --- phases -------------------------------------------------------------------------------

    def setup(self) -> None:
        n = self.n
        say(f"N={n}: starting the cluster in {self.workdir}")
        self.cluster = control.start_cluster(self.workdir)
        self.audit = AuditLog(self.workdir / "audit.log")
        control.install(self.cluster)
        self.admin = control.admin_kube(self.cluster)
        self.admin.post("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        t0 = time.monotonic()
        self.nodes = control.create_nodes(self.admin, n)
        self.result["setup_nodes_s"] = round(time.monotonic() - t0, 1)
        say(f"{n} Nodes created in {self.result['setup_nodes_s']} s")
        self.agent_token = control.service_account_token(self.cluster, "probeset-agent")
        op_token = control.service_account_token(self.cluster, "probeset-operator")
        kubeconfig = control.token_kubeconfig(self.cluster, op_token, "probeset-operator",
                                              self.workdir / "operator.kubeconfig")
        self.operator = control.Operator(kubeconfig, self.workdir / "operator.log")
        self.usage = Usage({"operator": self.operator.pid, "apiserver": self._pid("kube-apiserver"),
                            "etcd": self._pid("etcd"), "controller-manager": self._pid("kube-controller-manager"),
                            "scheduler": self._pid("kube-scheduler"), "simulator": os.getpid()})
        for name, probes, spec in (("all", BASE_PROBES, {}),
                                   ("half", HALF_PROBES, {"nodeSelector": {"sim.probeset.io/pool": "a"}})):
            wait(f"ProbeSet {name} created", lambda: self.admin.post(
                f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}", probeset(name, probes, **spec)),
                self.left(60))
        from probeset_agent.choice import Limits
        from probeset_api.admission import Admission
        t0 = time.monotonic()

        def bound():
            if not self.operator.alive():
                raise Deadline(f"the operator exited: {self.operator.tail()}")
            total, done = control.count_bound_agent_pods(self.admin)
            return done == n and total == n
        wait(f"{n} agent pods bound", bound, self.left(300 + n * 0.3), interval=2)
        self.result["setup_pods_s"] = round(time.monotonic() - t0, 1)
        say(f"DaemonSet: {n} agent pods bound to their nodes in {self.result['setup_pods_s']} s")
        t0 = time.monotonic()
        control.mark_agent_pods_running(self.admin)
        self.result["setup_pods_running_s"] = round(time.monotonic() - t0, 1)
        say(f"agent pods marked Running and Ready in {self.result['setup_pods_running_s']} s (played kubelets)")
        ds = self.admin.get(f"/apis/apps/v1/namespaces/{OPERATOR_NS}/daemonsets/probeset-agent")
        (container,) = ds["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value", "") for e in container.get("env") or [] if "value" in e}
        argv = container.get("args") or []

        def arg(flag: str, default: int) -> int:
            return int(argv[argv.index(flag) + 1]) if flag in argv else default
        self.admission = Admission.from_env(env)
        self.limits = Limits(arg("--max-probesets", 20), arg("--max-probes", 500))

    def _pid(self, name: str) -> int | None:
        return next((c.pid for c in self.cluster.components if c.name == name), None)

    def state(self, name: str, desired: int, total: int) -> dict:
        return summary_state(self.admin.get(ps_path(name)), desired, total)

    def prefill(self) -> None:
        """Every node's ProbeSetNode written by the harness, as its agent writes it (generation 1,
        every probe attached; --prefill-failed nodes with a failed probe): the cluster's state
        before a change without N agents' start first (with --sample, only a few agents run)."""
        from probeset_api.status import NodeReport, ProbeResult, now
        failed = set(self.nodes[:self.args.prefill_failed])
        error = ("kernel headers for 6.1.0-27-cloud-amd64 not found at /lib/modules/6.1.0-27-cloud-amd64/build: "
                 "install linux-headers-6.1.0-27-cloud-amd64")
        from concurrent.futures import ThreadPoolExecutor
        from probeset_api.crd import NODE_PLURAL
        half = set(self.nodes[::2])
        base = f"/apis/{GROUP}/{VERSION}/namespaces/{OPERATOR_NS}/{NODE_PLURAL}"
        t0 = time.monotonic()

        def report(probes, bad):
            total = len(probes)
            return NodeReport(generation=1, attached=total - bad, total=total, updated=now(),
                              failed=(ProbeResult(name=probes[-1]["name"], attached=False, attachedVia="tracepoint",
                                                  error=error),) if bad else ()).to_status()

        def one(node):
            bad = node in failed
            sets = {f"{NAMESPACE}/all": report(BASE_PROBES, bad)}
            if node in half:
                sets[f"{NAMESPACE}/half"] = report(HALF_PROBES, bad)
            self.admin.post(base, {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ProbeSetNode",
                                   "metadata": {"name": node}})
            self.admin.patch(f"{base}/{node}/status", {"status": {"sets": sets}})
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, self.nodes))
        self.result["prefill_s"] = round(time.monotonic() - t0, 1)
        say(f"prefilled {len(self.nodes)} ProbeSetNodes in {self.result['prefill_s']} s")

    def start_agents(self) -> None:
        from simagents import Fleet
        n = self.n
        fail = set(self.nodes[:self.args.fail_nodes])
        agent_nodes = self.nodes[:self.args.sample] if self.args.sample else self.nodes
        self.fleet = Fleet(agent_nodes, self.cluster.server, control.tls_for(self.cluster), self.agent_token,
                           self.admission, self.limits, mode=self.args.mode, workers=self.args.workers,
                           fail_nodes=fail, fail_probes=frozenset({"xmit"}))
        self.usage.pids["simulator"] = os.getpid()
        t0, w0, u0 = time.monotonic(), time.time(), self.usage.read()
        self.fleet.start()
        say(f"{len(agent_nodes)} simulated agents started ({self.args.mode})")
        half = len([x for i, x in enumerate(self.nodes) if i % 2 == 0])

        def converged():
            a = self.state("all", n, len(BASE_PROBES))
            h = self.state("half", half, len(HALF_PROBES))
            failing = fail or self.args.prefill_failed
            return (a["ok"] or (failing and a["reported"] == n)) and (h["ok"] or (failing and h["reported"] == half)) \
                and (not self.args.sample or len(self.fleet.counts.patch_times) >= len(agent_nodes)) and (a, h)
        a, h = wait("both sets converged after the agents' start", converged, self.left(self.args.phase_timeout),
                    interval=self.args.poll)
        elapsed = time.monotonic() - t0
        self.result["start"] = {"converge_s": round(elapsed, 1), "all": a, "half": h,
                                "usage": Usage.delta(u0, self.usage.read()),
                                "requests": self.audit.window(w0, time.time()),
                                "agent_requests": self.fleet.counts.snapshot()["requests"]}
        self.result["start"]["agent_patch_latency_s"] = self.patch_latency(w0, time.time())
        say(f"converged {elapsed:.1f} s after the agents started: all {a['nodes']} {a['probes']}, half {h['nodes']}")

    def patch_latency(self, t0: float, t1: float):
        return self.audit.window(t0, t1).get("patch latency (s): p50 p90 max", {}).get(
            "agents: patch probesetnodes/status")

    def rest(self) -> None:
        seconds = self.args.rest
        say(f"at rest for {seconds} s")
        time.sleep(5)
        c0, e0, t0 = self.fleet.counts.snapshot(), self.fleet.tally.snapshot(), time.time()
        u0, m0 = self.usage.read(), control.apiserver_metrics(self.cluster)
        time.sleep(seconds)
        u1, m1, t1 = self.usage.read(), control.apiserver_metrics(self.cluster), time.time()
        c1, e1 = self.fleet.counts.snapshot(), self.fleet.tally.snapshot()
        per_min = 60.0 / (t1 - t0)
        window = self.audit.window(t0, t1)
        self.result["rest"] = {
            "seconds": round(t1 - t0, 1),
            "requests_per_min": {k: {w: round(c * per_min, 1) if isinstance(c, (int, float)) else c for w, c in v.items()}
                                 for k, v in window.items()},
            "apiserver_request_total_per_min": {k: round((m1.get(k, 0) - m0.get(k, 0)) * per_min, 1)
                                                for k in m1 if m1.get(k, 0) != m0.get(k, 0)},
            "agent_client_requests": diff(c0["requests"], c1["requests"]),
            "agent_client_bytes": diff(c0["bytes"], c1["bytes"]),
            "watch": diff(e0, e1),
            "usage": Usage.delta(u0, u1),
        }
        op = self.result["rest"]["usage"].get("operator", {})
        say(f"rest: operator {op.get('cpu_s')} CPU-s in {seconds} s, RSS {op.get('rss_mb')} MB; requests/min "
            + ", ".join(f"{k} {v.get('total')}" for k, v in self.result["rest"]["requests_per_min"].items()))

    def change(self, k: int) -> dict:
        n = self.n
        probes = BASE_PROBES + [{"name": f"x{k}", "tracepoint": "sched:sched_process_free"}]
        total = len(probes)
        settle = self.args.settle
        c0, e0, u0 = self.fleet.counts.snapshot(), self.fleet.tally.snapshot(), self.usage.read()
        etcd0 = control.etcd_metrics(self.cluster)
        m0 = control.apiserver_metrics(self.cluster)
        patches_before = len(self.fleet.counts.patch_times)
        t0w, t0 = time.time(), time.monotonic()
        obj = self.admin.patch(ps_path("all"), {"spec": {"probes": probes}})
        gen = obj["metadata"]["generation"]
        seen: dict = {}

        def done():
            s = self.state("all", n, total)
            if s["generation"] != gen:
                return False
            now = time.monotonic() - t0
            if s["observed"] and "observed_s" not in seen:
                seen["observed_s"] = round(now, 2)
            if s["reported"] == n and "all_reported_s" not in seen:
                seen["all_reported_s"] = round(now, 2)
            if self.args.sample:       # only the sampled agents report; the rest is extrapolated
                return len(self.fleet.counts.patch_times) - patches_before >= self.args.sample and s["observed"] and s
            if self.args.fail_nodes or self.args.prefill_failed:
                return s["reported"] == n and s["observed"] and s
            return s["ok"] and s
        failure = None
        try:
            s = wait(f"change {k} (generation {gen}) converged", done, self.left(self.args.phase_timeout),
                     interval=self.args.poll)
            converged = time.monotonic() - t0
            seen.setdefault("all_reported_s", round(converged, 2))
        except Deadline as e:        # recorded with what the CR says, and the run stops after it
            failure = str(e)
            s = self.state("all", n, total)
            converged = None
        patch_times = self.fleet.counts.patch_times[patches_before:]
        time.sleep(settle)           # trailing writes (the operator's next timer tick) count too
        t1w = time.time()
        u1, etcd1, m1 = self.usage.read(), control.etcd_metrics(self.cluster), control.apiserver_metrics(self.cluster)
        c1, e1 = self.fleet.counts.snapshot(), self.fleet.tally.snapshot()
        per_agent = 1 if self.args.mode == "shared" else n
        watch = diff(e0, e1)
        out = {
            "generation": gen, "converge_s": round(converged, 2) if converged is not None else None, **seen,
            "not_converged": failure, "reported_at_end": s["reported"],
            "last_agent_patch_s": round(max(patch_times) - t0, 2) if patch_times else None,
            "window_s": round(t1w - t0w, 1),
            "summary": {k2: s[k2] for k2 in ("nodes", "probes", "ready", "ready_reason", "message")},
            "requests": self.audit.window(t0w, t1w),
            "apiserver_request_total": {k2: m1.get(k2, 0) - m0.get(k2, 0) for k2 in m1 if m1.get(k2, 0) != m0.get(k2, 0)},
            "agent_client_requests": diff(c0["requests"], c1["requests"]),
            "agent_client_bytes": diff(c0["bytes"], c1["bytes"]),
            "watch_events_per_agent": round(watch.get("probeset_events", 0) / per_agent, 1),
            "agent_patch_latency_s": (self.audit.window(t0w, t1w).get("patch latency (s): p50 p90 max") or {}).get(
                "agents: patch probesetnodes/status"),
            "watch": watch,
            "usage": Usage.delta(u0, u1),
            "etcd_db_growth_bytes": etcd1.get("etcd_mvcc_db_total_size_in_bytes", 0)
            - etcd0.get("etcd_mvcc_db_total_size_in_bytes", 0),
            "etcd_puts": etcd1.get("etcd_mvcc_put_total", 0) - etcd0.get("etcd_mvcc_put_total", 0),
            "etcd_txns": etcd1.get("etcd_mvcc_txn_total", 0) - etcd0.get("etcd_mvcc_txn_total", 0),
            "etcd_ranges": etcd1.get("etcd_mvcc_range_total", 0) - etcd0.get("etcd_mvcc_range_total", 0),
            "etcd": etcd1,
        }
        if failure:
            say(f"change {k} did NOT converge: {failure[:300]}")
        say(f"change {k}: observedGeneration after {seen.get('observed_s')} s, every agent reported after "
            f"{seen.get('all_reported_s')} s, summary correct after {out['converge_s']} s; "
            f"{out['watch_events_per_agent']} watch events per agent; agents' requests "
            f"{out['requests'].get('agents', {}).get('total')}, operator's {out['requests'].get('operator', {}).get('total')}")
        return out

    def measure_object(self) -> None:
        obj = self.admin.get(ps_path("all"))
        self.result["object_all"] = object_size(obj)
        self.result["object_half"] = object_size(self.admin.get(ps_path("half")))
        self.result["status_example"] = obj.get("status")
        from probeset_api.crd import NODE_PLURAL
        node_obj = self.admin.get(f"/apis/{GROUP}/{VERSION}/namespaces/{OPERATOR_NS}/{NODE_PLURAL}/{self.nodes[0]}")
        self.result["object_probesetnode"] = {**object_size(node_obj), "example": node_obj.get("status")}
        text, secs = control.kubectl(self.cluster, "get", "probesets", "-A")
        self.result["kubectl_get"] = {"output": text, "seconds": round(secs, 2)}
        text, secs = control.kubectl(self.cluster, "get", "probeset", "all", "-n", NAMESPACE, "-o", "json")
        self.result["kubectl_get_json"] = {"bytes": len(text), "seconds": round(secs, 2)}
        say(f"ProbeSet all: {self.result['object_all']}; kubectl get -o json: {len(text)} B in {secs:.2f} s")
        say(f"kubectl get probesets -A ({self.result['kubectl_get']['seconds']} s):\n{self.result['kubectl_get']['output']}")

    def list_costs(self) -> None:
        """What one agent's list costs the API server (measured: `reps` of each, one after another),
        as follow() lists (resourceVersion 0: from the API server's watch cache), and so what N
        agents' re-lists cost (all at once after a 410, e.g. an API server restart)."""
        reps = self.args.list_reps
        some_node = self.nodes[len(self.nodes) // 2]
        calls = {
            "LIST probesets (all namespaces)": (f"/apis/{GROUP}/{VERSION}/{PLURAL}", {}),
            "LIST nodes fieldSelector=metadata.name": ("/api/v1/nodes", {"fieldSelector": f"metadata.name={some_node}"}),
            "LIST pods fieldSelector=spec.nodeName": ("/api/v1/pods", {"fieldSelector": f"spec.nodeName={some_node}"}),
        }
        from simagents import Counts, CountingKube
        out = {}
        for what, (path, params) in calls.items():
            counts = Counts()
            kube = CountingKube(self.cluster.server, control.tls_for(self.cluster), self.agent_token, counts=counts)
            u0 = self.usage.read()
            t0 = time.monotonic()
            for _ in range(reps):
                kube.get(path, {**params, "resourceVersion": "0"})
            wall = (time.monotonic() - t0) / reps
            d = Usage.delta(u0, self.usage.read())
            api_cpu = (d.get("apiserver", {}).get("cpu_s") or 0) / reps
            etcd_cpu = (d.get("etcd", {}).get("cpu_s") or 0) / reps
            nbytes = sum(counts.bytes.values()) / reps
            out[what] = {"wall_s": round(wall, 4), "apiserver_cpu_s": round(api_cpu, 4), "etcd_cpu_s": round(etcd_cpu, 4),
                         "bytes": int(nbytes),
                         "n_agents_per_min_apiserver_cpu_s": round(api_cpu * self.n, 1),
                         "n_agents_per_min_bytes": int(nbytes * self.n)}
        self.result["list_costs"] = out
        say("re-list costs: " + "; ".join(f"{k}: {v['bytes']} B, {v['apiserver_cpu_s']} API CPU-s each"
                                          for k, v in out.items()))

    def go(self) -> dict:
        self.setup()
        if self.args.prefill:
            self.prefill()
        self.start_agents()
        self.rest()
        self.result["changes"] = []
        for k in range(1, self.args.changes + 1):
            self.result["changes"].append(self.change(k))
            if self.result["changes"][-1]["not_converged"]:
                break
        self.measure_object()
        self.list_costs()
        self.result["simulator"] = {"threads": threading.active_count(),
                                    "rss_mb": round(control.proc_rss(os.getpid()) / 2**20, 1),
                                    "reconciles": self.fleet.reconciles,
                                    "reconcile_s": round(self.fleet.reconcile_seconds, 1)}
        self.result["etcd_end"] = control.etcd_metrics(self.cluster)
        self.result["total_s"] = round(time.monotonic() - self.t_start, 1)
        return self.result


def commit() -> str:
    """The checkout's commit, and '+changes' when agent/, operator/ or api/ differ from it."""
    import subprocess
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "agent", "operator", "api"],
                           capture_output=True, text=True)
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def diff(a: dict, b: dict) -> dict:
    return {k: b.get(k, 0) - a.get(k, 0) for k in b if b.get(k, 0) != a.get(k, 0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[100])
    ap.add_argument("--mode", choices=["shared", "threads"], default="shared")
    ap.add_argument("--workers", type=int, default=32, help="shared mode: threads running the agents' reconciles")
    ap.add_argument("--changes", type=int, default=3, help="spec edits measured per N")
    ap.add_argument("--rest", type=float, default=60, help="seconds at rest measured")
    ap.add_argument("--settle", type=float, default=10, help="seconds counted after each edit converged")
    ap.add_argument("--poll", type=float, default=1.0, help="seconds between reads of the CR")
    ap.add_argument("--list-reps", type=int, default=10)
    ap.add_argument("--fail-nodes", type=int, default=0, help="nodes where probe xmit fails")
    ap.add_argument("--prefill", action="store_true",
                    help="write every node's ProbeSetNode before the agents start (with --sample)")
    ap.add_argument("--prefill-failed", type=int, default=0, help="prefilled entries with a failed probe")
    ap.add_argument("--sample", type=int, default=0,
                    help="run only this many agents (with --prefill): per-patch costs at full size, extrapolated")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds for the whole of one N")
    ap.add_argument("--phase-timeout", type=float, default=900, help="seconds for one convergence")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, audit log)")
    ap.add_argument("--json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threading.stack_size(512 * 1024)
    def on_term(*_):
        raise KeyboardInterrupt("SIGTERM")
    signal.signal(signal.SIGTERM, on_term)
    results = []
    for n in args.nodes:
        run = Run(n, args)
        interrupted = False
        try:
            results.append(run.go())
        except KeyboardInterrupt:
            interrupted = True
            run.result["stopped"] = "interrupted"
            results.append(run.result)
        except Exception as e:     # Deadline, the API refusing: recorded, the next N still runs
            say(f"N={n} stopped: {type(e).__name__}: {e}")
            run.result["stopped"] = f"{type(e).__name__}: {e}"[:3000]
            results.append(run.result)
        finally:
            run.close()
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"args": vars(args), "machine": machine(), "runs": results},
                                                  indent=1, default=str) + "\n")
        if interrupted:
            return 130
    return 0


def machine() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    mem = next((ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), "?")
    return f"{os.cpu_count()} CPUs ({model}), {int(mem) // 2**20} GiB, load average {open('/proc/loadavg').read().split()[0]}"


if __name__ == "__main__":
    sys.exit(main())
