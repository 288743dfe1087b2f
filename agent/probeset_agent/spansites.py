"""Resolve a two-point probe (probeset_api.spans) on this host: its start and end hooks become
one site each (roles span_start, span_end), with their key and filter fields typed from the
tracepoint formats, ELF symbols and kernel functions found here."""

from __future__ import annotations

from probeset_api.schema import ARG_FIELDS, USER_KINDS
from probeset_api.spans import Hook
from probeset_api.spec import Probe, ValuePolicy

from . import host
from .features import Features
from .resolve import GroupField, ResolvedProbe, Site, UserTargets, _arg_field, _filter_fields, _tracepoint_field
from .tenantfields import check_tenant_fields, fields_used, filter_fields_used


def _key_field(hook: Hook, i: int, name: str, fmt: host.TracepointFormat | None) -> GroupField:
    where = f"{hook.path}.key[{i}]"
    if fmt is not None and name in fmt.fields:
        f = fmt.fields[name]
        if not f.is_integer:
            raise host.HostError(f"{where}: field {name!r} of {fmt.full_name} is {f.ctype}; a key is integer fields")
        return GroupField(name, "tp_int", offset=f.offset, size=f.size, signed=f.signed)
    if name in ("tid", "pid"):
        return GroupField(name, name)
    if fmt is not None:
        known = ", ".join(sorted(fmt.fields)) or "(none)"
        raise host.HostError(f"{where}: tracepoint {fmt.full_name} has no field {name!r}, so this end cannot see "
                             f"the key (fields: {known}; or tid, pid)")
    if name in ARG_FIELDS or name == "retval":
        return _arg_field(name)
    raise host.HostError(f"{where}: {name!r} is not available for {hook.kind}")


def _hook_site(rp: ResolvedProbe, hook: Hook, role: str, features: Features | None, targets: UserTargets,
               group_by: tuple[str, ...]) -> Site:
    fmt = None
    common: dict = {}
    if hook.kind == "tracepoint":
        if hook.target not in host.match_tracepoints(hook.target):
            raise host.HostError(f"{hook.path}.tracepoint: no tracepoint {hook.target!r} under {host.tracefs()}/events")
        fmt = host.tracepoint_format(hook.target)
        mechanism, function, common = "tracepoint", hook.target, dict(tracepoint=hook.target)
    elif hook.kind == "usdt":
        from .usdtsites import find_usdt, node_copy, usdt_site
        binary, provider, name = hook.target.rsplit(":", 2)
        path = node_copy(binary, targets, f"{hook.path}.usdt")
        notes = find_usdt(path, provider, name, f"{hook.path}.usdt")
        if len(notes) != 1:
            raise host.HostError(f"{hook.path}.usdt: {provider}:{name} is at {len(notes)} places; a start or end "
                                 "needs a probe at one place")
        return usdt_site(rp.probe, notes[0], 0, path, binary, role, hook.key, hook.path, hook.filter)
    elif hook.kind in USER_KINDS:
        if not targets.observe_host or targets.host_root is None:
            raise host.HostError(f"{hook.path}: start/end probes on user-space functions need the node's files")
        path = host.find_binary(hook.binary, targets.host_root)
        found = dict(host.elf_functions(path, hook.symbol)) if path else {}
        if hook.symbol not in found:
            raise host.HostError(f"{hook.path}.{hook.kind}: {path or hook.binary}: no function symbol {hook.symbol!r}")
        mechanism, function = hook.kind, hook.symbol
        common = dict(binary=hook.binary, path=path, address=found[hook.symbol])
    else:
        if features is None:
            raise host.HostError("kernel features unknown")
        if not host.match_kernel_functions(hook.target):
            raise host.HostError(f"{hook.path}.{hook.kind}: no traceable kernel function {hook.target!r}")
        mechanism, reason = features.choose_kernel_attach("auto")
        if mechanism is None:
            raise host.HostError(f"{hook.path}: {reason}")
        if mechanism == "fentry":
            mechanism = "fexit" if hook.kind == "kretprobe" else "fentry"
        else:
            mechanism = hook.kind
        function, common = hook.target, dict(kernel_function=hook.target)
    keys = tuple(_key_field(hook, i, name, fmt) for i, name in enumerate(hook.key))
    fields: tuple[GroupField, ...] = ()
    if role == "span_end":
        fields = tuple(_tracepoint_field(fmt, label) if fmt else _arg_field(label) for label in group_by)
    return Site(0, function, mechanism, role, fields=fields, filter=hook.filter,
                filter_fields=_filter_fields(hook.filter, fmt), key_fields=keys, **common)


def _check_tenant_hooks(p: Probe, policy: ValuePolicy) -> None:
    """A namespaced set's tracepoint start and end: their key and filter fields as its groupBy
    (the end's). A key is an equality test on the field and a filter counts its bits, so either
    tells as much as a label. Kernel functions' are checked by the API (spec.restrict_values)."""
    for hook, recorded in ((p.start, []), (p.end, fields_used(p))):     # groupBy: fields of the end event
        if hook.kind != "tracepoint" or not host.match_tracepoints(hook.target):
            continue        # a missing tracepoint is _hook_site's error
        used = [(f"{hook.path}.key[{i}]", name) for i, name in enumerate(hook.key)]
        check_tenant_fields(used + filter_fields_used(hook.filter) + recorded,
                             host.tracepoint_format(hook.target), policy)


def resolve_span(rp: ResolvedProbe, features: Features | None, targets: UserTargets, policy: ValuePolicy) -> None:
    p = rp.probe
    if policy.restricted:
        _check_tenant_hooks(p, policy)
    start = _hook_site(rp, p.start, "span_start", features, targets, ())
    end = _hook_site(rp, p.end, "span_end", features, targets, p.group_by)
    rp.functions = [f"{start.function}->{end.function}"]
    rp.sites = [start, end]
    rp.via = start.mechanism if start.mechanism == end.mechanism else f"{start.mechanism}+{end.mechanism}"
