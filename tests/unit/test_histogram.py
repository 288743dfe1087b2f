"""Latency buckets as exported: cumulative counts at the `le` bounds, trimmed after the highest
non-empty bucket. Pure: the in-kernel bucket indices in, the exported counts out. The trimmed
histogram must answer Prometheus' histogram_quantile() exactly as the full one does."""

import math
import random

import pytest

from probeset_agent.histogram import (bucket_index, bucket_upper_ns, cumulative_buckets, cumulative_counts,
                                      export_bounds_ns, export_positions)


def events(*latencies_ns: int) -> dict[int, int]:
    """In-kernel bucket counts of these latencies (the C side's latency_bucket(), twinned)."""
    counts: dict[int, int] = {}
    for ns in latencies_ns:
        counts[bucket_index(ns)] = counts.get(bucket_index(ns), 0) + 1
    return counts


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' classic histogram_quantile() for one series (promql/quantile.go, bucketQuantile):
    (upper bound, cumulative count) pairs, +Inf last."""
    if not math.isinf(buckets[-1][0]) or len(buckets) < 2:
        return math.nan
    observations = buckets[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(buckets) - 1) if buckets[i][1] >= rank), len(buckets) - 1)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    start, end, count = 0.0, buckets[b][0], buckets[b][1]
    if b > 0:
        start = buckets[b - 1][0]
        count -= buckets[b - 1][1]
        rank -= buckets[b - 1][1]
    if count == 0:                     # Go's 0/0: NaN (q = 0 with an empty first bucket)
        return math.nan
    return start + (end - start) * (rank / count)


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("per_power, bounds, first, last", [
    (1, 27, 256, 1 << 34),            # the powers of two from 256 ns to 2^34 ns
    (2, 53, 256, 1 << 34),
    (4, 105, 256, 1 << 34),
])
def test_export_bounds(per_power, bounds, first, last):
    got = export_bounds_ns(per_power)
    assert (len(got), got[0], got[-1]) == (bounds, first, last)


@pytest.mark.parametrize("latencies, per_power, expected", [
    # no event: the +Inf bucket alone, 0 (a valid histogram: +Inf, _count 0, _sum 0)
    ((), 1, [0]),
    # under the first bound (256 ns): counted there
    ((1, 100, 256), 1, [3, 3]),
    # 257-512 ns: the second bound; the first one stays, empty, as the lower edge of the second
    ((300,), 1, [0, 1, 1]),
    ((300, 512, 513), 1, [0, 2, 3, 3]),
    # 3 at 1 µs (le 1024 ns), 2 at 10 µs (le 16384 ns): 7 bounds, then the total
    ((1000, 1000, 1000, 10_000, 10_000), 1, [0, 0, 3, 3, 3, 3, 5, 5]),
    # 4 per power of two: 300 ns is in (256, 320]
    ((300,), 4, [0, 1, 1]),
    ((300, 400), 4, [0, 1, 1, 2, 2]),
    # past the last bound (2^34 ns): +Inf's own bucket is not empty, so every bound stays
    ((1 << 35,), 1, [0] * 27 + [1]),
    ((300, 1 << 35), 1, [0] + [1] * 26 + [2]),
])
def test_trimmed_counts(latencies, per_power, expected):
    assert cumulative_counts(events(*latencies), per_power) == expected


@pytest.mark.parametrize("per_power", [1, 2, 4])
def test_untrimmed_counts_have_every_bound(per_power):
    n = len(export_bounds_ns(per_power))
    assert cumulative_counts({}, per_power, trim=False) == [0] * (n + 1)
    assert cumulative_counts(events(300), per_power, trim=False) == [0] + [1] * n
    full = cumulative_buckets(events(300, 5000), per_power)
    assert len(full) == n + 1 and full[-1] == (math.inf, 2)
    assert full[0] == (256e-9, 0) and full[1][1] == 1


def test_every_kernel_bucket_lands_on_the_first_bound_that_holds_it():
    for per_power in (1, 2, 4):
        bounds = export_bounds_ns(per_power)
        for index, position in enumerate(export_positions(per_power)):
            up = bucket_upper_ns(index)
            if position < len(bounds):
                assert bounds[position] >= up and (position == 0 or bounds[position - 1] < up)
            else:
                assert up > bounds[-1]


def random_counts(rng: random.Random) -> dict[int, int]:
    """A few clusters of latencies, as real functions give: most fast, a tail, sometimes > 17 s."""
    latencies = []
    for _ in range(rng.randint(1, 4)):
        centre = rng.choice([150, 900, 3_000, 40_000, 2_000_000, 300_000_000, 1 << 35])
        latencies += [max(1, int(rng.gauss(centre, centre / 3))) for _ in range(rng.randint(1, 50))]
    return events(*latencies)


QUANTILES = [0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0]


@pytest.mark.parametrize("per_power", [1, 2, 4])
def test_trimmed_histogram_answers_every_quantile_as_the_full_one(per_power):
    rng = random.Random(14)
    bounds = [ns / 1e9 for ns in export_bounds_ns(per_power)]
    for _ in range(300):
        counts = random_counts(rng)
        full = cumulative_counts(counts, per_power, trim=False)
        trimmed = cumulative_counts(counts, per_power)
        k = len(trimmed) - 1                                  # finite bounds kept
        total = sum(counts.values())
        assert trimmed[:k] == full[:k]                        # a prefix of the full histogram
        assert trimmed[-1] == full[-1] == total               # +Inf = _count
        assert all(n == total for n in full[k:])              # what was dropped repeats the total
        assert trimmed == sorted(trimmed)                     # cumulative
        assert k == len(bounds) or k == 0 or trimmed[k - 1] > (trimmed[k - 2] if k > 1 else 0)  # top non-empty
        as_pairs = lambda cum: [*zip(bounds, cum[:-1]), (math.inf, cum[-1])]   # noqa: E731
        for q in QUANTILES:
            assert same(bucket_quantile(q, as_pairs(trimmed)), bucket_quantile(q, as_pairs(full))), (q, counts)


def test_quantile_twin_matches_prometheus_on_the_documented_example():
    # promql's own worked case: interpolation inside the bucket the rank falls in
    buckets = [(0.1, 0), (0.2, 50), (0.4, 100), (math.inf, 100)]
    assert bucket_quantile(0.5, buckets) == 0.2
    assert bucket_quantile(0.75, buckets) == pytest.approx(0.3)
    assert math.isnan(bucket_quantile(0.5, [(math.inf, 0)]))
    assert bucket_quantile(0.99, [(0.1, 1), (math.inf, 10)]) == 0.1   # in +Inf: the highest finite bound


def sum_by_le(*series: list[int], per_power: int = 1) -> dict[float, int]:
    """Prometheus' `sum by (le)` of exported series: each bound sums the series that export it."""
    bounds = [ns / 1e9 for ns in export_bounds_ns(per_power)] + [math.inf]
    out: dict[float, int] = {}
    for cum in series:
        for le, n in zip(bounds[:len(cum) - 1] + [math.inf], cum):
            out[le] = out.get(le, 0) + n
    return dict(sorted(out.items()))


def test_summing_series_by_le_is_exact_with_every_bound_not_with_trimmed_ones():
    """What docs/metrics.md says of `sum by (le)`: exact over untrimmed series; over trimmed series
    whose top buckets differ, a bound above one series' top lacks that series."""
    fast, slow = events(300, 300, 1000), events(1000, 3_000_000)
    pooled = cumulative_counts({i: fast.get(i, 0) + slow.get(i, 0) for i in {*fast, *slow}}, 1, trim=False)
    full = sum_by_le(cumulative_counts(fast, 1, trim=False), cumulative_counts(slow, 1, trim=False))
    assert list(full.values()) == pooled
    trimmed = sum_by_le(cumulative_counts(fast, 1), cumulative_counts(slow, 1))
    assert trimmed[1.024e-06] == full[1.024e-06] == 4          # both series export 1.024 µs
    assert trimmed[2.048e-06] == 1 and full[2.048e-06] == 4    # fast stopped at 1.024 µs: missing here
    assert trimmed[math.inf] == full[math.inf] == 5
