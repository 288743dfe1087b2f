"""The ProbeSet spec's schema: the single source of truth for the CRD, the operator and the agent.

`crd_schema()` strips it to the OpenAPI v3 subset a CRD accepts; validation.check_schema() validates
a value against it with a field path and a reason for every error; every default is written here once
(PROBE_DEFAULTS, SPEC_DEFAULTS) and read from here by the model (spec.py).
"""

from __future__ import annotations

import json
from typing import Any

PROBE_KINDS = ("kprobe", "kretprobe", "uprobe", "uretprobe", "tracepoint", "usdt")
KERNEL_KINDS = ("kprobe", "kretprobe")
USER_KINDS = ("uprobe", "uretprobe")
RETURN_KINDS = ("kretprobe", "uretprobe")
ATTRIBUTION_LABELS = ("node", "namespace", "pod", "container", "comm")
# Labels the agent sets itself; a groupBy field may not reuse them.
RESERVED_LABELS = ("probeset", "probe", "function", "le") + ATTRIBUTION_LABELS
ARG_FIELDS = tuple(f"arg{i}" for i in range(6))
# spec.scope: whose events a set may count. Node is granted per namespace by the cluster admin.
SCOPES = ("Namespace", "Node")

# Patterns. Only names matching these (and then resolved on the host) ever reach generated C.
NAME_RE = r"^[a-z][a-z0-9_]{0,62}$"
KERNEL_FUNC_RE = r"^[A-Za-z0-9_.*?]{1,128}$"
BINARY_RE = r"(/[A-Za-z0-9_+.\-]+)+|[A-Za-z0-9_+][A-Za-z0-9_+.\-]{0,127}"
USER_SYMBOL_RE = r"[A-Za-z_*?][A-Za-z0-9_.@$*?]{0,255}"
UPROBE_RE = rf"^({BINARY_RE}):({USER_SYMBOL_RE})$"
USDT_RE = rf"^({BINARY_RE}):([A-Za-z_][A-Za-z0-9_]{{0,127}}):([A-Za-z_][A-Za-z0-9_]{{0,127}})$"
TRACEPOINT_RE = r"^[A-Za-z0-9_*?]{1,64}:[A-Za-z0-9_*?]{1,128}$"
FIELD_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
COMM_RE = r"^[^\x00-\x1f\x7f]{1,15}$"      # the CRD's check; is_task_name() also counts bytes


def is_task_name(value: object) -> bool:
    """A name a task can have: 1 to 15 bytes of UTF-8 (TASK_COMM_LEN less the NUL), printable
    (no control, format or bidi character, no lone surrogate, which cannot be encoded at all)."""
    return isinstance(value, str) and value.isprintable() and 0 < len(value.encode("utf-8", "replace")) <= 15
# Values (value/aggregate/unit) and filters: the words they use, once.
AGGREGATES = ("sum", "histogram")
UNITS = ("bytes", "seconds")
FILTER_OPS = ("==", "!=", "<", "<=", ">", ">=", "&")
INT_TYPES = ("u8", "s8", "u16", "s16", "u32", "s32", "u64", "s64")
TASK_FIELDS = ("pid", "tid", "uid", "gid", "comm")
MAX_FILTER_ITEMS = 8
# attach: which hook; auto picks the cheapest that works (agent's hooks.py). Kernel-function and
# tracepoint modes apply only to their own probe kinds.
KERNEL_ATTACH = ("kprobe", "fentry")
TRACEPOINT_ATTACH = ("tracepoint", "raw_tracepoint")
ATTACH_MODES = ("auto",) + KERNEL_ATTACH + TRACEPOINT_ATTACH
SPAN_HOOK_KINDS = PROBE_KINDS       # what a start or end of a two-point probe attaches to
LABELS_FROM = ("start", "end")


def _target(kind: str, what: str, pattern: str, hint: str, unit: str = "function") -> dict:
    return {
        "type": "string",
        "pattern": pattern,
        "description": f"{kind}: {what}. A glob (`*`, `?`) attaches to every matching {unit}; each match "
                       f"is one value of the `function` label.",
        "x-probeset-hint": hint,
    }


def _comparison_properties() -> dict:
    return {
        "field": {"type": "string", "pattern": FIELD_RE,
                  "description": "What is compared: arg0..arg5, retval, a tracepoint field, pid (process), "
                                 "tid (thread), uid, gid or comm.",
                  "x-probeset-hint": "expected a field name: [A-Za-z_][A-Za-z0-9_]*"},
        "op": {"type": "string", "enum": list(FILTER_OPS),
               "description": "Comparison; & is true when field & value is not zero. comm takes == and != only."},
        "value": {"x-kubernetes-int-or-string": True,
                  "description": "The literal: an integer in the field's type (range-checked), a string for comm."},
        "type": {"type": "string", "enum": list(INT_TYPES),
                 "description": "The field's C type, for arguments and retval (default u64 for arguments, s64 "
                                "for retval); tracepoint fields and task fields have their own."},
    }


