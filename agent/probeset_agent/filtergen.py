"""A probe's filter (probeset_api.filters IR) as C: one function per site that loads the fields
the filter compares and returns the typed combination. Operators come from this module's own
table, literals enter as integers (their 64-bit pattern) and comm literals through a map that user
space fills (comm_literals); nothing of the filter's text reaches the C. Pure."""

from __future__ import annotations

from probeset_api.filters import Compare, Filter, comparisons, int_type

from . import ctemplates as T
from .ctemplates import CCode, CName, fill, join
from .intload import load_int
from .resolve import GroupField, ResolvedProbe, Site

_OPS = {"==": CCode("=="), "!=": CCode("!="), "<": CCode("<"), "<=": CCode("<="), ">": CCode(">"),
        ">=": CCode(">=")}


def probe_filters(rp: ResolvedProbe) -> list[Filter]:
    """The probe's filters in slot order: its own, or a span's start and end filters."""
    if rp.probe.kind == "span":
        return [h.filter for h in (rp.probe.start, rp.probe.end) if h.filter is not None]
    return [rp.probe.filter] if rp.probe.filter is not None else []


def site_filter(rp: ResolvedProbe, site: Site) -> Filter | None:
    return site.filter if site.role.startswith("span_") else rp.probe.filter


def comm_literals(rp: ResolvedProbe) -> list[str]:
    """The comm literals of a probe's filters, in slot order (the filter_comms_pP map's contents)."""
    return [c.value for f in probe_filters(rp) for c in comparisons(f) if c.ctype == "comm"]


def _load(gf: GroupField, k: int, site: Site) -> CCode:
    """f<K> = the field: the task's comm as a comm_t, any other field as a u64 (intload.py)."""
    if gf.source == "comm":
        return fill(T.LOAD_COMM, K=k)
    return fill(T.FILTER_LOAD, K=k, LOAD=load_int(gf, site, fill("f@K@", K=k)))


def _expr(f: Filter, p: int, index: dict[str, int], fields: dict[str, GroupField], slots: list[Compare]) -> CCode:
    if not isinstance(f, Compare):
        glue = " && " if f.kind == "all" else " || "
        return CCode("(" + glue.join(_expr(i, p, index, fields, slots) for i in f.items) + ")")
    k = index[f.field]
    if f.ctype == "comm":
        slots.append(f)
        return fill(T.COMPARE_COMM, P=p, K=k, SLOT=len(slots) - 1, WANT=1 if f.op == "==" else 0)
    gf = fields[f.field]
    ctype = CName(int_type(gf.size, gf.signed) if gf.source == "tp_int" else f.ctype)
    bits = f.value & ((1 << 64) - 1)
    if f.op == "&":
        return fill(T.COMPARE_BITS, CTYPE=ctype, K=k, BITS=bits)
    return fill(T.COMPARE, CTYPE=ctype, K=k, OP=_OPS[f.op], BITS=bits)


def filter_function(rp: ResolvedProbe, site: Site, s: int, ctx_type: CCode) -> CCode:
    """filter_p<P>_s<S>(ctx): the probe's filter at its site number `s`."""
    fields = {gf.label: gf for gf in site.filter_fields}
    index = {label: k for k, label in enumerate(fields)}
    loads = join(_load(gf, k, site) for k, gf in enumerate(fields.values()))
    flt = site_filter(rp, site)
    slots: list[Compare] = []
    for earlier in probe_filters(rp):      # comm slots of the filters before this one (a span's start)
        if earlier is flt:
            break
        slots += [c for c in comparisons(earlier) if c.ctype == "comm"]
    expr = _expr(flt, rp.id, index, fields, slots)
    return fill(T.FILTER_FUNC, P=rp.id, S=s, CTX_TYPE=ctx_type, LOADS=loads, EXPR=expr)


def filter_maps(rp: ResolvedProbe) -> CCode:
    n = len(comm_literals(rp))
    return fill(T.FILTER_COMMS_MAP, P=rp.id, ENTRIES=n) if n else CCode("")
