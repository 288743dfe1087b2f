"""The ProbeSet model: one schema shared by the CRD, the operator and the agent.

SCHEMA below is the single source of truth. `crd_schema()` strips it to the OpenAPI v3 subset a
CRD accepts; `validate()` checks a document against it (field path + reason for every error) and
then adds the rules a schema cannot express (exactly one probe kind, unique names, ...).

Static validation only: whether a symbol or tracepoint exists on a host is decided later
(agent/resolve.py), per probe, so one bad probe never stops the others.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

API_GROUP = "probeset.io"
API_VERSION = "v1alpha1"
KIND = "ProbeSet"

PROBE_KINDS = ("kprobe", "kretprobe", "uprobe", "uretprobe", "tracepoint")
KERNEL_KINDS = ("kprobe", "kretprobe")
USER_KINDS = ("uprobe", "uretprobe")
RETURN_KINDS = ("kretprobe", "uretprobe")
ATTRIBUTION_LABELS = ("node", "namespace", "pod", "container", "comm")
# Labels the agent sets itself; a groupBy field may not reuse them.
RESERVED_LABELS = ("probeset", "probe", "function", "le") + ATTRIBUTION_LABELS
ARG_FIELDS = tuple(f"arg{i}" for i in range(6))
# spec.scope: whose events a set may count. Node is granted per namespace by the cluster admin.
SCOPES = ("Namespace", "Node")
NODE_WIDE_NAMESPACES_ENV = "PROBESET_NODE_WIDE_NAMESPACES"

# Patterns. Only names matching these (and then resolved on the host) ever reach generated C.
NAME_RE = r"^[a-z][a-z0-9_]{0,62}$"
KERNEL_FUNC_RE = r"^[A-Za-z0-9_.*?]{1,128}$"
BINARY_RE = r"(/[A-Za-z0-9_+.\-]+)+|[A-Za-z0-9_+][A-Za-z0-9_+.\-]{0,127}"
USER_SYMBOL_RE = r"[A-Za-z_*?][A-Za-z0-9_.@$*?]{0,255}"
UPROBE_RE = rf"^({BINARY_RE}):({USER_SYMBOL_RE})$"
TRACEPOINT_RE = r"^[A-Za-z0-9_*?]{1,64}:[A-Za-z0-9_*?]{1,128}$"
FIELD_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
COMM_RE = r"^[^\x00-\x1f\x7f]{1,15}$"

def _target(kind: str, what: str, pattern: str, hint: str, unit: str = "function") -> dict:
    return {
        "type": "string",
        "pattern": pattern,
        "description": f"{kind}: {what}. A glob (`*`, `?`) attaches to every matching {unit}; each match "
                       f"is one value of the `function` label.",
        "x-probeset-hint": hint,
    }


_KFUNC_HINT = "expected a kernel function name or glob (letters, digits, _ . * ?)"
_UFUNC_HINT = "expected BINARY:SYMBOL, BINARY a library name (libc, ssl) or an absolute path"

PROBE_SCHEMA: dict = {
    "type": "object",
    "description": "One probe: a name and exactly one of kprobe, kretprobe, uprobe, uretprobe, tracepoint.",
    "required": ["name"],
    "properties": {
        "name": {
            "type": "string",
            "pattern": NAME_RE,
            "description": "Value of the `probe` label; lowercase identifier, unique in the set.",
            "x-probeset-hint": "expected a lowercase identifier: [a-z][a-z0-9_]*, at most 63 characters",
        },
        "kprobe": _target("kprobe", "count calls of this kernel function (entry)", KERNEL_FUNC_RE, _KFUNC_HINT),
        "kretprobe": _target("kretprobe", "count returns of this kernel function; groupBy retval splits them",
                             KERNEL_FUNC_RE, _KFUNC_HINT),
        "uprobe": _target("uprobe", "count calls of SYMBOL in BINARY (a library name such as libc, or an "
                                    "absolute path), written BINARY:SYMBOL", UPROBE_RE, _UFUNC_HINT, "symbol"),
        "uretprobe": _target("uretprobe", "count returns of SYMBOL in BINARY, written BINARY:SYMBOL",
                             UPROBE_RE, _UFUNC_HINT, "symbol"),
        "tracepoint": _target("tracepoint", "count hits of the tracepoint CATEGORY:NAME, as listed under "
                                            "/sys/kernel/tracing/events", TRACEPOINT_RE,
                              "expected CATEGORY:NAME (letters, digits, _ * ?)", "tracepoint"),
        "latency": {
            "type": "boolean",
            "default": False,
            "description": "Pair entry and return per thread and record a latency histogram "
                           "(probeset_latency_seconds). Function probes only.",
        },
        "bucketsPerPowerOfTwo": {
            "type": "integer", "enum": [1, 2, 4], "default": 1,
            "description": "Latency histogram buckets exported per power of two, from 256 ns to 17 s (the "
                           "kernel always keeps 4). More buckets: finer quantiles, more series per scrape.",
        },
        "groupBy": {
            "type": "array",
            "maxItems": 4,
            "description": "Extra labels from the event: tracepoint field names, arg0..arg5 for function "
                           "probes, retval for return probes, comm for the task name.",
            "items": {"type": "string", "pattern": FIELD_RE,
                      "x-probeset-hint": "expected a field name: [A-Za-z_][A-Za-z0-9_]*"},
        },
        "pid": {
            "type": "integer", "minimum": 1, "maximum": 4194304,
            "description": "Count only events from this process id (tgid).",
        },
        "comm": {
            "type": "string", "pattern": COMM_RE,
            "description": "Count only events from tasks with this name (exact, at most 15 characters).",
            "x-probeset-hint": "expected 1 to 15 printable characters",
        },
        "maxActive": {
            "type": "integer", "minimum": 1, "maximum": 4096,
            "description": "kretprobe instances per probed function (kprobe attach path only). Returns "
                           "missed for lack of instances are counted in probeset_missed_events_total.",
        },
        "attach": {
            "type": "string", "enum": ["auto", "kprobe", "fentry"], "default": "auto",
            "description": "Kernel attach mechanism for kprobe/kretprobe: fentry/fexit (BPF trampoline, no "
                           "instance pool), kprobe, or auto (fentry where the node allows it, else kprobe).",
        },
        "maxFunctions": {
            "type": "integer", "minimum": 1, "maximum": 1000, "default": 128,
            "description": "Upper bound on functions or tracepoints a glob may match; more is an error.",
        },
    },
}

LABEL_SELECTOR_SCHEMA: dict = {
    "type": "object",
    "description": "Count only events from pods matching this selector (in-kernel cgroup filter), within "
                   "spec.scope: this namespace's pods, or every pod on the node for scope Node.",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "Pod labels that must all match."},
        "matchExpressions": {
            "type": "array",
            "description": "Set-based requirements, all of which must match.",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string", "description": "Pod label key."},
                    "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"],
                                 "description": "How the key's value relates to values."},
                    "values": {"type": "array", "items": {"type": "string"},
                               "description": "Values for In and NotIn; empty for Exists and DoesNotExist."},
                },
            },
        },
    },
}

SPEC_SCHEMA: dict = {
    "type": "object",
    "required": ["probes"],
    "description": "What to probe, where, and how to label the resulting metrics.",
    "properties": {
        "probes": {"type": "array", "minItems": 1, "maxItems": 64, "items": PROBE_SCHEMA,
                   "description": "The probes of this set, compiled into one BPF program per node."},
        "labels": {
            "type": "array", "maxItems": len(ATTRIBUTION_LABELS),
            "items": {"type": "string", "enum": list(ATTRIBUTION_LABELS)},
            "default": ["node", "namespace", "pod", "container"],
            "description": "Attribution labels on every series: who caused the event.",
        },
        "maxSeriesPerProbe": {
            "type": "integer", "minimum": 1, "maximum": 100000, "default": 5000,
            "description": "Cardinality budget per probe. Events beyond it are folded into one series with "
                           "function=\"__overflow__\" and counted by probeset_series_overflow_total.",
        },
        "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"},
                         "description": "Node labels selecting where agents run."},
        "tolerations": {
            "type": "array",
            "description": "Tolerations for the agent pods, as in a Pod spec.",
            "items": {
                "type": "object",
                "properties": {
                    "key": {"type": "string", "description": "Taint key to tolerate."},
                    "operator": {"type": "string", "enum": ["Exists", "Equal"], "description": "Match operator."},
                    "value": {"type": "string", "description": "Taint value for Equal."},
                    "effect": {"type": "string", "enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"],
                               "description": "Taint effect to tolerate; empty means all."},
                    "tolerationSeconds": {"type": "integer", "minimum": 0,
                                          "description": "How long a NoExecute taint is tolerated."},
                },
            },
        },
        "scope": {
            "type": "string", "enum": list(SCOPES), "default": "Namespace",
            "description": "Namespace: only events of pods in this ProbeSet's namespace are counted (in-kernel "
                           "cgroup filter), including kernel probes. Node: host processes and every pod on the "
                           "node; allowed only for ProbeSets in the namespaces the cluster admin lists "
                           "(operator setting nodeWideNamespaces), so RBAC on those namespaces governs "
                           "node-wide observation. Standalone `probeset run` is always node-wide.",
        },
        "podSelector": LABEL_SELECTOR_SCHEMA,
    },
}

METADATA_NAME_RE = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"


def crd_schema() -> dict:
    """SPEC_SCHEMA as a CRD openAPIV3Schema accepts it (our x-probeset-* hints removed)."""
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if not k.startswith("x-probeset-")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node
    return strip(SPEC_SCHEMA)


# ---------------------------------------------------------------------------------------------
# Validation


@dataclass(frozen=True)
class FieldError:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class SpecError(ValueError):
    """A ProbeSet that cannot be used at all (set-level errors)."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def _type_ok(value: Any, typ: str) -> bool:
    if typ == "object":
        return isinstance(value, dict)
    if typ == "array":
        return isinstance(value, list)
    if typ == "string":
        return isinstance(value, str)
    if typ == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if typ == "boolean":
        return isinstance(value, bool)
    raise AssertionError(typ)


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else '"' + value.encode("unicode_escape").decode() + '"'
    return text if len(text) <= 80 else text[:77] + "..."


