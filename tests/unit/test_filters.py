"""Filters: parsing to the typed IR (every literal typed and range-checked, every error naming its
field), the IR's meaning (evaluate), and the C generated from it. Pure: no root."""

import re

import pytest

from probeset_agent.codegen import generate
from probeset_agent.filtergen import comm_literals
from probeset_agent.resolve import GroupField, ResolvedProbe, Site
from probeset_api.filters import Compare, Group, describe, evaluate, parse_filter, type_range
from probeset_api.spec import Probe, parse_probeset
from tests.support import resolved_uprobe


def parse(probe):
    return parse_probeset({"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet", "metadata": {"name": "t"},
                           "spec": {"probes": [{"name": "p", **probe}]}})


def error(probe) -> str:
    (bad,) = parse(probe).rejected
    return bad.reason


def flt(raw, kind="uprobe", latency=False):
    f, errors = parse_filter(raw, kind, latency, "spec.probes[0]")
    assert errors == [], errors
    return f


@pytest.mark.parametrize("probe,reason", [
    ({"uretprobe": "libc:read", "filter": {"field": "retval", "op": "<", "value": 300, "type": "u8"}},
     "spec.probes[0].filter.value: 300 is out of range for u8 field 'retval' (0..255)"),
    ({"uprobe": "libc:read", "filter": {"all": [{"field": "arg0", "op": ">", "value": -1}]}},
     "spec.probes[0].filter.all[0].value: -1 is out of range for u64 field 'arg0' (0..18446744073709551615)"),
    ({"uprobe": "libc:read", "filter": {"any": [{"field": "arg0", "op": ">", "value": 1 << 64}]}},
     "spec.probes[0].filter.any[0].value: 18446744073709551616 is out of range for u64 field 'arg0'"),
    ({"uretprobe": "libc:read", "filter": {"field": "retval", "op": "<", "value": -(1 << 31) - 1, "type": "s32"}},
     "spec.probes[0].filter.value: -2147483649 is out of range for s32 field 'retval' (-2147483648..2147483647)"),
    ({"uprobe": "libc:read", "filter": {"field": "pid", "op": "==", "value": -3}},
     "spec.probes[0].filter.value: -3 is out of range for u32 field 'pid'"),
    ({"uprobe": "libc:read", "filter": {"field": "arg1", "op": "==", "value": "12"}},
     "spec.probes[0].filter.value: \"12\" is not an integer (u64 field 'arg1')"),
    ({"uprobe": "libc:read", "filter": {"field": "arg1", "op": "==", "value": True}},
     "spec.probes[0].filter.value: True is not an integer"),
    ({"uprobe": "libc:read", "filter": {"field": "retval", "op": "<", "value": 0}},
     "spec.probes[0].filter.field: retval needs a return probe (kretprobe, uretprobe) or latency: true, not uprobe"),
    ({"uretprobe": "libc:read", "filter": {"field": "arg0", "op": "==", "value": 3}},
     "spec.probes[0].filter.field: arg0 of a return probe is gone at return"),
    ({"tracepoint": "sched:sched_switch", "filter": {"field": "arg0", "op": "==", "value": 3}},
     "spec.probes[0].filter.field: arg0 is for function probes"),
    ({"uprobe": "libc:read", "filter": {"field": "next_pid", "op": "==", "value": 3}},
     "spec.probes[0].filter.field: 'next_pid' is not available for uprobe: use arg0..arg5, pid, tid, uid, gid or comm"),
    ({"uprobe": "libc:read", "filter": {"field": "comm", "op": "<", "value": "x"}},
     "spec.probes[0].filter.op: comm compares with == or != only, not <"),
    ({"uprobe": "libc:read", "filter": {"field": "comm", "op": "==", "value": "a-name-too-long-for-comm"}},
     "spec.probes[0].filter.value: comm compares with a task name: 1 to 15 bytes of printable characters"),
    ({"uprobe": "libc:read", "filter": {"field": "comm", "op": "==", "value": 7}},
     "spec.probes[0].filter.value: comm compares with a task name"),
    ({"uprobe": "libc:read", "filter": {"field": "pid", "op": "==", "value": 7, "type": "s8"}},
     "spec.probes[0].filter.type: only arguments and retval take a type; pid has its own"),
    ({"uprobe": "libc:read", "filter": {"field": "arg0", "op": "=~", "value": 1}},
     'spec.probes[0].filter.op: "=~" is not one of: ==, !=, <, <=, >, >=, &'),
    ({"uprobe": "libc:read", "filter": {"field": "arg0", "op": "=="}},
     "spec.probes[0].filter: a comparison needs field, op and value (missing: value)"),
    ({"uprobe": "libc:read", "filter": {"field": "arg0", "op": "==", "value": 1, "all": []}},
     "spec.probes[0].filter: one comparison (field, op, value) or one of all, any: not several"),
    ({"uprobe": "libc:read", "filter": {"all": []}}, "spec.probes[0].filter.all: needs at least one item"),
    ({"uprobe": "libc:read", "filter": {"all": [{"any": [{"all": []}]}]}},
     "spec.probes[0].filter.all[0].any[0].all: unknown field"),
    ({"uprobe": "libc:read", "filter": {"any": [{"field": "arg0", "op": "==", "value": 1}] * 9}},
     "spec.probes[0].filter.any: at most 8 items allowed, got 9"),
    ({"uprobe": "libc:read", "latency": True, "filter": {"all": [{"field": "arg0", "op": "==", "value": 1},
                                                                  {"field": "retval", "op": "<", "value": 0}]}},
     "spec.probes[0].filter: a latency probe checks arguments at entry and retval at return: one filter cannot use both"),
    ({"uprobe": "libc:read", "filter": "retval < 0"}, "spec.probes[0].filter: expected object, got str"),
])
def test_bad_filters_name_their_field(probe, reason):
    assert reason in error(probe)


