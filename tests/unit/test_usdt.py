"""USDT notes and argument specs: parsing, and the C an argument becomes. Pure: no root."""

import struct

import pytest

from probeset_agent.ctemplates import CCode
from probeset_agent.usdt import UsdtArg, UsdtError, arg_c, parse_arg, parse_notes
from probeset_api.spec import parse_probeset


@pytest.mark.parametrize("spec,arg", [
    ("8@%rdi", UsdtArg(8, False, "reg", "di")),
    ("-4@%eax", UsdtArg(4, True, "reg", "ax")),
    ("-8@%r12", UsdtArg(8, True, "reg", "r12")),
    ("2@%r9w", UsdtArg(2, False, "reg", "r9")),
    ("1@%sil", UsdtArg(1, False, "reg", "si")),
    ("-4@112(%rsp)", UsdtArg(4, True, "mem", "sp", 112)),
    ("8@-8(%rbp)", UsdtArg(8, False, "mem", "bp", -8)),
    ("8@(%rax)", UsdtArg(8, False, "mem", "ax", 0)),
    ("-4@$5", UsdtArg(4, True, "const", offset=5)),
    ("4@$-1", UsdtArg(4, False, "const", offset=-1)),
])
def test_argument_specs(spec, arg):
    assert parse_arg(spec) == arg


@pytest.mark.parametrize("spec,reason", [
    ("8@%xmm0", "register 'xmm0' is not one this agent reads"),
    ("3@%rax", "size 3"),
    ("8@foo(%rip)", "has a form this agent does not read"),
    ("8@(%rax,%rbx,8)", "has a form this agent does not read"),
    ('8@%rax"); evil', "has a form this agent does not read"),
])
def test_unreadable_argument_specs_are_refused(spec, reason):
    with pytest.raises(UsdtError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_arg(spec)


def test_argument_c_uses_only_register_names_and_integers():
    assert arg_c(parse_arg("-4@%eax"), CCode("v")) == "v = (u64)(s32)ctx->ax;"
    assert arg_c(parse_arg("8@-8(%rbp)"), CCode("v")) == (
        "{ u64 a_ = 0; bpf_probe_read_user(&a_, sizeof(a_), (void *)((u64)ctx->bp + 18446744073709551608ull)); "
        "v = (u64)a_; }")
    assert arg_c(parse_arg("-4@$-3"), CCode("v")) == "v = (u64)(s32)18446744073709551613ull;"


def note(provider, name, pc, base, sem, args):
    desc = struct.pack("<QQQ", pc, base, sem) + provider + b"\0" + name + b"\0" + args + b"\0"
    pad = b"\0" * (-len(desc) % 4)
    return struct.pack("<III", 8, len(desc), 3) + b"stapsdt\0" + desc + pad


def test_notes_are_parsed_and_hostile_names_skipped():
    data = (note(b"python", b"gc__start", 0x1000, 0x9000, 0x5000, b"-4@112(%rsp)")
            + note(b"bad provider", b"x", 0x2000, 0x9000, 0, b"")
            + note(b"libstdcxx", b"throw", 0x3000, 0x9000, 0, b"8@%rdi 8@%rsi"))
    probes = parse_notes(data, base_actual=0x9100)       # prelinked: moved by 0x100
    assert [(p.label, p.pc, p.semaphore, p.args) for p in probes] == [
        ("python:gc__start", 0x1100, 0x5100, ("-4@112(%rsp)",)),
        ("libstdcxx:throw", 0x3100, 0, ("8@%rdi", "8@%rsi"))]


@pytest.mark.parametrize("target,ok", [("/usr/bin/python3.11:python:gc__start", True),
                                       ("libstdc++:libstdcxx:throw", True),
                                       ("python:gc__start", False), ("/bin/x:a b:c", False),
                                       ("/bin/x:p:n*", False)])
def test_usdt_target_pattern(target, ok):
    pset = parse_probeset({"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet", "metadata": {"name": "t"},
                           "spec": {"probes": [{"name": "p", "usdt": target}]}})
    assert (pset.rejected == []) is ok
    if not ok:
        assert "spec.probes[0].usdt: " in pset.rejected[0].reason


def test_usdt_has_no_latency_or_retval():
    pset = parse_probeset({"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet", "metadata": {"name": "t"},
                           "spec": {"probes": [{"name": "a", "usdt": "/x:p:n", "latency": True},
                                               {"name": "b", "usdt": "/x:p:n", "groupBy": ["retval"]}]}})
    reasons = [r.reason for r in pset.rejected]
    assert reasons[0].startswith("spec.probes[0].latency: latency needs a function probe")
    assert reasons[1].startswith("spec.probes[1].groupBy[0]: retval needs a return probe")