def check_schema(value: Any, schema: dict, path: str) -> list[FieldError]:
    """Validate value against the schema subset used here; one error per offending field."""
    typ = schema.get("type")
    if typ and not _type_ok(value, typ):
        return [FieldError(path, f"expected {typ}, got {type(value).__name__} {_show(value)}")]
    errors: list[FieldError] = []
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(str(v) for v in schema["enum"])
        errors.append(FieldError(path, f"{_show(value)} is not one of: {allowed}"))
    if "pattern" in schema and not re.fullmatch(schema["pattern"], value):
        hint = schema.get("x-probeset-hint", f"must match {schema['pattern']}")
        errors.append(FieldError(path, f"{_show(value)} is not valid: {hint}"))
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(FieldError(path, f"{value} is below the minimum {schema['minimum']}"))
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(FieldError(path, f"{value} is above the maximum {schema['maximum']}"))
    if typ == "array":
        if len(value) < schema.get("minItems", 0):
            errors.append(FieldError(path, f"needs at least {schema['minItems']} item(s), got {len(value)}"))
        if len(value) > schema.get("maxItems", len(value)):
            errors.append(FieldError(path, f"at most {schema['maxItems']} items allowed, got {len(value)}"))
        if "items" in schema:
            for i, item in enumerate(value):
                errors += check_schema(item, schema["items"], f"{path}[{i}]")
    if typ == "object":
        props = schema.get("properties")
        for name in schema.get("required", []):
            if name not in value:
                errors.append(FieldError(f"{path}.{name}", "required field is missing"))
        for name, item in value.items():
            if not isinstance(name, str):
                errors.append(FieldError(path, f"key {_show(name)} is not a string"))
            elif props is not None and name in props:
                errors += check_schema(item, props[name], f"{path}.{name}")
            elif "additionalProperties" in schema:
                errors += check_schema(item, schema["additionalProperties"], f"{path}.{name}")
            elif props is not None:
                errors.append(FieldError(f"{path}.{name}", "unknown field"))
    return errors


