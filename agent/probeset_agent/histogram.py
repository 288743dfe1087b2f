"""Latency histogram arithmetic shared with the C side (latency_bucket() in the generated program):
in-kernel log-linear buckets, and the `le` bounds exported to Prometheus. Pure."""

from __future__ import annotations

import functools

SUB_BUCKET_BITS = 2                  # 4 sub-buckets per power of two
SUB_BUCKETS = 1 << SUB_BUCKET_BITS
NUM_BUCKETS = SUB_BUCKETS * 63       # covers every u64 nanosecond value

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
