"""What a running ProbeSet shows at one scrape: the type the program produces (ProbeSetProgram.snapshot)
and the exposition consumes. Plain data."""

from __future__ import annotations

from dataclasses import dataclass, field

from probeset_api.values import metric_name

from .health import KRETPROBE_MISSED
from .readout import Series
from .report import ProbeStatus


@dataclass
class ProbeSeries:
    probe: str
    buckets_per_power_of_two: int
    series: list[Series]
    value_metric: str | None = None     # a value probe's family (probeset_value..., values.metric_name)
    unit: str | None = None


@dataclass
class PointSample:
    """One attach point's figure, labelled {probeset, probe, function, via}."""

    labels: dict[str, str]
    value: int


@dataclass
class UprobeSite:
    """One uprobe point's place in the node's copy of its file: the exposition classes its
    instruction (uprobe_cost.py)."""

    labels: dict[str, str]
    mechanism: str                  # uprobe | uretprobe
    path: str                       # "" when the node's copy is not observed
    address: int                    # virtual address of the function in that file
    movable: bool = False           # AttachPoint.movable: past the entry block's first instructions


@dataclass
class SetSnapshot:
    labels: dict[str, str]                                                # {probeset, probeset_namespace?}
    statuses: list[ProbeStatus]
    probes: list[ProbeSeries] = field(default_factory=list)
    missed: list[tuple[str, str, int]] = field(default_factory=list)      # (probe, reason, events)
    uprobe_files: list[PointSample] = field(default_factory=list)         # copies attached
    reattached: list[PointSample] = field(default_factory=list)           # uprobes placed again, by reason
    run_ns: list[PointSample] = field(default_factory=list)               # BPF run time
    runs: list[PointSample] = field(default_factory=list)                 # BPF runs
    unknown_cgroups: int = 0
    allowed_cgroups: int | None = None
    map_memory: int = 0                                                   # upper bound, bytes
    uprobe_sites: list[UprobeSite] = field(default_factory=list)          # where each uprobe point is
    compile_seconds: float = 0.0                                          # clang's wall time, all compiles
    compiles: int = 0


def take_snapshot(prog) -> SetSnapshot:
    """What one scrape shows of a running ProbeSetProgram, through its public reading methods."""
    by_id = {rp.id: rp for rp in prog.resolved}
    snap = SetSnapshot(prog.set_labels, prog.probe_statuses())
    for probe_id, series in prog.read_series().items():
        probe = by_id[probe_id].probe
        metric = metric_name(probe.unit, probe.aggregate) if probe.value is not None else None
        snap.probes.append(ProbeSeries(probe.name, probe.buckets_per_power_of_two, series, metric, probe.unit))
    snap.unknown_cgroups, snap.allowed_cgroups = prog.unknown_cgroups, prog.allowed_cgroups
    snap.map_memory = prog.map_memory
    snap.compile_seconds, snap.compiles = prog.compile_cost.seconds, prog.compile_cost.compiles

    def point_labels(point) -> dict[str, str]:
        return {**prog.set_labels, "probe": prog.probe_names(point), "function": point.site.function,
                "via": point.mechanism}
    points = prog.user_points()
    snap.uprobe_files = [PointSample(point_labels(p), prog.copies(p)) for p in points]
    snap.uprobe_sites = [UprobeSite(point_labels(p), p.mechanism, p.site.path, p.site.address, p.movable)
                         for p in points]
    snap.reattached = [PointSample({**point_labels(p), "reason": reason}, prog.placement.reattached.get((p.fn_name, reason), 0))
                       for p in points for reason in ("replaced", "modified")]
    # A namespaced set sees its own pods' events only (docs/operator.md, "Who may observe what"): the
    # kernel's kretprobe misses and the programs' runs and run time count every task on the node,
    # before the pod filter in the program, so its snapshot leaves them out (docs/metrics.md).
    node_wide = not prog.restricted
    snap.missed = [(by_id[probe_id].probe.name, reason, n) for (probe_id, reason), n in sorted(prog.read_missed().items())
                   if node_wide or reason != KRETPROBE_MISSED]
    for point, run_ns, run_cnt in prog.read_program_stats() if node_wide else ():
        snap.run_ns.append(PointSample(point_labels(point), run_ns))
        snap.runs.append(PointSample(point_labels(point), run_cnt))
    return snap
