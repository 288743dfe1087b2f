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


@functools.lru_cache(maxsize=None)
def positions_for(bounds: tuple[int, ...]) -> tuple[int, ...]:
    """For each in-kernel bucket index, the position of the first of these bounds that includes it
    (len(bounds) for the ones past the last bound: +Inf)."""
    out, j = [], 0
    for i in range(NUM_BUCKETS):
        upper = bucket_upper_ns(i)
        while j < len(bounds) and bounds[j] < upper:
            j += 1
        out.append(j)
    return tuple(out)


def export_positions(per_power_of_two: int = SUB_BUCKETS) -> tuple[int, ...]:
    """For each in-kernel bucket index, the position of the exported bound that first includes it
    (len(export_bounds_ns()) for the ones past the last bound: +Inf)."""
    return positions_for(export_bounds_ns(per_power_of_two))


def cumulative_counts(counts: dict[int, int], per_power_of_two: int = SUB_BUCKETS, trim: bool = True,
                      bounds: tuple[int, ...] | None = None) -> list[int]:
    """Cumulative counts at the exported bounds (latency's, or `bounds`: a value histogram's
    value_bounds()), the last one the total (+Inf): at every bound, or, with `trim`, only up to
    the highest bound whose own bucket is not empty (every bound after it would repeat the total;
    all of them when +Inf's own bucket is not empty). A series with no event gives [0]: the +Inf
    bucket alone.

    For one series, Prometheus' histogram_quantile() gives the same answer for the trimmed and the
    full list: the bucket a rank falls in, and the bound below it, are both kept. Summing series by
    `le` is another matter: see docs/metrics.md."""
    bounds = export_bounds_ns(per_power_of_two) if bounds is None else bounds
    pos = positions_for(bounds)
    n = len(bounds)
    own = [0] * (n + 1)
    for index, c in counts.items():
        own[pos[index]] += c
    top = n
    if trim and not own[n]:
        top = n - 1
        while top >= 0 and not own[top]:
            top -= 1
        top += 1
    out, acc = [], 0
    for c in own[:top]:
        acc += c
        out.append(acc)
    out.append(sum(own))
    return out


def cumulative_buckets(counts: dict[int, int], per_power_of_two: int = SUB_BUCKETS, trim: bool = False,
                       bounds: tuple[int, ...] | None = None, scale: float = 1e-9) -> list[tuple[float, int]]:
    """(le, cumulative count) at every exported bound (or, with `trim`, up to the highest non-empty
    one: cumulative_counts), ending with +Inf. By default latency's bounds, in seconds; a value
    histogram passes value_bounds() and its own scale."""
    bounds = export_bounds_ns(per_power_of_two) if bounds is None else bounds
    cum = cumulative_counts(counts, per_power_of_two, trim, bounds)
    return [(b * scale, c) for b, c in zip(bounds, cum[:-1])] + [(float("inf"), cum[-1])]
