"""Resolve a usdt probe (BINARY:PROVIDER:NAME) on this host: one uprobe site per location of the
probe in the node's copy of the file (a probe can be compiled in at several places), each with
its own argument locations for arg0..arg5 in groupBy, value and filter."""

from __future__ import annotations

from probeset_api.filters import comparisons
from probeset_api.schema import ARG_FIELDS, TASK_FIELDS
from probeset_api.spec import Probe

from . import host
from .elf import ElfError
from .resolve import GroupField, ResolvedProbe, Site, UserTargets, _arg_field
from .usdt import MAX_ARGS, UsdtError, UsdtProbe, parse_arg, read_notes


def find_usdt(path: str, provider: str, name: str, where: str) -> list[UsdtProbe]:
    """The locations of PROVIDER:NAME in the file; an error naming the probes it has if none."""
    try:
        notes = read_notes(path)
    except (OSError, UsdtError, ElfError) as e:
        raise host.HostError(f"{where}: {host.shorten(path)}: cannot read its USDT notes: {e}") from None
    found = [n for n in notes if n.provider == provider and n.name == name]
    if not found:
        have = sorted({n.label for n in notes})
        listed = ", ".join(have[:8]) + (f", ... ({len(have)} in all)" if len(have) > 8 else "") if have else "none"
        raise host.HostError(f"{where}: no USDT probe {provider}:{name} in {host.shorten(path)} (it has: {listed})")
    return found


def usdt_field(label: str, note: UsdtProbe, where: str) -> GroupField:
    """arg0..arg5 of a USDT probe at one location; other names as for functions (comm, tid, ...)."""
    if label not in ARG_FIELDS:
        return GroupField(label, label) if label in TASK_FIELDS else _arg_field(label)
    i = ARG_FIELDS.index(label)
    if i >= min(len(note.args), MAX_ARGS):
        raise host.HostError(f"{where}: USDT probe {note.label} has {len(note.args)} argument(s), so no {label}")
    try:
        arg = parse_arg(note.args[i])
    except UsdtError as e:
        raise host.HostError(f"{where}: USDT probe {note.label} {label}: {e}") from None
    return GroupField(label, "usdt_arg", index=i, size=arg.size, signed=arg.signed, arg=arg)


def usdt_site(p: Probe, note: UsdtProbe, i: int, path: str, binary: str, role: str = "count",
              key: tuple[str, ...] = (), key_where: str = "", flt=None, flt_where: str = "") -> Site:
    fields = tuple(usdt_field(label, note, f"{p.path}.groupBy[{j}]") for j, label in enumerate(p.group_by)
                   if role in ("count", "span_end"))
    value = usdt_field(p.value, note, f"{p.path}.value") if p.value else None
    filter_fields = {}
    for c in comparisons(flt):
        filter_fields.setdefault(c.field, usdt_field(c.field, note, f"{c.path}.field"))
    keys = tuple(usdt_field(name, note, f"{key_where}.key[{j}]") for j, name in enumerate(key))
    return Site(i, note.label, "uprobe", role, binary=binary, path=path, address=note.pc, fields=fields, value=value,
                filter_fields=tuple(filter_fields.values()), key_fields=keys, semaphore=note.semaphore, usdt_location=i,
                usdt_args=note.args,
                filter=flt if role.startswith("span_") else None)


def node_copy(binary: str, targets: UserTargets, where: str) -> str:
    if not targets.observe_host or targets.host_root is None:
        raise host.HostError(f"{where}: a start or end at a USDT probe attaches to the node's copy of {binary} "
                             "only (not yet to each container's own copy): use scope Node")
    return host.find_binary(binary, targets.host_root)


def usdt_place(path: str, label: str, location: int, expected: tuple) -> int | None:
    """The address of place `location` of the USDT probe `label` in another copy of the file, if
    that copy has it with the argument locations and semaphore `expected` ((args, semaphore)):
    the program reads the arguments as the first copy has them. None otherwise."""
    provider, name = label.split(":", 1)
    try:
        notes = [n for n in read_notes(path) if n.provider == provider and n.name == name]
    except (OSError, UsdtError, ElfError):
        return None
    if location >= len(notes) or (notes[location].args, notes[location].semaphore) != expected:
        return None
    return notes[location].pc


def resolve_usdt(rp: ResolvedProbe, targets: UserTargets) -> None:
    """Standalone or scope Node: the node's copy (attached at start) and, in a cluster, each
    selected container's own copy built the same way. Namespace scope: the selected containers'
    copies, typed from the first one present (like a uprobe glob)."""
    p = rp.probe
    binary, provider, name = p.target.rsplit(":", 2)
    where = f"{p.path}.usdt"
    if targets.observe_host and targets.host_root is None:
        raise host.HostError(f"{where}: {binary}: the node's file system is not readable by this agent")
    path = host.find_binary(binary, targets.host_root) if targets.observe_host else ""
    source = path
    if not path:
        copies = targets.copies(binary) if targets.copies else []
        if not copies:
            raise host.HostError(f"{where}: the probe's arguments are read as a copy of {binary} has them, and no "
                                 "selected pod has one yet: apply the ProbeSet once the pods run")
        source = copies[0]
    notes = find_usdt(source, provider, name, where)
    if len(notes) > p.max_functions:
        raise host.HostError(f"{where}: {provider}:{name} is at {len(notes)} places, more than maxFunctions")
    rp.functions = [notes[0].label] * len(notes)      # one label, however many places
    rp.sites = [usdt_site(p, note, i, path, binary, flt=p.filter) for i, note in enumerate(notes)]
    rp.via = "usdt"
