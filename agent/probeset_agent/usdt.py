"""USDT (SystemTap SDT) probes of an ELF file: its .note.stapsdt notes read and checked here, and
each argument's location (a register, memory at a register plus an offset, or a constant) parsed
into a typed form whose C uses only a fixed table of register names and integers. Pure, except
read_notes(), which reads one file (bounded)."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from probeset_api.filters import int_type

from . import elf
from .ctemplates import CCode, CName, fill

NT_STAPSDT = 3
MAX_NOTES_BYTES = 1 << 20           # a .note.stapsdt larger than this is refused
MAX_ARGS = 6                        # arg0..arg5, as for functions
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")

# x86-64 register names in SDT argument specs -> struct pt_regs fields (any width: the argument's
# size truncates, as the compiler meant).
_REGS = {}
for _full, _field in (("rax", "ax"), ("rbx", "bx"), ("rcx", "cx"), ("rdx", "dx"), ("rsi", "si"), ("rdi", "di"),
                      ("rbp", "bp"), ("rsp", "sp"), ("rip", "ip")):
    base = _full[1:]
    for name in (_full, "e" + base, base, base[0] + "l" if base[1] == "x" else base + "l"):
        _REGS[name] = _field
for _n in range(8, 16):
    for _suffix in ("", "d", "w", "b"):
        _REGS[f"r{_n}{_suffix}"] = f"r{_n}"
_ARG_RE = re.compile(r"(?P<size>-?\d+)@(?:(?P<reg>%\w+)|\$(?P<const>-?\d+)|(?P<off>-?\d+)?\((?P<base>%\w+)\))")


class UsdtError(ValueError):
    pass


@dataclass(frozen=True)
class UsdtArg:
    """Where one argument is: kind "reg" (a register), "mem" (at register + offset), "const"."""

    size: int
    signed: bool
    kind: str
    reg: str = ""               # a pt_regs field from _REGS
    offset: int = 0             # mem: the offset; const: the value

    @property
    def ctype(self) -> str:
        return int_type(self.size, self.signed)


@dataclass(frozen=True)
class UsdtProbe:
    provider: str
    name: str
    pc: int                     # virtual address of the probe point
    semaphore: int              # virtual address of its semaphore, 0 if none
    args: tuple[str, ...]       # argument specs as the note has them

    @property
    def label(self) -> str:
        return f"{self.provider}:{self.name}"


def parse_arg(spec: str) -> UsdtArg:
    """One SDT argument spec: 8@%rdi, -4@%eax, -4@112(%rsp), 8@-8(%rbp), -4@$5."""
    m = _ARG_RE.fullmatch(spec)
    if not m:
        raise UsdtError(f"argument {spec[:40]!r} has a form this agent does not read (register, offset(register) "
                        "or $constant)")
    size = int(m["size"])
    if abs(size) not in (1, 2, 4, 8):
        raise UsdtError(f"argument {spec[:40]!r}: size {size}")
    signed, size = size < 0, abs(size)
    if m["const"] is not None:
        return UsdtArg(size, signed, "const", offset=int(m["const"]))
    reg = (m["reg"] or m["base"])[1:]
    if reg not in _REGS:
        raise UsdtError(f"argument {spec[:40]!r}: register {reg[:10]!r} is not one this agent reads")
    if m["reg"]:
        return UsdtArg(size, signed, "reg", _REGS[reg])
    return UsdtArg(size, signed, "mem", _REGS[reg], int(m["off"] or 0))


_REG_LOAD = "@DST@ = (u64)(@CTYPE@)ctx->@REG@;"
_MEM_LOAD = ("{ @CTYPE@ a_ = 0; bpf_probe_read_user(&a_, sizeof(a_), (void *)((u64)ctx->@REG@ + @OFF@ull)); "
             "@DST@ = (u64)a_; }")
_CONST_LOAD = "@DST@ = (u64)(@CTYPE@)@BITS@ull;"


def arg_c(arg: UsdtArg, dst: CCode) -> CCode:
    """C that sets the u64 lvalue `dst` to the argument (sign-extended when signed)."""
    ctype = CName(arg.ctype)
    if arg.kind == "reg":
        return fill(_REG_LOAD, DST=dst, CTYPE=ctype, REG=CName(arg.reg))
    if arg.kind == "mem":
        return fill(_MEM_LOAD, DST=dst, CTYPE=ctype, REG=CName(arg.reg), OFF=arg.offset & (2**64 - 1))
    return fill(_CONST_LOAD, DST=dst, CTYPE=ctype, BITS=arg.offset & (2**64 - 1))


def parse_notes(data: bytes, base_actual: int | None) -> list[UsdtProbe]:
    """The probes of a .note.stapsdt section's bytes; addresses adjusted as the note's base says
    (a prelinked file moves them with .stapsdt.base). Notes whose names are not identifiers are
    skipped: the file is the workload's, not ours."""
    out, at = [], 0
    while at + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from("<III", data, at)
        name_at = at + 12
        desc_at = name_at + ((namesz + 3) & ~3)
        at = desc_at + ((descsz + 3) & ~3)
        if at > len(data) or ntype != NT_STAPSDT or data[name_at:name_at + namesz].rstrip(b"\0") != b"stapsdt":
            continue
        desc = data[desc_at:desc_at + descsz]
        if len(desc) < 24:
            continue
        pc, base, sem = struct.unpack_from("<QQQ", desc, 0)
        parts = desc[24:].split(b"\0")
        if len(parts) < 3:
            continue
        try:
            provider, name, args = parts[0].decode(), parts[1].decode(), parts[2].decode()
        except UnicodeDecodeError:
            continue
        if not (NAME_RE.fullmatch(provider) and NAME_RE.fullmatch(name)):
            continue
        shift = (base_actual - base) if base_actual is not None else 0
        out.append(UsdtProbe(provider, name, pc + shift, sem + shift if sem else 0, tuple(args.split())))
    return out


def read_notes(path: str) -> list[UsdtProbe]:
    """The USDT probes of an ELF file (64-bit little-endian), from its section headers."""
    with open(path, "rb") as f:
        by_name = {s.name: s for s in elf.sections(f, path)}
        note = by_name.get(b".note.stapsdt")
        if note is None:
            return []
        if note.size > MAX_NOTES_BYTES:
            raise UsdtError(f".note.stapsdt is {note.size} bytes, more than {MAX_NOTES_BYTES}")
        data = elf.read_at(f, note.offset, note.size)
    base = by_name.get(b".stapsdt.base")
    return parse_notes(data, base.addr if base else None)
