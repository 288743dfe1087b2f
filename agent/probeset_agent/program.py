"""A ProbeSet's BPF program on this host: resolve, generate, compile (isolating failing probes),
attach, keep up with pods, read, detach.

Failures stay local: a probe that does not resolve, compile, load or attach gets the exact reason in
its ProbeStatus and the other probes of the set keep working. The steps it drives live in their own
modules: resolve (probe -> sites), build (sites -> C -> BCC object, failing probes isolated),
placement (cgroup filter, containers' copies), maps + readout (rows -> series), health (misses, cost).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time

from probeset_api.schema import USER_KINDS
from probeset_api.spec import ProbeSet, ValuePolicy

from . import codegen
from .attach import attach_point, default_max_active, detach_all, detach_point, prepare_maps, set_aside
from .budget import PROCESS_MEMORY, PROCESS_PROBES, Holdings, MemoryBudget, ProbeBudget
from .build import build, missing_kernel_headers
from .codegen import AttachPoint
from .features import Features
from .health import missed_events, program_stats
from .layout import key_uses_cgroup
from .loader import CompileCost
from .maps import clear_rows, delete_row, read_raw, read_rows
from .mapshape import as_hash_rows
from .placement import Placement
from .readout import Readout, Series, UnknownAging
from .report import ProbeStatus
from .resolve import ResolvedProbe, UserTargets, resolve
from .snapshot import SetSnapshot, take_snapshot
from .taskcontext import task_context
from .uprobe_links import UprobeLinks

log = logging.getLogger(__name__)

_INSTANCES = itertools.count(1)


class ProbeSetProgram:
    """`attribution` (attribution.Attribution) labels events by workload. `selection`
    (pods.PodSelection, cluster mode) limits the set to some pods (see placement.py); the node's
    copy of a file (seen through `host_root`) is probed only when host processes are observed.
    `policy` says which values a namespaced set may record (checked against tracepoint formats).
    refresh() keeps the placement current and ages out the series of vanished cgroups; retire()
    detaches probes an edit removed while the others keep counting (running.py)."""

    def __init__(self, pset: ProbeSet, node: str, features: Features | None = None,
                 attribution=None, selection=None, host_root: str | None = "/", policy: ValuePolicy = ValuePolicy(),
                 budget: ProbeBudget = PROCESS_PROBES, memory: MemoryBudget = PROCESS_MEMORY):
        self.pset, self.node = pset, node
        # Every series and figure of the set carries these; in a cluster one agent serves sets of
        # many namespaces, and two of them may have the same name.
        self.set_labels = {"probeset": pset.name}
        if selection is not None and pset.namespace is not None:
            self.set_labels["probeset_namespace"] = pset.namespace
        self.attribution, self.selection = attribution, selection
        # A namespaced set: both ends of its spans pass its pod selection (spangen.span_block), its
        # kernel probes count nothing in interrupts (taskcontext.py), and it shows no figure that
        # counts the whole node's tasks (snapshot.take_snapshot).
        self.restricted = policy.restricted
        filtering = selection is not None and not selection.host
        self.held = Holdings(budget, memory, pset.labels, pset.max_series_per_probe)   # in the agent's budgets
        self.placement = Placement(pset.name, selection, attribution, filtering, budget)
        if selection is not None and attribution is not None:
            attribution.rescan(force=True)
        targets = UserTargets(host_root, observe_host=selection is None or selection.host,
                              copies=self.placement.copies_now)
        self.resolved: list[ResolvedProbe] = resolve(pset, features, targets, policy)
        self.status: dict[int, ProbeStatus] = {}
        for bad in pset.rejected:
            self.status[bad.index] = ProbeStatus(name=bad.name, index=bad.index, kind="", error=bad.reason)
        for rp in self.resolved:
            self.status[rp.id] = ProbeStatus(rp.probe.name, rp.id, rp.probe.kind, rp.via, rp.via_reason,
                                             rp.describe_sites(), {f: False for f in rp.functions}, rp.error)
        if filtering and (attribution is None or not attribution.available):
            for st in self.status.values():
                st.fail("selecting pods needs the cgroup v2 hierarchy (cgroup ids of the pods), "
                        "and none is mounted on this node")
        self.bpf = None
        self.links: UprobeLinks | None = None            # the uprobes' placements (links or perf events)
        self.program: codegen.Program | None = None
        self.compiled: list[ResolvedProbe] = []            # the probes in self.bpf (read even if partly failed)
        self.compile_cost = CompileCost()                  # clang runs and their time (probeset_compile_seconds)
        self.retired: set[int] = set()                     # probe ids an edit removed: detached, not read
        self.attached_points: list[AttachPoint] = []
        self._attach_errors: dict[int, str | None] = {}    # probe id -> its error once start() attached
        self._instance = next(_INSTANCES)                 # tells this program's tracefs kretprobes from others'
        lookup = attribution.lookup if attribution is not None else None
        self.readout = Readout(self.set_labels, node, pset.labels, lookup)
        self._names_version = attribution.version if attribution is not None else 0
        self._unknown = UnknownAging()
        self.unknown_cgroups = 0                           # distinct unknown cgroup ids at the last scrape
        self._lock = threading.Lock()
        self._expired: dict[int, int] = {}                 # probe id -> pending starts aged out (spans)

    # --- compile ---------------------------------------------------------------------------------

    def _generate(self, probes: list[ResolvedProbe]) -> codegen.Program:
        return codegen.generate(probes, self.pset.labels, self.pset.max_series_per_probe, self.placement.filtering,
                                self.restricted, task_context()[0] if self.restricted else None)

    def render(self) -> str:
        return self._generate(self.resolved).text

    def _usable(self) -> list[ResolvedProbe]:
        return [rp for rp in self.resolved if rp.ok and self.status[rp.id].error is None]

    def _fail(self, rp: ResolvedProbe, why: str) -> None:
        self.status[rp.id].fail(why)

    def compile(self) -> bool:
        """Compile the usable probes into self.bpf, reporting the ones that cannot be (kernel headers
        missing, or a probe whose C fails: build.py). True if any compiled."""
        missing = missing_kernel_headers()
        if missing:
            for rp in self._usable():
                self.status[rp.id].fail(missing)
            return False
        self.held.reserve(self._usable, self.placement.filtering, self._fail)
        built = build(self._usable, self._generate, self._fail, self.compile_cost, self.pset.name)
        if built.bpf is not None:
            self.program, self.bpf, self.compiled = built.program, built.bpf, built.compiled
        self.held.settle(self.compiled if self.bpf is not None else [], self.placement.filtering)
        return self.bpf is not None

    # --- attach ----------------------------------------------------------------------------------

    def start(self) -> None:
        if not self.compile():
            return
        self.links = UprobeLinks(self.bpf)
        for rp in self.compiled:
            prepare_maps(self.bpf, rp, self.program.layouts[rp.id], self.program.shapes[rp.id])
        for point in self.program.attach_points:
            self._attach(point)
        self._forget_open_calls()
        self._attach_errors = {i: st.error for i, st in self.status.items()}
        if self.selection is not None:
            self.refresh()

    def _attach(self, point: AttachPoint) -> None:
        max_active = max((self._probe(p).probe.max_active or 0) for p in point.probes) or default_max_active()
        try:
            attach_point(self.bpf, point, self._instance, max_active,
                         lambda p: self.placement.place_node_copy(p, self._place))
        except Exception as e:   # bcc raises bare Exception with its own message
            reason = f"{point.mechanism} {point.site.function}: {e}"
            log.warning("probeset %s: %s", self.pset.name, reason)
            for pid in point.probes:
                self.status[pid].functions[self._function_label(pid, point)] = False
                self.status[pid].fail(reason)
            return
        self.attached_points.append(point)
        for pid in point.probes:
            # A latency function counts as attached only when both its entry and return are (a
            # two-point probe: its start and its end).
            label = self._function_label(pid, point)
            mine = [p for p in self.program.attach_points if pid in p.probes and
                    self._function_label(pid, p) == label]
            self.status[pid].functions[label] = all(p in self.attached_points for p in mine)

    def _function_label(self, probe_id: int, point: AttachPoint) -> str:
        rp = self._probe(probe_id)
        return rp.functions[0] if rp.probe.kind == "span" else point.site.function

    def _forget_open_calls(self) -> None:
        """Entries seen before their return probe was attached (fentry attaches take a while:
        BCC reads BTF, through vfs_read) would leave their threads nested forever: start the
        latency probes' depth and start maps empty, once every point is attached. A call open now
        returns unpaired (counted), as a call open at attach time always did."""
        for rp in self.compiled:
            if rp.probe.latency:
                clear_rows(self.bpf[f"depth_p{rp.id}"])
                clear_rows(self.bpf[f"start_p{rp.id}"])

    def _place(self, point: AttachPoint, path: str, address: int) -> list[bytes]:
        return self.links.place(point, path, address)

    def _probe(self, probe_id: int) -> ResolvedProbe:
        return next(rp for rp in self.resolved if rp.id == probe_id)

    def stop(self) -> None:
        with self._lock:
            if self.bpf is not None:
                held = len(self.bpf.uprobe_fds) + len(self.bpf.kprobe_fds)
                if held > 50:   # the kernel releases perf probes one at a time, ~0.1 s each
                    log.info("probeset %s: detaching %d perf probes (about %d s)", self.pset.name, held, held // 9)
                if self.links is not None:
                    self.links.close_all()
                detach_all(self.bpf)
                self.bpf = None
            self.attached_points = []
            self.held.release(self.placement.release_budget())

    def hide(self, ids: set[int]) -> None:
        """Leave these probes out of every reading from now on (the first, quick step of retire)."""
        with self._lock:
            self.retired |= ids
            for probe_id in ids:
                self.status.pop(probe_id, None)

    def retire(self, ids: set[int]) -> None:
        """Stop these probes while the others keep counting: their attach points are detached
        (a point shared with a live probe stays: it feeds that probe too), their series and status
        go; their maps stay until the program stops."""
        self.hide(ids)
        with self._lock:
            if self.bpf is None:
                return
            for point in [p for p in self.attached_points if set(p.probes) <= self.retired]:
                try:
                    if point.mechanism in USER_KINDS:
                        self.placement.forget(point.fn_name, self.links.detach)
                    else:
                        detach_point(self.bpf, point)
                except Exception as e:   # bcc raises bare Exception; the program's stop() retries
                    log.warning("probeset %s: detaching %s %s: %s", self.pset.name, point.mechanism,
                                point.site.function, e)
                    continue
                self.attached_points.remove(point)
            self.held.keep_attachments(self.live_probes())

    def live_probes(self) -> list[ResolvedProbe]:
        """The compiled probes not retired."""
        return [rp for rp in self.compiled if rp.id not in self.retired]

    # --- keeping up with pods and cgroups ---------------------------------------------------

    def refresh(self) -> None:
        """Housekeeping, every few seconds and when pods change: the placement follows the
        selected pods; rows of cgroups that vanished longer than the retention ago are retired."""
        with self._lock:
            if self.bpf is None:
                return
            cgroups = self._cgroups_in_maps()      # read before the rescan: see UnknownAging
            if self.attribution is not None:
                self.attribution.rescan()
            if self.placement.filtering:
                self.placement.sync_filter(self.bpf["allowed_cgroups"])
            points = self.user_points()
            if points:
                self._follow_files(points)
            if self.attribution is not None:
                self._retire(self._unknown.expired(cgroups, self.attribution.state, self.attribution.last_scan,
                                                   time.monotonic()))
        self.age_pending()

    def age_pending(self, now_ns: int | None = None) -> int:
        """Drop the pending starts of two-point probes older than their maxAgeSeconds (at `now_ns`,
        CLOCK_MONOTONIC as the kernel's bpf_ktime_get_ns; default now), counted as start_expired.
        An end that takes a start while it is dropped loses it (counted the same). Returns how many."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        dropped = 0
        with self._lock:
            if self.bpf is None:
                return 0
            for rp in self.live_probes():
                if rp.probe.kind != "span":
                    continue
                table = self.bpf[f"pending_p{rp.id}"]
                limit = rp.probe.max_age_seconds * 1_000_000_000
                old = [key for key, value in read_raw(table) if now - int.from_bytes(value[:8], "little") > limit]
                for key in old:
                    delete_row(table, key)
                self._expired[rp.id] = self._expired.get(rp.id, 0) + len(old)
                dropped += len(old)
        return dropped

    def _follow_files(self, points: list[AttachPoint]) -> None:
        """uprobes follow their files: changed files are probed again (a file written in place is
        a hazard the probe's status reports), containers' copies follow the selected pods."""
        for point, reason in self.placement.check_files(points, self._place, self.links.detach,
                                                        lambda events: set_aside(self.bpf, events)):
            if reason == "modified":
                for pid in point.probes:
                    self._attach_errors[pid] = self._attach_errors.get(pid) or self.placement.hazards[point.fn_name]
                    self.status[pid].fail(self.placement.hazards[point.fn_name])
        if self.selection is not None:
            self.placement.sync_copies(points, self._place, self.links.detach)
            self._update_user_status()

    def _cgroups_in_maps(self) -> set[int]:
        if not key_uses_cgroup(self.pset.labels):
            return set()
        return {layout.cgroup(raw) for rp in self.live_probes()
                for layout in (self.program.layouts[rp.id],)
                for raw, _ in read_raw(self.bpf[f"counts_p{rp.id}"]) if not layout.is_overflow(raw)}

    def _retire(self, expired: set[int]) -> None:
        if not expired:
            return
        for rp in self.live_probes():
            counts, hist = self._tables(rp)
            count_keys, hist_keys = self.readout.retire(rp, self.program.layouts[rp.id], read_rows(counts),
                                                        read_rows(hist) if hist is not None else (), counts.total_cpu, expired)
            for raw in hist_keys:
                delete_row(hist, raw)
            for raw in count_keys:
                delete_row(counts, raw)

    def _update_user_status(self) -> None:
        for rp in self.live_probes():
            points = [p for p in self.user_points() if rp.id in p.probes]
            if points:
                st = self.status[rp.id]
                functions, st.error = self.placement.probe_status(rp, points, self._attach_errors.get(rp.id))
                st.functions.update(functions)

    # --- reading ---------------------------------------------------------------------------------

    def probe_statuses(self) -> list[ProbeStatus]:
        return [self.status[i] for i in sorted(self.status)]

    def user_points(self) -> list[AttachPoint]:
        return [p for p in self.attached_points if p.mechanism in USER_KINDS]

    def copies(self, point: AttachPoint) -> int:
        """How many files this uprobe point is attached to (the node's copy and containers')."""
        return self.placement.copies(point)

    @property
    def map_memory(self) -> int:
        """Upper bound of the kernel memory of this set's maps (reserved in the memory budget)."""
        return self.held.map_memory

    @property
    def allowed_cgroups(self) -> int | None:
        """Cgroups in the in-kernel filter, or None without one."""
        return self.placement.allowed_cgroups

    def _tables(self, rp: ResolvedProbe):
        return self.bpf[f"counts_p{rp.id}"], self.bpf[f"hist_p{rp.id}"] if rp.probe.has_histogram else None

    def read_series(self) -> dict[int, list[Series]]:
        """Per probe id: its series (readout.Readout.series)."""
        out: dict[int, list[Series]] = {}
        with self._lock:
            if self.bpf is None:
                return out
            version = self.attribution.version if self.attribution is not None else 0
            self.readout.begin(names_changed=version != self._names_version)
            self._names_version = version
            for rp in self.live_probes():
                counts, hist = self._tables(rp)
                out[rp.id] = self.readout.series(rp, self.program.layouts[rp.id], *as_hash_rows(
                    self.program.shapes[rp.id], self.program.layouts[rp.id], read_rows(counts),
                    read_rows(hist) if hist is not None else ()), counts.total_cpu)
            self.unknown_cgroups = len(self.readout.unknown)
        return out

    def read_missed(self) -> dict[tuple[int, str], int]:
        """(probe id, reason) -> events whose return could not be paired or recorded."""
        with self._lock:
            if self.bpf is None:
                return {}
            missed = missed_events(self.bpf, self.compiled, self.attached_points, self._instance)
            missed.update({(rp.id, "start_expired"): self._expired.get(rp.id, 0)
                           for rp in self.compiled if rp.probe.kind == "span"})
            return {key: n for key, n in missed.items() if key[0] not in self.retired}

    def read_program_stats(self) -> list[tuple[AttachPoint, int, int]]:
        """(attach point, run_time_ns, run_cnt) of each attached program."""
        with self._lock:
            return [] if self.bpf is None else program_stats(self.bpf, self.attached_points)

    def probe_names(self, point: AttachPoint) -> str:
        return "+".join(self._probe(p).probe.name for p in point.probes)

    def snapshot(self) -> SetSnapshot:
        """Everything a scrape shows of this set."""
        return take_snapshot(self)
