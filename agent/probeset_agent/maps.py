"""Reading BPF maps from user space, and the histogram bucket arithmetic shared with the C side."""

from __future__ import annotations

import ctypes as ct
import errno
import functools
import os

from .codegen import SUB_BUCKET_BITS, SUB_BUCKETS

# Buckets exported to Prometheus: in-kernel boundaries from 256 ns to 2^34 ns (~17 s), 1, 2 or 4 per
# power of two (a probe's bucketsPerPowerOfTwo). Cumulative counts at these boundaries are exact;
# faster events land in the first, slower ones in +Inf.
EXPORT_MIN_NS = 1 << 8
EXPORT_MAX_NS = 1 << 34


def bucket_upper_ns(index: int) -> int:
    """Inclusive upper bound, in ns, of in-kernel latency bucket `index` (see latency_bucket() in C)."""
    if index < SUB_BUCKETS:
        return index + 1
    msb = index // SUB_BUCKETS + (SUB_BUCKET_BITS - 1)
    sub = index % SUB_BUCKETS
    return (SUB_BUCKETS + sub + 1) << (msb - SUB_BUCKET_BITS)


def bucket_index(ns: int) -> int:
    """Python twin of the C latency_bucket(), for tests and tools."""
    v = ns - 1 if ns else 0
    if v < SUB_BUCKETS:
        return v
    msb = v.bit_length() - 1
    return SUB_BUCKETS * (msb - (SUB_BUCKET_BITS - 1)) + ((v >> (msb - SUB_BUCKET_BITS)) & (SUB_BUCKETS - 1))


@functools.lru_cache(maxsize=None)
def export_bounds_ns(per_power_of_two: int = SUB_BUCKETS) -> tuple[int, ...]:
    """The exported `le` bounds in ns: every in-kernel bound in range whose sub-bucket position
    falls on a 1/per_power_of_two step (4: all of them; 1: the powers of two)."""
    step = SUB_BUCKETS // per_power_of_two
    bounds, i = [], 0
    while (upper := bucket_upper_ns(i)) <= EXPORT_MAX_NS:
        if upper >= EXPORT_MIN_NS and i >= SUB_BUCKETS and (i % SUB_BUCKETS + 1) % step == 0:
            bounds.append(upper)
        i += 1
    return tuple(bounds)


def cumulative_buckets(counts: dict[int, int], per_power_of_two: int = SUB_BUCKETS) -> list[tuple[float, int]]:
    """(le seconds, cumulative count) at every exported bound, ending with +Inf."""
    by_upper = sorted((bucket_upper_ns(i), n) for i, n in counts.items())
    out, acc, j = [], 0, 0
    for bound in export_bounds_ns(per_power_of_two):
        while j < len(by_upper) and by_upper[j][0] <= bound:
            acc += by_upper[j][1]
            j += 1
        out.append((bound / 1e9, acc))
    total = sum(n for _, n in by_upper)
    out.append((float("inf"), total))
    return out


def read_raw(table, chunk: int = 4096):
    """All entries of a BCC table as (key bytes, value bytes), with BPF_MAP_LOOKUP_BATCH in
    fixed-size chunks: a scrape costs per entry, not per max_entries, and no ctypes object is made
    per entry. Per-CPU values are the CPUs' values back to back. Falls back to iteration on kernels
    without batch lookups."""
    from bcc.libbcc import lib
    key_size, value_size = ct.sizeof(table.Key), ct.sizeof(table.Leaf)
    keys = (table.Key * chunk)()
    values = (table.Leaf * chunk)()
    token = ct.c_uint32(0)
    count = ct.c_uint32(0)
    first = True
    while True:
        count.value = chunk
        res = lib.bpf_lookup_batch(table.map_fd, None if first else ct.byref(token), ct.byref(token),
                                   ct.byref(keys), ct.byref(values), ct.byref(count))
        err = ct.get_errno()
        if res != 0 and err != errno.ENOENT:
            if first and err in (errno.EINVAL, 524):      # 524: ENOTSUPP, no batch ops for this map
                for k, v in table.items():
                    yield bytes(k), bytes(v)
                return
            if err == errno.ENOSPC:   # one hash bucket holds more than `chunk` entries
                chunk *= 4
                keys, values = (table.Key * chunk)(), (table.Leaf * chunk)()
                continue
            raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
        n = count.value
        kbuf = ct.string_at(keys, n * key_size)
        vbuf = ct.string_at(values, n * value_size)
        for i in range(n):
            yield kbuf[i * key_size:(i + 1) * key_size], vbuf[i * value_size:(i + 1) * value_size]
        if res != 0:  # ENOENT: no more entries
            return
        first = False
