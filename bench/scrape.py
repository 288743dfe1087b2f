"""Scrape cost as a function of series count.

A one-probe ProbeSet with a uprobe on the driver's bench_target() and `groupBy: [arg0]` (labels:
[node], maxSeriesPerProbe 20000); `driver call K` then calls it with K distinct arguments, so the
probe's map holds K series. With the programs attached and the maps filled, we time (median of
--scrapes runs each, after one warm-up):
  read_series      ProbeSetProgram.read_series(): batch map read, per-CPU sums, label decoding
  collect          list(ProbeSetCollector.collect()): the above plus building the metric families
  generate_latest  prometheus_client.generate_latest(registry): what one /metrics request costs
With --latency the probe also has `latency: true` (uprobe + uretprobe, a histogram per series).
With --profile, one generate_latest() at the largest size runs under cProfile (top functions).

  sudo .venv/bin/python bench/scrape.py [--series 1000 10000] [--scrapes 20] [--latency] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

from prometheus_client import CollectorRegistry, generate_latest

from common import DRIVER, Generated, build_driver, machine, median, run_driver, save_json

TARGET_MS = 50.0


def timed(fn, n: int) -> tuple[float, object]:
    """Median wall ms of n calls (after one warm-up call), and the last result."""
    result = fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return median(times), result


def measure(series: int, scrapes: int, latency: bool, profile: bool) -> dict:
    from probeset_agent.collector import ProbeSetCollector
    probe = {"uprobe": f"{DRIVER}:bench_target", "groupBy": ["arg0"], "latency": latency}
    gen = Generated(f"scrape-{series}", probe, max_series=max(20000, series))
    gen.start()
    try:
        run_driver("call", series)
        prog = gen.prog
        registry = CollectorRegistry(auto_describe=True)
        collector = ProbeSetCollector([prog], "bench")
        registry.register(collector)
        n_series = sum(len(v) for v in prog.read_series().values())
        read_ms, _ = timed(prog.read_series, scrapes)
        collect_ms, fams = timed(lambda: list(collector.collect()), scrapes)
        scrape_ms, body = timed(lambda: generate_latest(registry), scrapes)
        out = {"series": series, "series_read": n_series, "latency": latency, "scrapes": scrapes,
               "samples": sum(len(f.samples) for f in fams), "body_bytes": len(body),
               "read_series_ms": read_ms, "collect_ms": collect_ms, "generate_latest_ms": scrape_ms}
        if profile:
            pr = cProfile.Profile()
            pr.runcall(generate_latest, registry)
            s = io.StringIO()
            pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(15)
            out["profile"] = s.getvalue()
        return out
    finally:
        gen.stop()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--scrapes", type=int, default=20)
    ap.add_argument("--latency", action="store_true", help="latency: true (histograms) instead of counts")
    ap.add_argument("--profile", action="store_true", help="cProfile one scrape at the largest size")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    build_driver()
    print(machine())
    results = []
    print(f"{'series':>7} {'samples':>8} {'bytes':>9} {'read_series ms':>15} {'collect ms':>11} "
          f"{'generate_latest ms':>19}  (median of {args.scrapes}{', latency: true' if args.latency else ''})")
    for n in args.series:
        r = measure(n, args.scrapes, args.latency, args.profile and n == max(args.series))
        results.append(r)
        met = "met" if r["generate_latest_ms"] <= TARGET_MS else "MISSED"
        print(f"{r['series_read']:7d} {r['samples']:8d} {r['body_bytes']:9d} {r['read_series_ms']:15.1f} "
              f"{r['collect_ms']:11.1f} {r['generate_latest_ms']:19.1f}  target {TARGET_MS:.0f} ms: {met}")
        if "profile" in r:
            print(r["profile"])
    out = {"machine": machine(), "results": results}
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
