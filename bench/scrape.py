"""Scrape cost as a function of series count.

A one-probe ProbeSet with a uprobe on the driver's bench_target() and `groupBy: [arg0]` (labels:
[node], maxSeriesPerProbe 20000); `driver call K` then calls it with K distinct arguments, so the
probe's map holds K series. With the programs attached and the maps filled, we time (median of
--scrapes runs each, after one warm-up):
  read_series      ProbeSetProgram.read_series(): batch map read, per-CPU sums, labels (cached)
  render           MetricsCollector.render(): the text of one /metrics response (includes the above)
  gzip             gzip.compress(body), for comparison (the agent serves plain text)
each as wall time and as this process's CPU time (the latter barely changes with other load).
With --latency the probe also has `latency: true` (uprobe + uretprobe, a histogram per series).
Peak RSS is this process's high-water mark so far (sizes run in order).
With --profile, one render() at the largest size runs under cProfile (top functions).

  chrt -f 50 .venv/bin/python bench/scrape.py [--series 1000 10000] [--scrapes 20] [--latency] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import io
import pstats
import resource
import time

from common import DRIVER, Generated, build_driver, loadavg, machine, median, run_driver, save_json

TARGET_MS = 50.0


def timed(fn, n: int) -> tuple[float, float, object]:
    """Median wall ms and median CPU ms (this process) of n calls after one warm-up call, and the
    last result. CPU time hardly moves when other work shares the machine; wall time does."""
    result = fn()
    wall, cpu = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return median(wall), median(cpu), result


def measure(series: int, scrapes: int, latency: bool, profile: bool) -> dict:
    from probeset_agent.exposition import MetricsCollector
    probe = {"uprobe": f"{DRIVER}:bench_target", "groupBy": ["arg0"], "latency": latency}
    gen = Generated(f"scrape-{series}", probe, max_series=max(20000, series))
    gen.start()
    try:
        run_driver("call", series)
        prog = gen.prog
        collector = MetricsCollector([prog], "bench")
        n_series = sum(len(v) for v in prog.read_series().values())
        read_ms, read_cpu, _ = timed(prog.read_series, scrapes)
        scrape_ms, scrape_cpu, text = timed(collector.render, scrapes)
        body = text.encode()
        gzip_ms, gzip_cpu, _ = timed(lambda: gzip.compress(body), scrapes)
        out = {"series": series, "series_read": n_series, "latency": latency, "scrapes": scrapes,
               "samples": sum(1 for line in text.splitlines() if line and not line.startswith("#")),
               "body_bytes": len(body),
               "read_series_ms": read_ms, "render_ms": scrape_ms, "gzip_ms": gzip_ms,
               "read_series_cpu_ms": read_cpu, "render_cpu_ms": scrape_cpu, "gzip_cpu_ms": gzip_cpu,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if profile:
            pr = cProfile.Profile()
            pr.runcall(collector.render)
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
    print(f"{machine()}, load average {loadavg()}")
    results = []
    print(f"median of {args.scrapes} scrapes{', latency: true' if args.latency else ''}; "
          f"times in ms, wall (CPU)")
    print(f"{'series':>7} {'samples':>8} {'bytes':>10} {'read_series':>15} {'render':>17} {'gzip':>15} "
          f"{'peak RSS MB':>12}")
    for n in args.series:
        r = measure(n, args.scrapes, args.latency, args.profile and n == max(args.series))
        results.append(r)
        met = "met" if r["render_ms"] <= TARGET_MS else "MISSED"
        cols = [f"{r[k + '_ms']:.1f} ({r[k + '_cpu_ms']:.1f})" for k in ("read_series", "render", "gzip")]
        print(f"{r['series_read']:7d} {r['samples']:8d} {r['body_bytes']:10d} {cols[0]:>15} {cols[1]:>17} "
              f"{cols[2]:>15} {r['peak_rss_mb']:12.0f}  target {TARGET_MS:.0f} ms: {met}")
        if "profile" in r:
            print(r["profile"])
    out = {"machine": machine(), "results": results}
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
