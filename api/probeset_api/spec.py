"""The ProbeSet model: typed probes and sets parsed from a document, and the scope policy.

The schema (schema.py) says what a valid document is; `parse_probeset()` checks a document against
it (field path + reason for every error) and then adds the rules a schema cannot express (exactly
one probe kind, unique names, ...). Static validation only: whether a symbol or tracepoint exists on
a host is decided later (the agent's resolve step), per probe, so one bad probe never stops the others.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from . import (API_GROUP, API_VERSION, DEFAULT_OPERATOR_NAMESPACE, KIND, NODE_WIDE_NAMESPACES_ENV,
               OPERATOR_NAMESPACE_ENV, TENANT_VALUES_ENV)
from .schema import (ARG_FIELDS, KERNEL_ATTACH, KERNEL_KINDS, METADATA_NAME_RE, NAME_RE, NAMESPACE_RE,
                     PROBE_DEFAULTS, PROBE_KINDS, PROBE_SCHEMA, RESERVED_LABELS, RETURN_KINDS, SPEC_DEFAULTS,
                     SPEC_SCHEMA, TASK_FIELDS, TRACEPOINT_ATTACH, is_task_name)
from .validation import FieldError, check_schema, show
from . import documents as _documents
from .filters import DEFAULT_TYPES, Filter, comparisons, parse_filter
from .spans import KEY_TASK_FIELDS, Hook, is_span, parse_span, span_errors
from .values import value_errors


class SpecError(ValueError):
    """A ProbeSet that cannot be used at all (set-level errors)."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


@dataclass(frozen=True)
class Probe:
    """One validated probe. `kind` is which of PROBE_KINDS it is; `target` that field's value."""

    index: int
    name: str
    kind: str
    target: str
    latency: bool = PROBE_DEFAULTS["latency"]
    group_by: tuple[str, ...] = ()
    pid: int | None = None
    comm: str | None = None
    max_active: int | None = None
    attach: str = PROBE_DEFAULTS["attach"]
    max_functions: int = PROBE_DEFAULTS["maxFunctions"]
    buckets_per_power_of_two: int = PROBE_DEFAULTS["bucketsPerPowerOfTwo"]
    value: str | None = None            # what a value probe records (values.py)
    aggregate: str = PROBE_DEFAULTS["aggregate"]
    unit: str | None = None
    retval_label: str = PROBE_DEFAULTS["retvalLabel"]
    filter: Filter | None = None        # evaluated in the kernel before anything is recorded (filters.py)
    start: Hook | None = None           # kind "span": a two-point latency probe (spans.py)
    end: Hook | None = None
    labels_from: str = PROBE_DEFAULTS["labelsFrom"]
    max_pending: int = PROBE_DEFAULTS["maxPending"]
    max_age_seconds: int = PROBE_DEFAULTS["maxAgeSeconds"]

    @property
    def path(self) -> str:
        return f"spec.probes[{self.index}]"

    @property
    def binary(self) -> str:
        """For uprobes: the BINARY half of BINARY:SYMBOL."""
        return self.target.split(":", 1)[0]

    @property
    def symbol(self) -> str:
        """For uprobes: SYMBOL; for tracepoints: NAME; for kprobes: the function."""
        return self.target.split(":", 1)[-1]

    @property
    def is_return(self) -> bool:
        return self.kind in RETURN_KINDS

    @property
    def has_histogram(self) -> bool:
        """A histogram map: latency, or a value aggregated as a histogram."""
        return self.latency or self.kind == "span" or (self.value is not None and self.aggregate == "histogram")

    @property
    def records_sum(self) -> bool:
        """Events carry a number (a duration or a value) whose sum is kept."""
        return self.latency or self.kind == "span" or self.value is not None


@dataclass(frozen=True)
class RejectedProbe:
    """A probe that failed static validation: reported, never attached."""

    index: int
    name: str        # its name if it had a usable one, else its path
    errors: tuple[FieldError, ...]

    @property
    def reason(self) -> str:
        return "; ".join(str(e) for e in self.errors)


