"""The running kernel's own type information (BTF, /sys/kernel/btf/vmlinux): structure member
offsets and per-CPU variables' offsets, for the few kernel addresses a program must compute
itself (taskcontext.py). Only what that needs is decoded: structs, unions, typedefs and
qualifiers, variables and data sections. Pure: bytes in, numbers out."""

from __future__ import annotations

import struct
from array import array

VMLINUX = "/sys/kernel/btf/vmlinux"
MAGIC = 0xEB9F
# BTF kinds (include/uapi/linux/btf.h) and the bytes each adds after its 12-byte common part
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC, \
    FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(1, 20)
_FIXED = {INT: 4, ARRAY: 12, VAR: 4, DECL_TAG: 4}
_PER_MEMBER = {STRUCT: 12, UNION: 12, ENUM: 8, FUNC_PROTO: 8, DATASEC: 12, ENUM64: 12}
_SEE_THROUGH = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)
MAX_TYPES = 1 << 20          # a vmlinux has ~150,000


class BTFError(ValueError):
    pass


class Types:
    """The type section, indexed once (where each type starts; the ids of structs and data
    sections by name) and decoded on demand: a vmlinux has ~130,000 types, of which a lookup
    reads a handful, so no Python object is made per type."""

    def __init__(self, data: bytes, strings: bytes, starts: array, named: dict[tuple[int, str], int]):
        self._data, self._strings, self._starts, self._named = data, strings, starts, named

    def _name(self, off: int) -> str:
        end = self._strings.find(b"\0", off)
        return self._strings[off:end if end >= 0 else len(self._strings)].decode("latin-1")

    def _head(self, tid: int) -> tuple[int, int, bool, int, int]:
        """(kind, vlen, kind_flag, size_or_type, where its members start)."""
        pos = self._starts[tid]
        name_off, info, size_or_type = struct.unpack_from("<III", self._data, pos)
        return (info >> 24) & 0x1F, info & 0xFFFF, bool(info >> 31), size_or_type, pos + 12

    def _resolve(self, tid: int) -> int:
        for _ in range(16):
            kind, _, _, ref, _ = self._head(tid)
            if kind not in _SEE_THROUGH:
                return tid
            tid = ref
        raise BTFError("a typedef chain too long")

    def member_offset(self, struct_name: str, path: str) -> int:
        """Byte offset of `path` ("se.cfs_rq") in struct `struct_name`, through anonymous
        members; BTFError if the kernel has no such member (or it is a bit field)."""
        tid = self._named.get((STRUCT, struct_name))
        if tid is None:
            raise BTFError(f"no struct {struct_name} in the kernel's BTF")
        offset = 0
        for part in path.split("."):
            found = self._find(tid, part)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {path} in the kernel's BTF")
            bits, tid = found
            if bits % 8:
                raise BTFError(f"{struct_name}.{path} is a bit field")
            offset += bits // 8
        return offset

    def _find(self, tid: int, name: str, depth: int = 0) -> tuple[int, int] | None:
        kind, vlen, bitfields, _, pos = self._head(self._resolve(tid))
        if kind not in (STRUCT, UNION) or depth > 8:
            return None
        for i in range(vlen):
            name_off, mtype, bits = struct.unpack_from("<III", self._data, pos + 12 * i)
            if bitfields:
                bits &= 0xFFFFFF
            member = self._name(name_off)
            if member == name:
                return bits, self._resolve(mtype)
            if not member:                       # an anonymous struct or union: look inside
                inner = self._find(mtype, name, depth + 1)
                if inner is not None:
                    return bits + inner[0], inner[1]
        return None

    def percpu_offset(self, name: str) -> int:
        """Offset of per-CPU variable `name` in the per-CPU section (the same in every CPU's copy)."""
        sec = self._named.get((DATASEC, ".data..percpu"))
        if sec is None:
            raise BTFError("the kernel's BTF describes no per-CPU variables")
        _, vlen, _, _, pos = self._head(sec)
        for i in range(vlen):
            var, offset, _ = struct.unpack_from("<III", self._data, pos + 12 * i)
            var_name_off = struct.unpack_from("<I", self._data, self._starts[var])[0]
            if self._name(var_name_off) == name:
                return offset
        raise BTFError(f"no per-CPU variable {name} in the kernel's BTF")


def parse(data: bytes) -> Types:
    if len(data) < 24:
        raise BTFError("BTF too short")
    magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", data)
    if magic != MAGIC:
        raise BTFError("not BTF (bad magic)")
    tstart, sstart = hdr_len + type_off, hdr_len + str_off
    if tstart + type_len > len(data) or sstart + str_len > len(data):
        raise BTFError("BTF sections beyond its end")
    strings = data[sstart:sstart + str_len]
    starts, named = array("I", [0]), {}               # id 0 is void
    pos, end = tstart, tstart + type_len
    while pos < end:
        if len(starts) > MAX_TYPES:
            raise BTFError("too many BTF types")
        name_off, info, _ = struct.unpack_from("<III", data, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if not INT <= kind <= ENUM64:         # a newer kind: its size is unknown, so is every later type
            raise BTFError(f"unknown BTF kind {kind}")
        if kind in (STRUCT, DATASEC) and name_off:
            nul = strings.find(b"\0", name_off)
            named.setdefault((kind, strings[name_off:nul].decode("latin-1")), len(starts))
        starts.append(pos)
        pos += 12 + _FIXED.get(kind, 0) + _PER_MEMBER.get(kind, 0) * vlen
    if pos != end:
        raise BTFError("BTF types overrun their section")
    return Types(data, strings, starts, named)


def load(path: str = VMLINUX) -> Types:
    try:
        with open(path, "rb") as f:
            return parse(f.read())
    except OSError as e:
        raise BTFError(f"cannot read {path}: {e.strerror}") from None
    except struct.error as e:
        raise BTFError(f"{path}: malformed BTF ({e})") from None
