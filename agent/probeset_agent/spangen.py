"""A two-point probe's C (spans): the pending map, the start block (remember the time, and the
task's cgroup and name when the start labels the sample) and the end block (take the start with
an equal key, record the time between). Keys and labels come from typed fields only. Pure."""

from __future__ import annotations

from probeset_api.filters import int_type

from . import ctemplates as T
from .ctemplates import CCode, CName, fill, join
from .layout import key_uses_cgroup
from .resolve import GroupField, ResolvedProbe, Site
from .usdt import arg_c

def span_maps(rp: ResolvedProbe) -> CCode:
    keys = len(rp.sites[0].key_fields)
    fields = join(fill(" u64 k@I@;", I=i) for i in range(keys))
    return fill(T.SPAN_MAPS, P=rp.id, PKEY_FIELDS=fields, ENTRIES=rp.probe.max_pending)


def _pkey(gf: GroupField, i: int, site: Site) -> CCode:
    trampoline = site.mechanism in ("fentry", "fexit")
    if gf.source == "arg":
        return fill(T.PK_ARG_TRAMPOLINE, IDX=gf.index, I=i) if trampoline else fill(T.PK_ARG_PT_REGS, N=gf.index + 1,
                                                                                        I=i)
    if gf.source == "retval":
        return fill(T.PK_RETVAL_TRAMPOLINE if trampoline else T.PK_RETVAL_PT_REGS, I=i)
    if gf.source == "tp_int":
        return fill(T.PK_TP_INT, CTYPE=CName(int_type(gf.size, gf.signed)), OFFSET=gf.offset, I=i)
    if gf.source == "usdt_arg":
        return fill(T.PK_USDT, I=i, LOAD=arg_c(gf.arg, CCode("u_")))
    return fill(T.PK_TID if gf.source == "tid" else T.PK_PID, I=i)


def span_block(rp: ResolvedProbe, site: Site, labels: tuple[str, ...], filter_call: CCode,
               attribution_here: CCode, field_fill) -> CCode:
    """The C of a span's start or end site. `attribution_here`: the current task's labels into
    the series key; `field_fill(gf, i)`: a groupBy field of the end event into it."""
    p, from_start = rp.id, rp.probe.labels_from == "start"
    labelled_here = from_start == (site.role == "span_start")
    passes = fill(T.PASS_CALL, P=p) if labelled_here else CCode("1")
    fill_pkey = join(_pkey(gf, i, site) for i, gf in enumerate(site.key_fields))
    if site.role == "span_start":
        remember = [T.PENDING_CGROUP if from_start and key_uses_cgroup(labels) else "",
                    T.PENDING_COMM if from_start and "comm" in labels else ""]
        return fill(T.SPAN_START_BLOCK, P=p, PASS=passes, FILTER=filter_call, FILL_PKEY=fill_pkey,
                    ATTRIBUTION=join(remember))
    if from_start:
        attribution = join([T.CGROUP_FROM_START if key_uses_cgroup(labels) else "",
                            T.COMM_FROM_START if "comm" in labels else ""])
    else:
        attribution = join("    " + line + "\n" for line in attribution_here.splitlines())
    fields = join("    " + line + "\n" for i, gf in enumerate(site.fields) for line in field_fill(gf, i).splitlines())
    return fill(T.SPAN_END_BLOCK, P=p, PASS=passes, FILTER=filter_call, FILL_PKEY=fill_pkey,
                FILL_KEY=join([attribution, fields]))