@dataclass(frozen=True)
class Probe:
    """One validated probe. `kind` is which of PROBE_KINDS it is; `target` that field's value."""

    index: int
    name: str
    kind: str
    target: str
    latency: bool = False
    group_by: tuple[str, ...] = ()
    pid: int | None = None
    comm: str | None = None
    max_active: int | None = None
    attach: str = "auto"
    max_functions: int = 128
    buckets_per_power_of_two: int = 1

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
    scope: str = "Namespace"
    # Probes rejected by static validation: reported, never attached; the rest still run.
    rejected: list[RejectedProbe] = field(default_factory=list)
    generation: int | None = None


def _probe_semantic_errors(raw: dict, path: str) -> list[FieldError]:
    errors = []
    kinds = [k for k in PROBE_KINDS if k in raw]
    if len(kinds) != 1:
        found = ", ".join(kinds) if kinds else "none"
        errors.append(FieldError(path, f"exactly one of {', '.join(PROBE_KINDS)} is required (found: {found})"))
        return errors
    kind = kinds[0]
    if raw.get("latency") and kind == "tracepoint":
        errors.append(FieldError(f"{path}.latency", "latency needs a function probe (kprobe, kretprobe, "
                                                    "uprobe, uretprobe), not a tracepoint"))
    if "maxActive" in raw and kind not in KERNEL_KINDS:
        errors.append(FieldError(f"{path}.maxActive", f"only applies to kprobe/kretprobe, not {kind}"))
    if "maxActive" in raw and kind == "kprobe" and not raw.get("latency"):
        errors.append(FieldError(f"{path}.maxActive", "only applies to return probes (kretprobe, or latency: true)"))
    # Value checks, not presence checks: the API server fills in schema defaults (attach: auto, ...).
    if raw.get("bucketsPerPowerOfTwo", 1) != 1 and not raw.get("latency"):
        errors.append(FieldError(f"{path}.bucketsPerPowerOfTwo", "only applies with latency: true"))
    if raw.get("attach", "auto") != "auto" and kind not in KERNEL_KINDS:
        errors.append(FieldError(f"{path}.attach", f"only applies to kprobe/kretprobe, not {kind}"))
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
        errors.append(FieldError("apiVersion", f"expected {API_GROUP}/{API_VERSION}, got {_show(doc.get('apiVersion'))}"))
    if doc.get("kind") != KIND:
        errors.append(FieldError("kind", f"expected {KIND}, got {_show(doc.get('kind'))}"))
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not re.fullmatch(METADATA_NAME_RE, name):
        errors.append(FieldError("metadata.name", f"{_show(name)} is not a valid name (lowercase DNS subdomain)"))
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
            probe_errors.append(FieldError(f"{path}.name", f'duplicate name "{pname}" (also spec.probes[{seen[pname]}])'))
        elif isinstance(pname, str):
            seen[pname] = i
        if probe_errors:
            label = pname if isinstance(pname, str) and re.fullmatch(NAME_RE, pname) else path
            rejected.append(RejectedProbe(i, label, tuple(probe_errors)))
            continue
        kind = next(k for k in PROBE_KINDS if k in raw)
        probes.append(Probe(
            index=i, name=raw["name"], kind=kind, target=raw[kind],
            latency=bool(raw.get("latency", False)),
            group_by=tuple(raw.get("groupBy") or ()),
            pid=raw.get("pid"), comm=raw.get("comm"),
            max_active=raw.get("maxActive"), attach=raw.get("attach", "auto"),
            max_functions=raw.get("maxFunctions", 128),
            buckets_per_power_of_two=raw.get("bucketsPerPowerOfTwo", 1),
        ))
    labels = tuple(dict.fromkeys(spec.get("labels", SPEC_SCHEMA["properties"]["labels"]["default"])))
    return ProbeSet(
        name=name, namespace=meta.get("namespace"), probes=probes, labels=labels,
        max_series_per_probe=spec.get("maxSeriesPerProbe", 5000),
        node_selector=dict(spec.get("nodeSelector") or {}),
        tolerations=list(spec.get("tolerations") or []),
        pod_selector=spec.get("podSelector"),
        scope=spec.get("scope", "Namespace"),
        rejected=rejected,
        generation=meta.get("generation"),
    )


