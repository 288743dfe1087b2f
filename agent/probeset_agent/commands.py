"""The agent's commands (the `probeset` CLI, probeset_cli, wires them):

  run FILE...      attach the ProbeSets of files and serve Prometheus metrics (root)
  check FILE...    what would attach on this host and how; exit 0 only if everything would
  render FILE      print the generated BPF C program
  agent            cluster mode: every ProbeSet that selects this node (one agent per node)
"""

from __future__ import annotations

import errno
import logging
import os
import platform
import signal
import socket
import sys
import threading
import time

from probeset_api.spec import MAX_DOCUMENT_BYTES, DocumentError, ProbeSet, SpecError, load_documents, parse_probeset

from .histogram import DEFAULT_BUCKET_MODE
from .host import NR_BPF, shorten

from .housekeeping import Housekeeper

log = logging.getLogger("probeset")

DEFAULT_LISTEN = "127.0.0.1:9437"   # 9435 is ebpf_exporter's
# How long a cluster agent waits for the node's metrics port while a previous agent detaches (it
# takes seconds: 1,000 uprobe links in 2.1 s, docs/benchmarks.md 5). Short, so that a port taken by
# anything else still ends soon in the kubelet's CrashLoopBackOff, which the ProbeSet reports.
PORT_WAIT_SECONDS = 20
DEFAULT_RETENTION = 300.0            # long enough for a few scrapes of a finished pod's last counts


def _load_sets(paths: list[str]) -> tuple[list[tuple[str, ProbeSet]], list[str]]:
    """Valid ProbeSets of the files, and one message per document that is not usable."""
    sets, problems = [], []
    for path in paths:
        shown = shorten(path)
        try:
            with open(path, errors="replace") as f:
                docs = load_documents(f.read(MAX_DOCUMENT_BYTES + 1))
        except OSError as e:
            problems.append(f"{shown}: {e.strerror}")
            continue
        except DocumentError as e:
            problems.append(f"{shown}: {e}")
            continue
        if not docs:
            problems.append(f"{shown}: no YAML documents")
        for i, doc in enumerate(docs):
            where = shown if len(docs) == 1 else f"{shown} (document {i + 1})"
            try:
                sets.append((where, parse_probeset(doc)))
            except SpecError as e:
                problems += [f"{where}: {err}" for err in e.errors]
    return sets, problems


def _node_name() -> str:
    return os.environ.get("NODE_NAME") or socket.gethostname()


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
            if st.via_reason:
                print(f"        {st.name}: via {st.via}: {st.via_reason}")
            shape = prog.program.shapes.get(st.index) if prog.program is not None else None
            if shape is not None:
                print(f"        {st.name}: counts in a {shape.reason}")
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