@dataclass
class ProbeSet:
    name: str
    namespace: str | None
    probes: list[Probe]
    labels: tuple[str, ...]
    max_series_per_probe: int
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)
    pod_selector: dict | None = None
    scope: str = SPEC_DEFAULTS["scope"]
    # Probes rejected by static validation: reported, never attached; the rest still run.
    rejected: list[RejectedProbe] = field(default_factory=list)
    generation: int | None = None


def _span_semantic_errors(raw: dict, path: str) -> list[FieldError]:
    errors = span_errors({**PROBE_DEFAULTS, **raw}, path)
    group_by = raw.get("groupBy") or []
    if len(set(group_by)) != len(group_by):
        errors.append(FieldError(f"{path}.groupBy", "names must be unique"))
    errors += [FieldError(f"{path}.groupBy[{i}]", f"{name!r} is a label the agent sets itself")
               for i, name in enumerate(group_by) if name in RESERVED_LABELS and name != "comm"]
    return errors


def _attach_errors(raw: dict, kind: str, path: str) -> list[FieldError]:
    """`attach` must name a hook of the probe's kind; raw_tracepoint sees no event field (the
    fields of the current task, comm pid tid uid gid, are not the event's: those it has)."""
    attach, where = raw["attach"], f"{path}.attach"
    if attach in KERNEL_ATTACH and kind not in KERNEL_KINDS:
        return [FieldError(where, f"{attach} only applies to kprobe/kretprobe, not {kind}")]
    if attach in TRACEPOINT_ATTACH and kind != "tracepoint":
        return [FieldError(where, f"{attach} only applies to tracepoint probes, not {kind}")]
    if attach != "raw_tracepoint":
        return []
    reads = [f"groupBy {g}" for g in raw.get("groupBy") or [] if g != "comm"]
    reads += [f"value {raw['value']}"] if raw.get("value") is not None else []
    flt, _ = parse_filter(raw.get("filter"), kind, raw["latency"], path)
    reads += [f"filter field {c.field}" for c in comparisons(flt) if c.field not in TASK_FIELDS]
    if reads:
        return [FieldError(where, f"raw_tracepoint sees no event field, and this probe reads {', '.join(reads)}: "
                                  "use attach: tracepoint or auto")]
    return []


def _probe_semantic_errors(raw: dict, path: str) -> list[FieldError]:
    if is_span(raw):
        return _span_semantic_errors(raw, path)
    errors = span_errors({**PROBE_DEFAULTS, **raw}, path)
    kinds = [k for k in PROBE_KINDS if k in raw]
    if len(kinds) != 1:
        found = ", ".join(kinds) if kinds else "none"
        errors.append(FieldError(path, f"exactly one of {', '.join(PROBE_KINDS)} is required (found: {found})"))
        return errors
    kind = kinds[0]
    if raw.get("latency") and kind in ("tracepoint", "usdt"):
        errors.append(FieldError(f"{path}.latency", "latency needs a function probe (kprobe, kretprobe, "
                                                    f"uprobe, uretprobe), not a {kind}: time two points with "
                                                    "start and end"))
    if "comm" in raw and not is_task_name(raw["comm"]):
        errors.append(FieldError(f"{path}.comm", f"a task name is 1 to 15 bytes of printable characters, got "
                                                 f"{show(raw['comm'])}"))
    if "maxActive" in raw and kind not in KERNEL_KINDS:
        errors.append(FieldError(f"{path}.maxActive", f"only applies to kprobe/kretprobe, not {kind}"))
    if "maxActive" in raw and kind == "kprobe" and not raw.get("latency"):
        errors.append(FieldError(f"{path}.maxActive", "only applies to return probes (kretprobe, or latency: true)"))
    # Value checks, not presence checks: the API server fills in schema defaults (attach: auto, ...).
    raw = {**PROBE_DEFAULTS, **raw}
    errors += value_errors(raw, kind, path)
    errors += parse_filter(raw.get("filter"), kind, raw["latency"], path)[1]
    errors += _attach_errors(raw, kind, path)
    group_by = raw.get("groupBy") or []
    if len(set(group_by)) != len(group_by):
        errors.append(FieldError(f"{path}.groupBy", "names must be unique"))
    for i, name in enumerate(group_by):
        where = f"{path}.groupBy[{i}]"
        if not isinstance(name, str):
            continue
        if name in RESERVED_LABELS and name != "comm":
            errors.append(FieldError(where, f"{name!r} is a label the agent sets itself"))
        elif kind == "tracepoint" or name == "comm":
            continue  # tracepoint fields are checked against the format file on the host
        elif name == "retval":
            if kind not in RETURN_KINDS and not raw.get("latency"):
                errors.append(FieldError(where, "retval needs a return probe (kretprobe, uretprobe) or latency: true"))
        elif name in ARG_FIELDS and kind in RETURN_KINDS and not raw.get("latency"):
            errors.append(FieldError(where, f"{name} of a return probe needs latency: true (arguments are "
                                            "captured at entry; at return their registers are gone)"))
        elif name not in ARG_FIELDS:
            errors.append(FieldError(where, f"{name!r} is not available for {kind}: use arg0..arg5"
                                            + (", retval" if kind in RETURN_KINDS else "") + " or comm"))
    return errors


