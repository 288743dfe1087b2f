"""The status contract of a ProbeSet, written once: each node's agent writes a NodeReport into
status.agents.<node>, the operator reads them back (NodeReport.from_status) and writes the summary
(Summary), and the CRD's status schema (STATUS_SCHEMA) is generated from these types.

Field names are the API's (camelCase); each field's description reaches users through
`kubectl explain`.
"""

from __future__ import annotations

import dataclasses
import datetime
import types
import typing
from dataclasses import dataclass, field
from typing import Any

CONDITION_TYPES = ("Valid", "Ready", "Degraded")


def _doc(text: str, **kw) -> Any:
    return field(metadata={"description": text}, **kw)


@dataclass(frozen=True)
class ProbeResult:
    """Result of one probe on one node."""

    name: str = _doc("The probe's name.")
    attached: bool = _doc("Whether the probe is attached (to at least one function).")
    attachedVia: str | None = _doc("kprobe, fentry, uprobe or tracepoint.", default=None)
    functions: int = _doc("Functions or tracepoints attached.", default=0)
    error: str | None = _doc("Why the probe (or part of it) did not attach.", default=None)


@dataclass(frozen=True)
class NodeReport:
    """One node's agent's report: status.agents.<node>. Full per-probe results only for probes that
    failed, to keep the object small."""

    generation: int | None = _doc("Spec generation the agent runs.")
    attached: int = _doc("Probes attached on this node.")
    total: int = _doc("Probes in the spec.")
    updated: str = _doc("When the agent wrote this entry.", default="")
    failed: tuple[ProbeResult, ...] = _doc("Probes that did not fully attach, with the reason.", default=())
    reason: str | None = _doc("Why the agent does not run the set on this node (InvalidSpec, OverBudget), "
                              "if it does not; failed says more.", default=None)

    def to_status(self) -> dict:
        """The JSON merge patch value. `failed` None deletes the key: a recovered node drops its
        old failures."""
        out = dataclasses.asdict(self)
        out["failed"] = [_without_none(f) for f in out["failed"]] or None
        return out

    @classmethod
    def from_status(cls, entry: dict) -> "NodeReport":
        """Tolerant of what another version of the agent wrote: unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(ProbeResult)}
        failed = tuple(ProbeResult(**{k: v for k, v in f.items() if k in names})
                       for f in entry.get("failed") or [] if isinstance(f, dict) and "name" in f)
        return cls(generation=entry.get("generation"), attached=entry.get("attached") or 0,
                   total=entry.get("total") or 0, updated=entry.get("updated") or "", failed=failed,
                   reason=entry.get("reason") if isinstance(entry.get("reason"), str) else None)


def _without_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None or k == "attachedVia"}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class NodeCounts:
    """Agent pods: desired by the DaemonSet, ready, and reporting all probes attached."""

    desired: int = _doc("Nodes that should run an agent.")
    ready: int = _doc("Nodes whose agent runs with every probe attached.")
    failing: int = _doc("Nodes whose agent reports failed probes.")
    summary: str = _doc("ready/desired, for kubectl get.")


@dataclass(frozen=True)
class Condition:
    """One condition of the ProbeSet: its type, state, reason and message."""

    type: str = _doc("Valid, Ready or Degraded.")
    status: str = _doc("Condition state.")
    reason: str = _doc("CamelCase reason.", default="")
    message: str = _doc("Human-readable details.", default="")
    observedGeneration: int | None = _doc("Generation it was computed for.", default=None)
    lastTransitionTime: str = _doc("When status last changed.", default="")


# --- the CRD's status schema, generated from the types above -----------------------------------

_EXTRA = {  # what a type annotation cannot say
    ("Condition", "status"): {"enum": ["True", "False", "Unknown"]},
    ("Condition", "lastTransitionTime"): {"format": "date-time"},
}
_REQUIRED = {"Condition": ["type", "status"]}
_SCALARS = {str: "string", int: "integer", bool: "boolean"}


def _schema_of(tp, description: str, owner: str = "", name: str = "") -> dict:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return _schema_of(args[0], description, owner, name)
    if typing.get_origin(tp) in (tuple, list):
        return {"type": "array", "description": description, "items": _object_schema(args[0])}
    if dataclasses.is_dataclass(tp):
        return {**_object_schema(tp), "description": description}
    return {"type": _SCALARS[tp], **_EXTRA.get((owner, name), {}), "description": description}


def _object_schema(cls) -> dict:
    hints = typing.get_type_hints(cls)
    out: dict = {"type": "object", "description": cls.__doc__.split("\n\n")[0].replace("\n    ", " ")}
    if cls.__name__ in _REQUIRED:
        out["required"] = _REQUIRED[cls.__name__]
    out["properties"] = {f.name: _schema_of(hints[f.name], f.metadata["description"], cls.__name__, f.name)
                         for f in dataclasses.fields(cls)}
    return out


STATUS_SCHEMA = {
    "type": "object",
    "description": "Observed state, written by the operator (summary) and by the node agents (their node).",
    "properties": {
        "observedGeneration": {"type": "integer", "description": "The spec generation this status describes."},
        "message": {"type": "string", "description": "One line saying what is wrong, if anything."},
        "probes": {"type": "string", "description": "Probes attached on every ready node / probes in the spec."},
        "nodes": _object_schema(NodeCounts),
        "conditions": {"type": "array", "description": "Valid, Ready and Degraded, with reasons.",
                       "items": _object_schema(Condition)},
        "agents": {
            "type": "object",
            "description": "Per node, written by that node's agent (merge patch keyed by node name): full "
                           "per-probe results only while something fails, to keep the object small.",
            "additionalProperties": _object_schema(NodeReport),
        },
    },
}
