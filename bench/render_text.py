"""The latency family's text cost alone, with histograms more spread than bench/scrape.py's.

bench/scrape.py's series each hold one event of a ~1 µs function: one non-empty bucket per series,
the best case for the exposition's run joins (one join per run of equal cumulative counts). Here
--series synthetic series (no BPF, no root: snapshots built in Python, as tests/unit do) each hold
--events latencies drawn from a log-normal distribution (sigma 1, median 1 µs to 1.2 ms), ~10
non-empty buckets at the default resolution (as the kernel records them: kernel_bucket; an older
tree's kernel side recorded the finest buckets, ~4 per power of two). For each --histogram-buckets mode we time
MetricsCollector.render_bytes() (median CPU ms of --repeat runs after a warm-up) and report the
body's size. No map is read: the agent's read_series() comes on top (bench/scrape.py).

Run against an older tree (whose MetricsCollector takes trim_buckets and has no render_bytes) by
copying this bench/ into a worktree of it and running it from there (common.py puts its own tree's
agent/ and api/ first on sys.path): sparse then means its top-trimmed default.

  .venv/bin/python bench/render_text.py [--series 10000] [--events 200] [--repeat 7] [--json FILE]
"""

from __future__ import annotations

import argparse
import random
import statistics

from common import cpu_ms, save_json


def build(n: int, events: int, seed: int = 1) -> list:
    from probeset_agent.histogram import bucket_index
    from probeset_agent.readout import Series, label_text
    try:        # the buckets the kernel records: on the export grid (1 per power of two)
        from probeset_agent.histogram import kernel_bucket
    except ImportError:     # an older tree: the finest buckets, as its kernel side recorded them
        def kernel_bucket(ns: int, per_power: int) -> int:
            return bucket_index(ns)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        labels = {"probeset": "bench", "probe": "p", "function": "bench_target", "node": "bench", "arg0": str(i)}
        buckets: dict[int, int] = {}
        mu, total = rng.uniform(7, 14), 0
        for _ in range(events):
            ns = max(1, int(rng.lognormvariate(mu, 1.0)))
            b = kernel_bucket(ns, 1)
            buckets[b] = buckets.get(b, 0) + 1
            total += ns
        out.append(Series(labels, label_text(labels), events, total, buckets))
    return out


def collector(series: list, mode: str):
    from probeset_agent.exposition import MetricsCollector
    from probeset_agent.snapshot import ProbeSeries, SetSnapshot

    class Source:
        def snapshot(self):
            return SetSnapshot({"probeset": "bench"}, [], [ProbeSeries("p", 1, series)])
    try:
        c = MetricsCollector([Source()], "bench", histogram_buckets=mode)
    except TypeError:                                     # before: trim_buckets, str render()
        c = MetricsCollector([Source()], "bench", trim_buckets=mode != "all")
    return getattr(c, "render_bytes", None) or (lambda: c.render().encode())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=10000)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--modes", nargs="+", default=["nonzero", "sparse", "all"])
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    series = build(args.series, args.events)
    print(f"{args.series} series of {args.events} events; median of {args.repeat} render_bytes(), CPU ms")
    results = []
    for mode in args.modes:
        render = collector(series, mode)
        body = render()
        cpu = cpu_ms(render, args.repeat)
        r = {"mode": mode, "series": args.series, "events": args.events, "body_bytes": len(body),
             "samples": body.count(b"\n") - 2 * body.count(b"# HELP"), "render_cpu_ms": statistics.median(cpu)}
        results.append(r)
        print(f"{mode:8} {r['render_cpu_ms']:7.1f} ms {r['body_bytes']:10d} bytes {r['samples']:8d} samples")
    out = {"results": results}
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