def node_wide_namespaces(value: str | None, default: str) -> frozenset[str]:
    """The namespaces whose ProbeSets may use scope Node, from a comma-separated list (the
    PROBESET_NODE_WIDE_NAMESPACES setting); empty or unset means just `default` (the operator's)."""
    names = frozenset(n.strip() for n in (value or "").split(",") if n.strip())
    return names or frozenset({default})


def scope_error(pset: ProbeSet, allowed: frozenset[str]) -> FieldError | None:
    """Why this set may not have its scope, or None. Scope Node (host processes and every pod on the
    node) is reserved to the admin-listed namespaces `allowed`; a standalone file (no namespace) is
    not a cluster object and is always node-wide. The operator and the agent both apply this."""
    if pset.scope != "Node" or pset.namespace is None or pset.namespace in allowed:
        return None
    return FieldError("spec.scope", f"Node (host processes and every pod on the node) is allowed only for "
                                    f"ProbeSets in namespace(s) {', '.join(sorted(allowed))}; this ProbeSet "
                                    f"is in {pset.namespace}: remove spec.scope or ask the cluster admin")


def load_documents(text: str) -> list[Any]:
    """The YAML documents of a file (empty documents skipped)."""
    import yaml
    return [d for d in yaml.safe_load_all(text) if d is not None]


