"""Scrape cost as a function of series count.

A one-probe ProbeSet with a uprobe on the driver's bench_target() and `groupBy: [arg0]` (labels:
[node], maxSeriesPerProbe 20000); `driver call K` then calls it with K distinct arguments, so the
probe's map holds K series. With the programs attached and the maps filled, we time (median of
--scrapes runs each, after one warm-up):
  read_series      ProbeSetProgram.read_series(): batch map read, per-CPU sums, labels (cached)
  render           MetricsCollector.render_bytes(): the body of one /metrics response (includes the above),
                   with --latency once per --histogram-buckets mode (nonzero, the default: from the
                   bound below the lowest non-empty bucket to +Inf; sparse: also stopping at the
                   highest non-empty one; all: every bound, the agent before issue 14)
  zlib1            gzip.compress(body) at level 1 (zlib: what the agent used before), of each mode's body
  isal1            rendering.gzip_bytes(body): ISA-L's deflate, level 1, of the whole body
  streamed         render_bytes(GzipWriter()): render and compress as it is written (what the agent
                   does when the scraper asks for gzip; includes the render)
each as wall time and as this process's CPU time (the latter barely changes with other load).
Then the whole scrape as a scraper sees it, per mode: the agent's MetricsServer in this process,
`curl` (another process) fetching /metrics --scrapes times without and with `Accept-Encoding: gzip`;
"agent CPU" is this process's CPU time per scrape (render + compress + send), and the bytes sent.
With --latency the probe also has `latency: true` (uprobe + uretprobe, a histogram per series): one
event per series, one non-empty bucket (the best case for the map read and the text). With --spread K
each series instead holds K values spread over 10 powers of two, 1 µs to 2 ms, every sub-bucket
(`driver values`, a uprobe on bench_value with value: arg1, aggregate: histogram, unit: seconds:
latency's buckets, in the same kind of map, but deterministic): `hist rows` is then what the
histogram map holds (one row per series and non-empty bucket recorded).
Peak RSS is this process's high-water mark so far (sizes run in order).
With --profile, one render() at the largest size runs under cProfile (top functions).
To measure an older tree, copy this bench/ into a worktree of it and run it from there (common.py
puts its own tree's agent/ and api/ first on sys.path: PYTHONPATH does not choose the code);
isal1 and streamed are left out where that agent has no GzipWriter.

  chrt -f 50 .venv/bin/python bench/scrape.py [--series 1000 10000] [--scrapes 20] [--latency | --spread K]
      [--profile] [--modes nonzero sparse all] [--json FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import io
import pstats
import re
import resource
import subprocess
import time

from common import DRIVER, Generated, build_driver, loadavg, machine, median, save_json

TARGET_MS = {False: 50.0, True: 100.0}     # agent CPU per scrape of 10,000 series: counts, latency


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


def measure(series: int, scrapes: int, latency: bool, modes: list[str], profile: bool, spread: int = 0) -> dict:
    from probeset_agent.exposition import MetricsCollector
    from probeset_agent.maps import read_raw
    try:
        from probeset_agent.rendering import GzipWriter, gzip_bytes
    except ImportError:     # an older tree (the docstring): server.py held them, or none had them yet
        try:
            from probeset_agent.server import GzipWriter, gzip_bytes
        except ImportError:
            GzipWriter = gzip_bytes = None
    probe = {"uprobe": f"{DRIVER}:bench_target", "groupBy": ["arg0"], "latency": latency}
    fill = [DRIVER, "call", str(series)]
    if spread:
        probe = {"uprobe": f"{DRIVER}:bench_value", "groupBy": ["arg0"], "value": "arg1", "aggregate": "histogram",
                 "unit": "seconds"}
        fill = [DRIVER, "values", str(series), str(spread)]
        latency = True
    gen = Generated(f"scrape-{series}", probe, max_series=max(20000, series))
    gen.start()
    try:
        # Not run_driver's SCHED_FIFO on a pinned CPU: the kernel's per-CPU allocator fills the
        # per-CPU hash's new elements from a kworker of that CPU, which a FIFO task starves, and
        # histograms then lose buckets (histogram_full): ~4,500 of 10,000 in one run.
        subprocess.run(["chrt", "-o", "0", *fill], check=True, capture_output=True)
        prog = gen.prog
        n_series = sum(len(v) for v in prog.read_series().values())
        hist_rows = sum(1 for _ in read_raw(prog.bpf["hist_p0"])) if latency else 0
        read_ms, read_cpu, _ = timed(prog.read_series, scrapes)
        out = {"series": series, "series_read": n_series, "latency": latency, "spread": spread,
               "hist_rows": hist_rows, "scrapes": scrapes,
               "read_series_ms": read_ms, "read_series_cpu_ms": read_cpu, "modes": {}}
        for mode in modes if latency else modes[:1]:     # without histograms the modes are the same
            collector = MetricsCollector([prog], "bench", histogram_buckets=mode)
            render_ms, render_cpu, body = timed(collector.render_bytes, scrapes)
            text = body.decode()
            if latency and 'reason="histogram_full"} 0' not in text:
                lost = re.search(r'reason="histogram_full"\} (\d+)', text)
                raise SystemExit(f"histograms incomplete: {lost.group(1) if lost else 'some'} events found no room in "
                                 f"the histogram map ({hist_rows} rows; histogram_full): the figures would not be "
                                 "comparable")
            r = out["modes"][mode] = {
                "samples": sum(1 for line in text.splitlines() if line and not line.startswith("#")),
                "body_bytes": len(body), "render_ms": render_ms, "render_cpu_ms": render_cpu}
            for name, compress in (("zlib1", lambda: gzip.compress(body, compresslevel=1, mtime=0)),
                                   ("isal1", lambda: gzip_bytes(body)),
                                   ("streamed", lambda: collector.render_bytes(GzipWriter()).finish())):
                if GzipWriter is None and name != "zlib1":
                    r.update({f"{name}_ms": float("nan"), f"{name}_cpu_ms": float("nan"), f"{name}_bytes": 0})
                    continue
                ms, cpu, zipped = timed(compress, scrapes)
                r.update({f"{name}_ms": ms, f"{name}_cpu_ms": cpu, f"{name}_bytes": len(zipped)})
            del text, body
            r.update(served(collector, scrapes))
            if profile:
                pr = cProfile.Profile()
                pr.runcall(collector.render_bytes)
                s = io.StringIO()
                pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(15)
                r["profile"] = s.getvalue()
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out
    finally:
        gen.stop()


def served(collector, scrapes: int) -> dict:
    """Agent CPU ms and bytes per scrape through the real server, curl fetching without and with gzip."""
    from probeset_agent.server import MetricsServer
    server = MetricsServer("127.0.0.1", 0).start(collector.render_bytes)     # as commands.py serves it
    url = f"http://127.0.0.1:{server.address[1]}/metrics"
    out = {}
    try:
        for name, extra in (("plain", []), ("gzip", ["-H", "Accept-Encoding: gzip"])):
            fetch = ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", *extra, url]
            subprocess.run(fetch, check=True, capture_output=True)          # warm-up
            cpu, wall, size = [], [], 0
            for _ in range(scrapes):
                t0, c0 = time.perf_counter(), time.process_time()
                size = int(subprocess.run(fetch, check=True, capture_output=True, text=True).stdout)
                wall.append((time.perf_counter() - t0) * 1e3)
                cpu.append((time.process_time() - c0) * 1e3)
            out.update({f"http_{name}_ms": median(wall), f"http_{name}_cpu_ms": median(cpu),
                        f"http_{name}_bytes": size})
    finally:
        server.shutdown()
    return out


def main(argv=None) -> dict:
    from probeset_agent.histogram import BUCKET_MODES
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--scrapes", type=int, default=20)
    ap.add_argument("--latency", action="store_true", help="latency: true (histograms) instead of counts")
    ap.add_argument("--spread", type=int, default=0, metavar="K",
                    help="K values per series over 10 powers of two (a value histogram in seconds) instead")
    ap.add_argument("--modes", nargs="+", choices=BUCKET_MODES, default=list(BUCKET_MODES),
                    help="--histogram-buckets modes to measure with --latency (default: all three)")
    ap.add_argument("--profile", action="store_true", help="cProfile one scrape per mode at the largest size")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    build_driver()
    print(f"{machine()}, load average {loadavg()}")
    results = []
    histograms = args.latency or args.spread > 0
    what = f", {args.spread} values per series" if args.spread else ", latency: true" if args.latency else ""
    print(f"median of {args.scrapes} scrapes{what}; "
          f"times in ms, wall (CPU)")
    print(f"{'series':>7} {'mode':>8} {'samples':>8} {'bytes':>10} {'read_series':>13} {'render':>13} "
          f"{'zlib1':>13} {'isal1':>13} {'streamed':>13}")
    target = TARGET_MS[histograms]
    for n in args.series:
        r = measure(n, args.scrapes, args.latency, args.modes, args.profile and n == max(args.series), args.spread)
        results.append(r)
        read = f"{r['read_series_ms']:.1f} ({r['read_series_cpu_ms']:.1f})"
        for mode, m in r["modes"].items():
            cols = [f"{m[k + '_ms']:.1f} ({m[k + '_cpu_ms']:.1f})" for k in ("render", "zlib1", "isal1", "streamed")]
            print(f"{r['series_read']:7d} {mode if histograms else '-':>8} {m['samples']:8d} {m['body_bytes']:10d} "
                  f"{read:>13} " + " ".join(f"{c:>13}" for c in cols))
            print(f"{'':16} gzip bytes: zlib 1 {m['zlib1_bytes']}, ISA-L 1 {m['isal1_bytes']}, "
                  f"streamed {m['streamed_bytes']}")
            for how in ("plain", "gzip"):
                met = "met" if m[f"http_{how}_cpu_ms"] <= target else "MISSED"
                print(f"{'':16} served, {how:5}: {m[f'http_{how}_bytes']:10d} bytes, agent CPU "
                      f"{m[f'http_{how}_cpu_ms']:.1f} ms, curl wall {m[f'http_{how}_ms']:.1f} ms"
                      + (f"  target {target:.0f} ms at 10,000: {met}" if n == 10000 else ""))
            if "profile" in m:
                print(m["profile"])
        print(f"{'':16} peak RSS {r['peak_rss_mb']:.0f} MB" + (f", hist rows {r['hist_rows']}" if r["hist_rows"] else ""))
    out = {"machine": machine(), "results": results}
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
