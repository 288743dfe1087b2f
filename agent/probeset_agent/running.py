"""One ProbeSet running on this node, edited without losing events.

An edit is make-before-break: the new or changed probes are compiled and attached in a new BPF
program first, then the set's series switch to it, then the old versions are detached. Probes
whose definition did not change are not touched at all: they keep their program, their maps and
their counts, so their series go on without a reset. A set-level change that every probe's code
depends on (labels, maxSeriesPerProbe, podSelector, scope) starts every probe afresh, the same way.

So a set runs as one or more programs: the first holds every probe, each edit adds one with the
probes it changed. A program whose probes were all retired is stopped; there are never more
programs than probes.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from typing import Callable

from probeset_api.spec import Probe, ProbeSet

from .report import ProbeStatus
from .snapshot import SetSnapshot

log = logging.getLogger(__name__)

# ProbeSet fields every probe's generated code depends on; the others (nodeSelector, tolerations)
# decide where the set runs, not how.
PROGRAM_FIELDS = ("name", "namespace", "labels", "max_series_per_probe", "pod_selector", "scope")


def _definition(probe: Probe) -> Probe:
    """A probe without its position: moving it in the list is not a change."""
    return dataclasses.replace(probe, index=0)


@dataclass(frozen=True)
class Edit:
    """What an edit does to the running probes, by name."""

    keep: tuple[str, ...]      # unchanged: they keep counting, without a reset
    start: tuple[str, ...]     # new or changed: attached in a new program first
    stop: tuple[str, ...]      # changed or removed: detached once the new program runs
    whole: bool = False        # a set-level change: every probe starts afresh

    @property
    def nothing(self) -> bool:
        return not self.start and not self.stop and not self.whole


def plan_edit(old: ProbeSet, new: ProbeSet) -> Edit:
    """What it takes to go from running `old` to running `new`."""
    if any(getattr(old, f) != getattr(new, f) for f in PROGRAM_FIELDS):
        return Edit((), tuple(p.name for p in new.probes), tuple(p.name for p in old.probes), whole=True)
    before = {p.name: _definition(p) for p in old.probes}
    after = {p.name: _definition(p) for p in new.probes}
    keep = tuple(n for n in after if before.get(n) == after[n])
    start = tuple(n for n in after if before.get(n) != after[n])
    stop = tuple(n for n in before if after.get(n) != before[n])
    return Edit(keep, start, stop)


def _only(pset: ProbeSet, names: tuple[str, ...]) -> ProbeSet:
    """The set with only these probes (and without the rejected ones, which the RunningSet reports)."""
    wanted = set(names)
    return dataclasses.replace(pset, probes=[p for p in pset.probes if p.name in wanted], rejected=[])


class RunningSet:
    """`make(pset)` builds a (not started) ProbeSetProgram for a set. Reading methods (snapshot,
    probe_statuses) may run from other threads while an edit runs."""

    def __init__(self, make: Callable[[ProbeSet], object]):
        self.make = make
        self.pset: ProbeSet | None = None
        self.programs: list = []
        self._lock = threading.Lock()     # guards pset and programs: the switch of an edit

    @property
    def generation(self) -> int | None:
        return self.pset.generation if self.pset is not None else None

    def start(self, pset: ProbeSet) -> None:
        prog = self.make(_only(pset, tuple(p.name for p in pset.probes)))
        prog.start()
        with self._lock:
            self.pset, self.programs = pset, [prog]

    def update(self, pset: ProbeSet) -> Edit:
        """Run `pset` instead of the current spec, make-before-break; what changed."""
        if self.pset is None:
            self.start(pset)
            return Edit((), tuple(p.name for p in pset.probes), ())
        edit = plan_edit(self.pset, pset)
        fresh = None
        if edit.start:
            fresh = self.make(_only(pset, edit.start))
            fresh.start()                          # made: attached while the old versions still count
        stopped, retiring = [], []
        with self._lock:                           # switch: scrapes see the new probes from here on
            self.pset = pset
            for prog in self.programs:
                gone = {i for i, st in prog.status.items() if edit.whole or st.name in edit.stop}
                if gone and len(gone) == len(prog.status):
                    stopped.append(prog)
                elif gone:
                    prog.hide(gone)
                    retiring.append((prog, gone))
            self.programs = [p for p in self.programs if p not in stopped] + ([fresh] if fresh else [])
        for prog in stopped:                       # break: the old versions go
            prog.stop()
        for prog, gone in retiring:
            prog.retire(gone)
        log.info("probeset %s: generation %s: %d probe(s) kept counting, %d started, %d stopped%s",
                 pset.name, pset.generation, len(edit.keep), len(edit.start), len(edit.stop),
                 " (a set-level change: every probe starts afresh)" if edit.whole else "")
        return edit

    def stop(self) -> None:
        with self._lock:
            programs, self.programs = self.programs, []
        for prog in programs:
            prog.stop()

    # --- reading ------------------------------------------------------------------------------

    def probe_statuses(self) -> list[ProbeStatus]:
        """Every probe of the spec, in spec order: the running ones' and the rejected ones'."""
        with self._lock:
            pset, programs = self.pset, list(self.programs)
        if pset is None:
            return []
        by_name = {st.name: st for prog in programs for st in prog.probe_statuses()}
        out = [by_name[p.name] for p in pset.probes if p.name in by_name]
        out += [ProbeStatus(name=bad.name, index=bad.index, kind="", error=bad.reason) for bad in pset.rejected]
        return out

    def snapshot(self) -> SetSnapshot:
        with self._lock:
            programs = list(self.programs)
            snaps = [prog.snapshot() for prog in programs]
        merged = SetSnapshot(snaps[0].labels if snaps else {"probeset": self.pset.name if self.pset else ""},
                             self.probe_statuses())
        for snap in snaps:
            merged.probes += snap.probes
            merged.missed += snap.missed
            merged.uprobe_files += snap.uprobe_files
            merged.uprobe_sites += snap.uprobe_sites
            merged.reattached += snap.reattached
            merged.run_ns += snap.run_ns
            merged.runs += snap.runs
            merged.unknown_cgroups = max(merged.unknown_cgroups, snap.unknown_cgroups)
            if snap.allowed_cgroups is not None:
                merged.allowed_cgroups = max(merged.allowed_cgroups or 0, snap.allowed_cgroups)
            merged.map_memory += snap.map_memory
            merged.compile_seconds += snap.compile_seconds
            merged.compiles += snap.compiles
        return merged

    def refresh(self) -> None:
        with self._lock:
            programs = list(self.programs)
        for prog in programs:
            prog.refresh()
