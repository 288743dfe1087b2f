"""Latency buckets as exported (--histogram-buckets): cumulative counts at the `le` bounds, by
default (nonzero) from the bound below the lowest non-empty bucket to +Inf, `sparse` also stopping
at the highest non-empty bucket, `all` every bound. Pure: the in-kernel bucket indices in, the
exported counts out. Checked against Prometheus' histogram_quantile() (a Python copy of its
algorithm) and `sum by (le)`: one series' quantiles are those of the full histogram in every mode;
sums across series are exact with nonzero and all, not with sparse."""

import math
import random

import pytest

from probeset_agent.histogram import (BUCKET_MODES, bucket_index, bucket_mask, bucket_runs, bucket_upper_ns,
                                      cumulative_buckets, cumulative_counts, export_bounds_ns, export_positions,
                                      kernel_bucket, value_bounds)


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


def exported(latencies, per_power: int, mode: str) -> tuple[float, list[int]]:
    """(the first exported bound in ns, or inf when only +Inf is; the cumulative counts from it to +Inf)."""
    pairs = cumulative_buckets(events(*latencies), per_power, mode)
    return round(pairs[0][0] * 1e9, 3), [n for _, n in pairs]


INF = math.inf
N1, N4 = 27, 105          # finite bounds at 1 and 4 per power of two


@pytest.mark.parametrize("latencies, per_power, first, counts", [
    # no event: +Inf 0 alone (every bound's cumulative count is 0: nothing to add to any sum)
    ((), 1, INF, [0]),
    # the first bound (256 ns) non-empty: there is no bound below it; then every bound to +Inf
    ((1, 100, 256), 1, 256, [3] * (N1 + 1)),
    # 257-512 ns: the bound below (256 ns, 0) stays as the bucket's lower edge
    ((300,), 1, 256, [0] + [1] * N1),
    # 3 at 1 µs (le 1024 ns), 2 at 10 µs (le 16384 ns): from 512 ns (0), every bound after the last
    # non-empty one kept (the total): a sum by le needs them
    ((1000, 1000, 1000, 10_000, 10_000), 1, 512, [0, 3, 3, 3, 3] + [5] * (N1 - 6 + 1)),
    ((3_000_000,), 1, 2_097_152, [0] + [1] * (N1 - 14 + 1)),
    # 4 per power of two: 300 ns is in (256, 320]; 5 µs in (4096, 5120]
    ((300,), 4, 256, [0] + [1] * (N4 + 0) ),
    ((5000,), 4, 4096, [0] + [1] * (N4 - 17 + 1)),
    # past the last bound (2^34 ns): only +Inf's own bucket is non-empty; 2^34 ns stays, 0
    ((1 << 35,), 1, 1 << 34, [0, 1]),
    ((300, 1 << 35), 1, 256, [0] + [1] * (N1 - 1) + [2]),
])
def test_nonzero_counts(latencies, per_power, first, counts):
    assert exported(latencies, per_power, "nonzero") == (first, counts)
    assert bucket_runs(events(*latencies), per_power) == bucket_runs(events(*latencies), per_power, "nonzero")


@pytest.mark.parametrize("latencies, per_power, first, counts", [
    ((), 1, INF, [0]),
    ((1, 100, 256), 1, 256, [3, 3]),
    ((300,), 1, 256, [0, 1, 1]),
    ((300, 512, 513), 1, 256, [0, 2, 3, 3]),
    ((1000, 1000, 1000, 10_000, 10_000), 1, 512, [0, 3, 3, 3, 3, 5, 5]),
    ((300, 400), 4, 256, [0, 1, 1, 2, 2]),
    ((5000,), 4, 4096, [0, 1, 1]),
    # +Inf's own bucket not empty: no bound repeats the total, all stay from the lowest
    ((1 << 35,), 1, 1 << 34, [0, 1]),
    ((300, 1 << 35), 1, 256, [0] + [1] * (N1 - 1) + [2]),
])
def test_sparse_counts(latencies, per_power, first, counts):
    assert exported(latencies, per_power, "sparse") == (first, counts)


@pytest.mark.parametrize("per_power", [1, 2, 4])
def test_all_counts_have_every_bound(per_power):
    n = len(export_bounds_ns(per_power))
    assert cumulative_counts({}, per_power) == [0] * (n + 1)
    assert cumulative_counts(events(300), per_power) == [0] + [1] * n
    assert exported((), per_power, "all") == (256, [0] * (n + 1))
    full = cumulative_buckets(events(300, 5000), per_power)
    assert len(full) == n + 1 and full[-1] == (math.inf, 2)
    assert full[0] == (256e-9, 0) and full[1][1] == 1


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="trimmed"):
        bucket_runs(events(300), 1, "trimmed")


def test_every_kernel_bucket_lands_on_the_first_bound_that_holds_it():
    for per_power in (1, 2, 4):
        bounds = export_bounds_ns(per_power)
        for index, position in enumerate(export_positions(per_power)):
            up = bucket_upper_ns(index)
            if position < len(bounds):
                assert bounds[position] >= up and (position == 0 or bounds[position - 1] < up)
            else:
                assert up > bounds[-1]


