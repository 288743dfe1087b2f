"""Where a function's uprobe goes: not always on its first byte.

The kernel emulates a probed `push`, NOP or direct branch, and single-steps any other instruction
out of line: a second trap, 5x to 35x the cost of a hit (uprobe_cost.py, docs/benchmarks.md 8). A
hand-written BCC program puts its uprobe on the function's first byte. The agent moves it, only
where every call still hits it exactly once:

- past `endbr64` (the first instruction of functions built with -fcf-protection: Ubuntu's,
  Fedora's and RHEL's libraries and programs), for every uprobe point, uretprobes included
  (endbr64 changes no register and not the stack);
- further, to the first instruction of the function's entry block that the kernel emulates
  (a push, a NOP, the block's closing jump, call or conditional jump), when the probe reads no
  register at entry (no argument in groupBy, value, filter or key: what it records is the same
  there) and is not a uretprobe (which needs the return address on top of the stack). Only
  instructions this decoder knows are walked over; anything else keeps the probe where it was.

"Exactly once" is checked on the function's bytes (its ELF symbol's size, at most
MAX_FUNCTION_BYTES): no direct jump, conditional jump or call inside the function lands on the
instructions moved past or on the new place (a loop back to just after the entry, as a self
tail call compiles to, would be counted once per turn). Indirect branches cannot land there:
under CET they need an endbr64, and a switch's targets are its cases, never the entry block.
Jumps into a function's entry block from another function are not looked for: compilers do not
emit them.
"""

from __future__ import annotations

import functools
import os
import re
import struct
from typing import Callable

from . import elf
from .host import HostError
from .uprobe_cost import ENDBR64, LEGACY_PREFIXES, NOT_STEPPED, RETURN, SiteClass, classify, site_class

MAX_FUNCTION_BYTES = 1 << 20      # a longer function keeps its uprobe where it was (not scanned)
MAX_WALK = 64                     # bytes of the entry block walked to find an emulated instruction
REGISTER_SOURCES = frozenset({"arg", "retval", "usdt_arg"})


def movable(site, mechanism: str) -> bool:
    """Whether a uprobe point of `site` may go past the entry block's first instructions: an entry
    uprobe that reads no register there."""
    if mechanism != "uprobe" or site.usdt_location >= 0:
        return False
    fields = (*site.fields, *site.filter_fields, *site.key_fields, *((site.value,) if site.value else ()))
    return not any(f.source in REGISTER_SOURCES for f in fields)


