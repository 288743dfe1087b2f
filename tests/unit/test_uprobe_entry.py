"""Where a function's uprobe goes (uprobe_entry.py): past endbr64, and for probes that read no
register, on to the entry block's first emulated instruction; only where every call still hits
it exactly once. From bytes, and from gcc-built functions."""

import pytest

from probeset_agent.elf import function_bytes
from probeset_agent.resolve import GroupField, Site
from probeset_agent.uprobe_cost import EMULATED, SINGLE_STEPPED, SiteClass
from probeset_agent.uprobe_entry import (MAX_WALK, branches_into, entry_address, entry_offset, insn_length, movable,
                                         point_class)
from tests.support import symbols


def code(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize("text, lo, hi, expected", [
    ("f30f1efa 55 4889f8 5d c3", 1, 4, False),               # endbr64; push; mov; pop; ret
    ("f30f1efa 48ffcf 75fb c3", 1, 4, True),                 # 4: dec %rdi; jnz 4 (rel8 -5)
    ("f30f1efa 48ffcf 0f85f7ffffff c3", 1, 4, True),         # the same loop with jnz rel32
    ("f30f1efa 48ffcf e9f8ffffff", 1, 4, True),              # jmp rel32 back to 4
    ("f30f1efa 48ffcf e8f8ffffff c3", 1, 4, True),           # call 4 (a recursive call past endbr64)
    ("f30f1efa 48ffcf 75fa c3", 4, 4, False),                # jnz 3: not the place itself...
    ("f30f1efa 48ffcf 75fa c3", 1, 4, True),                 # ...but one of the bytes moved past
    ("f30f1efa 48ffcf 75f7 c3", 1, 4, False),                # jnz 0: a new call, fine
    ("f30f1efa e2fe c3", 1, 4, True),                        # 4: loop 4
    ("f30f1efa" + "90" * 126 + "7480 c3", 4, 4, True),       # je -128: the farthest a rel8 reaches back
    ("f30f1efa" + "90" * 127 + "7480 c3", 4, 4, False),      # one byte farther: lands on 5
    ("f30f1efa 0f85", 1, 4, False),                          # cut short: no displacement to read
])
def test_branches_into(text, lo, hi, expected):
    assert branches_into(code(text), lo, hi) is expected


@pytest.mark.parametrize("text, length", [
    ("f30f1efa", 4),                         # endbr64
    ("4883ec18", 4),                         # sub $0x18,%rsp
    ("4881ec00010000", 7),                   # sub $0x100,%rsp
    ("4889f8", 3),                           # mov %rdi,%rax
    ("89f8", 2),                             # mov %edi,%eax
    ("488d4701", 4),                         # lea 0x1(%rdi),%rax
    ("488d05 00000000", 7),                  # lea 0x0(%rip),%rax
    ("64488b042528000000", 9),               # mov %fs:0x28,%rax (stack protector)
    ("48894424 08", 5),                      # mov %rax,0x8(%rsp)
    ("31c0", 2),                             # xor %eax,%eax
    ("b827000000", 5),                       # mov $0x27,%eax
    ("48b8 0102030405060708", 10),           # movabs $...,%rax
    ("66b82700", 4),                         # mov $0x27,%ax
    ("85ff", 2),                             # test %edi,%edi
    ("f6470401", 4),                         # testb $1,0x4(%rdi)
    ("f7d8", 2),                             # neg %eax
    ("c7442404 01000000", 8),                # movl $1,0x4(%rsp)
    ("0fb6c0", 3),                           # movzbl %al,%eax
    ("660fefc0", 4),                         # pxor %xmm0,%xmm0
    ("0f2905 00000000", 7),                  # movaps %xmm0,0x0(%rip)
    ("662e0f1f840000000000", 10),            # cs nopw 0x0(%rax,%rax,1)
    ("48ffc8", 3),                           # dec %rax
    ("664805 01000000", 7),                  # add $1,%rax with a stray 0x66: REX.W wins, imm32
    ("6605 0100", 4),                        # add $1,%ax
    ("c7f8 00000000", None),                 # xbegin: a branch, not mov
    ("c6f8 00", None),                       # xabort
    ("ff742408", 4),                         # push 0x8(%rsp)
    ("4c8d0c24", 4),                         # lea (%rsp),%r9
    ("c3", None),                            # ret: control flow
    ("ffd0", None),                          # call *%rax
    ("ffe0", None),                          # jmp *%rax
    ("0f05", None),                          # syscall
    ("c5f877", None),                        # vzeroupper (VEX): not known
    ("48", None),                            # cut short
    ("4883", None),
])
def test_insn_length(text, length):
    assert insn_length(code(text), 0) == length


@pytest.mark.parametrize("text, movable_, offset", [
    ("f30f1efa 55 4889e5 5d c3", False, 4),                  # endbr64 skipped for any probe
    ("f30f1efa 55 4889e5 5d c3", True, 4),                   # push: emulated already
    ("4883ec08 e800000000 4883c408 c3", True, 4),            # sub; call: the call
    ("4883ec08 e800000000 4883c408 c3", False, 0),           # reads registers: stays
    ("f30f1efa 4883ec08 e800000000 4883c408 c3", True, 8),   # endbr64; sub; call
    ("f30f1efa 4883ec08 e800000000 4883c408 c3", False, 4),
    ("4889f8 48ffc8 75fb c3", True, 0),                      # mov; 3: dec; jnz 3: a loop inside the block
    ("4889f8 48ffc8 75f8 c3", True, 6),                      # jnz 0: recursion-like, a new call
    ("85ff 7403 31c0 c3 b801000000 c3", True, 2),            # test; je: the je
    ("4889f8 c3", True, 0),                                  # mov; ret: nothing emulated before ret
    ("4889f8 0f05 c3", True, 0),                             # an instruction not known: stays
    ("f30f1efa 48ffcf 75fb c3", False, 0),                   # endbr64 then a loop back to 4
    ("55", True, 0),                                         # push at 0: nothing to move
    ("f30f1efa", False, 0),                                  # endbr64 alone: nowhere to go
    ("4889f8" * 30 + "e800000000 c3", True, 0),              # the call beyond MAX_WALK bytes
])
def test_entry_offset(text, movable_, offset):
    assert entry_offset(code(text), movable_) == offset
    assert MAX_WALK == 64


def _site(**fields) -> Site:
    return Site(0, "f", "uprobe", "count", **fields)


def test_movable_only_when_no_register_is_read():
    arg0, comm = GroupField("arg0", "arg", 0), GroupField("comm", "comm")
    assert movable(_site(), "uprobe") and movable(_site(fields=(comm,)), "uprobe")
    assert not movable(_site(), "uretprobe")
    assert not movable(_site(fields=(arg0,)), "uprobe")
    assert not movable(_site(value=arg0), "uprobe")
    assert not movable(_site(filter_fields=(arg0,)), "uprobe")
    assert not movable(_site(key_fields=(arg0,)), "uprobe")
    assert not movable(_site(usdt_location=0), "uprobe")


SOURCE = r"""
#define FN(name, body) ".globl " #name "\n.type " #name ",@function\n" #name ":\n" body ".size " #name ", .-" #name "\n"
__asm__(".text\n"
        FN(cet_push, " endbr64\n push %rbp\n mov %rdi,%rax\n pop %rbp\n ret\n")
        FN(cet_loop, " endbr64\n1: dec %rdi\n jnz 1b\n ret\n")
        FN(cet_loop32, " endbr64\n1: dec %rdi\n {disp32} jnz 1b\n ret\n")
        FN(cet_lea, " endbr64\n lea 1(%rdi),%rax\n ret\n")
        FN(sub_call, " sub $8,%rsp\n call cet_lea\n add $8,%rsp\n ret\n")
        FN(plain_push, " push %rbp\n mov %rdi,%rax\n pop %rbp\n ret\n")
        ".globl cet_nosize\n.type cet_nosize,@function\ncet_nosize:\n endbr64\n push %rbp\n pop %rbp\n ret\n");
long cet_push(long), cet_loop(long), cet_loop32(long), cet_lea(long), sub_call(long), plain_push(long),
     cet_nosize(long);
__attribute__((noinline)) long c_function(long x) { return x * 3 + 1; }
int main(int argc, char **argv) {
    return (int)(cet_push(argc) + cet_loop(2) + cet_loop32(2) + cet_lea(1) + sub_call(1) + plain_push(1)
                 + cet_nosize(1) + c_function(argc)) & 1;
}
"""
NAMES = ("cet_push", "cet_loop", "cet_loop32", "cet_lea", "sub_call", "plain_push", "cet_nosize", "c_function")


def test_functions_of_a_real_binary(build_c):
    """gcc-built with -fcf-protection: endbr64 skipped unless a branch lands past it or the
    function's size is unknown; a probe that reads no register also past `sub` to the `call`."""
    path = build_c("entry_points", SOURCE, "-fcf-protection=full")
    sym = symbols(path)
    moved = {(name, m): entry_address(path, sym[name], m) - sym[name] for name in NAMES for m in (False, True)}
    assert moved == {("cet_push", False): 4, ("cet_push", True): 4, ("cet_loop", False): 0, ("cet_loop", True): 0,
                     ("cet_loop32", False): 0, ("cet_loop32", True): 0, ("cet_lea", False): 4, ("cet_lea", True): 4,
                     ("sub_call", False): 0, ("sub_call", True): 4, ("plain_push", False): 0,
                     ("plain_push", True): 0, ("cet_nosize", False): 0, ("cet_nosize", True): 0,
                     ("c_function", False): 4, ("c_function", True): 4}
    assert point_class("uprobe", path, sym["cet_push"]) == SiteClass(EMULATED, "push %rbp at +4")
    assert point_class("uprobe", path, sym["sub_call"], True) == SiteClass(EMULATED, "call at +4")
    assert point_class("uprobe", path, sym["sub_call"]).kind == SINGLE_STEPPED
    assert point_class("uprobe", path, sym["cet_lea"]).kind == SINGLE_STEPPED        # no worse than endbr64
    assert point_class("uprobe", path, sym["cet_loop"]) == SiteClass(SINGLE_STEPPED, "endbr64")
    assert function_bytes(path, sym["cet_loop"], 1 << 20) == code("f30f1efa 48ffcf 75fb c3")
    assert function_bytes(path, sym["cet_push"], 4) is None                      # longer than the limit
    assert function_bytes(path, sym["cet_push"] + 1, 1 << 20) is None            # no symbol starts there
    assert entry_address("/nonexistent/file", 4096, True) == 4096


def test_hostile_files_keep_the_probe_where_it_was(tmp_path, build_c):
    """A workload's file is not ours: truncated, lying or garbage ELF data never raises past the
    placement (the probe stays on the function's first byte) and reads nothing unbounded."""
    import random
    from probeset_agent.elf import ElfError, sections
    from probeset_agent.usdt import UsdtError, read_notes
    real = open(build_c("entry_points_hostile", SOURCE, "-fcf-protection=full"), "rb").read()
    sym_addr = 0x1000
    rng = random.Random(5)
    header = real[:64]
    cases = {
        "magic only": b"\x7fELF\x02\x01\x01",
        "header, no sections": header,
        "half a binary": real[:len(real) // 2],
        "header then noise": header + bytes(rng.randrange(256) for _ in range(4096)),
        "section table far away": header[:40] + (1 << 62).to_bytes(8, "little") + header[48:],
        "every byte flipped after the header": header + bytes(b ^ 0xff for b in real[64:]),
    }
    for name, data in cases.items():
        path = tmp_path / name.replace(" ", "_")
        path.write_bytes(data)
        assert entry_address(str(path), sym_addr, True) == sym_addr, name
        assert point_class("uprobe", str(path), sym_addr, True).kind in ("unknown", SINGLE_STEPPED, EMULATED), name
        try:
            function_bytes(str(path), sym_addr, 1 << 20)
            with open(path, "rb") as f:
                sections(f, str(path))
            read_notes(str(path))
        except (ElfError, UsdtError):
            pass
