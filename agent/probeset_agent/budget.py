"""Limits every ProbeSet of the agent shares, reserved probe by probe in spec order when a set
compiles: `check` then says what `run` will do, and a probe that does not fit is the one reported
(with the reason), never a random casualty of a failure later on.

- ProbeBudget: the kprobe and uprobe attachments one process may hold. BCC refuses more than
  BPF.get_probe_limit() (BCC_PROBE_LIMIT, default 1000) in a process, whichever set asks; uprobes
  placed as BPF links (uprobe_links.py) are not BCC's but count the same, and so do fentry/fexit
  programs: the budget bounds the kernel objects an agent holds, and its stop time where links
  are missing.
- MAX_PROGRAM_SITES: the attach points (functions, tracepoints) of one set's program, each a C
  function clang compiles and a BPF program the kernel loads: it bounds a set's compile.
- MemoryBudget: the kernel memory of the sets' BPF maps, as upper bounds (memory.py); BPF map
  memory is charged to the agent's cgroup, so it counts against the pod's memory limit.
"""

from __future__ import annotations

import threading
from typing import Callable

from .attach import counted_attachments
from .codegen import attach_key, probe_memory, set_memory
from .memory import possible_cpus
from .resolve import ResolvedProbe


class Budget:
    what = "units"

    def __init__(self, limit: int | None = None):
        self._limit = limit
        self.used = 0
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        if self._limit is None:
            self._limit = self.default_limit()
        return self._limit

    def default_limit(self) -> int:
        raise NotImplementedError

    def set_limit(self, limit: int) -> None:
        self._limit = limit

    def reserve(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)

    def reserve_probes(self, probes: list[ResolvedProbe], cost: Callable[[ResolvedProbe], int],
                       fail: Callable[[ResolvedProbe, str], None]) -> int:
        """Reserve cost(probe) for each probe in order; fail(probe, reason) for one that does not
        fit. The total reserved."""
        total = 0
        for rp in probes:
            n = cost(rp)
            if self.reserve(n):
                total += n
            else:
                fail(rp, self.refusal(n))
        return total

    def settle(self, reserved: int, needed: int) -> int:
        """Keep reserved only what is needed (<= reserved); the new amount."""
        self.release(reserved - needed)
        return needed

    def refusal(self, n: int) -> str:
        raise NotImplementedError


class ProbeBudget(Budget):
    def default_limit(self) -> int:
        from bcc import BPF
        return BPF.get_probe_limit()

    def refusal(self, n: int) -> str:
        return (f"needs {n} kprobe/uprobe/fentry attachment(s), and the agent holds {self.used} of the {self.limit} one "
                "process may have (BCC_PROBE_LIMIT), for this and other ProbeSets: narrow the glob, or split the "
                "probes over fewer sets")


MIB = 1 << 20


class MemoryBudget(Budget):
    DEFAULT_MIB = 256

    def default_limit(self) -> int:
        return self.DEFAULT_MIB * MIB

    def refusal(self, n: int) -> str:
        return (f"its maps may take up to {n / MIB:.1f} MiB of kernel memory, and the agent's ProbeSets hold "
                f"{self.used / MIB:.1f} of the {self.limit / MIB:.0f} MiB it allows (--map-memory): lower "
                "maxSeriesPerProbe, or drop latency: true where counts suffice")


MAX_PROGRAM_SITES = 2048     # one probe's glob of maxFunctions 1000 with latency (entry + return) fits


class Holdings:
    """What one program holds in the agent's budgets: its attachments and its maps' memory."""

    def __init__(self, probes: ProbeBudget, memory: MemoryBudget, labels: tuple[str, ...], max_series: int):
        self.probes, self.memory, self.labels, self.max_series = probes, memory, labels, max_series
        self.attachments = self.map_memory = 0

    def _probe_memory(self, rp: ResolvedProbe, cpus: int) -> int:
        return probe_memory(rp, self.labels, self.max_series, cpus)

    def reserve(self, usable: Callable[[], list[ResolvedProbe]], filtering: bool,
                fail: Callable[[ResolvedProbe, str], None]) -> None:
        """Reserve, probe by probe in order, the attachments and the map memory each usable probe
        needs; a probe that does not fit gets fail(probe, reason) (and is no longer usable: it is
        given no memory)."""
        sites: set[tuple] = set()
        for rp in usable():
            mine = {attach_key(s) for s in rp.sites} - sites
            if len(sites) + len(mine) > MAX_PROGRAM_SITES:
                fail(rp, f"needs {len(mine)} more attach point(s) (functions, tracepoints), and its set's program "
                         f"has {len(sites)} of the {MAX_PROGRAM_SITES} one program may have: narrow the glob "
                         "(maxFunctions), or split the probes over more sets")
            else:
                sites |= mine
        self.attachments = self.probes.reserve_probes(usable(), lambda rp: len(counted_attachments([rp])), fail)
        cpus = possible_cpus()
        overhead = set_memory(filtering, cpus)
        if not self.memory.reserve(overhead):
            for rp in usable():
                fail(rp, self.memory.refusal(overhead))
            return
        self.map_memory = overhead + self.memory.reserve_probes(usable(), lambda rp: self._probe_memory(rp, cpus), fail)

    def settle(self, compiled: list[ResolvedProbe], filtering: bool) -> None:
        """Keep only what the compiled program holds."""
        self.attachments = self.probes.settle(self.attachments, len(counted_attachments(compiled)))
        cpus = possible_cpus()
        needed = set_memory(filtering, cpus) + sum(self._probe_memory(rp, cpus) for rp in compiled) if compiled else 0
        self.map_memory = self.memory.settle(self.map_memory, needed)

    def keep_attachments(self, live: list[ResolvedProbe]) -> None:
        """Hold only the attachments of these probes (the others were detached). Their maps stay
        until the program stops, and so does their memory."""
        self.attachments = self.probes.settle(self.attachments, len(counted_attachments(live)))

    def release(self, extra_attachments: int = 0) -> None:
        self.probes.release(self.attachments + extra_attachments)
        self.memory.release(self.map_memory)
        self.attachments = self.map_memory = 0


PROCESS_PROBES = ProbeBudget()       # the process's: BCC's quota is a global of the process
PROCESS_MEMORY = MemoryBudget()
