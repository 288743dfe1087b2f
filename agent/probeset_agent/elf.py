"""Reading the ELF files uprobes go into (64-bit little-endian): their sections, where a virtual
address is in the file, a function symbol's size. The files are the workloads', not ours: every
count and size read from them is bounded before it is used.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from .host import HostError, shorten

MAX_SECTIONS = 4096
MAX_SYMBOL_TABLE = 64 << 20       # bytes of .symtab read to find one symbol (libLLVM's: ~10 MB)
SHT_SYMTAB, SHT_DYNSYM = 2, 11
SHF_EXECINSTR = 0x4
STT_FUNC = 2
SYM_SIZE = 24                      # Elf64_Sym


class ElfError(HostError):
    pass


@dataclass(frozen=True)
class Section:
    name: bytes
    type: int
    flags: int
    addr: int
    offset: int
    size: int


def _header(f: BinaryIO, path: str) -> bytes:
    head = f.read(64)
    if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        raise ElfError(f"{shorten(path)}: not a 64-bit little-endian ELF file")
    return head


def sections(f: BinaryIO, path: str) -> list[Section]:
    """The section headers of the open file `f` (none when it has no usable table)."""
    head = _header(f, path)
    shoff, = struct.unpack_from("<Q", head, 40)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", head, 58)
    if not shoff or shentsize < 64 or shnum > MAX_SECTIONS or shstrndx >= shnum:
        return []
    f.seek(shoff)
    table = f.read(shentsize * shnum)
    raw = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(len(table) // shentsize)]
    if shstrndx >= len(raw):
        return []
    f.seek(raw[shstrndx][4])
    names = f.read(min(raw[shstrndx][5], 1 << 20))
    return [Section(names[n:names.find(b"\0", n)] if n < len(names) else b"", t, fl, a, o, s)
            for n, t, fl, a, o, s in raw]


def file_offset(path: str, vaddr: int) -> int:
    """The file offset of a virtual address of an ELF file (through its PT_LOAD program headers),
    as uprobes want it; what libbcc does for BCC's own uprobes."""
    with open(path, "rb") as f:
        head = _header(f, path)
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * min(phnum, 512))
    for i in range(len(table) // phentsize if phentsize >= 56 else 0):
        p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
        if p_type == 1 and p_vaddr <= vaddr < p_vaddr + p_filesz:      # PT_LOAD
            return vaddr - p_vaddr + p_offset
    raise ElfError(f"{shorten(path)}: address {vaddr:#x} is in no loaded segment")


def function_bytes(path: str, vaddr: int, limit: int) -> bytes | None:
    """The machine code of the function symbol at `vaddr` (its st_size bytes, from .symtab, else
    .dynsym), or None when no function symbol of a known size up to `limit` starts there, or its
    bytes are not in an executable section."""
    with open(path, "rb") as f:
        secs = sections(f, path)
        size = 0
        for table in [s for s in secs if s.type == SHT_SYMTAB] + [s for s in secs if s.type == SHT_DYNSYM]:
            f.seek(table.offset)
            data = f.read(min(table.size, MAX_SYMBOL_TABLE))
            size = _symbol_size(data, vaddr)
            if size:
                break
        if not 0 < size <= limit:
            return None
        for s in secs:
            if s.flags & SHF_EXECINSTR and s.addr <= vaddr and vaddr + size <= s.addr + s.size:
                f.seek(s.offset + vaddr - s.addr)
                code = f.read(size)
                return code if len(code) == size else None
    return None


def _symbol_size(table: bytes, vaddr: int) -> int:
    """The largest st_size of a function symbol whose st_value is `vaddr` in a symbol table: the
    value's 8 bytes found where an Elf64_Sym keeps them (offset 8 of each 24-byte entry)."""
    needle, size, at = struct.pack("<Q", vaddr), 0, table.find(struct.pack("<Q", vaddr))
    while at >= 0:
        start = at - 8
        if start >= 0 and start % SYM_SIZE == 0 and start + SYM_SIZE <= len(table):
            info, = struct.unpack_from("<B", table, start + 4)
            if info & 0xf == STT_FUNC:
                size = max(size, struct.unpack_from("<Q", table, start + 16)[0])
        at = table.find(needle, at + 1)
    return size
