"""Upper bounds of the maps' kernel memory, from their sizes (memory.py), without BPF."""

from probeset_agent import codegen
from probeset_agent.memory import MAP_HEADER, hash_bytes, probe_bytes
from probeset_agent.layout import KeyLayout


def test_hash_map_memory_follows_the_kernels_layout():
    # 100,001 per-CPU entries, 40-byte key, {count, sum_ns} on 2 CPUs: 2^17 buckets of 16 bytes and
    # per element a 48-byte header, the key, a per-CPU pointer, and 16 bytes per CPU.
    assert hash_bytes(100001, 40, 16, 2, percpu=True) == MAP_HEADER + 131072 * 16 + 100001 * (48 + 40 + 8 + 32)
    assert hash_bytes(10240, 16, 24, 2, percpu=False) == MAP_HEADER + 16384 * 16 + 10240 * (48 + 16 + 24)


def test_histograms_are_capped_whatever_the_series_budget():
    assert codegen.histogram_entries(1000) == 32000
    assert codegen.histogram_entries(100000) == codegen.MAX_HISTOGRAM_ENTRIES == 131072
    layout = KeyLayout.of(("node",), (), frozenset())
    counting = probe_bytes(layout, 100000, False, False, 0, codegen.histogram_entries(100000), 10240, 2)
    timed = probe_bytes(layout, 100000, True, True, 0, codegen.histogram_entries(100000), 10240, 2)
    # The issue: maxSeriesPerProbe 100000 with latency reserved 64 MiB of histogram buckets per probe.
    assert timed - counting < 20 << 20
