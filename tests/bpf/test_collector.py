"""The Prometheus exposition of real maps: names, labels, histogram shape."""

import math

from prometheus_client.parser import text_string_to_metric_families

from probeset_agent.exposition import MetricsCollector
from probeset_agent.histogram import export_bounds_ns


def families(prog, histogram_buckets="nonzero"):
    text = MetricsCollector([prog], "testnode", histogram_buckets=histogram_buckets).render()
    return {f.name: f for f in text_string_to_metric_families(text)}, text


def test_histogram_is_cumulative_sorted_and_ends_with_inf(target, run_probeset):
    prog = run_probeset([{"name": "sleep", "uprobe": f"{target.path}:probeset_target_sleep", "pid": target.pid,
                          "latency": True, "bucketsPerPowerOfTwo": 4}], labels=["node", "comm"])
    target.run("sleep 10 1000")
    fams, text = families(prog)
    hist = fams["probeset_latency_seconds"]
    assert hist.type == "histogram"
    buckets = [s for s in hist.samples if s.name.endswith("_bucket")]
    les = [float(s.labels["le"]) for s in buckets]
    assert les == sorted(les) and math.isinf(les[-1])
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and counts[-1] == 10
    # The default (nonzero): 4 per power of two from the bound below the lowest non-empty bucket
    # (usleep(1000): >= 1 ms) to 2^34 ns, and +Inf
    bounds = [b / 1e9 for b in export_bounds_ns(4)]
    first = bounds.index(les[0])
    assert les[:-1] == bounds[first:] and counts[0] == 0 < counts[1] and 1e-3 < les[1] < 1.0
    # sparse: the same, up to the highest non-empty bucket; all: every bound from 256 ns
    sparse = [s for s in families(prog, "sparse")[0]["probeset_latency_seconds"].samples if s.name.endswith("_bucket")]
    les_sparse = [float(s.labels["le"]) for s in sparse]
    assert les_sparse[:-1] == bounds[first:first + len(les_sparse) - 1]
    assert sparse[-2].value == 10 and sparse[-3].value < 10 and 1e-3 < les_sparse[-2] < 1.0
    full = [s for s in families(prog, "all")[0]["probeset_latency_seconds"].samples if s.name.endswith("_bucket")]
    assert len(full) == 105 + 1 and float(full[0].labels["le"]) == 256e-9 and float(full[1].labels["le"]) == 320e-9
    (count,) = [s for s in hist.samples if s.name.endswith("_count")]
    (total,) = [s for s in hist.samples if s.name.endswith("_sum")]
    assert count.value == 10 and 0.010 <= total.value < 1.0
    assert count.labels == {"probeset": "test", "probe": "sleep", "function": "probeset_target_sleep",
                            "node": "testnode", "comm": "probeset_target"}
    # Everything under 1 ms is in buckets with le < 1e-3; usleep(1000) never returns that early.
    assert all(s.value == 0 for s in buckets if float(s.labels["le"]) < 1e-3)


def test_self_observability_metrics(target, run_probeset):
    prog = run_probeset([{"name": "work", "uprobe": f"{target.path}:probeset_target_work", "pid": target.pid},
                         {"name": "gone", "uprobe": f"{target.path}:no_such_symbol"}])
    target.run("work 5")
    fams, _ = families(prog)
    attached = {(s.labels["probe"], s.labels["function"]): s.value for s in fams["probeset_probe_attached"].samples}
    assert attached == {("work", "probeset_target_work"): 1.0, ("gone", ""): 0.0}
    events = fams["probeset_events"].samples
    assert [(s.name, s.labels["probe"], s.value) for s in events] == [("probeset_events_total", "work", 5.0)]
    overflow = {s.labels["probe"]: s.value for s in fams["probeset_series_overflow"].samples}
    assert overflow == {"work": 0.0}
    assert "probeset_missed_events" in fams and "probeset_agent_info" in fams
    assert "probeset_bpf_run_seconds" in fams and "probeset_bpf_runs" in fams


def test_a_scrape_never_compiles(target, run_probeset, monkeypatch):
    """Compiling is the start's and the edit's cost: /metrics only reads maps. Any BPF object made
    while scraping (BCC compiles in BPF.__init__) fails this test."""
    import bcc
    prog = run_probeset([{"name": "work", "uprobe": f"{target.path}:probeset_target_work", "pid": target.pid,
                          "latency": True}])
    made = []
    real_init = bcc.BPF.__init__

    def counting_init(self, *args, **kwargs):
        made.append(args or kwargs)
        return real_init(self, *args, **kwargs)
    monkeypatch.setattr(bcc.BPF, "__init__", counting_init)
    target.run("work 7")
    collector = MetricsCollector([prog], "testnode")
    for _ in range(5):
        text = collector.render()
    assert made == []
    from probeset_agent.loader import compile_program
    compile_program("int f(void *ctx) { return 0; }").cleanup()
    assert len(made) == 1                       # the hook sees a compile when there is one
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    (compiles,) = fams["probeset_compiles"].samples
    (seconds,) = fams["probeset_compile_seconds"].samples
    assert compiles.value == 1 and compiles.labels == {"probeset": "test"}
    assert 0.0 < seconds.value == round(prog.compile_cost.seconds, 6) and seconds.value < 30
