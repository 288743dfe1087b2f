"""The exposition: each running ProbeSet's snapshot (snapshot.py), taken when scraped, as the
Prometheus text format (0.0.4); server.py serves it.

It writes the text itself, rather than through prometheus_client's registry, because a scrape of
10,000 series must stay within tens of milliseconds: each series' label block is rendered once and
cached by its raw map key (readout.py), and a sample line is then one string join.

A histogram's buckets (latency's, or a value probe's with aggregate: histogram) are exported as
`histogram_buckets` says (histogram.py, bucket_runs;
`--histogram-buckets`, docs/metrics.md): by default (nonzero) from the bound just below the lowest
non-empty bucket up to +Inf, which keeps `sum by (le)` across series exact; `sparse` also stops at
the highest non-empty bucket (one series' quantiles only); `all` every bound. A series' bucket lines
are written with one bytes.join per run of equal cumulative counts (a fast function's bounds above
its slowest event all repeat the total), not one f-string per line, straight into the response
body (render_bytes): 10,000 latency series are ~43 MB, and every full copy of that costs ~20 ms
(docs/benchmarks.md 2).
"""

from __future__ import annotations

import platform

from prometheus_client.utils import floatToGoString

from probeset_api import __version__
from probeset_api.schema import AGGREGATES, UNITS
from probeset_api.values import metric_name

from .histogram import BUCKET_MODES, DEFAULT_BUCKET_MODE, bucket_runner, export_bounds_ns, value_bounds
from .readout import OVERFLOW_LABEL, label_text
from .snapshot import SetSnapshot
from .uprobe_entry import point_class

FAMILIES = {
    "probeset_events_total": ("counter", "Events seen by a probe, aggregated in the kernel."),
    "probeset_latency_seconds": ("histogram", "Time from function entry to return, per thread (latency: true)."),
    **{metric_name(unit, aggregate): ("counter" if aggregate == "sum" else "histogram",
                                      ("Sum" if aggregate == "sum" else "Distribution") + " of a value probe's values"
                                      + (f", in {unit}" if unit else "") + " (value, aggregate, unit).")
       for unit in (None, *UNITS) for aggregate in AGGREGATES},
    "probeset_probe_attached": ("gauge", "1 when the probe is attached to this function, 0 when it could not be."),
    "probeset_missed_events_total": ("counter", "Events lost: returns without a recorded entry (unpaired_return), "
                                                "kretprobe instances exhausted (kretprobe_maxactive), histogram "
                                                "map full (histogram_full); values left out: negative "
                                                "(negative_value)."),
    "probeset_series_overflow_total": ("counter", "Events folded into the __overflow__ series because the probe "
                                                  "spent its maxSeriesPerProbe budget."),
    "probeset_bpf_run_seconds_total": ("counter", "CPU time spent in the BPF programs "
                                                  "(needs kernel.bpf_stats_enabled)."),
    "probeset_bpf_runs_total": ("counter", "BPF program runs (needs kernel.bpf_stats_enabled)."),
    "probeset_uprobe_hit_seconds": ("gauge", "What one hit of this uprobe point costs the probed thread besides its "
                                             "BPF program, by the class of the probed instruction (emulated, "
                                             "optimizable: a 5-byte NOP, no trap after the first hit on Linux >= 6.18, "
                                             "single-stepped; return: what a uretprobe adds), measured on this node at "
                                             "start."),
    "probeset_unknown_cgroups": ("gauge", "Cgroup ids not found in the cgroup tree (gone before the agent saw "
                                          "them) whose events are folded into one series labelled __unknown__."),
    "probeset_allowed_cgroups": ("gauge", "Cgroups of the selected pods in the in-kernel filter (namespace "
                                          "scope or podSelector)."),
    "probeset_uprobe_files": ("gauge", "Copies of the probed file a uprobe is attached to: the node's and each "
                                       "selected container's distinct one (device, inode)."),
    "probeset_uprobe_reattached_total": ("counter", "uprobes placed again because their file changed: replaced "
                                                    "(a new file at the path) or modified (written in place: "
                                                    "processes that ran it may have computed wrong results)."),
    "probeset_map_memory_bytes": ("gauge", "Kernel memory the set's BPF maps may take when full (an upper bound, "
                                           "reserved in the agent's --map-memory budget)."),
    "probeset_compile_seconds": ("gauge", "Wall time clang took to compile the set's running programs on this node, "
                                          "failed compiles included (they isolate a probe whose C does not compile)."),
    "probeset_compiles": ("gauge", "Compiles of the set's running programs on this node: one per program, more "
                                   "when a probe's C did not compile."),
    "probeset_agent_info": ("gauge", "Static facts about the agent and its node."),
}


