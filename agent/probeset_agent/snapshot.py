"""What a running ProbeSet shows at one scrape: the type the program produces (ProbeSetProgram.snapshot)
and the exposition consumes. Plain data."""

from __future__ import annotations

from dataclasses import dataclass, field

from .readout import Series
from .report import ProbeStatus


@dataclass
class ProbeSeries:
    probe: str
    buckets_per_power_of_two: int
    series: list[Series]


@dataclass
class PointSample:
    """One attach point's figure, labelled {probeset, probe, function, via}."""

    labels: dict[str, str]
    value: int


@dataclass
class SetSnapshot:
    name: str
    statuses: list[ProbeStatus]
    probes: list[ProbeSeries] = field(default_factory=list)
    missed: list[tuple[str, str, int]] = field(default_factory=list)      # (probe, reason, events)
    uprobe_files: list[PointSample] = field(default_factory=list)         # copies attached
    reattached: list[PointSample] = field(default_factory=list)           # uprobes placed again, by reason
    run_ns: list[PointSample] = field(default_factory=list)               # BPF run time
    runs: list[PointSample] = field(default_factory=list)                 # BPF runs
    unknown_cgroups: int = 0
    allowed_cgroups: int | None = None
