"""The byte layout shared by the generated C and the code that reads its maps, written once.

codegen.py declares the C structs from a KeyLayout; readout.py decodes raw map rows with the same
KeyLayout. Every field is 8-byte aligned (u64, or char arrays of a multiple of 8), so the C
compiler adds no padding the offsets here do not show; a BPF test checks them against BCC's own
view of the compiled struct.
"""

from __future__ import annotations

from dataclasses import dataclass

from .attribution import WORKLOAD_LABELS

OVERFLOW_FUNC = 0xFFFFFFFF           # `func` of the overflow series: the cardinality budget is spent
# Reasons a latency or value probe can lose an event (or its value), by index: the C constants MISSED_<NAME> are generated
# from this tuple, and the `missed` array has one slot per (probe, reason).
MISSED_REASONS = ("unpaired_return", "histogram_full", "negative_value", "nesting_too_deep", "pending_full")
MAX_PROBES = 64
STRING_LABEL_BYTES = 32               # a string groupBy value, NUL-terminated
COMM_BYTES = 16                       # TASK_COMM_LEN


def missed_slot(probe_id: int, reason: str) -> int:
    return probe_id * len(MISSED_REASONS) + MISSED_REASONS.index(reason)


def key_uses_cgroup(labels: tuple[str, ...]) -> bool:
    return any(label in labels for label in WORKLOAD_LABELS)


@dataclass(frozen=True)
class KeyField:
    """One field of a series key: `name` in C, at `offset`, `size` bytes; a string or a u64."""

    name: str
    offset: int
    size: int
    is_string: bool


@dataclass(frozen=True)
class KeyLayout:
    """A probe's series key: u32 func, u32 pad, then [u64 cgroup], [char comm[16]], then one field
    per groupBy label (g0, g1, ...: u64, or char[32] for strings). The histogram key is the series
    key followed by u32 bucket, u32 pad."""

    fields: tuple[KeyField, ...]
    group_by: tuple[str, ...]          # the label of g0, g1, ...

    @classmethod
    def of(cls, labels: tuple[str, ...], group_by: tuple[str, ...], string_labels: frozenset[str]) -> "KeyLayout":
        fields = [KeyField("func", 0, 4, False), KeyField("pad", 4, 4, False)]
        offset = 8

        def add(name: str, size: int, is_string: bool) -> None:
            nonlocal offset
            fields.append(KeyField(name, offset, size, is_string))
            offset += size
        if key_uses_cgroup(labels):
            add("cgroup", 8, False)
        if "comm" in labels:
            add("comm", COMM_BYTES, True)
        for i, label in enumerate(group_by):
            if label in string_labels:
                add(f"g{i}", STRING_LABEL_BYTES, True)
            else:
                add(f"g{i}", 8, False)
        return cls(tuple(fields), tuple(group_by))

    @property
    def size(self) -> int:
        last = self.fields[-1]
        return last.offset + last.size

    def field(self, name: str) -> KeyField | None:
        return next((f for f in self.fields if f.name == name), None)

    @property
    def bucket_offset(self) -> int:
        """Offset of the u32 bucket index in a histogram key."""
        return self.size

    def func(self, raw: bytes) -> int:
        return int.from_bytes(raw[0:4], "little")

    def is_overflow(self, raw: bytes) -> bool:
        return raw[0:4] == _OVERFLOW_PREFIX

    def cgroup(self, raw: bytes) -> int | None:
        f = self.field("cgroup")
        return None if f is None else int.from_bytes(raw[f.offset:f.offset + 8], "little")

    def value(self, raw: bytes, name: str) -> int | str:
        """A u64 field as an unsigned int, a string field up to its NUL."""
        f = self.field(name)
        chunk = raw[f.offset:f.offset + f.size]
        if f.is_string:
            return chunk.split(b"\0", 1)[0].decode(errors="replace")
        return int.from_bytes(chunk, "little")

    def c_fields(self) -> list[tuple[str, str]]:
        """(C type, declarator) of each field after func and pad."""
        return [("char", f"{f.name}[{f.size}]") if f.is_string else ("u64", f.name) for f in self.fields[2:]]

    def overflow_key(self) -> bytes:
        return _OVERFLOW_PREFIX + bytes(self.size - 4)


_OVERFLOW_PREFIX = OVERFLOW_FUNC.to_bytes(4, "little")
