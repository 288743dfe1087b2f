"""Kernel memory of a generated program's maps, as upper bounds (what they may take when full),
from the same sizes codegen gives them. Follows kernel/bpf/hashtab.c and arraymap.c: a hash map
allocates roundup_pow_of_two(max_entries) buckets of 16 bytes; each element is a 48-byte header
plus the key and (per-CPU maps: a pointer to) the value, whose per-CPU copies take value size x
possible CPUs; preallocated maps (the default, and LRU) hold max_entries elements from the start,
BPF_F_NO_PREALLOC maps grow to it. Pure."""

from __future__ import annotations

import os

from .layout import MAX_PROBES, MISSED_REASONS, KeyLayout

BUCKET_BYTES = 16
ELEM_HEADER = 48
MAP_HEADER = 4096      # the map's own struct and per-CPU lock counters: under a page (896 bytes seen on 6.18)


def _round8(n: int) -> int:
    return (n + 7) & ~7


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def hash_bytes(entries: int, key: int, value: int, cpus: int, percpu: bool) -> int:
    elem = ELEM_HEADER + _round8(key) + (8 if percpu else _round8(value))
    values = _round8(value) * cpus if percpu else 0
    return MAP_HEADER + _pow2(entries) * BUCKET_BYTES + entries * (elem + values)


def array_bytes(entries: int, value: int, cpus: int, percpu: bool) -> int:
    # a per-CPU array also keeps one per-CPU pointer per slot
    return MAP_HEADER + entries * (_round8(value) * cpus + 8 if percpu else _round8(value))


def possible_cpus() -> int:
    try:
        text = open("/sys/devices/system/cpu/possible").read().strip()
    except OSError:
        return os.cpu_count() or 1
    total = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        total += int(hi or lo) - int(lo) + 1
    return total


def probe_bytes(layout: KeyLayout, max_series: int, histogram: bool, latency: bool, start_args: int,
                hist_entries: int, start_entries: int, cpus: int, value_size: int = 16,
                counts_slots: int | None = None, hist_slots: int | None = None) -> int:
    """One probe's maps: counts_pN (+ the overflow slot), hist_pN with a histogram (latency, or a
    value's), start_pN and depth_pN with latency. counts_slots/hist_slots: that map is a per-CPU
    array of so many slots (mapshape.py), not a hash. value_size: the counts map's value, {count,
    sum_ns} (16) or, for a count-only probe, the count alone (8)."""
    if counts_slots is not None:
        total = array_bytes(counts_slots, value_size, cpus, percpu=True)
    else:
        total = hash_bytes(max_series + 1, layout.size, value_size, cpus, percpu=True)
    if histogram and hist_slots is not None:
        total += array_bytes(hist_slots, 8, cpus, percpu=True)
    elif histogram:
        total += hash_bytes(hist_entries, layout.size + 8, 8, cpus, percpu=True)
    if latency:
        total += hash_bytes(start_entries, 16, 8 + 8 * start_args, cpus, percpu=False)
        total += hash_bytes(start_entries, 16, 8, cpus, percpu=False)       # depth_pN
    return total


def set_bytes(cgroup_filter: bool, allowed_cgroups: int, cpus: int) -> int:
    """What every set's program has besides its probes: the missed array, the cgroup filter."""
    total = array_bytes(MAX_PROBES * len(MISSED_REASONS), 8, cpus, percpu=True)
    if cgroup_filter:
        total += hash_bytes(allowed_cgroups, 8, 1, cpus, percpu=False)
    return total