def entry_address(path: str, address: int, movable: bool = False) -> int:
    """Where a uprobe on the function at `address` (a virtual address of the file at `path`) goes
    (module docstring); `address` itself when nothing is sure. Read again when the file changes."""
    try:
        st = os.stat(path)
    except OSError:
        return address
    return address + _entry_offset(path, address, movable, st.st_ino, st.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _entry_offset(path: str, address: int, movable: bool, _inode: int, _mtime_ns: int) -> int:
    try:
        code = elf.function_bytes(path, address, MAX_FUNCTION_BYTES)
    except (OSError, HostError):
        return 0
    return entry_offset(code, movable) if code else 0


def entry_offset(code: bytes, movable: bool) -> int:
    """The offset in a function's machine code `code` where its uprobe goes (pure)."""
    at = len(ENDBR64) if code.startswith(ENDBR64) else 0
    if movable:
        at = walk_entry_block(code, at, lambda i: classify(code[i:i + 16] + bytes(16)).kind in NOT_STEPPED) or at
    if at == 0 or at >= len(code) or branches_into(code, 1, at):
        return 0
    return at


def walk_entry_block(code: bytes, at: int, wanted: Callable[[int], bool], limit: int = MAX_WALK) -> int | None:
    """The offset of the first instruction from `at` on for which `wanted(offset)` holds (entry_offset:
    one the kernel does not single-step), walking only over instructions insn_length() knows, within
    `limit` bytes; None if there is none such."""
    while at < min(len(code), limit):
        if wanted(at):
            return at
        n = insn_length(code, at)
        if n is None:
            return None
        at += n
    return None


def point_class(mechanism: str, path: str, address: int, movable: bool = False) -> SiteClass:
    """The class of a uprobe point: the instruction's where entry_address() puts it (`address`, a
    virtual address of the file at `path`, the node's copy), read again only when the file
    changes; a uretprobe's is `return`."""
    if mechanism == "uretprobe":
        return SiteClass(RETURN, "return trampoline")
    if not path:
        return SiteClass("unknown", "the node's copy of the file is not observed")
    try:
        st = os.stat(path)
    except OSError as e:
        return SiteClass("unknown", f"cannot read {path}: {e.strerror}")
    moved = _entry_offset(path, address, movable, st.st_ino, st.st_mtime_ns)
    cls = _class_at(path, address + moved, st.st_ino, st.st_mtime_ns)
    return SiteClass(cls.kind, f"{cls.insn} at +{moved}") if moved else cls


@functools.lru_cache(maxsize=4096)
def _class_at(path: str, address: int, _inode: int, _mtime_ns: int) -> SiteClass:
    try:
        return site_class(path, elf.file_offset(path, address))
    except Exception as e:     # HostError: not an ELF file we can read
        return SiteClass("unknown", str(e))


# --- x86-64 instruction lengths, for the instructions of entry blocks -------------------------

# one-byte opcodes with a ModRM byte and no immediate: ALU r/m forms, movsxd, test, xchg, mov, lea,
# shifts by 1 or cl
_MODRM = frozenset([*(b + o for b in range(0x00, 0x40, 8) for o in range(4)), 0x63, *range(0x84, 0x8c),
                    0x8d, *range(0xd0, 0xd4)])
_MODRM_IMM8 = frozenset([0x6b, 0x80, 0x83, 0xc0, 0xc1, 0xc6])
_MODRM_IMM32 = frozenset([0x69, 0x81, 0xc7])
_IMM8 = frozenset([*(b + 4 for b in range(0x00, 0x40, 8)), 0x6a, 0xa8, *range(0xb0, 0xb8)])
_IMM32 = frozenset([*(b + 5 for b in range(0x00, 0x40, 8)), 0x68, 0xa9])
_ONE = frozenset([*range(0x50, 0x60), *range(0x90, 0x9a)])        # push/pop reg, xchg/nop, cbw, cwd
# two-byte (0f xx) opcodes with a ModRM byte: SSE moves and arithmetic, nop r/m, cmovcc, setcc,
# bt, imul, movzx/movsx; those with an immediate byte too
_0F_MODRM = frozenset([*range(0x10, 0x18), 0x1f, *range(0x28, 0x30), *range(0x40, 0x50), *range(0x51, 0x70),
                       *range(0x74, 0x77), *range(0x7e, 0x80), *range(0x90, 0xa0), 0xa3, 0xab, 0xaf, 0xb3,
                       0xb6, 0xb7, 0xbb, 0xbe, 0xbf, *range(0xd1, 0x100)])
_0F_MODRM_IMM8 = frozenset([*range(0x70, 0x74), 0xc2, 0xc6])


def _modrm_length(code: bytes, at: int) -> int | None:
    """Bytes of a ModRM byte at `at` with its SIB and displacement (64-bit addressing)."""
    if at >= len(code):
        return None
    modrm = code[at]
    mod, rm = modrm >> 6, modrm & 7
    if mod == 3:
        return 1
    n = 1
    if rm == 4:
        if at + 1 >= len(code):
            return None
        n += 1
        if mod == 0 and code[at + 1] & 7 == 5:
            return n + 4                              # SIB without base: disp32
    if mod == 0:
        return n + 4 if rm == 5 else n                # rm 5: RIP-relative disp32
    return n + (1 if mod == 1 else 4)


def insn_length(code: bytes, at: int) -> int | None:
    """The length of the instruction at `at`, if it is one this decoder knows (the integer and SSE
    instructions of function prologues); None for any other (control flow among them)."""
    i = at
    while i < len(code) and i - at < 4 and code[i] in LEGACY_PREFIXES:
        i += 1
    operand16 = 0x66 in code[at:i]
    rex_w = False
    if i < len(code) and 0x40 <= code[i] <= 0x4f:
        rex_w = bool(code[i] & 8)
        i += 1
    if i >= len(code):
        return None
    op, i = code[i], i + 1
    imm32 = 2 if operand16 and not rex_w else 4       # REX.W takes precedence over 0x66
    if op in _ONE:
        n = 0
    elif op in _IMM8:
        n = 1
    elif op in _IMM32:
        n = imm32
    elif 0xb8 <= op <= 0xbf:
        n = 8 if rex_w else imm32                     # mov imm to register (movabs with REX.W)
    elif op in _MODRM or op in _MODRM_IMM8 or op in _MODRM_IMM32 or op in (0xf6, 0xf7):
        if op in (0xc6, 0xc7) and i < len(code) and code[i] == 0xf8:
            return None                               # xabort / xbegin (a branch), not mov
        m = _modrm_length(code, i)
        if m is None:
            return None
        n = m + (1 if op in _MODRM_IMM8 else imm32 if op in _MODRM_IMM32 else 0)
        if op in (0xf6, 0xf7) and (code[i] >> 3) & 7 in (0, 1):       # test r/m, imm
            n += 1 if op == 0xf6 else imm32
    elif op == 0xff and i < len(code) and (code[i] >> 3) & 7 in (0, 1, 6):   # inc, dec, push r/m
        m = _modrm_length(code, i)
        if m is None:
            return None
        n = m
    elif op == 0x0f and i < len(code):
        op2, i = code[i], i + 1
        if code[at:at + 4] == ENDBR64:
            return 4
        if op2 not in _0F_MODRM and op2 not in _0F_MODRM_IMM8:
            return None
        m = _modrm_length(code, i)
        if m is None:
            return None
        n = m + (1 if op2 in _0F_MODRM_IMM8 else 0)
    else:
        return None
    end = i + n
    return end - at if end <= len(code) else None


# --- direct branches -------------------------------------------------------------------------

# jcc, loop/loope/loopne, jrcxz, jmp with an 8-bit displacement; call, jmp and jcc with a 32-bit one
# (the displacement counts from the instruction's end)
_REL8 = re.compile(b"[\\x70-\\x7f\\xe0-\\xe3\\xeb]")
_REL32 = re.compile(b"[\\xe8\\xe9]|\\x0f[\\x80-\\x8f]")


def branches_into(code: bytes, lo: int, hi: int) -> bool:
    """Whether a direct branch encoded in `code` lands on an offset from `lo` to `hi`. Instruction
    boundaries are not known, so every byte is tried as an opcode: a match that is not really an
    instruction only keeps a uprobe where it was, while a real branch is never missed."""
    # an 8-bit displacement reaches back at most 126 bytes from after the branch
    for m in _REL8.finditer(code, 0, hi + 127):
        at = m.start()
        if at + 2 <= len(code) and lo <= at + 2 + struct.unpack_from("<b", code, at + 1)[0] <= hi:
            return True
    for m in _REL32.finditer(code):
        end = m.end() + 4
        if end <= len(code) and lo <= end + struct.unpack_from("<i", code, m.end())[0] <= hi:
            return True
    return False
