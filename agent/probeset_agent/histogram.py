"""Histogram arithmetic shared with the C side (latency_bucket() in the generated program): in-kernel
log-linear buckets, and the `le` bounds exported to Prometheus. Latencies (and values in seconds)
are nanoseconds; other values (bytes, plain numbers) use the same buckets with their own export
range, 1 to 2^40. Pure."""

from __future__ import annotations

import functools
from typing import Callable

from probeset_api import DEFAULT_HISTOGRAM_BUCKETS, HISTOGRAM_BUCKETS

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


def bucket_mask(per_power_of_two: int) -> int:
    """What the kernel ORs into a bucket index of SUB_BUCKETS or more (hist_bucket() in C): the
    sub-bucket bits below the probe's export grid (1 per power of two: 3; 2: 1; 4: 0)."""
    return SUB_BUCKETS // per_power_of_two - 1


def kernel_bucket(ns: int, per_power_of_two: int) -> int:
    """The bucket index the kernel records for `ns` (hist_bucket() in C): bucket_index() rounded up,
    within its power of two, to the last sub-bucket on the export grid. Its upper bound is the
    exported bound that first includes `ns` (indexes below SUB_BUCKETS stay: values 1 to 4, each
    a bound of its own for value histograms), so every exported cumulative count is the same as
    from bucket_index(), and the map holds one row per exported bucket instead of up to four."""
    index = bucket_index(ns)
    return index if index < SUB_BUCKETS else index | bucket_mask(per_power_of_two)


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


# What /metrics exports of each latency series (--histogram-buckets; docs/metrics.md "Histogram buckets"):
#   nonzero  every bound from the one just below the lowest non-empty bucket up to 2^34 ns, and +Inf
#            (the default): the bounds left out hold 0, so `sum by (le)` across series stays exact
#   sparse   the same, but only up to the highest non-empty bucket: exact for one series' quantiles,
#            not for sums across series whose slowest events differ (opt-in)
#   all      every bound
BUCKET_MODES = HISTOGRAM_BUCKETS
DEFAULT_BUCKET_MODE = DEFAULT_HISTOGRAM_BUCKETS

Run = tuple[int, int, int]


def bucket_runs(counts: dict[int, int], per_power_of_two: int = SUB_BUCKETS,
                mode: str = DEFAULT_BUCKET_MODE, bounds: tuple[int, ...] | None = None) -> list[Run]:
    """The exported buckets of one series as runs of equal cumulative count: (first position, end
    position (exclusive), cumulative count), positions indexing the bounds (latency's
    export_bounds_ns(), or a value histogram's value_bounds()) with len(bounds) for +Inf; in increasing order, +Inf in the last run. (A run, rather than
    one count per bound, is what lets the exposition write a series' bucket lines with one join per
    distinct count: a fast function's 20-odd bounds above its slowest event all repeat the total.)

    - nonzero: from the bound just below the lowest non-empty bucket (the lower edge that
      histogram_quantile() interpolates it from; none below the first bound) to +Inf. Every bound
      left out has cumulative count 0. A series with no event: +Inf 0 alone (every bound is 0).
    - sparse: as nonzero, but after the highest non-empty bucket's bound only +Inf (the bounds in
      between would repeat the total; every bound stays when +Inf's own bucket is not empty).
    - all: every bound."""
    return bucket_runner(per_power_of_two, mode, bounds)(counts)


@functools.lru_cache(maxsize=None)
def bucket_runner(per_power_of_two: int = SUB_BUCKETS, mode: str = DEFAULT_BUCKET_MODE,
                  bounds: tuple[int, ...] | None = None) -> Callable[[dict[int, int]], list[Run]]:
    """bucket_runs for one resolution and mode, its tables bound once (the exposition calls it per
    series: 10,000 times a scrape)."""
    if mode not in BUCKET_MODES:
        raise ValueError(f"histogram buckets: {mode!r} is not one of {', '.join(BUCKET_MODES)}")
    bounds = export_bounds_ns(per_power_of_two) if bounds is None else bounds
    pos = positions_for(bounds)
    n = len(bounds)
    every, sparse = mode == "all", mode == "sparse"
    empty = [(0 if every else n, n + 1, 0)]

    def runs(counts: dict[int, int]) -> list[Run]:
        # indexes in increasing order have positions in increasing order (pos is monotonic): one
        # pass, a run ending where the position changes (several indexes can share a position:
        # below the first bound, past the last, values 1 to 4)
        out: list[Run] = []
        acc, p = 0, -1
        for index in sorted(counts):
            c = counts[index]
            if not c:
                continue
            q = pos[index]
            if q != p:
                if p >= 0:
                    out.append((p, q, acc))
                else:
                    start = 0 if every or not q else q - 1
                    if start < q:
                        out.append((start, q, 0))
                p = q
            acc += c
        if p < 0:
            return list(empty)
        if sparse and p < n:
            out += [(p, p + 1, acc), (n, n + 1, acc)]
        else:
            out.append((p, n + 1, acc))
        return out
    return runs


def cumulative_buckets(counts: dict[int, int], per_power_of_two: int = SUB_BUCKETS, mode: str = "all",
                       bounds: tuple[int, ...] | None = None, scale: float = 1e-9) -> list[tuple[float, int]]:
    """(le, cumulative count) of the exported buckets (bucket_runs; by default every bound), ending
    with +Inf. By default latency's bounds, in seconds; a value histogram passes value_bounds() and
    its own scale."""
    bounds = export_bounds_ns(per_power_of_two) if bounds is None else bounds
    # ns / 1e9 rather than ns * 1e-9: the `le` text the exposition writes (384e-9 is 3.8400000000000005e-07)
    les = [b / 1e9 if scale == 1e-9 else b * scale for b in bounds] + [float("inf")]
    return [(les[p], c) for a, b, c in bucket_runs(counts, per_power_of_two, mode, bounds) for p in range(a, b)]


def cumulative_counts(counts: dict[int, int], per_power_of_two: int = SUB_BUCKETS,
                      bounds: tuple[int, ...] | None = None) -> list[int]:
    """Cumulative counts at every exported bound, then the total (+Inf): the full histogram."""
    return [c for _, c in cumulative_buckets(counts, per_power_of_two, "all", bounds)]
