"""Filters: a typed predicate a probe evaluates in the kernel before it records anything.

A filter is one comparison `{field, op, value}` or a group `{all: [...]}` / `{any: [...]}` of
comparisons and groups, two levels deep at most (the schema bounds it: FILTER_SCHEMA). Parsing
turns it into this module's IR (Compare, Group): every literal typed and range-checked against its
field's type, every error naming its field. What needs the host (a tracepoint field's type) is
typed by the agent with the same check_literal(). No text of a filter ever reaches generated C:
the agent emits its own operators and integers. `evaluate()` is the IR's meaning, in Python: the
generated C must agree with it (tests compare them). Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from .schema import ARG_FIELDS, RETURN_KINDS, TASK_FIELDS, is_task_name
from .validation import FieldError, show

# Task fields and their types: pid is the process (tgid), tid the thread; comm is the task name.
TASK_TYPES = {"pid": "u32", "tid": "u32", "uid": "u32", "gid": "u32"}
DEFAULT_TYPES = {"retval": "s64", **{a: "u64" for a in ARG_FIELDS}}


def type_range(ctype: str) -> tuple[int, int]:
    bits = int(ctype[1:])
    if ctype[0] == "s":
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def int_type(size: int, signed: bool) -> str:
    """The type name of an integer of `size` bytes."""
    return f"{'s' if signed else 'u'}{size * 8}"


@dataclass(frozen=True)
class Compare:
    # Where it was written: for errors only, not part of its meaning (a probe moved in the list is
    # the same probe: running.plan_edit keeps it counting).
    path: str = field(compare=False)    # spec.probes[2].filter.all[0]
    field: str
    op: str             # one of FILTER_OPS
    value: int | str    # str only for comm
    ctype: str | None   # the field's type (None: a tracepoint field, typed on the host; "comm")


@dataclass(frozen=True)
class Group:
    path: str = field(compare=False)
    kind: str           # "all" | "any"
    items: tuple["Filter", ...]


Filter = Union[Compare, Group]


def comparisons(f: Filter | None) -> list[Compare]:
    if f is None:
        return []
    if isinstance(f, Compare):
        return [f]
    return [c for item in f.items for c in comparisons(item)]


def check_literal(value: Any, ctype: str, field: str, path: str) -> FieldError | None:
    """Why `value` cannot be compared with a field of type `ctype`, or None."""
    if ctype == "comm":
        if not is_task_name(value):
            return FieldError(f"{path}.value", f"comm compares with a task name: 1 to 15 bytes of printable "
                                               f"characters, got {show(value)}")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return FieldError(f"{path}.value", f"{show(value)} is not an integer ({ctype} field {field!r})")
    lo, hi = type_range(ctype)
    if not lo <= value <= hi:
        return FieldError(f"{path}.value", f"{show(value)} is out of range for {ctype} field {field!r} ({lo}..{hi})")
    return None


def _compare(raw: dict, path: str, kind: str, latency: bool, errors: list[FieldError]) -> Compare | None:
    missing = [k for k in ("field", "op", "value") if k not in raw]
    if missing:
        errors.append(FieldError(path, f"a comparison needs field, op and value (missing: {', '.join(missing)})"))
        return None
    field, op, value = raw["field"], raw["op"], raw["value"]
    explicit = raw.get("type")
    if field in ARG_FIELDS:
        if kind == "tracepoint":
            errors.append(FieldError(f"{path}.field", f"{field} is for function probes; a tracepoint has fields"))
            return None
        if kind in RETURN_KINDS and not latency:
            errors.append(FieldError(f"{path}.field", f"{field} of a return probe is gone at return: filter on "
                                                      "the entry probe, or use latency: true (checked at entry)"))
            return None
    elif field == "retval":
        if kind not in RETURN_KINDS and not latency:
            errors.append(FieldError(f"{path}.field", f"retval needs a return probe (kretprobe, uretprobe) or "
                                                      f"latency: true, not {kind}"))
            return None
    elif field not in TASK_FIELDS and kind != "tracepoint":
        errors.append(FieldError(f"{path}.field", f"{field!r} is not available for {kind}: use arg0..arg5"
                                                  + (", retval" if kind in RETURN_KINDS or latency else "")
                                                  + ", pid, tid, uid, gid or comm"))
        return None
    if explicit is not None and field not in DEFAULT_TYPES:
        errors.append(FieldError(f"{path}.type", f"only arguments and retval take a type; {field} has its own"))
        return None
    if field == "comm":
        ctype = "comm"
        if op not in ("==", "!="):
            errors.append(FieldError(f"{path}.op", f"comm compares with == or != only, not {op}"))
            return None
    elif field in TASK_TYPES:
        ctype = TASK_TYPES[field]
    elif field in DEFAULT_TYPES:
        ctype = explicit or DEFAULT_TYPES[field]
    else:
        ctype = None      # a tracepoint field: typed on the host
    if ctype is not None:
        bad = check_literal(value, ctype, field, path)
        if bad:
            errors.append(bad)
            return None
    elif isinstance(value, bool) or not isinstance(value, int):
        errors.append(FieldError(f"{path}.value", f"{value!r:.40} is not an integer (tracepoint field {field!r})"))
        return None
    return Compare(path, field, op, value, ctype)


def _node(raw: Any, path: str, kind: str, latency: bool, errors: list[FieldError]) -> Filter | None:
    groups = [k for k in ("all", "any") if k in raw]
    plain = [k for k in ("field", "op", "value", "type") if k in raw]
    if len(groups) > 1 or (groups and plain):
        errors.append(FieldError(path, "one comparison (field, op, value) or one of all, any: not several"))
        return None
    if not groups:
        return _compare(raw, path, kind, latency, errors)
    group = groups[0]
    if not raw[group]:
        errors.append(FieldError(f"{path}.{group}", "needs at least one item"))
        return None
    items = [_node(item, f"{path}.{group}[{i}]", kind, latency, errors) for i, item in enumerate(raw[group])]
    return Group(path, group, tuple(items)) if None not in items else None


def parse_filter(raw: dict | None, kind: str, latency: bool, path: str) -> tuple[Filter | None, list[FieldError]]:
    """The filter of a probe (its schema already checked), as IR, or the errors, each naming its field.
    A latency probe checks arguments at entry and retval at return: one filter may not need both."""
    if raw is None:
        return None, []
    errors: list[FieldError] = []
    f = _node(raw, f"{path}.filter", kind, latency, errors)
    if f is not None and latency:
        fields = {c.field for c in comparisons(f)}
        if "retval" in fields and fields & set(ARG_FIELDS):
            errors.append(FieldError(f"{path}.filter", "a latency probe checks arguments at entry and retval at "
                                                       "return: one filter cannot use both"))
    return (None, errors) if errors else (f, [])


def at_return(f: Filter | None) -> bool:
    """Whether a latency probe evaluates this filter at return (it uses retval) rather than at entry."""
    return any(c.field == "retval" for c in comparisons(f))


def describe(f: Filter) -> str:
    """The filter as one line (probeset check): all(retval < 0, comm == "curl")."""
    if isinstance(f, Compare):
        typed = f":{f.ctype}" if f.ctype and f.field in DEFAULT_TYPES and f.ctype != DEFAULT_TYPES[f.field] else ""
        value = f'"{f.value}"' if isinstance(f.value, str) else str(f.value)
        return f"{f.field}{typed} {f.op} {value}"
    return f"{f.kind}(" + ", ".join(describe(i) for i in f.items) + ")"


def _as_type(value: int, ctype: str) -> int:
    """What C's cast of a 64-bit register to `ctype` gives."""
    bits = int(ctype[1:])
    v = value & ((1 << bits) - 1)
    if ctype[0] == "s" and v >> (bits - 1):
        v -= 1 << bits
    return v


def evaluate(f: Filter, event: dict[str, int | str], types: dict[str, str] | None = None) -> bool:
    """The meaning of a filter for one event ({field: raw value}; integers as the kernel holds them,
    any width), as the generated C computes it. `types`: tracepoint fields' types."""
    if isinstance(f, Group):
        results = (evaluate(i, event, types) for i in f.items)
        return all(results) if f.kind == "all" else any(results)
    have = event[f.field]
    if f.ctype == "comm":
        return (have == f.value) == (f.op == "==")
    ctype = f.ctype or (types or {})[f.field]
    a, b = _as_type(have, ctype), _as_type(f.value, ctype)
    return {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b,
            "&": (a & b) != 0}[f.op]