# SPEC_SCHEMA without the per-probe schema: probes are checked one by one, so that a bad probe
# rejects only itself (set-level errors reject the whole set).
_SPEC_SET_LEVEL = {**SPEC_SCHEMA, "properties": {
    **SPEC_SCHEMA["properties"],
    "probes": {k: v for k, v in SPEC_SCHEMA["properties"]["probes"].items() if k != "items"}}}


def parse_probeset(doc: Any) -> ProbeSet:
    """Validate one ProbeSet document. Set-level errors raise SpecError; per-probe errors are
    collected in ProbeSet.rejected so the valid probes can still run."""
    if not isinstance(doc, dict):
        raise SpecError([FieldError("(document)", f"expected a mapping, got {type(doc).__name__}")])
    errors: list[FieldError] = []
    if doc.get("apiVersion") != f"{API_GROUP}/{API_VERSION}":
        errors.append(FieldError("apiVersion", f"expected {API_GROUP}/{API_VERSION}, got {show(doc.get('apiVersion'))}"))
    if doc.get("kind") != KIND:
        errors.append(FieldError("kind", f"expected {KIND}, got {show(doc.get('kind'))}"))
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not re.fullmatch(METADATA_NAME_RE, name):
        errors.append(FieldError("metadata.name", f"{show(name)} is not a valid name (lowercase DNS subdomain)"))
    namespace = meta.get("namespace") if isinstance(meta, dict) else None
    if namespace is not None and (not isinstance(namespace, str) or not re.fullmatch(NAMESPACE_RE, namespace)):
        errors.append(FieldError("metadata.namespace", f"{show(namespace)} is not a valid namespace (lowercase DNS "
                                                       "label)"))
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        errors.append(FieldError("spec", "required mapping is missing"))
        raise SpecError(errors)
    errors += check_schema(spec, _SPEC_SET_LEVEL, "spec")
    if errors:
        raise SpecError(errors)

    probes: list[Probe] = []
    rejected: list[RejectedProbe] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(spec["probes"]):
        path = f"spec.probes[{i}]"
        probe_errors = check_schema(raw, PROBE_SCHEMA, path)
        if not probe_errors:
            probe_errors = _probe_semantic_errors(raw, path)
        pname = raw.get("name") if isinstance(raw, dict) else None
        if isinstance(pname, str) and pname in seen:
            probe_errors.append(FieldError(f"{path}.name", f"duplicate name {show(pname)} (also spec.probes[{seen[pname]}])"))
        elif isinstance(pname, str):
            seen[pname] = i
        if probe_errors:
            label = pname if isinstance(pname, str) and re.fullmatch(NAME_RE, pname) else path
            rejected.append(RejectedProbe(i, label, tuple(probe_errors)))
            continue
        raw = {**PROBE_DEFAULTS, **raw}
        if is_span(raw):
            (start, end), _ = parse_span(raw, path)
            probes.append(Probe(index=i, name=raw["name"], kind="span", target=f"{start.target}->{end.target}",
                                group_by=tuple(raw.get("groupBy") or ()), pid=raw.get("pid"), comm=raw.get("comm"),
                                buckets_per_power_of_two=raw["bucketsPerPowerOfTwo"], start=start, end=end,
                                labels_from=raw["labelsFrom"], max_pending=raw["maxPending"],
                                max_age_seconds=raw["maxAgeSeconds"]))
            continue
        kind = next(k for k in PROBE_KINDS if k in raw)
        probes.append(Probe(
            index=i, name=raw["name"], kind=kind, target=raw[kind],
            latency=raw["latency"],
            group_by=tuple(raw.get("groupBy") or ()),
            pid=raw.get("pid"), comm=raw.get("comm"),
            max_active=raw.get("maxActive"), attach=raw["attach"],
            max_functions=raw["maxFunctions"],
            buckets_per_power_of_two=raw["bucketsPerPowerOfTwo"],
            value=raw.get("value"), aggregate=raw["aggregate"], unit=raw.get("unit"),
            retval_label=raw["retvalLabel"],
            filter=parse_filter(raw.get("filter"), kind, raw["latency"], path)[0],
        ))
    spec = {**SPEC_DEFAULTS, **spec}
    return ProbeSet(
        name=name, namespace=meta.get("namespace"), probes=probes, labels=tuple(dict.fromkeys(spec["labels"])),
        max_series_per_probe=spec["maxSeriesPerProbe"],
        node_selector=dict(spec.get("nodeSelector") or {}),
        tolerations=list(spec.get("tolerations") or []),
        pod_selector=spec.get("podSelector"),
        scope=spec["scope"],
        rejected=rejected,
        generation=meta.get("generation"),
    )


