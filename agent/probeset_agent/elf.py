"""Reading the ELF files uprobes go into (64-bit little-endian): their sections, where a virtual
address is in the file, a function symbol's size. The files are the workloads', not ours: every
count and size read from them is bounded before it is used.
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

from .host import HostError, shorten

MAX_SECTIONS = 4096
MAX_SYMBOL_TABLE = 8 << 20        # bytes of each symbol table searched (libLLVM's .dynsym: ~3 MB); the
                                  # last file's are kept (a glob looks up many functions of one file)
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


def read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    """Up to `size` bytes at `offset` of the open file; none where the offset, read from the file
    itself, is past its end (a seek there could fail or overflow)."""
    if not 0 <= offset < os.fstat(f.fileno()).st_size:
        return b""
    f.seek(offset)
    return f.read(size)


def _header(f: BinaryIO, path: str) -> bytes:
    head = f.read(64)
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        raise ElfError(f"{shorten(path)}: not a 64-bit little-endian ELF file")
    return head


def sections(f: BinaryIO, path: str) -> list[Section]:
    """The section headers of the open file `f` (none when it has no usable table)."""
    head = _header(f, path)
    shoff, = struct.unpack_from("<Q", head, 40)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", head, 58)
    if not shoff or not 64 <= shentsize <= 256 or shnum > MAX_SECTIONS or shstrndx >= shnum:
        return []
    table = read_at(f, shoff, shentsize * shnum)
    raw = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(len(table) // shentsize)]
    if shstrndx >= len(raw):
        return []
    names = read_at(f, raw[shstrndx][4], min(raw[shstrndx][5], 1 << 20))
    return [Section(names[n:names.find(b"\0", n)] if n < len(names) else b"", t, fl, a, o, s)
            for n, t, fl, a, o, s in raw]


def file_offset(path: str, vaddr: int) -> int:
    """The file offset of a virtual address of an ELF file (through its PT_LOAD program headers),
    as uprobes want it; what libbcc does for BCC's own uprobes."""
    with open(path, "rb") as f:
        head = _header(f, path)
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        table = read_at(f, phoff, min(phentsize, 256) * min(phnum, 512))
    for i in range(len(table) // phentsize if 56 <= phentsize <= 256 else 0):
        p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
        if p_type == 1 and p_vaddr <= vaddr < p_vaddr + p_filesz:      # PT_LOAD
            return vaddr - p_vaddr + p_offset
    raise ElfError(f"{shorten(path)}: address {vaddr:#x} is in no loaded segment")


def function_bytes(path: str, vaddr: int, limit: int) -> bytes | None:
    """The machine code of the function symbol at `vaddr` (its st_size bytes, from .symtab, else
    .dynsym), or None when no function symbol of a known size up to `limit` starts there, or its
    bytes are not in an executable section."""
    st = os.stat(path)
    secs, tables = _symbol_tables(path, st.st_ino, st.st_mtime_ns)
    size = next((n for n in (_symbol_size(t, vaddr) for t in tables) if n), 0)
    if not 0 < size <= limit:
        return None
    with open(path, "rb") as f:
        for s in secs:
            if s.flags & SHF_EXECINSTR and s.addr <= vaddr and vaddr + size <= s.addr + s.size:
                code = read_at(f, s.offset + vaddr - s.addr, size)
                return code if len(code) == size else None
    return None


@functools.lru_cache(maxsize=1)
def _symbol_tables(path: str, _inode: int, _mtime_ns: int) -> tuple[list[Section], tuple[bytes, ...]]:
    """The file's sections and its symbol tables' bytes (.symtab first, then .dynsym), each cut at
    MAX_SYMBOL_TABLE."""
    with open(path, "rb") as f:
        secs = sections(f, path)
        tables = []
        for table in [s for s in secs if s.type == SHT_SYMTAB] + [s for s in secs if s.type == SHT_DYNSYM]:
            tables.append(read_at(f, table.offset, min(table.size, MAX_SYMBOL_TABLE)))
    return secs, tuple(tables)


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