def sample_values() -> list[int]:
    """0 to 4,100 one by one, then each power of two to 2^45 and its neighbours."""
    return list(range(4100)) + [v for k in range(12, 46) for v in ((1 << k) - 1, 1 << k, (1 << k) + 1)]


@pytest.mark.parametrize("per_power", [1, 2, 4])
@pytest.mark.parametrize("kind", ["latency", "value"])
def test_the_kernels_rounded_bucket_exports_exactly_the_same_counts(per_power, kind):
    """hist_bucket() in C (kernel_bucket here) rounds the index up to the probe's export grid: every
    exported cumulative count is what the finest bucket gives, for every value."""
    bounds = export_bounds_ns(per_power) if kind == "latency" else value_bounds(per_power)
    for v in sample_values():
        finest = cumulative_counts({bucket_index(v): 1}, per_power, bounds)
        assert cumulative_counts({kernel_bucket(v, per_power): 1}, per_power, bounds) == finest, v
        assert bucket_upper_ns(kernel_bucket(v, per_power)) >= v


@pytest.mark.parametrize("per_power, mask, rows", [(1, 3, 1), (2, 1, 2), (4, 0, 4)])
def test_the_kernel_keeps_one_row_per_exported_bucket(per_power, mask, rows):
    """Latencies across one power of two (1,025 to 2,048 ns) land in 4 in-kernel buckets at the
    finest grid: the map keeps as many rows as the probe exports buckets there."""
    assert bucket_mask(per_power) == mask
    assert len({kernel_bucket(ns, per_power) for ns in range(1025, 2049)}) == rows
    assert len({bucket_index(ns) for ns in range(1025, 2049)}) == 4
    assert {kernel_bucket(v, per_power) for v in (1, 2, 3, 4)} == {0, 1, 2, 3}     # each its own value bound


def random_counts(rng: random.Random) -> dict[int, int]:
    """A few clusters of latencies, as real functions give: most fast, a tail, sometimes > 17 s."""
    latencies = []
    for _ in range(rng.randint(1, 4)):
        centre = rng.choice([150, 900, 3_000, 40_000, 2_000_000, 300_000_000, 1 << 35])
        latencies += [max(1, int(rng.gauss(centre, centre / 3))) for _ in range(rng.randint(1, 50))]
    return events(*latencies)


QUANTILES = [0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0]


def as_dict(pairs: list[tuple[float, int]]) -> dict[float, int]:
    return dict(pairs)


@pytest.mark.parametrize("per_power", [1, 2, 4])
@pytest.mark.parametrize("mode", BUCKET_MODES)
def test_every_mode_answers_every_quantile_of_one_series_as_the_full_histogram(mode, per_power):
    rng = random.Random(14)
    bounds = [ns / 1e9 for ns in export_bounds_ns(per_power)]
    for _ in range(300):
        counts = random_counts(rng)
        full = cumulative_buckets(counts, per_power)
        got = cumulative_buckets(counts, per_power, mode)
        total = sum(counts.values())
        kept = [le for le, _ in got]
        assert got[-1] == (math.inf, total)                   # +Inf = _count
        assert set(got) <= set(full)                          # the full histogram's values at those bounds
        assert kept == sorted(kept)                           # in order; cumulative, so:
        assert [n for _, n in got] == sorted(n for _, n in got)
        first = bounds.index(kept[0]) if len(kept) > 1 else len(bounds)
        assert all(n == 0 for le, n in full if le < kept[0])  # what is left out below holds 0,
        if first == len(bounds):                              # +Inf alone: no event
            assert total == 0 and mode != "all"
        elif first > 0:                                       # the bound just below the lowest non-empty bucket
            assert full[first][1] == 0 and full[first + 1][1] > 0
        if mode != "sparse":                                  # and every bound above the first is kept
            assert kept == [le for le, _ in full][first:]
        else:                                                 # sparse: above the top only +Inf
            top = next(i for i, (_, n) in enumerate(full) if n == total)
            assert kept == [le for le, _ in full][first:top + 1] + ([math.inf] if top < len(bounds) else [])
        if mode == "all":
            assert got == full
        for q in QUANTILES:
            assert same(bucket_quantile(q, got), bucket_quantile(q, full)), (q, counts)


def test_quantile_twin_matches_prometheus_on_the_documented_example():
    # promql's own worked case: interpolation inside the bucket the rank falls in
    buckets = [(0.1, 0), (0.2, 50), (0.4, 100), (math.inf, 100)]
    assert bucket_quantile(0.5, buckets) == 0.2
    assert bucket_quantile(0.75, buckets) == pytest.approx(0.3)
    assert math.isnan(bucket_quantile(0.5, [(math.inf, 0)]))
    assert bucket_quantile(0.99, [(0.1, 1), (math.inf, 10)]) == 0.1   # in +Inf: the highest finite bound