def node_wide_namespaces(value: str | None, default: str) -> frozenset[str]:
    """The namespaces whose ProbeSets may use scope Node, from a comma-separated list (the
    PROBESET_NODE_WIDE_NAMESPACES setting); empty or unset means just `default` (the operator's)."""
    names = frozenset(n.strip() for n in (value or "").split(",") if n.strip())
    return names or frozenset({default})


def node_wide_from_env(environ: Mapping[str, str]) -> frozenset[str]:
    """node_wide_namespaces() as the operator and its agents read it from their environment."""
    return node_wide_namespaces(environ.get(NODE_WIDE_NAMESPACES_ENV), operator_namespace_from_env(environ))


def operator_namespace_from_env(environ: Mapping[str, str]) -> str:
    return environ.get(OPERATOR_NAMESPACE_ENV) or DEFAULT_OPERATOR_NAMESPACE


def scope_error(pset: ProbeSet, allowed: frozenset[str]) -> FieldError | None:
    """Why this set may not have its scope, or None. Scope Node (host processes and every pod on the
    node) is reserved to the admin-listed namespaces `allowed`; a standalone file (no namespace) is
    not a cluster object and is always node-wide. The operator and the agent both apply this."""
    if pset.scope != "Node" or pset.namespace is None or pset.namespace in allowed:
        return None
    return FieldError("spec.scope", f"Node (host processes and every pod on the node) is allowed only for "
                                    f"ProbeSets in namespace(s) {', '.join(sorted(allowed))}; this ProbeSet "
                                    f"is in {pset.namespace}: remove spec.scope or ask the cluster admin")


@dataclass(frozen=True)
class ValuePolicy:
    """What a ProbeSet may record as a label value (docs/operator.md, "Who may observe what").

    A namespaced ProbeSet (scope Namespace, in a cluster) counts only its own pods' events, and
    may not record a value that can carry a kernel address or another task's identity: kernel
    function arguments and return values (they are kernel pointers as often as not), and
    tracepoint fields other than small integers of the task's own (pointers, pointer-sized
    integers, strings that may name another task, pid/uid fields). An administrator can allow
    one value at a time: `KIND:TARGET:FIELD` (kprobe:vfs_read:arg2, tracepoint:net:net_dev_xmit:name).
    A set with scope Node, or a standalone file, is not restricted."""

    restricted: bool = False
    allowed: frozenset[str] = frozenset()

    def allows(self, kind: str, target: str, field_name: str) -> bool:
        return not self.restricted or f"{kind}:{target}:{field_name}" in self.allowed

    def denial(self, what: str, kind: str, target: str, field_name: str) -> str:
        return (f"{what}: a namespaced ProbeSet may not record it (the cluster admin can allow it with "
                f"tenantAllowedValues: {kind}:{target}:{field_name})")


def tenant_values_from_env(environ: Mapping[str, str]) -> frozenset[str]:
    return frozenset(v.strip() for v in (environ.get(TENANT_VALUES_ENV) or "").split(",") if v.strip())