_COMPARISON_ITEM = {
    "type": "object",
    "description": "A comparison (field, op, value).",
    "properties": _comparison_properties(),
}
_GROUP_ITEM = {
    "type": "object",
    "description": "A comparison (field, op, value), or a group: all or any of comparisons.",
    "properties": {
        **_comparison_properties(),
        "all": {"type": "array", "maxItems": MAX_FILTER_ITEMS, "items": _COMPARISON_ITEM,
                "description": "True when every comparison is."},
        "any": {"type": "array", "maxItems": MAX_FILTER_ITEMS, "items": _COMPARISON_ITEM,
                "description": "True when at least one comparison is."},
    },
}
FILTER_SCHEMA: dict = {
    "type": "object",
    "description": "Record only events for which this predicate holds, evaluated in the kernel: one comparison "
                   "(field, op, value), or all/any of comparisons and groups (two levels at most).",
    "properties": {
        **_comparison_properties(),
        "all": {"type": "array", "maxItems": MAX_FILTER_ITEMS, "items": _GROUP_ITEM,
                "description": "True when every item is."},
        "any": {"type": "array", "maxItems": MAX_FILTER_ITEMS, "items": _GROUP_ITEM,
                "description": "True when at least one item is."},
    },
}

def _span_hook(which: str, what: str) -> dict:
    return {
        "type": "object",
        "required": ["key"],
        "description": what + " Exactly one of kprobe, kretprobe, uprobe, uretprobe, tracepoint, usdt (one "
                              "function, tracepoint or USDT probe, no glob), the key and an optional filter.",
        "properties": {
            **{kind: {"type": "string", "pattern": pattern, "description": f"{which} at this {kind}.",
                      "x-probeset-hint": hint}
               for kind, pattern, hint in (
                   ("kprobe", KERNEL_FUNC_RE, _KFUNC_HINT), ("kretprobe", KERNEL_FUNC_RE, _KFUNC_HINT),
                   ("uprobe", UPROBE_RE, _UFUNC_HINT), ("uretprobe", UPROBE_RE, _UFUNC_HINT),
                   ("tracepoint", TRACEPOINT_RE, "expected CATEGORY:NAME (letters, digits, _)"),
                   ("usdt", USDT_RE, _USDT_HINT))},
            "key": {"type": "array", "minItems": 1, "maxItems": 2,
                    "description": "What pairs an end with its start: tracepoint fields, arg0..arg5, retval (return "
                                   "probes), tid (the thread) or pid (the process); the same number at both ends, "
                                   "compared in order.",
                    "items": {"type": "string", "pattern": FIELD_RE,
                              "x-probeset-hint": "expected a field name: [A-Za-z_][A-Za-z0-9_]*"}},
            "filter": FILTER_SCHEMA,
        },
    }


_KFUNC_HINT = "expected a kernel function name or glob (letters, digits, _ . * ?)"
_UFUNC_HINT = "expected BINARY:SYMBOL, BINARY a library name (libc, ssl) or an absolute path"
_USDT_HINT = "expected BINARY:PROVIDER:NAME, BINARY a library name (libstdc++) or an absolute path"

