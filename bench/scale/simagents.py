"""Simulated node agents: the real NodeAgent (agent/probeset_agent/cluster.py) and RunningSet, with a
real Kube client, and a fake BPF program.

What is the product's code: NodeAgent (watch callbacks, choice of sets, admission, limits, the
RunningSet edit plan, its ProbeSetNode writes), follow() (list, watch from the last version), Kube
(one TLS connection per call, the agent ServiceAccount's token). What is simulated:

- FakeProgram stands in for ProbeSetProgram: no BPF, every probe "attached" at once (or failed,
  on the nodes told to fail), so an agent reports as soon as it has reconciled (a real agent
  compiles and attaches first: 0.06-0.94 s per set, docs/benchmarks.md 3b).
- CountingKube counts every request and every byte read, per (verb, resource).
- Two ways to run N agents:
  * "threads": each NodeAgent.run() as a real agent runs it (its own watch of every ProbeSet and of
    its Node, its own loop thread), and the agent's PodWatcher (its node's pods). Exactly a real
    agent towards the API; costs 8 threads and 3 watch connections per agent, and every watch
    event is decoded by every agent.
  * "shared": one list+watch of the ProbeSets and one of all Nodes (follow(), as the agents do)
    feed every NodeAgent's on_probesets/on_probeset/on_node callbacks with the same decoded
    objects, and a pool of worker threads runs each woken agent's reconcile() (what
    NodeAgent.run()'s loop does). The ProbeSetNode writes are each agent's own real requests; the
    watch events are *counted* (every agent's ProbeSet watch carries the same stream), not
    delivered N times over the network, and the re-lists after a 410 happen once, not N times.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time

from probeset_agent.cluster import PROBESETS, NodeAgent
from probeset_api.kube import Kube
from probeset_api.reflector import follow
from probeset_agent.report import ProbeStatus

log = logging.getLogger("simagents")


class FakeProgram:
    """What NodeAgent and RunningSet call on a ProbeSetProgram (start, stop, hide, retire, refresh,
    status, probe_statuses, snapshot), without BPF. `fail` names the probes that fail here."""

    def __init__(self, pset, fail: frozenset[str] = frozenset()):
        self.pset = pset
        self.status: dict[int, ProbeStatus] = {}
        for bad in pset.rejected:
            self.status[bad.index] = ProbeStatus(name=bad.name, index=bad.index, kind="", error=bad.reason)
        for p in pset.probes:
            st = ProbeStatus(p.name, p.index, p.kind, via=p.kind, targets=[p.target])
            if p.name in fail:
                st.functions[p.target] = False
                st.fail(f"simulated failure of {p.kind} {p.target} on this node")
            else:
                st.functions[p.target] = True
            self.status[p.index] = st
        self.started = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def hide(self, ids: set[int]) -> None:
        for i in ids:
            self.status.pop(i, None)

    def retire(self, ids: set[int]) -> None:
        self.hide(ids)

    def refresh(self) -> None:
        pass

    def probe_statuses(self) -> list[ProbeStatus]:
        return [self.status[i] for i in sorted(self.status)]

    def snapshot(self):
        from probeset_agent.snapshot import SetSnapshot
        return SetSnapshot({"probeset": self.pset.name}, self.probe_statuses())


class Counts:
    """Requests and bytes read, per (verb, resource[/subresource]), shared by many clients."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: collections.Counter = collections.Counter()
        self.bytes: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()
        self.patch_times: list[float] = []          # time.monotonic() when each status patch returned

    def snapshot(self) -> dict:
        with self.lock:
            return {"requests": dict(self.requests), "bytes": dict(self.bytes), "errors": dict(self.errors),
                    "patches": len(self.patch_times)}


def resource_of(method: str, path: str, params: dict | None) -> str:
    """'PATCH probesets/status', 'LIST probesets', 'WATCH nodes', 'POST events', ..."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    # /api/v1/nodes, /apis/G/V/probesets, /apis/G/V/namespaces/NS/probesets/NAME/status
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    if rest and rest[0] == "namespaces" and len(rest) >= 3:
        rest = rest[2:]
    resource = rest[0] if rest else "?"
    sub = "/" + rest[2] if len(rest) >= 3 else ""
    verb = method
    if method == "GET":
        verb = "WATCH" if params and params.get("watch") else ("GET" if len(rest) >= 2 else "LIST")
    return f"{verb} {resource}{sub}"


class CountingKube(Kube):
    """The agent's own Kube client, counting each request and the bytes of each answer."""

    def __init__(self, *args, counts: Counts, **kwargs):
        super().__init__(*args, **kwargs)
        self.counts = counts

    def _open(self, method, path, params, body, content_type, read_timeout):
        what = resource_of(method, path, params)
        counts = self.counts
        try:
            sock, response = super()._open(method, path, params, body, content_type, read_timeout)
        except Exception:
            with counts.lock:
                counts.requests[what] += 1
                counts.errors[what] += 1
            raise
        with counts.lock:
            counts.requests[what] += 1
            if method == "PATCH":
                counts.patch_times.append(time.monotonic())
        read, readline = response.read, response.readline
        seen = [0]          # bytes counted on this response (readline reads through read: not twice)

        def counted_read(*a):
            data = read(*a)
            seen[0] += len(data)
            counts.bytes[what] += len(data)     # a lost update under races only blurs a byte count
            return data

        def counted_readline(*a):
            before = seen[0]
            data = readline(*a)
            missed = len(data) - (seen[0] - before)
            if missed > 0:                      # a readline that did not go through read
                seen[0] += missed
                counts.bytes[what] += missed
            return data
        response.read, response.readline = counted_read, counted_readline
        return sock, response


