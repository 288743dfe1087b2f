"""Resolve validated probes against this host: which functions, files, offsets and tracepoint fields
they mean, and by which mechanism each attaches. A probe that cannot resolve gets an error and is
left out; the others go on."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Callable

from probeset_api.filters import Filter, check_literal, comparisons, describe, int_type
from probeset_api.schema import ARG_FIELDS, KERNEL_KINDS, TASK_FIELDS, USER_KINDS
from probeset_api.spec import Probe, ProbeSet, ValuePolicy
from probeset_api.values import errno_label, errno_symbols, metric_name

from . import host
from .features import Features
from .hooks import choose_tracepoint_hook, event_fields_read, kernel_hook_reason, raw_tracepoint_exists
from .taskcontext import kernel_sited, refusal, task_context
from .tenantfields import check_tenant_fields, fields_used

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupField:
    """One groupBy label and where its value comes from at a given site."""

    label: str
    source: str                 # "arg" | "retval" | "comm" | "tp_int" | "tp_str" | "tp_data_loc" | "usdt_arg"
    index: int = 0              # argN
    offset: int = 0             # tracepoint field offset
    size: int = 8               # tracepoint integer size
    signed: bool = False
    arg: object = None          # usdt_arg: its usdt.UsdtArg (where the argument is at this location)

    @property
    def is_string(self) -> bool:
        return self.source in ("comm", "tp_str", "tp_data_loc")


@dataclass(frozen=True)
class Site:
    """One attach point: a function (or tracepoint) of a probe, entered or returned from."""

    func_index: int
    function: str               # the `function` label value
    mechanism: str              # kprobe kretprobe fentry fexit uprobe uretprobe tracepoint
    role: str                   # "count": record here; "start": remember entry time; "finish": pair and record
    kernel_function: str = ""   # kprobe/fentry target
    binary: str = ""            # uprobe: BINARY as the probe names it (each copy of it is attached)
    path: str = ""              # uprobe: the node's copy, attached at start ("" if not observed)
    address: int = 0            # uprobe: the function's address in that copy
    tracepoint: str = ""        # CATEGORY:NAME
    fields: tuple[GroupField, ...] = ()   # groupBy sources at this site, in groupBy order
    value: GroupField | None = None       # the probe's value at this site (value probes)
    filter_fields: tuple[GroupField, ...] = ()   # what the probe's filter compares, at this site
    filter: Filter | None = None          # a span's start or end filter (other probes: probe.filter)
    key_fields: tuple[GroupField, ...] = ()      # a span's key at this site (spans.py)
    semaphore: int = 0                    # usdt: the probe's semaphore (virtual address in the file), 0: none
    usdt_location: int = -1               # usdt: which place of the probe in the file (each its own C function)
    usdt_args: tuple[str, ...] = ()       # usdt: the argument specs the C was made from (copies must match)


@dataclass
class ResolvedProbe:
    probe: Probe
    via: str = ""                               # kprobe | fentry | uprobe | tracepoint | raw_tracepoint | ...
    via_reason: str = ""                        # why that hook (hooks.py), for `probeset check`
    functions: list[str] = field(default_factory=list)
    sites: list[Site] = field(default_factory=list)
    string_labels: frozenset[str] = frozenset()  # groupBy labels holding strings (others are integers)
    signed_labels: frozenset[str] = frozenset()
    symbols: dict[str, dict[int, str]] = field(default_factory=dict)  # label -> value names
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def id(self) -> int:
        return self.probe.index

    def describe_sites(self) -> list[str]:
        seen, lines = set(), []
        for s in self.sites:
            if s.usdt_location >= 0 and not s.path:
                text = f"usdt {s.binary}:{s.function} in each selected pod's copy"
            elif s.usdt_location >= 0:
                text = f"usdt {s.path}:{s.function} at {s.address:#x}" + (
                    f" (semaphore {s.semaphore:#x})" if s.semaphore else "")
            elif s.mechanism in USER_KINDS and not s.path:
                text = f"{s.mechanism} {s.binary}:{s.function} in each selected pod's copy"
            elif s.mechanism in USER_KINDS:
                text = f"{s.mechanism} {s.path}:{s.function} at offset {s.address:#x}"
            elif s.mechanism == "tracepoint":
                text = f"tracepoint {s.tracepoint}"
            elif s.mechanism == "raw_tracepoint":
                text = f"raw_tracepoint {s.tracepoint.partition(':')[2]} (of {s.tracepoint})"
            else:
                text = f"{s.mechanism} {s.kernel_function}"
            if s.role.startswith("span_"):
                hook = self.probe.start if s.role == "span_start" else self.probe.end
                text = f"{s.role[5:]} {text} key ({', '.join(hook.key)})" + (
                    f" filter {describe(hook.filter)}" if hook.filter is not None else "")
            if text not in seen:
                seen.add(text)
                lines.append(text)
        value = next((s.value for s in self.sites if s.value is not None), None)
        if value is not None:
            p = self.probe
            kind = "signed, negatives left out" if value.signed else "unsigned"
            lines.append(f"value {value.label} ({kind}) -> {metric_name(p.unit, p.aggregate)}")
        if self.probe.filter is not None:
            lines.append(f"filter {describe(self.probe.filter)}")
        return lines


def _arg_field(label: str) -> GroupField:
    if label == "comm":
        return GroupField(label, "comm")
    if label == "retval":
        return GroupField(label, "retval", signed=True)
    return GroupField(label, "arg", index=ARG_FIELDS.index(label))


def _tracepoint_field(fmt: host.TracepointFormat, label: str) -> GroupField:
    if label == "comm":
        return GroupField(label, "comm")
    f = fmt.fields.get(label)
    if f is None:
        known = ", ".join(sorted(fmt.fields)) or "(none)"
        raise host.HostError(f"tracepoint {fmt.full_name} has no field {label!r} (fields: {known})")
    if f.is_data_loc:
        return GroupField(label, "tp_data_loc", offset=f.offset)
    if f.is_string:
        return GroupField(label, "tp_str", offset=f.offset, size=f.size)
    if f.is_integer:
        return GroupField(label, "tp_int", offset=f.offset, size=f.size, signed=f.signed)
    raise host.HostError(f"tracepoint {fmt.full_name} field {label!r} ({f.ctype}, {f.size} bytes) "
                         "cannot be a label: only integers and strings can")


def _too_many(probe: Probe, what: str, count: int, sample: list[str]) -> str:
    return (f"{probe.kind} {probe.target!r} matches {count} {what}, more than maxFunctions={probe.max_functions}; "
            f"narrow the glob or raise maxFunctions (first matches: {', '.join(sample[:5])})")


def _tracepoint_value(p: Probe, fmt: host.TracepointFormat) -> GroupField:
    f = fmt.fields.get(p.value)
    if f is None:
        known = ", ".join(sorted(fmt.fields)) or "(none)"
        raise host.HostError(f"{p.path}.value: tracepoint {fmt.full_name} has no field {p.value!r} (fields: {known})")
    if f.is_string or f.is_data_loc or not f.is_integer or "*" in f.ctype:
        raise host.HostError(f"{p.path}.value: field {p.value!r} of {fmt.full_name} is {f.ctype} ({f.size} bytes); "
                             "a value must be an integer field")
    return GroupField(p.value, "tp_int", offset=f.offset, size=f.size, signed=f.signed)


def _function_value(p: Probe) -> GroupField | None:
    return None if p.value is None else _arg_field(p.value)


def _filter_fields(flt: Filter | None, fmt: host.TracepointFormat | None = None) -> tuple[GroupField, ...]:
    """The fields a filter compares (each once), with a tracepoint's fields typed and the literals
    compared with them range-checked against those types. On a tracepoint, an event field wins
    over the task field of the same name (sched_wakeup's pid is the woken task's)."""
    out: dict[str, GroupField] = {}
    for c in comparisons(flt):
        if c.field in TASK_FIELDS and (fmt is None or c.field not in fmt.fields):
            gf = GroupField(c.field, c.field)
        elif c.field in ARG_FIELDS or c.field == "retval":
            gf = _arg_field(c.field)
        else:
            f = fmt.fields.get(c.field)
            if f is None:
                known = ", ".join(sorted(fmt.fields)) or "(none)"
                raise host.HostError(f"{c.path}.field: tracepoint {fmt.full_name} has no field {c.field!r} "
                                     f"(fields: {known})")
            if not f.is_integer:
                raise host.HostError(f"{c.path}.field: field {c.field!r} of {fmt.full_name} is {f.ctype}; only "
                                     "integer fields (and comm) can be compared")
            bad = check_literal(c.value, int_type(f.size, f.signed), c.field, c.path)
            if bad:
                raise host.HostError(str(bad))
            gf = GroupField(c.field, "tp_int", offset=f.offset, size=f.size, signed=f.signed)
        out.setdefault(c.field, gf)
    return tuple(out.values())


def _resolve_tracepoint(rp: ResolvedProbe, policy: ValuePolicy) -> None:
    p = rp.probe
    names = host.match_tracepoints(p.target)
    if not names:
        raise host.HostError(f"no tracepoint matches {p.target!r} under {host.tracefs()}/events")
    if len(names) > p.max_functions:
        raise host.HostError(_too_many(p, "tracepoints", len(names), names))
    kinds: dict[str, tuple[bool, bool]] = {}
    for i, name in enumerate(names):
        fmt = host.tracepoint_format(name)
        fields = tuple(_tracepoint_field(fmt, label) for label in p.group_by)
        value = _tracepoint_value(p, fmt) if p.value is not None else None
        if policy.restricted:
            check_tenant_fields(fields_used(p), fmt, policy)
        for gf in fields:
            shape = (gf.is_string, gf.signed)
            if kinds.setdefault(gf.label, shape) != shape:
                raise host.HostError(f"groupBy field {gf.label!r} has different types in the matched "
                                     f"tracepoints (e.g. {name}); narrow the glob")
            if gf.label in fmt.symbols:
                rp.symbols.setdefault(gf.label, {}).update(fmt.symbols[gf.label])
        rp.functions.append(name)
        if value is not None and kinds.setdefault("\0value", (False, value.signed)) != (False, value.signed):
            raise host.HostError(f"{p.path}.value: field {p.value!r} is signed in some matched tracepoints and "
                                 f"unsigned in others (e.g. {name}); narrow the glob")
        rp.sites.append(Site(i, name, "tracepoint", "count", tracepoint=name, fields=fields, value=value,
                             filter_fields=_filter_fields(p.filter, fmt)))
    read = {f for s in rp.sites for f in event_fields_read(p.group_by, p.value,
                                                           {gf.label: gf.source for gf in s.filter_fields})}
    choice = choose_tracepoint_hook(p.attach, names, sorted(read), raw_tracepoint_exists)
    if choice.mechanism is None:
        raise host.HostError(f"{p.path}.attach: {choice.reason}")
    rp.sites = [dataclasses.replace(s, mechanism=choice.mechanism) for s in rp.sites]
    rp.via, rp.via_reason = choice.mechanism, choice.reason


@dataclass(frozen=True)
class UserTargets:
    """Where uprobes go. Standalone: the host's file only. Cluster mode: the node's copy (through
    `host_root`) when host processes are observed, and each selected container's copy, attached as
    pods come (`copies(binary)` lists the copies present now; used to expand a glob symbol when the
    node's copy is not observed)."""

    host_root: str | None = "/"      # None: the node's files cannot be read (host.node_root)
    observe_host: bool = True
    copies: Callable[[str], list[str]] | None = None


def _resolve_user(rp: ResolvedProbe, targets: UserTargets) -> None:
    p = rp.probe
    if targets.observe_host and targets.host_root is None:
        raise host.HostError(f"{p.binary}: the node's file system is not readable by this agent (see its log), so "
                             "the node's own processes cannot be probed")
    path = host.find_binary(p.binary, targets.host_root) if targets.observe_host else ""
    if not path and host.is_glob(p.symbol):
        copies = targets.copies(p.binary) if targets.copies else []
        if not copies:
            raise host.HostError(f"symbol glob {p.symbol!r} needs a copy of {p.binary} to expand, and no selected "
                                 "pod has one yet: name the function exactly, or apply the ProbeSet once the pods run")
        source = copies[0]
    else:
        source = path
    if source:
        found = host.elf_functions(source, p.symbol)
        if not found:
            what = "symbol matches" if host.is_glob(p.symbol) else "function symbol"
            raise host.HostError(f"{source}: no {what} {p.symbol!r}")
    else:
        found = [(p.symbol, 0)]   # placed in each container's copy as its pods come
    if len(found) > p.max_functions:
        raise host.HostError(_too_many(p, "functions", len(found), [n for n, _ in found]))
    fields = tuple(_arg_field(label) for label in p.group_by)
    for i, (name, addr) in enumerate(found):
        rp.functions.append(name)
        common = dict(function=name, binary=p.binary, path=path, address=addr if path else 0, fields=fields,
                      value=_function_value(p), filter_fields=_filter_fields(p.filter))
        if p.latency:
            rp.sites.append(Site(i, mechanism="uprobe", role="start", **common))
            rp.sites.append(Site(i, mechanism="uretprobe", role="finish", **common))
        else:
            rp.sites.append(Site(i, mechanism=p.kind, role="count", **common))
    rp.via = "uprobe"


def _resolve_kernel(rp: ResolvedProbe, features: Features) -> None:
    p = rp.probe
    names = host.match_kernel_functions(p.target)
    if not names:
        what = "function matches" if host.is_glob(p.target) else "traceable kernel function"
        variants = [] if host.is_glob(p.target) else host.match_kernel_functions(p.target + ".*")[:3]
        hint = f"; compiler-renamed copies exist: {', '.join(variants)}" if variants else ""
        raise host.HostError(f"no {what} {p.target!r} in {host.kernel_function_source()}{hint}")
    if len(names) > p.max_functions:
        raise host.HostError(_too_many(p, "functions", len(names), names))
    mechanism, reason = features.choose_kernel_attach(p.attach)
    if mechanism is None:
        raise host.HostError(reason)
    if mechanism == "fentry":
        bad = [n for n in names if not n.isidentifier()]
        if bad and p.attach == "fentry":
            raise host.HostError(f"fentry cannot attach to {', '.join(bad[:3])} (compiler-renamed functions); "
                                 "use attach: kprobe")
        if bad:
            mechanism = "kprobe" if features.kprobe.ok else None
            if mechanism is None:
                raise host.HostError(f"fentry cannot attach to {', '.join(bad[:3])} and kprobes are not supported")
    fields = tuple(_arg_field(label) for label in p.group_by)
    entry, exit_ = ("fentry", "fexit") if mechanism == "fentry" else ("kprobe", "kretprobe")
    for i, name in enumerate(names):
        rp.functions.append(name)
        common = dict(function=name, kernel_function=name, fields=fields, value=_function_value(p),
                      filter_fields=_filter_fields(p.filter))
        if p.latency:
            rp.sites.append(Site(i, mechanism=entry, role="start", **common))
            rp.sites.append(Site(i, mechanism=exit_, role="finish", **common))
        else:
            rp.sites.append(Site(i, mechanism=exit_ if p.is_return else entry, role="count", **common))
    rp.via = mechanism
    rp.via_reason = kernel_hook_reason(p.attach, mechanism, "" if features.fentry.ok else features.fentry.reason)


def resolve_probe(probe: Probe, features: Features | None, targets: UserTargets = UserTargets(),
                  policy: ValuePolicy = ValuePolicy()) -> ResolvedProbe:
    rp = ResolvedProbe(probe)
    try:
        if probe.kind == "usdt":
            from .usdtsites import resolve_usdt
            resolve_usdt(rp, targets)
        elif probe.kind == "span":
            from .spansites import resolve_span
            resolve_span(rp, features, targets, policy)
        elif probe.kind == "tracepoint":
            _resolve_tracepoint(rp, policy)
        elif probe.kind in USER_KINDS:
            _resolve_user(rp, targets)
        else:
            if features is None:
                raise host.HostError("kernel features unknown")
            _resolve_kernel(rp, features)
    except host.HostError as e:
        return ResolvedProbe(probe, error=str(e))
    except Exception as e:   # whatever a host file holds, one probe's failure stays its own
        log.exception("probe %s: resolving %s failed", probe.name, host.shorten(probe.target))
        return ResolvedProbe(probe, error=f"cannot resolve {probe.kind} {host.shorten(probe.target)}: "
                                           f"{type(e).__name__}: {host.shorten(str(e))}")
    if policy.restricted and kernel_sited(rp):
        layout, why = task_context()
        if layout is None:
            return ResolvedProbe(probe, error=refusal(rp, why))
    labels = {gf.label: gf for s in rp.sites for gf in s.fields}
    rp.string_labels = frozenset(k for k, gf in labels.items() if gf.is_string)
    rp.signed_labels = frozenset(k for k, gf in labels.items() if gf.signed)
    if probe.retval_label == "errno":
        rp.symbols[errno_label(probe.kind)] = errno_symbols()
    return rp


def _uses_kernel_probes(p: Probe) -> bool:
    if p.kind == "span":
        return p.start.kind in KERNEL_KINDS or p.end.kind in KERNEL_KINDS
    return p.kind in KERNEL_KINDS


def resolve(pset: ProbeSet, features: Features | None = None, targets: UserTargets = UserTargets(),
            policy: ValuePolicy = ValuePolicy()) -> list[ResolvedProbe]:
    """One ResolvedProbe per valid probe, in spec order. Kernel features are detected (by trying)
    only when a kprobe-family probe needs them. `policy`: what a namespaced set may record."""
    if features is None and any(_uses_kernel_probes(p) for p in pset.probes):
        from .features import detect
        features = detect()
    return [resolve_probe(p, features, targets, policy) for p in pset.probes]
