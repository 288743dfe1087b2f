"""Which ProbeSets this node's agent runs, from the ProbeSet objects and the Node's labels. Pure.

A set runs here when the administrator's policy admits it (probeset_api.admission: the operator
applies the same) and its nodeSelector matches the node. Within the node's limits on sets, on
probes and (when the admin sets one) on the series the sets may export, the oldest sets come first (creationTimestamp, then namespace/name): which sets run is
decided by the objects alone, not by the order events arrived in, and a new set never pushes out
one that runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from probeset_api.admission import Admission
from probeset_api.spec import ProbeSet, SpecError

from .histogram import export_bounds_ns, value_bounds

Key = tuple[str, str]          # (namespace, name)


@dataclass(frozen=True)
class Limits:
    max_sets: int = 20         # --max-probesets (Helm agent.maxProbeSets)
    max_probes: int = 500      # --max-probes (Helm agent.maxProbes): probes of all sets together
    max_series: int = 0        # --max-series (Helm agent.maxSeries): series_bound() of all sets; 0: none


def series_per_key(probe) -> int:
    """Series one label combination of the probe exports: the events counter, and a value's sum
    (one counter) or histogram, or a latency histogram (its le buckets, +Inf, _count, _sum)."""
    per_power = probe.buckets_per_power_of_two
    if probe.value is not None:
        if probe.aggregate == "sum":
            return 2
        bounds = export_bounds_ns(per_power) if probe.unit == "seconds" else value_bounds(per_power)
        return 1 + len(bounds) + 3
    if probe.latency or probe.kind == "span":
        return 1 + len(export_bounds_ns(per_power)) + 3
    return 1


def series_bound(pset: ProbeSet) -> int:
    """The most data series the set can export from one node: per probe, maxSeriesPerProbe label
    combinations and the overflow one, each series_per_key(). What Prometheus pays per node at
    worst; docs/scale.md."""
    return sum((pset.max_series_per_probe + 1) * series_per_key(probe) for probe in pset.probes)


@dataclass(frozen=True)
class Refusal:
    reason: str                # InvalidSpec, OverBudget (NodeReport.reason)
    message: str
    generation: int | None
    total: int                 # probes in the spec


@dataclass
class Choice:
    run: dict[Key, ProbeSet] = field(default_factory=dict)          # in the order they are started
    refused: dict[Key, Refusal] = field(default_factory=dict)
    unselected: set[Key] = field(default_factory=set)               # their nodeSelector does not match


def key_of(obj: dict) -> Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


def selects(node_selector: dict[str, str], node_labels: dict[str, str] | None) -> bool:
    """nodeSelector semantics: every pair must be a label of the node. Until the node's labels are
    known, only a set without a nodeSelector is selected."""
    if not node_selector:
        return True
    return node_labels is not None and all(node_labels.get(k) == v for k, v in node_selector.items())


def _age(obj: dict) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    # RFC 3339 in UTC with a Z, as the API server writes it: ordered as strings.
    return meta.get("creationTimestamp") or "", meta.get("namespace", ""), meta.get("name", "")


def choose(objects: list[dict], node_labels: dict[str, str] | None, admission: Admission, limits: Limits,
           admit=None) -> Choice:
    """`admit(obj)` (default admission.admit; the agent passes a cache of it) -> ProbeSet or SpecError."""
    admit = admit or admission.admit
    out = Choice()
    sets = probes = series = 0
    for obj in sorted(objects, key=_age):
        key = key_of(obj)
        generation = (obj.get("metadata") or {}).get("generation")
        spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
        total = len(spec.get("probes") or []) if isinstance(spec.get("probes"), list) else 0
        node_selector = spec.get("nodeSelector") if isinstance(spec.get("nodeSelector"), dict) else {}
        if not selects(node_selector, node_labels):
            out.unselected.add(key)
            continue
        try:
            pset = admit(obj)
        except SpecError as e:
            out.refused[key] = Refusal("InvalidSpec", str(e), generation, total)
            continue
        n, s = len(pset.probes), series_bound(pset) if limits.max_series else 0
        if sets + 1 > limits.max_sets or probes + n > limits.max_probes or \
                (limits.max_series and series + s > limits.max_series):
            out.refused[key] = Refusal("OverBudget", _over_budget(sets, probes, n, series, s, limits), generation,
                                       total)
            continue
        sets, probes, series = sets + 1, probes + n, series + s
        out.run[key] = pset
    return out


def _over_budget(sets: int, probes: int, n: int, series: int, s: int, limits: Limits) -> str:
    if sets + 1 > limits.max_sets:
        what = f"the agent of this node runs {sets} ProbeSets, the most it may (--max-probesets, Helm agent.maxProbeSets)"
    elif probes + n <= limits.max_probes:
        what = (f"it may export up to {s} series (maxSeriesPerProbe + 1 per probe, times the histogram's buckets "
                f"with latency), which would take the agent of this node past {limits.max_series} series (its sets "
                f"take {series}; --max-series, Helm agent.maxSeries): lower maxSeriesPerProbe")
    else:
        what = (f"its {n} probe(s) would take the agent of this node past {limits.max_probes} probes (it runs "
                f"{probes}; --max-probes, Helm agent.maxProbes)")
    return (f"not run on this node: {what}; older ProbeSets come first. It starts when another set on this node "
            "goes or is narrowed (nodeSelector), or the admin raises the limit")
