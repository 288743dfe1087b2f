"""Map rows -> series: the step where the kernel's counts become labelled samples. Pure: raw rows as
bytes and each probe's KeyLayout in, Series out; no BCC, no root.

A row's key holds the function index, the cgroup id, the task name and the groupBy values; its
value one {count, sum_ns} per CPU. Rows whose labels are equal are summed (several cgroups can be
one workload, e.g. a restarted container). Rows of cgroups that vanished are retired: their counts
move into `retired` under their labels and stay added while a row with those labels remains, so a
series never goes backwards; the caller deletes the retired rows from the maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat
from typing import Callable, Iterable

from .attribution import UNKNOWN, WORKLOAD_LABELS
from .layout import KeyLayout, key_uses_cgroup
from .maps import Rows
from .resolve import ResolvedProbe

OVERFLOW_LABEL = "__overflow__"

Row = tuple[bytes, bytes]         # (key, value) as the map holds them


@dataclass(slots=True)     # 10,000s made per scrape: slots make them smaller and quicker to build
class Series:
    labels: dict[str, str]
    text: str                                # the labels rendered for the exposition: {a="b",...}
    count: int
    sum_ns: int = 0
    buckets: dict[int, int] | None = None    # histogram bucket index -> count (latency or value)

    def add(self, other: "Series") -> None:
        self.count += other.count
        self.sum_ns += other.sum_ns
        if self.buckets is not None and other.buckets:
            for bucket, n in other.buckets.items():
                self.buckets[bucket] = self.buckets.get(bucket, 0) + n


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_text(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels.items()) + "}"


# (cgroup id) -> (workload labels, settled); not settled: decode again later (attribution.lookup)
Lookup = Callable[[int], tuple[dict[str, str], bool]]


class Readout:
    """Decodes one program's rows. Keeps, per probe, the labels of raw keys already decoded (a
    scrape decodes only new keys; the cache is as small as the maps, since rows leave them only
    through retire(), which drops their entries) and the retired counts."""

    def __init__(self, set_labels: dict[str, str], node: str, labels: tuple[str, ...], lookup: Lookup | None = None):
        self.set_labels, self.node, self.labels = set_labels, node, labels   # set_labels: {probeset, ...}
        self.lookup = lookup
        self._cache: dict[int, dict[bytes, tuple[dict[str, str], str]]] = {}
        self._retired: dict[int, dict[str, Series]] = {}
        self.unknown: set[int] = set()           # unknown cgroup ids met since begin()

    def begin(self, names_changed: bool) -> None:
        """Start a scrape; when pods' names may have changed, decode every key again."""
        if names_changed:
            self._cache.clear()
        self.unknown = set()

    def cached_keys(self, probe_id: int) -> int:
        return len(self._cache.get(probe_id, ()))

    # --- labels ---------------------------------------------------------------------------------

    def decode(self, rp: ResolvedProbe, layout: KeyLayout, raw: bytes) -> tuple[dict[str, str], bool]:
        """(labels, settled) of one raw key."""
        labels = {**self.set_labels, "probe": rp.probe.name}
        if layout.is_overflow(raw):
            # The overflow series carries no event labels: its events came from anywhere.
            labels["function"] = OVERFLOW_LABEL
            labels.update({name: self.node if name == "node" else "" for name in self.labels})
            labels.update({name: "" for name in rp.probe.group_by})
            return labels, True
        settled = True
        labels["function"] = rp.functions[layout.func(raw)]
        for name in self.labels:
            if name == "node":
                labels["node"] = self.node
            elif name == "comm":
                labels["comm"] = layout.value(raw, "comm")
        if key_uses_cgroup(self.labels):
            workload: dict[str, str] = {}
            if self.lookup is not None:
                workload, settled = self.lookup(layout.cgroup(raw))
            for name in WORKLOAD_LABELS:
                if name in self.labels:
                    labels[name] = workload.get(name, "")
        for i, label in enumerate(rp.probe.group_by):
            value = layout.value(raw, f"g{i}")
            if isinstance(value, str):
                labels[label] = value
                continue
            if label in rp.signed_labels and value >= 1 << 63:
                value -= 1 << 64
            labels[label] = rp.symbols.get(label, {}).get(value, str(value))
        return labels, settled

    def _labels(self, rp: ResolvedProbe, layout: KeyLayout, raw: bytes, cache: dict) -> tuple[dict[str, str], str]:
        entry = cache.get(raw)
        if entry is None:
            labels, settled = self.decode(rp, layout, raw)
            entry = (labels, label_text(labels))
            if settled:
                cache[raw] = entry
            elif labels.get("pod") == UNKNOWN or labels.get("container") == UNKNOWN:
                self.unknown.add(layout.cgroup(raw))
        return entry

    # --- sums -----------------------------------------------------------------------------------

    def _sum(self, rp: ResolvedProbe, layout: KeyLayout, counts: Rows | Iterable[Row], hist: Rows | Iterable[Row],
             cpus: int, into: dict[str, Series],
             keep: Callable[[bytes], bool] | None = None) -> tuple[list[bytes], list[bytes]]:
        """Add the rows `keep` accepts (all by default) into `into`, by label text: per-CPU values
        summed, histogram buckets to their row's series. The keys taken: (count rows, hist rows)."""
        counts, hist = Rows.of(counts), Rows.of(hist)
        cache = self._cache.setdefault(rp.id, {})
        rows: dict[bytes, Series] = {}
        has_hist = rp.probe.has_histogram
        track = has_hist or keep is not None      # a plain scrape of counts needs no row list
        # the loops below run once per map row, 120,000 times a scrape at 10,000 spread latency
        # series: the rows are decoded in bulk (per-CPU sums column by column, a memoryview cast) and
        # everything else is looked up once here (docs/benchmarks.md 2)
        cached, series_of = cache.get, into.get
        # {count, sum_ns} per CPU, or {count} alone for a count-only probe (codegen._counts_value)
        width = counts.value_size // (8 * cpus) if len(counts) else 1
        columns = _columns(counts.values, cpus, width)
        count_col, sum_col = columns[0], columns[1] if width == 2 else repeat(0)
        for raw, count, total in zip(counts.key_list(), count_col, sum_col):
            if keep is not None and not keep(raw):
                continue
            if count == 0 and layout.is_overflow(raw):
                continue
            entry = cached(raw) or self._labels(rp, layout, raw, cache)
            text = entry[1]
            s = series_of(text)
            if s is None:
                s = into[text] = Series(entry[0], text, count, total, {} if has_hist else None)
            else:
                s.count += count
                s.sum_ns += total
            if track:
                rows[raw] = s
        if not (has_hist and len(hist)):
            return list(rows), []
        series_keys = hist.key_list(layout.size)
        at, stride = layout.bucket_offset, hist.key_size
        if at % 4 == 0 and stride % 4 == 0:
            buckets = memoryview(hist.keys).cast("I")[at // 4::stride // 4].tolist()
        else:
            buckets = [int.from_bytes(hist.keys[i + at:i + at + 4], "little") for i in range(0, len(hist.keys), stride)]
        row_of = rows.get
        for key, bucket, n in zip(series_keys, buckets, _columns(hist.values, cpus, 1)[0]):
            s = row_of(key)
            if s is None:
                continue  # not taken, or a bucket written before its count: seen next time
            counted = s.buckets
            counted[bucket] = counted.get(bucket, 0) + n
        hist_keys = [] if keep is None else [raw for raw, key in zip(hist.key_list(), series_keys) if key in rows]
        return list(rows), hist_keys

    def series(self, rp: ResolvedProbe, layout: KeyLayout, counts: Rows | Iterable[Row],
               hist: Rows | Iterable[Row], cpus: int) -> list[Series]:
        """The probe's series: rows summed by labels, plus the counts retired under labels that still
        have rows (a retired series whose labels no longer have rows ends)."""
        merged: dict[str, Series] = {}
        self._sum(rp, layout, counts, hist, cpus, merged)
        retired = self._retired.get(rp.id, {})
        for text in list(retired):
            s = merged.get(text)
            if s is None:
                del retired[text]
                continue
            s.add(retired[text])
        return list(merged.values())

    def retire(self, rp: ResolvedProbe, layout: KeyLayout, counts: Rows | Iterable[Row], hist: Rows | Iterable[Row],
               cpus: int, cgroups: set[int]) -> tuple[list[bytes], list[bytes]]:
        """Move the rows of these cgroups into the retired counts; the keys (count rows, histogram
        rows) the caller must delete from the maps."""
        def expiring(raw: bytes) -> bool:
            return not layout.is_overflow(raw) and layout.cgroup(raw) in cgroups
        count_keys, hist_keys = self._sum(rp, layout, counts, hist, cpus, self._retired.setdefault(rp.id, {}),
                                          expiring)
        cache = self._cache.get(rp.id, {})
        for raw in count_keys:
            cache.pop(raw, None)
        return count_keys, hist_keys


def _columns(values: bytes, cpus: int, width: int) -> list[list[int]]:
    """Per-CPU values of `width` u64 fields each, summed over the CPUs: one list per field, a row
    each. From memoryview slices, one per CPU and field, zipped: no Python slice and sum() per row
    (the sums alone: half the time of struct.iter_unpack and a sum per row at 2 CPUs, 0.6 of it at
    32; a whole scrape, within noise: docs/benchmarks.md 2)."""
    q = memoryview(values).cast("Q")
    stride = width * cpus
    return [list(map(sum, zip(*[q[cpu * width + field::stride] for cpu in range(cpus)]))) for field in range(width)]


class UnknownAging:
    """Which unknown cgroup ids in the maps may be retired: those first noticed before a scan that
    still did not find them (the scan began after they were noticed, so they are not just new)."""

    def __init__(self):
        self._since: dict[int, float] = {}    # cgroup id -> when first seen unknown

    def expired(self, cgroups: Iterable[int], state: Callable[[int], str], last_scan: float, now: float) -> set[int]:
        """Of the cgroup ids in the maps (`cgroups`), the unknown ones old enough to retire. Only ids
        still in the maps are remembered."""
        since, out = {}, set()
        for cgroup in cgroups:
            if state(cgroup) != "unknown":
                continue
            first = since[cgroup] = self._since.get(cgroup, now)
            if last_scan > first:
                out.add(cgroup)
        self._since = {c: t for c, t in since.items() if c not in out}
        return out
