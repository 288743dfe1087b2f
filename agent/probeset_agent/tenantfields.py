"""What a namespaced ProbeSet may read of a tracepoint's event (spec.ValuePolicy): fields that
cannot carry a kernel address or another task's identity, checked against the node's formats."""

from __future__ import annotations

from probeset_api.filters import Filter, comparisons
from probeset_api.spec import Probe, ValuePolicy

from . import host

# Integer types that name a task or its owner: another task's identity, for a namespaced set.
_IDENTITY_TYPES = ("pid_t", "uid_t", "gid_t", "kuid_t", "kgid_t")
_IDENTITY_SUFFIXES = ("pid", "tgid", "uid", "gid")


def tenant_field_risk(f: host.TracepointField) -> str | None:
    """Why a namespaced set may not record this tracepoint field, from its format; None if it may.
    Allowed: integers of at most 4 bytes that are not a task's identity. Not: pointers and
    pointer-sized integers (kernel addresses: call_site, skbaddr, ptr), strings (may name
    another task: next_comm), pid/uid fields (another task's identity: next_pid)."""
    base = f.ctype.replace("const ", "").replace("unsigned ", "").split()[0] if f.ctype else ""
    if "*" in f.ctype:
        return f"a pointer ({f.ctype}): a kernel address"
    if f.is_string:
        return f"a string ({f.ctype}): it may name another task or object"
    if not f.is_integer or f.size > 4:
        return f"a {f.size}-byte {f.ctype}: it can hold a kernel address"
    if base in _IDENTITY_TYPES or f.name.endswith(_IDENTITY_SUFFIXES):
        return f"{f.ctype} {f.name}: it can be another task's identity"
    return None


def fields_used(p: Probe) -> list[tuple[str, str]]:
    """(where, name) of each event field a tracepoint probe records or compares. A groupBy comm is
    the current task's name even where the event has a comm field (_tracepoint_field)."""
    used = [(f"{p.path}.groupBy[{j}]", label) for j, label in enumerate(p.group_by) if label != "comm"]
    if p.value is not None:
        used.append((f"{p.path}.value", p.value))
    return used + filter_fields_used(p.filter)


def filter_fields_used(flt: Filter | None) -> list[tuple[str, str]]:
    return [(f"{c.path}.field", c.field) for c in comparisons(flt)]


def check_tenant_fields(used: list[tuple[str, str]], fmt: host.TracepointFormat, policy: ValuePolicy) -> None:
    """Refuse (HostError naming `where`) an event field of `fmt` in `used` ((where, name) pairs)
    that a namespaced set may not read. A name the format does not define is the current task's
    own (pid, tid, uid, gid, comm) and passes; one it defines is the event's, whatever its name
    (sched_wakeup's pid is the woken task: _filter_fields compares that one)."""
    for where, label in used:
        f = fmt.fields.get(label)
        if f is None or policy.allows("tracepoint", fmt.full_name, label):
            continue
        risk = tenant_field_risk(f)
        if risk:
            raise host.HostError(f"{where}: " + policy.denial(
                f"field {label} of {fmt.full_name} is {risk}", "tracepoint", fmt.full_name, label))
