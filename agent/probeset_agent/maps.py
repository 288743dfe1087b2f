"""Reading BPF maps from user space, and the histogram bucket arithmetic shared with the C side."""

from __future__ import annotations

import ctypes as ct
import errno
import os

from .codegen import SUB_BUCKET_BITS, SUB_BUCKETS

# Buckets exported to Prometheus: every in-kernel boundary from 256 ns to 2^34 ns (~17 s), i.e. 4 per
# power of two. Cumulative counts at these boundaries are exact; faster events land in the first, slower
# ones in +Inf.
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


def _export_bounds() -> list[int]:
    bounds, i = [], 0
    while True:
        upper = bucket_upper_ns(i)
        if upper > EXPORT_MAX_NS:
            return bounds
        if upper >= EXPORT_MIN_NS:
            bounds.append(upper)
        i += 1


EXPORT_BOUNDS_NS = _export_bounds()


def cumulative_buckets(counts: dict[int, int]) -> list[tuple[float, int]]:
    """(le seconds, cumulative count) at every exported bound, ending with +Inf."""
    by_upper = sorted((bucket_upper_ns(i), n) for i, n in counts.items())
    out, acc, j = [], 0, 0
    for bound in EXPORT_BOUNDS_NS:
        while j < len(by_upper) and by_upper[j][0] <= bound:
            acc += by_upper[j][1]
            j += 1
        out.append((bound / 1e9, acc))
    total = sum(n for _, n in by_upper)
    out.append((float("inf"), total))
    return out


def read_table(table, chunk: int = 4096):
    """All (key, value) pairs of a BCC table, with BPF_MAP_LOOKUP_BATCH in fixed-size chunks (the
    cost of a scrape grows with the entries, not with max_entries); falls back to iteration on kernels
    without batch lookups. Per-CPU values come back as arrays, one element per possible CPU."""
    from bcc.libbcc import lib
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
        if res != 0 and err not in (errno.ENOENT,):
            if first and err in (errno.EINVAL, errno.ENOTSUPP if hasattr(errno, "ENOTSUPP") else 524):
                yield from table.items()
                return
            if err == errno.ENOSPC:   # one hash bucket holds more than `chunk` entries
                chunk *= 4
                keys, values = (table.Key * chunk)(), (table.Leaf * chunk)()
                continue
            raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
        for i in range(count.value):
            yield keys[i], values[i]
        if res != 0:  # ENOENT: no more entries
            return
        first = False
