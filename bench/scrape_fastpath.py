"""Prototype of a faster scrape path, to size the fix for the scrape target (NOT agent code).

Same ProbeSet and series as scrape.py (uprobe on bench_target, groupBy [arg0], counts only), but
the /metrics text for probeset_events_total is built directly:
  - one BPF_MAP_LOOKUP_BATCH per 4096 entries into raw buffers; per-CPU counts summed from one
    memoryview(...).tolist() instead of a ctypes object per key and per CPU;
  - the rendered label string of a series cached across scrapes, keyed by the raw map key bytes
    (decoded with the agent's own _decode_labels on a miss; a real fix must drop the cache entry
    when the cgroup -> pod attribution of a key changes);
  - no prometheus_client Sample objects and no per-sample label-name validation and escaping.
Reports the median of --scrapes steady-state scrapes (cache warm) and of 5 cold-cache scrapes.

  chrt -f 50 .venv/bin/python bench/scrape_fastpath.py [--series 1000 10000]
"""

from __future__ import annotations

import argparse
import ctypes as ct
import time

from common import DRIVER, Generated, build_driver, loadavg, machine, median, run_driver


def read_raw(table, chunk: int = 4096):
    """(key bytes, flat u64 list of values, entries, key size) per batch."""
    from bcc.libbcc import lib
    ksz, vsz = ct.sizeof(table.Key), ct.sizeof(table.Leaf)
    keys, values = (table.Key * chunk)(), (table.Leaf * chunk)()
    token, count, first = ct.c_uint32(0), ct.c_uint32(0), True
    while True:
        count.value = chunk
        res = lib.bpf_lookup_batch(table.map_fd, None if first else ct.byref(token), ct.byref(token),
                                   ct.byref(keys), ct.byref(values), ct.byref(count))
        n = count.value
        yield ct.string_at(keys, n * ksz), memoryview(ct.string_at(values, n * vsz)).cast("Q").tolist(), n, ksz
        if res != 0:
            return
        first = False


def scrape(prog, cache: dict, ncpu: int) -> bytes:
    from prometheus_client.openmetrics.exposition import _escape
    out = ["# TYPE probeset_events_total counter\n"]
    stride = 2 * ncpu                              # struct value_t {count, sum_ns} per CPU
    for rp in prog._usable():
        table = prog.bpf[f"counts_p{rp.id}"]
        for kb, vals, n, ksz in read_raw(table):
            for i in range(n):
                raw = kb[i * ksz:(i + 1) * ksz]
                prefix = cache.get(raw)
                if prefix is None:
                    labels = prog._decode_labels(rp, table.Key.from_buffer_copy(raw))
                    prefix = cache[raw] = "probeset_events_total{" + ",".join(
                        f'{k}="{_escape(v, "allow-utf-8", False)}"' for k, v in sorted(labels.items())) + "} "
                out.append(prefix + str(sum(vals[i * stride:(i + 1) * stride:2])) + "\n")
    return "".join(out).encode()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--scrapes", type=int, default=20)
    args = ap.parse_args(argv)
    from bcc.utils import get_possible_cpus
    ncpu = len(get_possible_cpus())
    build_driver()
    print(f"{machine()}, load average {loadavg()}")
    for n in args.series:
        gen = Generated(f"fast-{n}", {"uprobe": f"{DRIVER}:bench_target", "groupBy": ["arg0"]}, max_series=20000)
        gen.start()
        try:
            run_driver("call", n)
            cache: dict = {}
            body = scrape(gen.prog, cache, ncpu)
            warm, cold = [], []
            for _ in range(args.scrapes):
                t0 = time.perf_counter()
                scrape(gen.prog, cache, ncpu)
                warm.append((time.perf_counter() - t0) * 1e3)
            for _ in range(5):
                t0 = time.perf_counter()
                scrape(gen.prog, {}, ncpu)
                cold.append((time.perf_counter() - t0) * 1e3)
            print(f"{n:6d} series: {body.count(b'{')} lines, {len(body)} bytes; "
                  f"warm cache {median(warm):.1f} ms, cold cache {median(cold):.1f} ms")
        finally:
            gen.stop()


if __name__ == "__main__":
    main()
