"""Histogram arithmetic shared with the C side (latency_bucket() in the generated program): in-kernel
log-linear buckets, and the `le` bounds exported to Prometheus. Latencies (and values in seconds)
are nanoseconds; other values (bytes, plain numbers) use the same buckets with their own export
range, 1 to 2^40. Pure."""

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
# Buckets exported for values that are not durations: 1, 2, 4, ... 2^40 (a terabyte), then +Inf.
VALUE_EXPORT_MAX = 1 << 40


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


@functools.lru_cache(maxsize=None)
def value_bounds(per_power_of_two: int = SUB_BUCKETS) -> tuple[int, ...]:
    """The exported `le` bounds of a value histogram: the in-kernel bounds from 1 to VALUE_EXPORT_MAX
    on the per_power_of_two grid (1: 1, 2, 4, 8, ...; 2: 1, 2, 3, 4, 6, 8, ...). Value 0 is in le=1."""
    step = SUB_BUCKETS // per_power_of_two
    bounds, i = [], 0
    while (upper := bucket_upper_ns(i)) <= VALUE_EXPORT_MAX:
        if i < SUB_BUCKETS:
            if upper & (upper - 1) == 0 or per_power_of_two > 1:    # 1, 2, 4 (and 3 with 2 or 4 per power)
                bounds.append(upper)
        elif (i % SUB_BUCKETS + 1) % step == 0:
            bounds.append(upper)
        i += 1
    return tuple(bounds)


def cumulative_buckets(counts: dict[int, int], per_power_of_two: int = SUB_BUCKETS,
                       bounds: tuple[int, ...] | None = None, scale: float = 1e-9) -> list[tuple[float, int]]:
    """(le, cumulative count) at every exported bound, ending with +Inf. By default the latency
    bounds, in seconds; a value histogram passes value_bounds() and its own scale."""
    by_upper = sorted((bucket_upper_ns(i), n) for i, n in counts.items())
    out, acc, j = [], 0, 0
    for bound in export_bounds_ns(per_power_of_two) if bounds is None else bounds:
        while j < len(by_upper) and by_upper[j][0] <= bound:
            acc += by_upper[j][1]
            j += 1
        out.append((bound * scale, acc))
    total = sum(n for _, n in by_upper)
    out.append((float("inf"), total))
    return out
