"""The Prometheus collector: reads the BPF maps of every running ProbeSet at scrape time."""

from __future__ import annotations

import platform

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from . import __version__
from .maps import cumulative_buckets
from .program import OVERFLOW_LABEL, ProbeSetProgram


def _bcc_version() -> str:
    try:
        import bcc
        return getattr(bcc, "__version__", "") or "unknown"
    except ImportError:
        return "missing"


class ProbeSetCollector:
    def __init__(self, programs: list[ProbeSetProgram], node: str, features=None):
        self.programs = programs
        self.node = node
        self.features = features
        self._bcc_version = _bcc_version()

    def describe(self):
        """Families without values, so registering does not read the maps."""
        return [f for f, _ in self._families()]

    def _families(self):
        events = CounterMetricFamily("probeset_events", "Events seen by a probe, aggregated in the kernel.",
                                     labels=None)
        latency = HistogramMetricFamily("probeset_latency_seconds",
                                        "Time from function entry to return, per thread (latency: true).")
        attached = GaugeMetricFamily("probeset_probe_attached",
                                     "1 when the probe is attached to this function, 0 when it could not be.",
                                     labels=["probeset", "probe", "function", "via"])
        missed = CounterMetricFamily("probeset_missed_events",
                                     "Events lost: returns without a recorded entry (unpaired_return), "
                                     "kretprobe instances exhausted (kretprobe_maxactive), histogram map "
                                     "full (histogram_full).",
                                     labels=["probeset", "probe", "reason"])
        overflow = CounterMetricFamily("probeset_series_overflow",
                                       "Events folded into the __overflow__ series because the probe spent "
                                       "its maxSeriesPerProbe budget.", labels=["probeset", "probe"])
        run_seconds = CounterMetricFamily("probeset_bpf_run_seconds",
                                          "CPU time spent in the BPF programs (needs kernel.bpf_stats_enabled).",
                                          labels=["probeset", "probe", "function", "via"])
        runs = CounterMetricFamily("probeset_bpf_runs",
                                   "BPF program runs (needs kernel.bpf_stats_enabled).",
                                   labels=["probeset", "probe", "function", "via"])
        info = GaugeMetricFamily("probeset_agent_info", "Static facts about the agent and its node.",
                                 labels=["version", "node", "kernel", "bcc_version", "kprobe", "fentry"])
        return [(events, "events"), (latency, "latency"), (attached, "attached"), (missed, "missed"),
                (overflow, "overflow"), (run_seconds, "run_seconds"), (runs, "runs"), (info, "info")]

    def collect(self):
        fams = dict((name, fam) for fam, name in self._families())
        feats = self.features.as_dict() if self.features else {}
        fams["info"].add_metric([__version__, self.node, platform.release(), self._bcc_version,
                                 "yes" if feats.get("kprobe") == "yes" else "no" if feats else "unknown",
                                 "yes" if feats.get("fentry") == "yes" else "no" if feats else "unknown"], 1)
        for prog in list(self.programs):   # a copy: the cluster agent swaps programs on reload
            name = prog.pset.name
            for st in prog.probe_statuses():
                for function, ok in st.functions.items():
                    fams["attached"].add_metric([name, st.name, function, st.via], 1 if ok else 0)
                if not st.functions:   # never resolved: still visible, as not attached
                    fams["attached"].add_metric([name, st.name, "", st.via], 0)
            series_by_probe = prog.read_series()
            by_id = {rp.id: rp for rp in prog.resolved}
            for probe_id, series in series_by_probe.items():
                rp = by_id[probe_id]
                folded = 0
                for s in series:
                    if s.labels["function"] == OVERFLOW_LABEL:
                        folded += s.count
                    fams["events"].samples.append(Sample("probeset_events_total", s.labels, s.count, None, None))
                    if s.buckets is not None:
                        _add_histogram(fams["latency"], s.labels, cumulative_buckets(s.buckets), s.sum_ns / 1e9)
                fams["overflow"].add_metric([name, rp.probe.name], folded)
            for (probe_id, reason), n in sorted(prog.read_missed().items()):
                fams["missed"].add_metric([name, by_id[probe_id].probe.name, reason], n)
            for point, run_ns, run_cnt in prog.read_program_stats():
                labels = [name, prog.probe_names(point), point.site.function, point.mechanism]
                fams["run_seconds"].add_metric(labels, run_ns / 1e9)
                fams["runs"].add_metric(labels, run_cnt)
        for fam in fams.values():
            yield fam


def _add_histogram(fam: HistogramMetricFamily, labels: dict[str, str], buckets, sum_seconds: float) -> None:
    for le, n in buckets:
        fam.samples.append(Sample("probeset_latency_seconds_bucket", {**labels, "le": floatToGoString(le)}, n,
                                  None, None))
    fam.samples.append(Sample("probeset_latency_seconds_count", labels, buckets[-1][1], None, None))
    fam.samples.append(Sample("probeset_latency_seconds_sum", labels, sum_seconds, None, None))