def _tls_context(args):
    """The server's TLS context from --tls-cert/--tls-key (and --tls-client-ca: client
    certificates required), or None."""
    import ssl
    if not args.tls_cert and not args.tls_client_ca:
        return None
    if not args.tls_cert or not args.tls_key:
        raise ValueError("--tls-cert and --tls-key go together (and --tls-client-ca needs them)")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.tls_cert, args.tls_key)
    if args.tls_client_ca:
        ctx.load_verify_locations(args.tls_client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _bind_metrics(args, authorize=None, wait_for_port: float = 0):
    """The metrics server, bound; None (the reason logged) when the address, a TLS file or the
    port is not usable. Done first: a bad --listen must not cost a compile and attach before it fails.
    With `wait_for_port`, a port in use is tried again every second for that many seconds: in a
    cluster the agent of a deleted DaemonSet may still hold the node's port while it detaches, and
    exiting at once would put the new agent in the kubelet's restart back-off."""
    from .httpmsg import parse_listen
    from .server import MetricsServer
    deadline = time.monotonic() + wait_for_port
    waiting = False
    while True:
        try:
            host, port = parse_listen(args.listen)
            return MetricsServer(host, port, tls=_tls_context(args), authorize=authorize)
        except OSError as e:
            if e.errno == errno.EADDRINUSE and time.monotonic() < deadline:
                if not waiting:
                    log.warning("metrics port %s in use (an agent still stopping?): trying again every second "
                                "for up to %.0f s", shorten(args.listen), wait_for_port)
                    waiting = True
                time.sleep(1.0)
                continue
            log.error("cannot serve metrics on %s: %s", shorten(args.listen), e.strerror or e)
            return None
        except ValueError as e:
            log.error("cannot serve metrics on %s: %s", shorten(args.listen), e)
            return None


def _hit_cost() -> dict[str, float]:
    """Seconds per uprobe hit by instruction class, measured here (uprobe_cost.py); {} if it cannot be."""
    from .uprobe_cost import calibrate
    try:
        cost = calibrate()
    except OSError as e:
        log.info("uprobe hit cost not measured: %s", e.strerror or e)
        return {}
    log.info("uprobe hit cost on this node: %s", ", ".join(f"{k} {v * 1e6:.2f} µs" for k, v in cost.items()))
    return cost


def _print_uprobe_classes(prog, cost: dict[str, float]) -> None:
    """Under a set's status lines: each uprobe entry point's instruction (where uprobe_entry.py puts
    it), its class and its cost per hit on this node."""
    from .uprobe_entry import point_class
    for point in prog.program.attach_points if prog.program else ():
        site = point.site
        if point.mechanism != "uprobe" or not site.path:
            continue
        cls = point_class(point.mechanism, site.path, site.address, point.movable)
        each = f", {cost[cls.kind] * 1e6:.2f} µs per hit here" if cls.kind in cost else ""
        print(f"        {prog.probe_names(point)}: {site.function}: {cls.insn}: {cls.kind}{each}")


def _serve_metrics(server, programs: list, node: str, features, histogram_buckets: str = DEFAULT_BUCKET_MODE) -> None:
    from .exposition import MetricsCollector
    collector = MetricsCollector(programs, node, features, histogram_buckets=histogram_buckets)
    # Measured beside serving (0.5-1 s): probeset_uprobe_hit_seconds appears once it is known.
    threading.Thread(target=lambda: setattr(collector, "hit_cost", _hit_cost()), name="probeset-uprobe-cost",
                     daemon=True).start()
    server.start(collector.render_bytes)
    log.info("serving metrics on %s://%s:%d/metrics", server.scheme, *server.address)
    sys.stdout.flush()


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
    checked = []
    cost: dict[str, float] | None = None       # measured once, if a set has a uprobe
    try:
        for where, pset in sets:
            prog = ProbeSetProgram(pset, _node_name(), features)
            checked.append(prog)
            prog.compile()   # compiled, not attached; kept until all are checked: they share the probe budget
            for st in prog.probe_statuses():
                if st.error is None:
                    st.functions = {f: True for f in st.functions}   # would attach: resolved and compiled
            if cost is None and any(s.mechanism == "uprobe" and s.path for rp in prog.resolved for s in rp.sites):
                cost = _hit_cost() if os.geteuid() == 0 else {}
                if cost:
                    print("uprobe hit on this node, before the BPF program: "
                          + ", ".join(f"{k} {v * 1e6:.2f} µs" for k, v in cost.items()))
            ok &= _print_status(where, prog)
            _print_uprobe_classes(prog, cost or {})
            if prog.map_memory:
                print(f"  maps: up to {prog.map_memory / (1 << 20):.1f} MiB of kernel memory when full")
    finally:
        for prog in checked:
            prog.stop()
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
    server = _bind_metrics(args)
    if server is None:
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
    _serve_metrics(server, programs, node, features, args.histogram_buckets)
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
    """Cluster mode: every ProbeSet that selects this node, followed live (cluster.py)."""
    from probeset_api.admission import Admission
    from .attribution import Attribution, CgroupTree
    from .choice import Limits
    from .cluster import NodeAgent
    from .host import node_root
    from probeset_api.kube import Kube, KubeError
    from .pods import PodIndex, PodSelection, PodWatcher
    from .program import ProbeSetProgram

    try:
        kube = Kube.from_environment()
    except KubeError as e:
        log.error("cannot reach the API server: %s", e)
        return 2
    authorize = None
    if args.metrics_auth:
        from .authz import TokenAuthorizer
        authorize = TokenAuthorizer(kube)
    server = _bind_metrics(args, authorize, wait_for_port=PORT_WAIT_SECONDS)
    if server is None:
        return 2
    node = args.node or _node_name()
    features = _start_agent_common(args)
    admission = Admission.from_env(os.environ)
    sources: list = []
    pods = PodIndex(retention=args.retention)
    attribution = Attribution(CgroupTree(retention=args.retention), pods)
    housekeeper = Housekeeper(sources, attribution, pods)
    watcher = PodWatcher(kube, node, pods, on_change=housekeeper.wake.set)
    # With hostPID, /proc/1/root is the node's file system (the agent's own / is its image).
    host_root, warning = node_root(args.host_root)
    if warning:
        log.warning("%s", warning)

    def make(pset):
        selection = PodSelection(pods, None if pset.scope == "Node" else pset.namespace, pset.pod_selector)
        return ProbeSetProgram(pset, node, features, attribution, selection, host_root, admission.value_policy(pset))

    agent = NodeAgent(kube, node, make, admission, Limits(args.max_probesets, args.max_probes, args.max_series), sources,
                      threading.Lock())
    housekeeper.after = agent.report_changes
    # The watches block in socket reads; they run in their own threads so a signal stops the agent at once.
    threading.Thread(target=watcher.run, name="probeset-pods", daemon=True).start()
    if not pods.synced.wait(30):
        log.warning("no pod listing after 30 s: pods will be named as the listing arrives")
    _serve_metrics(server, sources, node, features, args.histogram_buckets)
    _on_stop_signals(agent.stopping)
    threading.Thread(target=agent.run, name="probeset-sets", daemon=True).start()
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
    bpf_syscall, bpf_enable_stats, bpf_stats_run_time = NR_BPF.get(platform.machine()), 32, 0
    if bpf_syscall is None:
        log.warning("cannot enable BPF stats: bpf syscall number unknown on %s", platform.machine())
        return
    attr = (ctypes.c_uint32 * 32)()
    attr[0] = bpf_stats_run_time
    fd = libc.syscall(bpf_syscall, bpf_enable_stats, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        log.warning("cannot enable BPF stats: %s", os.strerror(ctypes.get_errno()))
    else:
        _bpf_stats_fd = fd
