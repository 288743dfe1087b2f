"""The readout's cost alone: map rows -> series (readout.Readout.series), by the node's CPU count.

A per-CPU map's value holds one {count, sum_ns} (histogram rows: one count) per possible CPU, so the
rows a scrape decodes grow with the node: 10,000 latency series on a 64-CPU node are 10,000 count
rows of 1 kB and 10,000 histogram rows of 512 bytes. Here --series synthetic series (no BPF, no root:
rows built as the kernel writes them, the probe's key layout with groupBy [arg0], labels [node], one
histogram row per series, as bench/scrape.py --latency has them) are read for each --cpus count;
median and minimum CPU ms of --repeat calls after a warm-up (the labels already cached, as in every
scrape but the first). The map read itself (BPF_MAP_LOOKUP_BATCH) comes on top: bench/scrape.py.

To compare with an older tree, copy this file into that tree's bench/ and run it from there.

  .venv/bin/python bench/readout_rows.py [--series 10000] [--cpus 2 8 32 64] [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import struct

from common import cpu_ms, save_json


def rows(n: int, cpus: int, layout):
    from probeset_agent.maps import Rows
    keys, values, hkeys, hvalues = [], [], [], []
    for i in range(n):
        key = bytearray(layout.size)
        key[layout.field("g0").offset:layout.field("g0").offset + 8] = i.to_bytes(8, "little")
        keys.append(bytes(key))
        values.append(struct.pack(f"<{2 * cpus}Q", *[x for cpu in range(cpus) for x in (cpu % 3, 1000 * (cpu % 3))]))
        hkeys.append(bytes(key) + (40).to_bytes(4, "little") + bytes(4))
        hvalues.append(struct.pack(f"<{cpus}Q", *[cpu % 3 for cpu in range(cpus)]))
    return (Rows(b"".join(keys), layout.size, b"".join(values), 16 * cpus),
            Rows(b"".join(hkeys), layout.size + 8, b"".join(hvalues), 8 * cpus))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=10000)
    ap.add_argument("--cpus", type=int, nargs="+", default=[2, 8, 32, 64])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    from probeset_agent.layout import KeyLayout
    from probeset_agent.readout import Readout
    from probeset_agent.resolve import ResolvedProbe
    from probeset_api.spec import Probe
    rp = ResolvedProbe(Probe(index=0, name="p", kind="uprobe", target="x", latency=True, group_by=("arg0",)),
                       functions=["bench_target"], string_labels=frozenset(), signed_labels=frozenset(), symbols={})
    layout = KeyLayout.of(("node",), ("arg0",), frozenset())
    print(f"{args.series} latency series, one histogram row each; Readout.series(), CPU ms")
    results = []
    for cpus in args.cpus:
        counts, hist = rows(args.series, cpus, layout)
        readout = Readout({"probeset": "bench"}, "bench", ("node",))
        readout.begin(names_changed=False)
        got = readout.series(rp, layout, counts, hist, cpus)
        assert len(got) == args.series and got[1].count == sum(cpu % 3 for cpu in range(cpus)), "rows misread"
        cpu = cpu_ms(lambda: readout.series(rp, layout, counts, hist, cpus), args.repeat)
        r = {"cpus": cpus, "series": args.series, "median_cpu_ms": statistics.median(cpu), "min_cpu_ms": min(cpu)}
        results.append(r)
        print(f"{cpus:4d} CPUs  median {r['median_cpu_ms']:7.1f} ms  min {r['min_cpu_ms']:7.1f} ms")
    out = {"results": results}
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
