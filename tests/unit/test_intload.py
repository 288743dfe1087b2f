"""intload.load_int: the one C loader of an integer source, whatever the destination."""

import pytest

from probeset_agent.ctemplates import CCode, fill
from probeset_agent.intload import load_int
from probeset_agent.resolve import GroupField, Site
from probeset_agent.usdt import parse_arg


def site(mechanism):
    return Site(0, "f", mechanism, "count")


@pytest.mark.parametrize("gf, mechanism, want", [
    (GroupField("arg2", "arg", index=2), "kprobe", "D = PT_REGS_PARM3(ctx);"),
    (GroupField("arg0", "arg", index=0), "uprobe", "D = PT_REGS_PARM1(ctx);"),
    (GroupField("arg2", "arg", index=2), "fentry", "{ u64 v_ = 0; bpf_get_func_arg(ctx, 2, &v_); D = v_; }"),
    (GroupField("retval", "retval", signed=True), "kretprobe", "D = PT_REGS_RC(ctx);"),
    (GroupField("retval", "retval", signed=True), "uretprobe", "D = PT_REGS_RC(ctx);"),
    (GroupField("retval", "retval", signed=True), "fexit", "{ u64 v_ = 0; bpf_get_func_ret(ctx, &v_); D = v_; }"),
    (GroupField("ret", "tp_int", offset=16, size=8, signed=True), "tracepoint",
     "{ s64 v_ = 0; bpf_probe_read_kernel(&v_, sizeof(v_), (char *)ctx + 16); D = (u64)v_; }"),
    (GroupField("prio", "tp_int", offset=24, size=4), "tracepoint",
     "{ u32 v_ = 0; bpf_probe_read_kernel(&v_, sizeof(v_), (char *)ctx + 24); D = (u64)v_; }"),
    (GroupField("arg0", "usdt_arg", arg=parse_arg("-4@%eax")), "uprobe", "D = (u64)(s32)ctx->ax;"),
    (GroupField("arg0", "usdt_arg", arg=parse_arg("8@$7")), "uprobe", "D = (u64)(u64)7ull;"),
    (GroupField("pid", "pid"), "tracepoint", "D = bpf_get_current_pid_tgid() >> 32;"),
    (GroupField("tid", "tid"), "kprobe", "D = (u32)bpf_get_current_pid_tgid();"),
    (GroupField("uid", "uid"), "uprobe", "D = (u32)bpf_get_current_uid_gid();"),
    (GroupField("gid", "gid"), "fentry", "D = bpf_get_current_uid_gid() >> 32;"),
])
def test_each_integer_source_is_one_statement_into_the_destination(gf, mechanism, want):
    assert load_int(gf, site(mechanism), CCode("D")) == want


def test_the_destination_is_any_lvalue_fill_made():
    gf = GroupField("arg1", "arg", index=1)
    for dst in (fill("key.g@I@", I=3), fill("sv.g@I@", I=0), CCode("val_"), fill("f@K@", K=2), fill("pk.k@I@", I=1)):
        assert load_int(gf, site("kprobe"), dst) == f"{dst} = PT_REGS_PARM2(ctx);"


def test_strings_and_untyped_destinations_are_refused():
    for source in ("comm", "tp_str", "tp_data_loc"):
        with pytest.raises(ValueError):
            load_int(GroupField("x", source), site("tracepoint"), CCode("D"))
    with pytest.raises(TypeError):
        load_int(GroupField("arg0", "arg"), site("kprobe"), "key.g0; evil()")