PROBE_SCHEMA: dict = {
    "type": "object",
    "description": "One probe: a name and exactly one of kprobe, kretprobe, uprobe, uretprobe, tracepoint, usdt, "
                   "or start and end (a two-point latency probe).",
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
        "usdt": {
            "type": "string", "pattern": USDT_RE,
            "description": "usdt: count hits of the USDT (SystemTap SDT) probe PROVIDER:NAME in BINARY (readelf -n "
                           "lists them), written BINARY:PROVIDER:NAME; its arguments are arg0..arg5.",
            "x-probeset-hint": _USDT_HINT,
        },
        "latency": {
            "type": "boolean",
            "default": False,
            "description": "Pair entry and return per thread and nesting level (8 levels of a recursive or "
                           "re-entered function, each timed; deeper ones counted as missed) and record a latency "
                           "histogram (probeset_latency_seconds). Function probes only.",
        },
        "bucketsPerPowerOfTwo": {
            "type": "integer", "enum": [1, 2, 4], "default": 1,
            "description": "Latency histogram buckets exported per power of two, from 256 ns to 17 s (the "
                           "kernel records on the same grid). More buckets: finer quantiles, more series per "
                           "scrape and more map rows.",
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
            "type": "string", "enum": list(ATTACH_MODES), "default": "auto",
            "description": "The hook. kprobe/kretprobe: fentry/fexit (BPF trampoline, no instance pool), "
                           "kprobe, or auto (fentry where the node allows it, else kprobe). tracepoint: "
                           "raw_tracepoint (cheapest; sees no event field, so no groupBy, value or filter on "
                           "event fields), tracepoint (the classic, typed one), or auto (raw_tracepoint when "
                           "the probe reads no event field and the kernel has one by that name: never for "
                           "syscalls:*, else tracepoint). probeset_probe_attached's `via` says which.",
        },
        "maxFunctions": {
            "type": "integer", "minimum": 1, "maximum": 1000, "default": 128,
            "description": "Upper bound on functions or tracepoints a glob may match; more is an error.",
        },
        "value": {
            "type": "string", "pattern": FIELD_RE,
            "description": "Record a number per event, not just a count: arg0..arg5 (unsigned; entry probes), "
                           "retval (signed; return probes) or an integer tracepoint field. Summed or put in "
                           "a histogram (aggregate); a negative value is left out and counted in "
                           "probeset_missed_events_total{reason=\"negative_value\"}.",
            "x-probeset-hint": "expected arg0..arg5, retval or a tracepoint field name",
        },
        "aggregate": {
            "type": "string", "enum": list(AGGREGATES), "default": "sum",
            "description": "With value: sum (a counter, probeset_value[_UNIT]_total) or histogram (power-of-two "
                           "buckets, probeset_value[_UNIT]).",
        },
        "unit": {
            "type": "string", "enum": list(UNITS),
            "description": "With value: what it measures, named in the metric the Prometheus way. bytes: "
                           "probeset_value_bytes[_total]; seconds: the value is in nanoseconds and exported "
                           "in seconds, probeset_value_seconds[_total]. Omitted: probeset_value[_total].",
        },
        "retvalLabel": {
            "type": "string", "enum": ["number", "errno"], "default": "number",
            "description": "How groupBy retval (on a tracepoint: its field ret) is shown: number, or errno (a "
                           "negative value as the error's name, -2 -> ENOENT; zero and positive values stay numbers).",
        },
        "filter": FILTER_SCHEMA,
        "start": _span_hook("start", "Where the measured interval starts (a two-point latency probe, with end)."),
        "end": _span_hook("end", "Where it ends: the first end event whose key equals a pending start's."),
        "labelsFrom": {
            "type": "string", "enum": list(LABELS_FROM), "default": "start",
            "description": "With start/end: whose task labels the sample (pod, container, comm) and passes the "
                           "set's pod selection: the task running at the start event or at the end event. In a "
                           "namespaced set (scope Namespace) both tasks must pass it.",
        },
        "maxPending": {
            "type": "integer", "minimum": 1, "maximum": 65536, "default": 10240,
            "description": "With start/end: starts waiting for their end, at most; a start that finds no room "
                           "is counted in probeset_missed_events_total{reason=\"pending_full\"}.",
        },
        "maxAgeSeconds": {
            "type": "integer", "minimum": 1, "maximum": 3600, "default": 10,
            "description": "With start/end: a start older than this is dropped by the agent (every few "
                           "seconds) and counted in probeset_missed_events_total{reason=\"start_expired\"}.",
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
            "description": "Tolerations for the agent pods, as in a Pod spec; only where the cluster admin lets "
                           "ProbeSets add tolerations (Helm agent.allowProbeSetTolerations), else the set is "
                           "invalid: where privileged agents run is the admin's choice.",
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
NAMESPACE_RE = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"        # a DNS label, as the API server requires

# Each default, once: what the schema says (and the API server applies) is what the model uses.
PROBE_DEFAULTS: dict[str, Any] = {k: v["default"] for k, v in PROBE_SCHEMA["properties"].items() if "default" in v}
SPEC_DEFAULTS: dict[str, Any] = {k: v["default"] for k, v in SPEC_SCHEMA["properties"].items() if "default" in v}


def crd_schema() -> dict:
    """SPEC_SCHEMA as a CRD openAPIV3Schema accepts it (our x-probeset-* hints removed)."""
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if not k.startswith("x-probeset-")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node
    return strip(SPEC_SCHEMA)


def reference_markdown() -> str:
    """The field reference table of docs/probeset.md, generated from SCHEMA (a test keeps them equal)."""
    rows = ["| field | type | default | bounds | description |", "|---|---|---|---|---|"]

    def type_of(node: dict) -> str:
        if node.get("type") == "array":
            return f"[]{type_of(node.get('items', {}))}"
        if node.get("x-kubernetes-int-or-string"):
            return "integer \\| string"
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