def test_a_good_filter_becomes_typed_ir():
    (p,) = parse({"kretprobe": "vfs_read", "groupBy": ["retval"], "retvalLabel": "errno",
                  "filter": {"all": [{"field": "retval", "op": "<", "value": 0},
                                     {"any": [{"field": "comm", "op": "==", "value": "curl"},
                                              {"field": "uid", "op": ">=", "value": 1000}]}]}}).probes
    assert p.filter == Group("spec.probes[0].filter", "all", (
        Compare("spec.probes[0].filter.all[0]", "retval", "<", 0, "s64"),
        Group("spec.probes[0].filter.all[1]", "any", (
            Compare("spec.probes[0].filter.all[1].any[0]", "comm", "==", "curl", "comm"),
            Compare("spec.probes[0].filter.all[1].any[1]", "uid", ">=", 1000, "u32")))))
    assert describe(p.filter) == 'all(retval < 0, any(comm == "curl", uid >= 1000))'


@pytest.mark.parametrize("ctype,lo,hi", [("u8", 0, 255), ("s8", -128, 127), ("u16", 0, 65535),
                                         ("s32", -2**31, 2**31 - 1), ("u64", 0, 2**64 - 1), ("s64", -2**63, 2**63 - 1)])
def test_type_ranges(ctype, lo, hi):
    assert type_range(ctype) == (lo, hi)


M64 = (1 << 64) - 1


@pytest.mark.parametrize("raw,event,want", [
    ({"field": "arg0", "op": "==", "value": 5}, {"arg0": 5}, True),
    ({"field": "arg0", "op": "!=", "value": 5}, {"arg0": 5}, False),
    ({"field": "arg0", "op": "<", "value": 5}, {"arg0": 4}, True),
    ({"field": "arg0", "op": "<=", "value": 5}, {"arg0": 5}, True),
    ({"field": "arg0", "op": ">", "value": 5}, {"arg0": 5}, False),
    ({"field": "arg0", "op": ">=", "value": 5}, {"arg0": 5}, True),
    ({"field": "arg0", "op": "&", "value": 6}, {"arg0": 4}, True),
    ({"field": "arg0", "op": "&", "value": 6}, {"arg0": 9}, False),
    # a negative long is a huge u64; typed s64 it is negative
    ({"field": "arg0", "op": ">", "value": 1000}, {"arg0": -5 & M64}, True),
    ({"field": "arg0", "op": "<", "value": 0, "type": "s64"}, {"arg0": -5 & M64}, True),
    # an int in a 64-bit register: upper half zero (eax moves zero-extend); typed s32 it is -2
    ({"field": "arg0", "op": "<", "value": 0, "type": "s64"}, {"arg0": 0xFFFFFFFE}, False),
    ({"field": "arg0", "op": "==", "value": -2, "type": "s32"}, {"arg0": 0xFFFFFFFE}, True),
    ({"field": "arg0", "op": "==", "value": 254, "type": "u8"}, {"arg0": 0x12FE}, True),
    ({"field": "arg0", "op": "==", "value": 2**64 - 1}, {"arg0": M64}, True),
    ({"field": "arg0", "op": "<", "value": -2**63, "type": "s64"}, {"arg0": 1 << 63}, False),
])
def test_evaluate_has_c_semantics(raw, event, want):
    assert evaluate(flt(raw), event) is want


