"""The status contract, written once. Each node's agent writes one NodeReport per set it was asked
about into its own ProbeSetNode object (status.sets["<namespace>/<name>"], one object per node in
the operator's namespace, one write per change for all its sets); the operator reads them back
(NodeReport.from_status) and writes each ProbeSet's summary: counts, conditions and at most
MAX_FAILED_NODES failing nodes (FailedNode), so that a ProbeSet stays small whatever the number of
nodes (docs/scale.md). The CRDs' status schemas (STATUS_SCHEMA, NODE_STATUS_SCHEMA) are generated
from these types.

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
MAX_FAILED_NODES = 10          # failing nodes named in a ProbeSet's status
MAX_FAILED_PROBES_SHOWN = 5    # failed probes shown per named node
ERROR_MAX = 300                # characters of one probe's error in a status
REPORT_ERROR_MAX = 1000        # ... in a node's report: 500 probes failing stay far below etcd's 1.5 MiB


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
    """One node's agent's report on one set: status.sets["<namespace>/<name>"] of the node's
    ProbeSetNode. Full per-probe results only for probes that failed, to keep the object small."""

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


def set_key(namespace: str, name: str) -> str:
    """The key of a set in a ProbeSetNode's status.sets."""
    return f"{namespace}/{name}"


@dataclass(frozen=True)
class FailedNode:
    """A node whose agent does not run every probe of the set: the first MAX_FAILED_NODES by name."""

    node: str = _doc("The node's name.")
    attached: int = _doc("Probes attached on this node.", default=0)
    total: int = _doc("Probes in the spec.", default=0)
    reason: str | None = _doc("Why the agent does not run the set here (InvalidSpec, OverBudget), if it "
                              "does not.", default=None)
    failed: tuple[ProbeResult, ...] = _doc("The first failed probes, with the reason.", default=())

    @classmethod
    def of(cls, node: str, report: NodeReport) -> "FailedNode":
        shown = tuple(dataclasses.replace(f, error=(f.error or "")[:ERROR_MAX] or None)
                      for f in report.failed[:MAX_FAILED_PROBES_SHOWN])
        return cls(node=node, attached=report.attached, total=report.total, reason=report.reason, failed=shown)

    def to_status(self) -> dict:
        """As the API stores it (no nulls: a list in a merge patch is stored as it is), so that the
        operator can tell an unchanged status from a changed one."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        out["failed"] = [{k: v for k, v in f.items() if v is not None} for f in out["failed"]]
        return out


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
    declined: int = _doc("Nodes whose agent does not run the set (over its budget, or a spec it refuses).",
                         default=0)


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
    "description": "Observed state, written by the operator from the node agents' reports (ProbeSetNode "
                   "objects in the operator's namespace).",
    "properties": {
        "observedGeneration": {"type": "integer", "description": "The spec generation this status describes."},
        "message": {"type": "string", "description": "One line saying what is wrong, if anything."},
        "probes": {"type": "string", "description": "Probes attached on every ready node / probes in the spec."},
        "nodes": _object_schema(NodeCounts),
        "conditions": {"type": "array", "description": "Valid, Ready and Degraded, with reasons.",
                       "items": _object_schema(Condition)},
        "failedNodes": {
            "type": "array", "maxItems": MAX_FAILED_NODES,
            "description": f"The first {MAX_FAILED_NODES} nodes (by name) whose agent does not run every probe, "
                           "with the reason; nodes.failing and nodes.declined count them all.",
            "items": _object_schema(FailedNode),
        },
    },
}

NODE_STATUS_SCHEMA = {
    "type": "object",
    "description": "Written by the node's agent, one merge patch per change for all its sets.",
    "properties": {
        "summary": {"type": "string", "description": "Sets running with every probe attached / sets reported, "
                                                     "for kubectl get."},
        "sets": {
            "type": "object",
            "description": 'Per ProbeSet ("<namespace>/<name>") the agent runs or was asked to run: its report.',
            "additionalProperties": _object_schema(NodeReport),
        },
    },
}
