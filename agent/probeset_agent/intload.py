"""One integer of an event, as C: `load_int(gf, site, dst)` stores what the GroupField `gf` reads at
`site` into the u64 lvalue `dst`. The one loader of every destination: a series key's groupBy field
(codegen.py), a latency probe's start slot, the value of a value probe, a filter's operand
(filtergen.py) and a two-point probe's pairing key (spangen.py). Sources: a function argument (from
struct pt_regs, or from the trampoline's context under fentry/fexit), the return value, an integer
tracepoint field (read by offset, sign-extended as its type), a USDT argument (usdt.arg_c) and the
current task's pid, tid, uid or gid. Strings (comm, tracepoint strings) have their own C. `dst` is
C that fill() made; everything else enters as integers or checked names. Pure."""

from __future__ import annotations

from probeset_api.filters import int_type

from .ctemplates import CCode, CName, fill
from .resolve import GroupField, Site
from .usdt import arg_c

ARG_PT_REGS = "@DST@ = PT_REGS_PARM@N@(ctx);"
ARG_TRAMPOLINE = "{ u64 v_ = 0; bpf_get_func_arg(ctx, @IDX@, &v_); @DST@ = v_; }"
RETVAL_PT_REGS = "@DST@ = PT_REGS_RC(ctx);"
RETVAL_TRAMPOLINE = "{ u64 v_ = 0; bpf_get_func_ret(ctx, &v_); @DST@ = v_; }"
TP_INT = "{ @CTYPE@ v_ = 0; bpf_probe_read_kernel(&v_, sizeof(v_), (char *)ctx + @OFFSET@); @DST@ = (u64)v_; }"
TASK = {"pid": "@DST@ = bpf_get_current_pid_tgid() >> 32;",
        "tid": "@DST@ = (u32)bpf_get_current_pid_tgid();",
        "uid": "@DST@ = (u32)bpf_get_current_uid_gid();",
        "gid": "@DST@ = bpf_get_current_uid_gid() >> 32;"}


def load_int(gf: GroupField, site: Site, dst: CCode) -> CCode:
    """One C statement (no indentation, no newline) that sets `dst` to the integer `gf` at `site`."""
    if not isinstance(dst, CCode):
        raise TypeError(f"the destination is C that fill() made, got {type(dst).__name__}")
    trampoline = site.mechanism in ("fentry", "fexit")
    if gf.source == "arg":
        if trampoline:
            return fill(ARG_TRAMPOLINE, DST=dst, IDX=gf.index)
        return fill(ARG_PT_REGS, DST=dst, N=gf.index + 1)
    if gf.source == "retval":
        return fill(RETVAL_TRAMPOLINE if trampoline else RETVAL_PT_REGS, DST=dst)
    if gf.source == "tp_int":
        return fill(TP_INT, DST=dst, CTYPE=CName(int_type(gf.size, gf.signed)), OFFSET=gf.offset)
    if gf.source == "usdt_arg":
        return arg_c(gf.arg, dst)
    if gf.source in TASK:
        return fill(TASK[gf.source], DST=dst)
    raise ValueError(f"{gf.label}: {gf.source} is not an integer source")