class EventTally:
    """Watch events delivered (threads mode: to each agent; shared mode: to the one shared watch,
    which is what each agent's watch would carry)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.probeset_events = 0         # summed over receivers
        self.node_events = 0
        self.lists = 0

    def snapshot(self) -> dict:
        return {"probeset_events": self.probeset_events, "node_events": self.node_events, "lists": self.lists}


class QueuedWake(threading.Event):
    """NodeAgent.wake for the shared mode: set() queues the agent for a worker (once until taken)."""

    def __init__(self, work: "queue.SimpleQueue", agent_index: int):
        super().__init__()
        self.work, self.agent_index = work, agent_index

    def set(self) -> None:
        if not self.is_set():
            super().set()
            self.work.put(self.agent_index)


def make_factory(fail_nodes: set[str], fail_probes: frozenset[str]):
    def for_node(node: str):
        fail = fail_probes if node in fail_nodes else frozenset()
        return lambda pset: FakeProgram(pset, fail)
    return for_node


class Fleet:
    """N simulated agents against one API server.

    `server`, `tls`, `token`: how each agent's Kube client reaches the API (the agent
    ServiceAccount's token, as in its pod). `mode`: "threads" or "shared" (see the module doc)."""

    def __init__(self, nodes: list[str], server: str, tls, token: str, admission, limits, mode: str = "shared",
                 workers: int = 32, fail_nodes: set[str] = frozenset(), fail_probes: frozenset[str] = frozenset(),
                 agent_class=NodeAgent):
        self.nodes, self.mode, self.workers = nodes, mode, workers
        self.counts = Counts()
        self.tally = EventTally()
        self.stopping = threading.Event()
        self.work: queue.SimpleQueue = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        factory = make_factory(set(fail_nodes), fail_probes)
        self.agents: list[NodeAgent] = []
        self.by_node: dict[str, NodeAgent] = {}
        self.reconciles = 0
        self.reconcile_seconds = 0.0
        for i, node in enumerate(nodes):
            kube = CountingKube(server, tls, token, counts=self.counts)
            agent = agent_class(kube, node, factory(node), admission, limits, [], threading.Lock())
            agent.stopping = self.stopping          # one stop for all
            if mode == "shared":
                agent.wake = QueuedWake(self.work, i)
            else:
                self._count_deliveries(agent)
            self.agents.append(agent)
            self.by_node[node] = agent
        self.shared_kube = CountingKube(server, tls, token, counts=self.counts) if mode == "shared" else None

    def _count_deliveries(self, agent: NodeAgent) -> None:
        tally = self.tally
        on_probeset, on_probesets, on_node, on_nodes = (agent.on_probeset, agent.on_probesets, agent.on_node,
                                                        agent.on_nodes)

        def counted_probeset(kind, obj):
            tally.probeset_events += 1
            on_probeset(kind, obj)

        def counted_probesets(items):
            tally.lists += 1
            on_probesets(items)

        def counted_node(kind, obj):
            tally.node_events += 1
            on_node(kind, obj)
        agent.on_probeset, agent.on_probesets, agent.on_node = counted_probeset, counted_probesets, counted_node
        agent.on_nodes = on_nodes

    # --- shared mode: one watch each, fanned out ---------------------------------------------

    def _shared_probesets(self, items: list[dict]) -> None:
        self.tally.lists += 1
        for agent in self.agents:
            agent.on_probesets(items)

    def _shared_probeset(self, kind: str, obj: dict) -> None:
        self.tally.probeset_events += 1
        for agent in self.agents:
            agent.on_probeset(kind, obj)

    def _shared_nodes(self, items: list[dict]) -> None:
        for obj in items:
            agent = self.by_node.get((obj.get("metadata") or {}).get("name"))
            if agent is not None:
                agent.on_nodes([obj])

    def _shared_node(self, kind: str, obj: dict) -> None:
        agent = self.by_node.get((obj.get("metadata") or {}).get("name"))
        if agent is not None:
            self.tally.node_events += 1
            agent.on_node(kind, obj)

    def _worker(self) -> None:
        while not self.stopping.is_set():
            try:
                i = self.work.get(timeout=0.5)
            except queue.Empty:
                continue
            agent = self.agents[i]
            agent.wake.clear()
            t0 = time.monotonic()
            try:
                agent.reconcile()           # what NodeAgent.run()'s loop does on each wake
            except Exception:
                log.exception("reconciling the ProbeSets of node %s", agent.node)
            self.reconciles += 1
            self.reconcile_seconds += time.monotonic() - t0

    # --- lifecycle ----------------------------------------------------------------------------

    def _thread(self, target, args=(), name="sim") -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def start(self) -> None:
        if self.mode == "threads":
            from probeset_agent.pods import PodIndex, PodWatcher
            for agent in self.agents:
                # As cmd_agent runs it: the node's pods (spec.nodeName field selector), then the sets.
                watcher = PodWatcher(agent.kube, agent.node, PodIndex())
                watcher.stopping = self.stopping
                self._thread(watcher.run, name=f"pods-{agent.node}")
                self._thread(agent.run, name=f"agent-{agent.node}")
            return
        for _ in range(self.workers):
            self._thread(self._worker, name="sim-worker")
        self._thread(follow, (self.shared_kube, "/api/v1/nodes", {}, self._shared_nodes, self._shared_node,
                              self.stopping, "nodes (shared)"), name="sim-watch-nodes")
        self._thread(follow, (self.shared_kube, PROBESETS, {}, self._shared_probesets, self._shared_probeset,
                              self.stopping, "ProbeSets (shared)"), name="sim-watch-probesets")

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        for agent in self.agents:
            agent.wake.set() if self.mode == "threads" else None
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for agent in self.agents:
            try:
                agent.stop()
            except Exception:
                log.exception("stopping the agent of %s", agent.node)
