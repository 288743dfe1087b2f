"""The class of a uprobe site's instruction (emulated or single-stepped), as the x86-64 kernel
decides it (arch/x86/kernel/uprobes.c): from bytes, and from a real binary's functions."""

import pytest

from probeset_agent.elf import file_offset as elf_file_offset
from probeset_agent.uprobe_cost import (EMULATED, OPTIMIZABLE, REFUSED, RETURN, SINGLE_STEPPED, SiteClass, classify,
                                        site_class)
from probeset_agent.uprobe_entry import point_class
from tests.support import symbols as nm_symbols

PAD = bytes(8)


@pytest.mark.parametrize("code, kind, insn", [
    ("55", EMULATED, "push %rbp"),                                   # frame pointer prologue
    ("53", EMULATED, "push %rbx"),
    ("4154", EMULATED, "push %r12"),                                 # REX.B 41 only
    ("4155", EMULATED, "push %r13"),
    ("4855", SINGLE_STEPPED, "bytes 48 55 00 00"),                         # another REX: not emulated
    ("6655", SINGLE_STEPPED, "bytes 66 55 00 00"),                         # push with a prefix
    ("90", EMULATED, "nop (1 bytes)"),
    ("0f1f440000", OPTIMIZABLE, "nop (5 bytes)"),                     # the kernel's NOP5: no trap after 6.18
    ("0f1f4000", EMULATED, "nop (4 bytes)"),
    ("0f1f840000000000", EMULATED, "nop (8 bytes)"),
    ("662e0f1f840000000000", SINGLE_STEPPED, "bytes 66 2e 0f 1f"),   # cs nopw: not one of the kernel's NOPs
    ("f390", EMULATED, "f3 90 (pause/nop)"),                          # prefix + 0x90
    ("e9aabbccdd", EMULATED, "jmp"),
    ("eb10", EMULATED, "jmp"),
    ("e800000000", EMULATED, "call"),
    ("7405", EMULATED, "jcc"),
    ("0f8412345678", EMULATED, "jcc"),
    ("66e800000000", REFUSED, "call with a 0x66 prefix"),
    ("f30f1efa", SINGLE_STEPPED, "endbr64"),                          # -fcf-protection builds start so
    ("4883ec18", SINGLE_STEPPED, "bytes 48 83 ec 18"),                  # sub $0x18,%rsp
    ("4889f8", SINGLE_STEPPED, "bytes 48 89 f8 00"),                    # mov %rdi,%rax
    ("488d0500000000", SINGLE_STEPPED, "bytes 48 8d 05 00"),            # lea 0(%rip),%rax (bench_target_xol)
    ("31c0", SINGLE_STEPPED, "bytes 31 c0 00 00"),                         # xor %eax,%eax
    ("b827000000", SINGLE_STEPPED, "bytes b8 27 00 00"),                # mov $0x27,%eax
])
def test_classify(code, kind, insn):
    assert classify(bytes.fromhex(code) + PAD) == SiteClass(kind, insn)


@pytest.mark.parametrize("page_offset, kind", [(0, OPTIMIZABLE), (4091, OPTIMIZABLE), (4092, EMULATED),
                                               (4095, EMULATED)])
def test_a_5_byte_nop_across_a_page_end_is_not_optimizable(page_offset, kind):
    """The kernel rewrites the 5 bytes at once, which it cannot do across a page end."""
    assert classify(bytes.fromhex("0f1f440000") + PAD, page_offset).kind == kind


def test_too_few_bytes_is_unknown():
    assert classify(b"\x55").kind == "unknown"


SOURCE = r"""
__asm__(".text\n"
        ".globl f_push\n.type f_push,@function\nf_push:\n push %rbp\n mov %rdi,%rax\n pop %rbp\n ret\n"
        ".globl f_endbr\n.type f_endbr,@function\nf_endbr:\n endbr64\n mov %rdi,%rax\n ret\n"
        ".globl f_lea\n.type f_lea,@function\nf_lea:\n lea 0(%rip),%rax\n ret\n"
        ".globl f_nop5\n.type f_nop5,@function\nf_nop5:\n .byte 0x0f,0x1f,0x44,0x00,0x00\n ret\n");
long f_push(long); long f_endbr(long); long f_lea(long); long f_nop5(long);
int main(int argc, char **argv) { return (int)(f_push(argc) + f_endbr(1) + f_lea(2) + f_nop5(3)) & 1; }
"""


def test_sites_of_a_real_binary(build_c):
    path = build_c("uprobe_classes", SOURCE)
    symbols = nm_symbols(path)
    got = {name: site_class(path, elf_file_offset(path, symbols[name])).kind
           for name in ("f_push", "f_endbr", "f_lea", "f_nop5")}
    assert got == {"f_push": EMULATED, "f_endbr": SINGLE_STEPPED, "f_lea": SINGLE_STEPPED, "f_nop5": OPTIMIZABLE}
    assert point_class("uprobe", path, symbols["f_push"]).insn == "push %rbp"
    assert point_class("uretprobe", path, symbols["f_push"]).kind == RETURN
    assert point_class("uprobe", "", 0).kind == "unknown"
    assert point_class("uprobe", "/nonexistent/file", 0).insn == "cannot read /nonexistent/file: No such file or directory"
