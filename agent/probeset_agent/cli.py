"""probeset: run ProbeSets on this host (standalone agent), check them, render their BPF C.

  probeset run FILE...      attach and serve Prometheus metrics (root)
  probeset check FILE...    what would attach on this host and how; exit 0 only if everything would
  probeset render FILE      print the generated BPF C program
  probeset agent            cluster mode: the ProbeSet named by $PROBESET_NAMESPACE/$PROBESET_NAME
  probeset operator         the operator: one agent DaemonSet per ProbeSet, status aggregated
  probeset schema           print the ProbeSet spec's OpenAPI schema (as used by the CRD)
  probeset crd              print the ProbeSet CustomResourceDefinition
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading

from .spec import ProbeSet, SpecError, load_documents, parse_probeset

log = logging.getLogger("probeset")

DEFAULT_LISTEN = "127.0.0.1:9437"   # 9435 is ebpf_exporter's
DEFAULT_RETENTION = 300.0            # long enough for a few scrapes of a finished pod's last counts


def _load_sets(paths: list[str]) -> tuple[list[tuple[str, ProbeSet]], list[str]]:
    """Valid ProbeSets of the files, and one message per document that is not usable."""
    sets, problems = [], []
    for path in paths:
        try:
            with open(path) as f:
                docs = load_documents(f.read())
        except OSError as e:
            problems.append(f"{path}: {e.strerror}")
            continue
        except Exception as e:  # yaml.YAMLError and friends
            problems.append(f"{path}: not valid YAML: {e}")
            continue
        if not docs:
            problems.append(f"{path}: no YAML documents")
        for i, doc in enumerate(docs):
            where = path if len(docs) == 1 else f"{path} (document {i + 1})"
            try:
                sets.append((where, parse_probeset(doc)))
            except SpecError as e:
                problems += [f"{where}: {err}" for err in e.errors]
    return sets, problems


def _node_name() -> str:
    return os.environ.get("NODE_NAME") or socket.gethostname()


def _parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def _print_status(where: str, prog) -> bool:
    """One line per probe; True when every probe attached everywhere."""
    all_ok = True
    print(f"{where}: ProbeSet {prog.pset.name}")
    for st in prog.probe_statuses():
        ok = st.error is None
        all_ok &= ok
        if ok:
            n = len(st.functions)
            attached = sum(st.functions.values())
            targets = "; ".join(st.targets[:4]) + (f"; ... {len(st.targets) - 4} more" if len(st.targets) > 4 else "")
            detail = f"{attached}/{n} functions" if attached != n else targets
            print(f"  ok    {st.name}: {detail}" if attached == n else f"  ok    {st.name}: {detail} ({targets})")
        else:
            print(f"  FAIL  {st.name}: {st.error}")
    return all_ok


def _start_agent_common(args):
    """What run and agent share: BPF stats, stale probe clean-up, kernel features."""
    from .features import detect
    from .host import remove_stale_bcc_probes
    if args.bpf_stats:
        _enable_bpf_stats()
    for stale in remove_stale_bcc_probes():
        log.info("removed stale tracefs probe %s (its process is gone)", stale)
    features = detect()
    log.info("kernel %s: %s", os.uname().release, ", ".join(f"{k} {v}" for k, v in features.as_dict().items()))
    return features


def _serve_metrics(programs: list, node: str, features, listen: str):
    from .collector import MetricsCollector, serve
    host, port = _parse_listen(listen)
    server = serve(MetricsCollector(programs, node, features), host, port)
    log.info("serving metrics on http://%s:%d/metrics", host, port)
    sys.stdout.flush()
    return server


class Housekeeper:
    """Every `interval` seconds, and at once when woken (a pod changed): rescan the cgroup tree,
    forget pods past their retention, and let each program follow pods and age out series."""

    def __init__(self, programs: list, attribution, pods=None, interval: float = 2.0, after=None):
        self.programs, self.attribution, self.pods, self.interval = programs, attribution, pods, interval
        self.after = after    # called after each round (the cluster agent reports status changes)
        self.wake = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(self.interval)
            self.wake.clear()
            try:
                self.attribution.rescan(force=True)
                if self.pods is not None:
                    self.pods.expire()
                for prog in list(self.programs):
                    prog.refresh()
                if self.after is not None:
                    self.after()
            except Exception:   # keep the probes running; the next round tries again
                log.exception("housekeeping failed")

    def start(self) -> "Housekeeper":
        threading.Thread(target=self.run, name="probeset-housekeeping", daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()


def _on_stop_signals(stop: threading.Event) -> None:
    """SIGINT/SIGTERM set `stop`. Installed explicitly: a background process started from a
    script inherits SIGINT as ignored."""
    def on_signal(signum, _frame):
        log.info("%s: detaching", signal.Signals(signum).name)
        stop.set()
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def cmd_check(args) -> int:
    from .program import ProbeSetProgram
    sets, problems = _load_sets(args.files)
    for p in problems:
        print(f"invalid: {p}")
    ok = not problems
    features = _features_or_none()
    if features:
        print("kernel: " + ", ".join(f"{k} {v}" for k, v in features.as_dict().items()))
    for where, pset in sets:
        prog = ProbeSetProgram(pset, _node_name(), features)
        prog.compile()   # compiled, not attached
        prog.stop()
        for st in prog.probe_statuses():
            if st.error is None:
                st.functions = {f: True for f in st.functions}   # would attach: resolved and compiled
        ok &= _print_status(where, prog)
    return 0 if ok else 1


def _features_or_none():
    from .features import detect
    if os.geteuid() != 0:
        print("note: not root: kernel probe support cannot be tested; kprobe probes will show as unknown")
        return None
    return detect()


def cmd_render(args) -> int:
    from .program import ProbeSetProgram
    sets, problems = _load_sets([args.file])
    for p in problems:
        print(f"invalid: {p}", file=sys.stderr)
    if not sets:
        return 2
    for where, pset in sets:
        prog = ProbeSetProgram(pset, _node_name(), _features_or_none() if os.geteuid() == 0 else None)
        for st in prog.probe_statuses():
            if st.error:
                print(f"/* not generated: {st.name}: see `probeset check` */", file=sys.stderr)
        print(prog.render())
    return 0


def cmd_schema(args) -> int:
    from .spec import crd_schema
    json.dump(crd_schema(), sys.stdout, indent=2)
    print()
    return 0


def cmd_crd(args) -> int:
    from probeset_operator.crd import crd_yaml
    sys.stdout.write(crd_yaml())
    return 0


def cmd_operator(args) -> int:
    from probeset_operator import handlers
    handlers.run(liveness=args.liveness)
    return 0


def cmd_run(args) -> int:
    from .program import ProbeSetProgram
    sets, problems = _load_sets(args.files)
    for p in problems:
        log.error("invalid: %s", p)
    if not sets:
        log.error("no usable ProbeSet")
        return 2
    for where, pset in list(sets):
        if pset.pod_selector:
            log.error("%s: spec.podSelector: selecting pods needs their labels from the API server; "
                      "run it in a cluster (probeset agent), or remove podSelector to observe the whole host", where)
            sets.remove((where, pset))
    if not sets:
        return 2
    node = args.node or _node_name()
    features = _start_agent_common(args)
    from .attribution import Attribution, CgroupTree
    attribution = Attribution(CgroupTree(retention=args.retention))
    programs = []
    for where, pset in sets:
        prog = ProbeSetProgram(pset, node, features, attribution)
        prog.start()
        _print_status(where, prog)
        programs.append(prog)
    housekeeper = Housekeeper(programs, attribution).start()
    server = _serve_metrics(programs, node, features, args.listen)
    stop = threading.Event()
    _on_stop_signals(stop)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.shutdown()
        housekeeper.stop()
        for prog in programs:
            prog.stop()
        log.info("detached")
    return 0


def cmd_agent(args) -> int:
    """Cluster mode: the ProbeSet named by $PROBESET_NAMESPACE/$PROBESET_NAME, followed live."""
    from kubernetes import config
    from .cluster import ClusterAgent

    namespace, name = os.environ.get("PROBESET_NAMESPACE"), os.environ.get("PROBESET_NAME")
    if not namespace or not name:
        log.error("PROBESET_NAMESPACE and PROBESET_NAME must name the ProbeSet to run")
        return 2
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()   # outside a pod: $KUBECONFIG or ~/.kube/config
    node = args.node or _node_name()
    features = _start_agent_common(args)
    programs: list = []
    from .attribution import Attribution, CgroupTree
    from .pods import PodIndex, PodWatcher
    from .spec import NODE_WIDE_NAMESPACES_ENV, node_wide_namespaces
    pods = PodIndex(retention=args.retention)
    attribution = Attribution(CgroupTree(retention=args.retention), pods)
    housekeeper = Housekeeper(programs, attribution, pods)
    watcher = PodWatcher(None, node, pods, on_change=housekeeper.wake.set)
    node_wide = node_wide_namespaces(os.environ.get(NODE_WIDE_NAMESPACES_ENV),
                                     os.environ.get("PROBESET_OPERATOR_NAMESPACE", "probeset-system"))
    # With hostPID, /proc/1/root is the node's file system (the agent's own / is its image).
    from .host import node_root
    host_root, warning = node_root(args.host_root)
    if warning:
        log.warning("%s", warning)
    agent = ClusterAgent(None, namespace, name, node, programs, features, threading.Lock(), attribution,
                         pods, node_wide, host_root=host_root)
    housekeeper.after = agent.report_if_changed
    # The watches block in socket reads; they run in their own threads so a signal stops the agent at once.
    threading.Thread(target=watcher.run, name="probeset-pods", daemon=True).start()
    if not pods.synced.wait(30):
        log.warning("no pod listing after 30 s: pods will be named as the listing arrives")
    server = _serve_metrics(programs, node, features, args.listen)
    _on_stop_signals(agent.stopping)
    threading.Thread(target=agent.run, name="probeset-watch", daemon=True).start()
    housekeeper.start()
    try:
        while not agent.stopping.wait(1.0):
            pass
    finally:
        server.shutdown()
        watcher.stop()
        housekeeper.stop()
        agent.stop()
        log.info("detached")
    return 0


_bpf_stats_fd = None


def _enable_bpf_stats() -> None:
    """Turn on BPF run-time statistics for as long as this process lives (BPF_ENABLE_STATS: the
    kernel turns them off again when the fd closes, unlike the sysctl)."""
    import ctypes
    global _bpf_stats_fd
    libc = ctypes.CDLL(None, use_errno=True)
    bpf_syscall, bpf_enable_stats, bpf_stats_run_time = 321, 32, 0
    attr = (ctypes.c_uint32 * 32)()
    attr[0] = bpf_stats_run_time
    fd = libc.syscall(bpf_syscall, bpf_enable_stats, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        log.warning("cannot enable BPF stats: %s", os.strerror(ctypes.get_errno()))
    else:
        _bpf_stats_fd = fd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="probeset", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="attach the ProbeSets of FILE(s) and serve metrics (root)")
    run.add_argument("files", nargs="+", metavar="FILE")
    run.add_argument("--listen", default=DEFAULT_LISTEN, help=f"metrics address (default {DEFAULT_LISTEN})")
    run.add_argument("--node", help="value of the node label (default $NODE_NAME or the hostname)")
    run.add_argument("--bpf-stats", action="store_true",
                     help="enable kernel BPF run-time stats while running (probeset_bpf_run_seconds_total)")
    run.add_argument("--retention", type=float, default=DEFAULT_RETENTION, metavar="SECONDS",
                     help=f"keep the series of a vanished cgroup this long (default {DEFAULT_RETENTION:g})")
    check = sub.add_parser("check", help="tell what would attach on this host, without attaching")
    check.add_argument("files", nargs="+", metavar="FILE")
    render = sub.add_parser("render", help="print the generated BPF C program")
    render.add_argument("file", metavar="FILE")
    agent = sub.add_parser("agent", help="cluster mode: run the ProbeSet $PROBESET_NAMESPACE/$PROBESET_NAME "
                                         "from the API server, follow its changes, report status (root)")
    agent.add_argument("--listen", default="0.0.0.0:9437", help="metrics address (default 0.0.0.0:9437)")
    agent.add_argument("--node", help="node name (default $NODE_NAME or the hostname)")
    agent.add_argument("--bpf-stats", action="store_true", help="enable kernel BPF run-time stats while running")
    agent.add_argument("--retention", type=float, default=DEFAULT_RETENTION, metavar="SECONDS",
                       help=f"keep the series of a vanished cgroup or deleted pod this long (default {DEFAULT_RETENTION:g})")
    agent.add_argument("--host-root", default="/proc/1/root",
                       help="the node's root file system, for uprobes on the node's own files (default "
                            "/proc/1/root: the node's, with hostPID)")
    operator = sub.add_parser("operator", help="run the operator (kopf): ProbeSets -> agent DaemonSets")
    operator.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                          help="liveness endpoint (default http://0.0.0.0:8080/healthz)")
    sub.add_parser("schema", help="print the ProbeSet spec schema (JSON)")
    sub.add_parser("crd", help="print the ProbeSet CustomResourceDefinition (YAML)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    handler = {"run": cmd_run, "check": cmd_check, "render": cmd_render, "schema": cmd_schema,
               "crd": cmd_crd, "agent": cmd_agent, "operator": cmd_operator}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
