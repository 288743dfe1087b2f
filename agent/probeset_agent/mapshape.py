"""Which map a probe counts in, and how an array's rows read back as series keys. Pure.

A probe's series key (layout.py) is its function index, then the per-event labels (cgroup id for
namespace/pod/container, comm) and its groupBy values. When the key is only the function index
(no groupBy; labels none of which varies per event: [node] or none), its possible values are
0..functions-1: the counts go in a per-CPU array indexed by it (one slot per function: no hashing,
no insert, a lookup the kernel inlines), and a histogram in a per-CPU array indexed by
function x NUM_BUCKETS + bucket, while that stays small (MAX_HIST_ARRAY_SLOTS). Everything else keeps
the per-CPU hash, whose key space needs it. An array never fills, so it is used only where the
hash would never overflow either (functions <= maxSeriesPerProbe): the overflow series and
`maxSeriesPerProbe` mean what they meant.

The readout (readout.py) reads both the same way: array rows are turned into the hash's rows,
(series key bytes, per-CPU values), leaving out slots that never counted (a hash has no row for
them), so a series appears with its first event either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .histogram import NUM_BUCKETS
from .layout import KeyLayout, key_uses_cgroup

ARRAY, HASH = "array", "hash"
# A histogram array holds NUM_BUCKETS (252) u64 per function and CPU, preallocated: 16 functions are
# 32 KiB per CPU. Beyond it the histogram stays a hash, which grows with the buckets used.
MAX_HIST_ARRAY_SLOTS = 16 * NUM_BUCKETS


@dataclass(frozen=True)
class MapShape:
    counts: str                 # ARRAY | HASH
    hist: str                   # ARRAY | HASH (meaningful with a histogram)
    functions: int              # array slots of the counts (one per function index)
    reason: str

    @property
    def hist_slots(self) -> int:
        return self.functions * NUM_BUCKETS


def choose_map(labels: tuple[str, ...], group_by: tuple[str, ...], functions: int, max_series: int) -> MapShape:
    """The maps of a probe with these set labels and groupBy, matching `functions` functions."""
    varying = [label for label in labels if label == "comm"] + (["cgroup"] if key_uses_cgroup(labels) else [])
    why_not = None
    if group_by:
        why_not = f"groupBy {', '.join(group_by)} makes the key space open"
    elif varying:
        why_not = "labels vary per event (" + ", ".join(
            "comm" if v == "comm" else "namespace/pod/container by cgroup" for v in varying) + ")"
    elif functions > max_series:
        why_not = f"{functions} functions are more than maxSeriesPerProbe={max_series} (overflow series)"
    if why_not:
        return MapShape(HASH, HASH, functions, f"per-CPU hash: {why_not}")
    hist = ARRAY if functions * NUM_BUCKETS <= MAX_HIST_ARRAY_SLOTS else HASH
    return MapShape(ARRAY, hist, functions, f"per-CPU array of {functions} slot{'s' * (functions > 1)}: "
                                            "the key is only the function index")


def array_count_rows(rows: Iterable[tuple[bytes, bytes]], layout: KeyLayout) -> Iterable[tuple[bytes, bytes]]:
    """A counts array's rows (u32 slot, per-CPU values) as the hash's rows (series key, values);
    slots that never counted are left out."""
    pad = bytes(layout.size - 4)
    for key, value in rows:
        if any(value):
            yield key[:4] + pad, value


def array_hist_rows(rows: Iterable[tuple[bytes, bytes]], layout: KeyLayout) -> Iterable[tuple[bytes, bytes]]:
    """A histogram array's rows (u32 slot = function x NUM_BUCKETS + bucket) as the hash's rows
    (series key, u32 bucket, u32 pad); empty buckets left out."""
    pad = bytes(layout.size - 4)
    for key, value in rows:
        if any(value):
            func, bucket = divmod(int.from_bytes(key[:4], "little"), NUM_BUCKETS)
            yield func.to_bytes(4, "little") + pad + bucket.to_bytes(4, "little") + bytes(4), value


def as_hash_rows(shape: MapShape, layout: KeyLayout, counts: Iterable[tuple[bytes, bytes]],
                 hist: Iterable[tuple[bytes, bytes]]) -> tuple[Iterable, Iterable]:
    """A probe's (count rows, histogram rows) as the readout takes them, whatever its maps are."""
    return (array_count_rows(counts, layout) if shape.counts == ARRAY else counts,
            array_hist_rows(hist, layout) if shape.hist == ARRAY else hist)