def reference_markdown() -> str:
    """The field reference table of docs/probeset.md, generated from SCHEMA (a test keeps them equal)."""
    rows = ["| field | type | default | bounds | description |", "|---|---|---|---|---|"]

    def type_of(node: dict) -> str:
        if node.get("type") == "array":
            return f"[]{type_of(node.get('items', {}))}"
        if "enum" in node:
            return " \\| ".join(f"`{v}`" for v in node["enum"])
        return node.get("type", "")

    def walk(node: dict, path: str) -> None:
        bounds = []
        if "minimum" in node or "maximum" in node:
            bounds.append(f"{node.get('minimum', '')}..{node.get('maximum', '')}")
        if "maxItems" in node:
            bounds.append(f"≤ {node['maxItems']} items")
        if "minItems" in node:
            bounds.append(f"≥ {node['minItems']} items")
        if "pattern" in node:
            bounds.append(node.get("x-probeset-hint", "pattern"))
        default = node.get("default")
        default_text = "" if default is None else f"`{json.dumps(default)}`"
        rows.append(f"| `{path}` | {type_of(node)} | {default_text} | {'; '.join(bounds)} | "
                    f"{node.get('description', '')} |")
        items = node.get("items")
        target = items if isinstance(items, dict) and items.get("type") == "object" else node
        for name, sub in target.get("properties", {}).items():
            walk(sub, f"{path}{'[]' if target is items else ''}.{name}")

    for name, sub in SPEC_SCHEMA["properties"].items():
        walk(sub, f"spec.{name}")
    return "\n".join(rows) + "\n"