def _bcc_version() -> str:
    try:
        import bcc
        return getattr(bcc, "__version__", "") or "unknown"
    except ImportError:
        return "missing"


def _seconds(ns: int) -> str:
    """floatToGoString(ns / 1e9), without its call when repr() is already Go's form (a dot within
    the first 7 characters: under 10^6 s, or an exponent)."""
    text = repr(ns / 1e9)
    return text if text.find(".") <= 6 else floatToGoString(ns / 1e9)


class MetricsCollector:
    """Renders the snapshots of `sources` (objects with .snapshot(): running ProbeSets)."""

    def __init__(self, sources: list, node: str, features=None, histogram_buckets: str = DEFAULT_BUCKET_MODE,
                 hit_cost: dict[str, float] | None = None):
        if histogram_buckets not in BUCKET_MODES:
            raise ValueError(f"histogram buckets: {histogram_buckets!r} is not one of {', '.join(BUCKET_MODES)}")
        self.sources = sources           # the cluster agent swaps its contents on reload
        self.node = node
        self.features = features
        self.histogram_buckets = histogram_buckets   # nonzero, sparse or all (histogram.bucket_runs)
        self.hit_cost = hit_cost or {}    # seconds per uprobe hit by class (uprobe_cost.calibrate)
        self._bcc_version = _bcc_version()
        self._le_text: dict[tuple[int, str], list[bytes]] = {}

    def _le_strings(self, per_power: int, kind: str = "latency") -> list[bytes]:
        """What follows `le="` on a bucket line, up to the value: each exported bound's `1.024e-06"} `,
        then `+Inf"} ` (indexed as histogram.bucket_runs' positions). Latency's bounds in seconds (also
        a value histogram's in `seconds`), or a value histogram's plain numbers (`value`)."""
        text = self._le_text.get((per_power, kind))
        if text is None:
            if kind == "value":
                bounds = [floatToGoString(float(v)) for v in value_bounds(per_power)]
            else:
                bounds = [floatToGoString(ns / 1e9) for ns in export_bounds_ns(per_power)]
            text = self._le_text[(per_power, kind)] = [f'{b}"}} '.encode() for b in bounds] + [b'+Inf"} ']
        return text

    def render(self) -> str:
        return self.render_bytes().decode()

    def render_bytes(self, out=None):
        """The /metrics body, UTF-8, written into `out` (a bytearray by default; anything that takes
        `out += bytes`, such as rendering.GzipWriter, which compresses as the body is written) and
        returned. The histogram families, most of the body, are written as bytes straight into it,
        series by series (_write_histograms), after the other families are rendered: no
        intermediate copy of them, and no str join and encoding of the whole body."""
        lines: dict[str, list[str]] = {name: [] for name in FAMILIES}
        feats = self.features.as_dict() if self.features else {}
        info = {"version": __version__, "node": self.node, "kernel": platform.release(),
                "bcc_version": self._bcc_version,
                "kprobe": ("yes" if feats["kprobe"] == "yes" else "no") if feats else "unknown",
                "fentry": ("yes" if feats["fentry"] == "yes" else "no") if feats else "unknown"}
        lines["probeset_agent_info"].append(f"probeset_agent_info{label_text(info)} 1\n")
        # A copy of the list: the cluster agent swaps programs on reload.
        snaps = [source.snapshot() for source in list(self.sources)]
        for snap in snaps:
            self._render_set(snap, lines)
        body = bytearray() if out is None else out
        for name, (kind, help_text) in FAMILIES.items():
            body += f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n".encode()
            if kind == "histogram":
                for snap in snaps:
                    self._write_histograms(name, snap, body)
            else:
                body += "".join(lines[name]).encode()
        return body

    def _write_histograms(self, family: str, snap: SetSnapshot, body) -> None:
        """The series of one set's probes whose histograms are `family` (latency's, or a value
        probe's), appended to `body`: per series, base + le + count per line, where a run of equal
        counts is one join (module docstring)."""
        for probe in snap.probes:
            if (probe.value_metric or "probeset_latency_seconds") != family:
                continue
            per_power = probe.buckets_per_power_of_two
            values = probe.value_metric is not None and probe.unit != "seconds"    # plain numbers
            le_text = self._le_strings(per_power, "value" if values else "latency")
            runs = bucket_runner(per_power, self.histogram_buckets, value_bounds(per_power) if values else None)
            bucket, count, total = (f"{family}_bucket".encode(), f"\n{family}_count".encode(),
                                    f"\n{family}_sum".encode())
            for s in probe.series:
                if s.buckets is None:
                    continue    # a value probe's sum: a counter (_render_set)
                text = s.text.encode()
                base = bucket + text[:-1] + b',le="'
                sep = b"\n" + base
                chunks = []
                for a, b, c in runs(s.buckets):
                    n = b"%d" % c
                    chunks.append(le_text[a] + n if b - a == 1 else (n + sep).join(le_text[a:b]) + n)
                # n: the last run's count, +Inf's: the total
                body += b"%s%s%s%s %s%s%s %s\n" % (base, sep.join(chunks), count, text, n, total, text,
                                                   b"%d" % s.sum_ns if values else _seconds(s.sum_ns).encode())

    def _render_set(self, snap: SetSnapshot, lines: dict[str, list[str]]) -> None:
        name = snap.labels          # {probeset, probeset_namespace?}: first on every line
        for st in snap.statuses:
            for function, ok in st.functions.items():
                labels = label_text({**name, "probe": st.name, "function": function, "via": st.via})
                lines["probeset_probe_attached"].append(f"probeset_probe_attached{labels} {1 if ok else 0}\n")
            if not st.functions:   # never resolved: still visible, as not attached
                labels = label_text({**name, "probe": st.name, "function": "", "via": st.via})
                lines["probeset_probe_attached"].append(f"probeset_probe_attached{labels} 0\n")
        events = lines["probeset_events_total"]
        for probe in snap.probes:      # the histograms: _write_histograms
            folded = 0
            sums = lines[probe.value_metric] if probe.value_metric is not None else None
            for s in probe.series:
                if s.labels["function"] == OVERFLOW_LABEL:
                    folded += s.count
                events.append(f"probeset_events_total{s.text} {s.count}\n")
                if sums is not None and s.buckets is None:     # a value's sum (seconds were nanoseconds)
                    sums.append(f"{probe.value_metric}{s.text} "
                                f"{floatToGoString(s.sum_ns / 1e9) if probe.unit == 'seconds' else s.sum_ns}\n")
            labels = label_text({**name, "probe": probe.probe})
            lines["probeset_series_overflow_total"].append(f"probeset_series_overflow_total{labels} {folded}\n")
        set_labels = label_text(name)
        lines["probeset_unknown_cgroups"].append(f"probeset_unknown_cgroups{set_labels} {snap.unknown_cgroups}\n")
        lines["probeset_map_memory_bytes"].append(f"probeset_map_memory_bytes{set_labels} {snap.map_memory}\n")
        lines["probeset_compile_seconds"].append(
            f"probeset_compile_seconds{set_labels} {floatToGoString(round(snap.compile_seconds, 6))}\n")
        lines["probeset_compiles"].append(f"probeset_compiles{set_labels} {snap.compiles}\n")
        if snap.allowed_cgroups is not None:
            lines["probeset_allowed_cgroups"].append(f"probeset_allowed_cgroups{set_labels} {snap.allowed_cgroups}\n")
        for sample in snap.uprobe_files:
            lines["probeset_uprobe_files"].append(f"probeset_uprobe_files{label_text(sample.labels)} {sample.value}\n")
        for sample in snap.reattached:
            lines["probeset_uprobe_reattached_total"].append(
                f"probeset_uprobe_reattached_total{label_text(sample.labels)} {sample.value}\n")
        for probe, reason, n in snap.missed:
            labels = label_text({**name, "probe": probe, "reason": reason})
            lines["probeset_missed_events_total"].append(f"probeset_missed_events_total{labels} {n}\n")
        for sample in snap.run_ns:
            lines["probeset_bpf_run_seconds_total"].append(
                f"probeset_bpf_run_seconds_total{label_text(sample.labels)} {floatToGoString(sample.value / 1e9)}\n")
        for site in snap.uprobe_sites if self.hit_cost else ():
            cls = point_class(site.mechanism, site.path, site.address, site.movable)
            if cls.kind in self.hit_cost:
                lines["probeset_uprobe_hit_seconds"].append(
                    f"probeset_uprobe_hit_seconds{label_text({**site.labels, 'class': cls.kind})} "
                    f"{floatToGoString(round(self.hit_cost[cls.kind], 9))}\n")
        for sample in snap.runs:
            lines["probeset_bpf_runs_total"].append(f"probeset_bpf_runs_total{label_text(sample.labels)} {sample.value}\n")
