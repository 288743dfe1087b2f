"""Two-point latency probes ("spans"): a start hook and an end hook paired by a key, e.g. block I/O
from block_rq_issue to block_rq_complete by (dev, sector). The rules a schema cannot express, and
the typed hooks. Whether a key field exists on a tracepoint is decided on the host. Pure.

At the start the agent's program remembers the time (and, with labelsFrom: start, the task's cgroup
and name) under the key; the first end event with an equal key takes it, and its time difference
is one sample of probeset_latency_seconds. Starts wait in a bounded map (maxPending); those older
than maxAgeSeconds are dropped and counted. An end with no pending start records nothing: many
ends have none (sched_switch to a task that was not woken, a completion of an I/O issued before
the probe attached).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .filters import Filter, parse_filter
from .schema import ARG_FIELDS, PROBE_DEFAULTS, PROBE_KINDS, RETURN_KINDS
from .validation import FieldError, show

SPAN_FIELDS = ("start", "end")
SPAN_ONLY = ("labelsFrom", "maxPending", "maxAgeSeconds")
KEY_TASK_FIELDS = ("tid", "pid")


@dataclass(frozen=True)
class Hook:
    """One end of a span: where it attaches, its key and its filter."""

    path: str = field(compare=False)     # spec.probes[3].start: for errors, not part of its meaning
    kind: str                # kprobe | kretprobe | uprobe | uretprobe | tracepoint
    target: str
    key: tuple[str, ...]
    filter: Filter | None = None

    @property
    def binary(self) -> str:
        return self.target.split(":", 1)[0]

    @property
    def symbol(self) -> str:
        return self.target.split(":", 1)[-1]


def is_span(raw: dict) -> bool:
    return any(k in raw for k in SPAN_FIELDS)


def _hook(raw: dict, path: str, errors: list[FieldError]) -> Hook | None:
    kinds = [k for k in PROBE_KINDS if k in raw]
    if len(kinds) != 1:
        errors.append(FieldError(path, f"exactly one of {', '.join(PROBE_KINDS)} is required (found: "
                                       f"{', '.join(kinds) or 'none'})"))
        return None
    kind = kinds[0]
    target = raw[kind]
    if any(c in target for c in "*?"):
        errors.append(FieldError(f"{path}.{kind}", "a start or end attaches to one function or tracepoint: no glob"))
        return None
    before = len(errors)
    for i, name in enumerate(raw["key"]):
        where = f"{path}.key[{i}]"
        if name in ARG_FIELDS:
            if kind == "tracepoint":
                errors.append(FieldError(where, f"{name} is for function probes; a tracepoint's key is its fields"))
            elif kind in RETURN_KINDS:
                errors.append(FieldError(where, f"{name} of a return probe is gone at return: use {kind[:1]}probe"))
        elif name == "retval":
            if kind not in RETURN_KINDS:
                errors.append(FieldError(where, f"retval needs a return probe (kretprobe, uretprobe), not {kind}"))
        elif name not in KEY_TASK_FIELDS and kind != "tracepoint":
            errors.append(FieldError(where, f"{name!r} is not available for {kind}: use arg0..arg5"
                                            + (", retval" if kind in RETURN_KINDS else "") + ", tid or pid"))
    if len(set(raw["key"])) != len(raw["key"]):
        errors.append(FieldError(f"{path}.key", "names must be unique"))
    flt, flt_errors = parse_filter(raw.get("filter"), kind, False, path)
    errors += flt_errors
    if len(errors) > before:
        return None
    return Hook(path, kind, target, tuple(raw["key"]), flt)


def span_errors(raw: dict[str, Any], path: str) -> list[FieldError]:
    """What is wrong with a probe's start/end (raw has defaults applied); [] for other probes whose
    span-only fields are at their defaults."""
    if not is_span(raw):
        return [FieldError(f"{path}.{name}", "only applies with start and end")
                for name in SPAN_ONLY if raw[name] != PROBE_DEFAULTS[name]]
    return parse_span(raw, path)[1]


def parse_span(raw: dict[str, Any], path: str) -> tuple[tuple[Hook, Hook] | None, list[FieldError]]:
    errors: list[FieldError] = []
    missing = [k for k in SPAN_FIELDS if k not in raw]
    if missing:
        return None, [FieldError(f"{path}.{missing[0]}", "a two-point probe needs both start and end")]
    others = [k for k in PROBE_KINDS if k in raw]
    if others:
        errors.append(FieldError(f"{path}.{others[0]}", "a two-point probe attaches through start and end only"))
    for name in ("latency", "value", "filter", "maxActive"):
        if name in raw and raw[name] not in (None, False):
            errors.append(FieldError(f"{path}.{name}", "does not apply to a start/end probe (its latency is "
                                                       "what it records; filters go in start or end)"))
    if raw["retvalLabel"] != PROBE_DEFAULTS["retvalLabel"]:
        errors.append(FieldError(f"{path}.retvalLabel", "does not apply to a start/end probe"))
    start = _hook(raw["start"], f"{path}.start", errors)
    end = _hook(raw["end"], f"{path}.end", errors)
    if start and end and len(start.key) != len(end.key):
        errors.append(FieldError(f"{path}.end.key", f"{len(end.key)} field(s), but start.key has {len(start.key)}: "
                                                    "the keys are compared field by field"))
    for i, name in enumerate(raw.get("groupBy") or []):
        if end and name in ARG_FIELDS and end.kind in RETURN_KINDS or end and name == "retval" and \
                end.kind not in RETURN_KINDS:
            errors.append(FieldError(f"{path}.groupBy[{i}]", f"{name} is not available at the end ({end.kind})"))
        elif end and end.kind != "tracepoint" and name not in ARG_FIELDS + ("retval", "comm"):
            errors.append(FieldError(f"{path}.groupBy[{i}]", f"{show(name)} is not available at the end ({end.kind}): "
                                                            "use arg0..arg5" + (", retval" if end.kind in RETURN_KINDS
                                                                                else "") + " or comm"))
    if errors:
        return None, errors
    return (start, end), []