def value_policy(pset: ProbeSet, allowed: frozenset[str]) -> ValuePolicy:
    return ValuePolicy(restricted=pset.namespace is not None and pset.scope != "Node", allowed=allowed)


def _hook_denials(hook: Hook, policy: ValuePolicy) -> list[FieldError]:
    """What a span's kernel start or end may not read. Its key and filter record nothing, yet tell
    as much as a label: `arg0 & 4096` counts a bit of an address, and a key pairs a value the
    tenant chooses (a user-space argument) with a kernel one, an equality test. The current task's
    own tid and pid stay allowed. Tracepoint hooks are checked by the agent (their formats)."""
    if hook.kind not in KERNEL_KINDS:
        return []
    errors = []
    for i, name in enumerate(hook.key):
        if name not in KEY_TASK_FIELDS and not policy.allows(hook.kind, hook.target, name):
            what = f"{name} of kernel function {hook.target} can be a kernel address or another task's data"
            errors.append(FieldError(f"{hook.path}.key[{i}]", policy.denial(what, hook.kind, hook.target, name)))
    return errors + _filter_denials(hook.filter, hook.kind, hook.target, policy)


def _filter_denials(flt: Filter | None, kind: str, target: str, policy: ValuePolicy) -> list[FieldError]:
    """The comparisons of a kernel function's argument or return value the policy denies: a filter
    counts its bits (`arg0 & 4096`) as surely as a label shows it."""
    if kind not in KERNEL_KINDS:
        return []
    return [FieldError(f"{c.path}.field", policy.denial(f"{c.field} of kernel function {target} can be a kernel "
                                                        "address", kind, target, c.field))
            for c in comparisons(flt) if c.field in DEFAULT_TYPES and not policy.allows(kind, target, c.field)]


def restrict_values(pset: ProbeSet, policy: ValuePolicy) -> ProbeSet:
    """The set with the probes that record values the policy denies moved to `rejected`, each
    error naming the field. What needs the node's tracepoint formats is checked by the agent."""
    if not policy.restricted:
        return pset
    keep, rejected = [], list(pset.rejected)
    for probe in pset.probes:
        errors = []
        for j, name in enumerate(probe.group_by):
            if probe.kind == "span" and probe.end.kind in KERNEL_KINDS and name != "comm" and not policy.allows(
                    probe.end.kind, probe.end.target, name):
                what = f"{name} of kernel function {probe.end.target} can be a kernel address or another task's data"
                errors.append(FieldError(f"{probe.path}.groupBy[{j}]", policy.denial(what, probe.end.kind,
                                                                                     probe.end.target, name)))
            elif probe.kind in KERNEL_KINDS and name != "comm" and not policy.allows(probe.kind, probe.target, name):
                what = (f"{name} of kernel function {probe.target} can be a kernel address or another task's "
                        "data")
                errors.append(FieldError(f"{probe.path}.groupBy[{j}]", policy.denial(what, probe.kind, probe.target, name)))
        value = probe.value
        if value is not None and probe.kind in KERNEL_KINDS and not policy.allows(probe.kind, probe.target, value):
            what = f"{value} of kernel function {probe.target} can be a kernel address"
            errors.append(FieldError(f"{probe.path}.value", policy.denial(what, probe.kind, probe.target, value)))
        errors += _filter_denials(probe.filter, probe.kind, probe.target, policy)
        if probe.kind == "span":
            errors += _hook_denials(probe.start, policy) + _hook_denials(probe.end, policy)
        if errors:
            rejected.append(RejectedProbe(probe.index, probe.name, tuple(errors)))
        else:
            keep.append(probe)
    rejected.sort(key=lambda r: r.index)
    return dataclasses.replace(pset, probes=keep, rejected=rejected)


# Files were loaded here before documents.py: the names stay importable from spec.
MAX_DOCUMENT_BYTES, MAX_DOCUMENT_DEPTH, MAX_DOCUMENT_VALUES = (
    _documents.MAX_DOCUMENT_BYTES, _documents.MAX_DOCUMENT_DEPTH, _documents.MAX_DOCUMENT_VALUES)
DocumentError, load_documents = _documents.DocumentError, _documents.load_documents