def sum_by_le(*series: list[tuple[float, int]]) -> dict[float, int]:
    """Prometheus' `sum by (le)` of exported series ((le, cumulative count) pairs): each bound sums
    the series that export it; a bound no series exports is not in the result."""
    out: dict[float, int] = {}
    for pairs in series:
        for le, n in pairs:
            out[le] = out.get(le, 0) + n
    return dict(sorted(out.items()))


def pooled(*counts: dict[int, int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for c in counts:
        for i, n in c.items():
            out[i] = out.get(i, 0) + n
    return out


# Series of one probe as nodes or pods give them: different lowest AND highest buckets.
FAST = events(300, 300, 1000)                       # 257 ns - 1 µs
MIDDLE = events(5_000, 9_000, 40_000, 40_000)       # 4 µs - 65 µs
SLOW = events(1000, 3_000_000, 200_000_000)         # 1 µs - 268 ms
STALLED = events(2_000, 1 << 35)                    # 2 µs, and one past 2^34 ns (+Inf's own bucket)
IDLE: dict[int, int] = {}                           # no event yet


@pytest.mark.parametrize("group", [
    (FAST, SLOW),
    (FAST, MIDDLE),
    (MIDDLE, SLOW),
    (FAST, MIDDLE, SLOW),
    (FAST, MIDDLE, SLOW, STALLED),
    (IDLE, FAST, SLOW),
    (IDLE, IDLE),
    (MIDDLE, MIDDLE),
])
@pytest.mark.parametrize("per_power", [1, 4])
def test_nonzero_sums_by_le_are_the_full_sums(group, per_power):
    """`sum by (le)` over the default's series gives, at every bound any of them exports, exactly
    the sum of the full histograms (a bound a series leaves out holds 0 for it); the bounds no
    series exports are leading ones whose full sum is 0; the result is the pooled histogram's own
    nonzero export, so every quantile is the full one's."""
    full = sum_by_le(*(cumulative_buckets(c, per_power) for c in group))
    got = sum_by_le(*(cumulative_buckets(c, per_power, "nonzero") for c in group))
    assert all(got[le] == full[le] for le in got)
    assert all(full[le] == 0 for le in full if le not in got)
    assert all(le in got for le in full if le >= min(got))   # no hole above the lowest bound kept
    assert list(got.items()) == cumulative_buckets(pooled(*group), per_power, "nonzero")
    assert list(full.items()) == cumulative_buckets(pooled(*group), per_power)
    for q in QUANTILES:
        assert same(bucket_quantile(q, list(got.items())), bucket_quantile(q, list(full.items()))), q


@pytest.mark.parametrize("per_power", [1, 2, 4])
def test_nonzero_sums_by_le_are_exact_for_random_groups(per_power):
    rng = random.Random(1414)
    for _ in range(200):
        group = [random_counts(rng) if rng.random() > 0.1 else {} for _ in range(rng.randint(2, 6))]
        full = sum_by_le(*(cumulative_buckets(c, per_power) for c in group))
        got = sum_by_le(*(cumulative_buckets(c, per_power, "nonzero") for c in group))
        assert list(got.items()) == cumulative_buckets(pooled(*group), per_power, "nonzero")
        assert all(got[le] == full[le] for le in got) and all(full[le] == 0 for le in full if le not in got)
        for q in QUANTILES:
            assert same(bucket_quantile(q, list(got.items())), bucket_quantile(q, list(full.items()))), (q, group)


def test_summing_sparse_series_by_le_is_not_exact():
    """The caveat of `sparse` (docs/metrics.md): over series whose top buckets differ, a bound above
    one series' top lacks that series, and the quantile moves toward higher buckets."""
    full = sum_by_le(cumulative_buckets(FAST, 1), cumulative_buckets(SLOW, 1))
    assert list(full.values()) == cumulative_counts(pooled(FAST, SLOW), 1)
    sparse = sum_by_le(cumulative_buckets(FAST, 1, "sparse"), cumulative_buckets(SLOW, 1, "sparse"))
    assert sparse[1.024e-06] == full[1.024e-06] == 4          # both series export 1.024 µs
    assert sparse[2.048e-06] == 1 and full[2.048e-06] == 4    # fast stopped at 1.024 µs: missing here
    assert sparse[math.inf] == full[math.inf] == 6
    # Prometheus forces the sums monotonic (4 from 1.024 µs to 268 ms), which hides the hole but does
    # not fill it: the p75 lands in the +Inf bucket (the highest bound) instead of (2.1 ms, 4.2 ms]
    monotonic, top = [], 0
    for le, n in sparse.items():
        top = max(top, n)
        monotonic.append((le, top))
    assert bucket_quantile(0.75, list(full.items())) == pytest.approx(3.145728e-3)
    assert bucket_quantile(0.75, monotonic) == 0.268435456
    nonzero = sum_by_le(cumulative_buckets(FAST, 1, "nonzero"), cumulative_buckets(SLOW, 1, "nonzero"))
    assert bucket_quantile(0.75, list(nonzero.items())) == pytest.approx(3.145728e-3)