def test_all_and_any():
    f = flt({"any": [{"field": "arg0", "op": "<", "value": 10},
                     {"all": [{"field": "arg0", "op": ">=", "value": 100}, {"field": "arg1", "op": "&", "value": 1}]}]})
    assert [i for i in range(0, 110, 5) if evaluate(f, {"arg0": i, "arg1": i})] == [0, 5, 101 // 5 * 5 + 5]


def probe_with_filter(raw, kind="uprobe", latency=False, fields=()):
    f, errors = parse_filter(raw, kind, latency, "spec.probes[0]")
    assert not errors
    p = Probe(index=0, name="p", kind=kind, target="/bin/true:main", latency=latency, filter=f)
    return resolved_uprobe(p, "main", 0x10, filter_fields=tuple(fields))


def test_generated_filter_is_typed_and_holds_no_user_text():
    raw = {"all": [{"field": "retval", "op": "<", "value": -2, "type": "s32"},
                   {"any": [{"field": "comm", "op": "!=", "value": "evil\"); drop"},
                            {"field": "tid", "op": "&", "value": 3}]}]}
    rp = probe_with_filter(raw, "uretprobe", fields=(GroupField("retval", "retval", signed=True),
                                                     GroupField("comm", "comm"), GroupField("tid", "tid")))
    text = generate([rp], ("node",), 10).text
    fn = re.search(r"static __always_inline int filter_p0_s0\(struct pt_regs \*ctx\) \{\n(.*?)\n\}", text, re.S).group(1)
    assert "u64 f0 = 0; f0 = PT_REGS_RC(ctx);" in fn
    assert "struct comm_t f1 = {}; bpf_get_current_comm(&f1.c, sizeof(f1.c));" in fn
    assert "u64 f2 = 0; f2 = (u32)bpf_get_current_pid_tgid();" in fn
    assert ("return (((s32)f0 < (s32)18446744073709551614ull) && ((comm_is_p0(&f1, 0) == 0) || "
            "(((u32)f2 & (u32)3ull) != 0)));") in fn
    assert "if (pass_p0() && filter_p0_s0(ctx)) {" in text
    assert "BPF_ARRAY(filter_comms_p0, struct comm_t, 1);" in text
    assert "evil" not in text and "drop" not in text
    assert comm_literals(rp) == ['evil"); drop']


def test_latency_filter_at_entry_marks_the_start_and_the_return_obeys():
    rp = probe_with_filter({"field": "arg0", "op": "==", "value": 7}, latency=True,
                           fields=(GroupField("arg0", "arg", index=0),))
    text = generate([rp], ("node",), 10).text
    assert "struct start_p0 { u64 ts; u64 skip; };" in text
    assert "sv.skip = !filter_p0_s0(ctx);" in text and "int keep_ = !sv->skip;" in text
    assert text.count("static __always_inline int filter_p0_s") == 1


def test_latency_filter_on_retval_is_checked_at_return():
    rp = probe_with_filter({"field": "retval", "op": ">", "value": 0}, latency=True,
                           fields=(GroupField("retval", "retval", signed=True),))
    text = generate([rp], ("node",), 10).text
    assert "skip" not in text
    assert "int keep_ = filter_p0_s0(ctx);" in text and "if (keep_) record_p0(&key, ns, 1);" in text


def test_a_filtered_glob_is_generated_in_one_pass_over_its_sites(monkeypatch):
    """Each site asked which filter function is its (and whether the filter runs there), walking
    every site of the probe and flattening the whole filter each time: sites squared times the
    filter (a kprobe glob of 1,000 functions with latency and a filter of 64 comparisons: minutes
    of the agent's set thread, which every set waits for). Now once per probe."""
    import probeset_agent.codegen as codegen
    raw = {"any": [{"all": [{"field": "tid", "op": "!=", "value": i * 8 + j} for j in range(8)]} for i in range(8)]}
    f, errors = parse_filter(raw, "kprobe", True, "spec.probes[0]")
    assert not errors
    p = Probe(index=0, name="p", kind="kprobe", target="trace_*", latency=True, filter=f)
    n = 300
    sites = [Site(i, f"trace_{i}", mech, role, kernel_function=f"trace_{i}", filter_fields=(GroupField("tid", "tid"),))
             for i in range(n) for mech, role in (("kprobe", "start"), ("kretprobe", "finish"))]
    rp = ResolvedProbe(p, via="kprobe", functions=[f"trace_{i}" for i in range(n)], sites=sites)
    calls = [0]
    real = codegen.at_return

    def counted(flt):
        calls[0] += 1
        return real(flt)
    monkeypatch.setattr(codegen, "at_return", counted)
    prog = generate([rp], ("node",), 10)
    assert len(prog.attach_points) == 2 * n
    assert prog.text.count("static __always_inline int filter_p0_s") == 1   # evaluated at entry: one function
    assert prog.text.count("filter_p0_s0(ctx)") == n                           # called at each entry
    assert calls[0] <= 4, calls[0]                                           # per probe, not per site
