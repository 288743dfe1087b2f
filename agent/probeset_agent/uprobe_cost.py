"""What a uprobe hit costs before its BPF program runs: the class of the probed instruction, and
that class's cost measured on this node.

x86-64 (arch/x86/kernel/uprobes.c, arch_uprobe_analyze_insn): the kernel emulates a probed
instruction that is one of the kernel's own NOPs (x86_nops, 1 to 8 bytes) or opcode 0x90 with
prefixes, `jmp` rel8/rel32, `call` rel32, a conditional jump (70-7f, 0f 80-8f), or `push` of a
register (50-57, 41 50-57); a branch with a 0x66 prefix is refused (the probe does not attach).
Any other instruction is copied out of line and single-stepped: a second trap, about 5x the
cost (docs/benchmarks.md 1: 1.05 vs 5.4 µs). `endbr64`, which functions built with
-fcf-protection start with, is single-stepped. A uretprobe adds the return trampoline's cost.
Since Linux 6.18 a uprobe on a 5-byte NOP (x86_nops[5], not crossing a page) is better still: on its
first hit in a process the kernel replaces it by a call of a trampoline that makes the `uprobe`
syscall (arch_uprobe_optimize), so later hits take no trap: the class `optimizable`, whose measured
cost says which kernel this is (on older ones it costs what an emulated hit does).
Where the agent puts a function's uprobe so that it is emulated more often: uprobe_entry.py.

classify() is pure. calibrate() measures each class here, without BPF: a uprobe perf event
(the kernel's uprobe PMU) on code in a memfd that the calling thread runs in a loop, timed in that
thread's CPU time; the event's count checks that every call was a hit.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import statistics
import struct
import threading
import time
from dataclasses import dataclass

EMULATED, SINGLE_STEPPED, REFUSED, RETURN = "emulated", "single-stepped", "refused", "return"
OPTIMIZABLE = "optimizable"     # a 5-byte NOP: emulated, and no trap at all after the first hit on Linux >= 6.18
NOT_STEPPED = (EMULATED, OPTIMIZABLE)       # the classes the kernel does not single-step

PAGE = 4096
NOP5 = bytes.fromhex("0f1f440000")
# arch/x86/include/asm/nops.h: the kernel's NOPs by length (x86_nops[] on x86-64)
X86_NOPS = {bytes.fromhex(h) for h in ("90", "6690", "0f1f00", "0f1f4000", "0f1f440000", "660f1f440000",
                                       "0f1f8000000000", "0f1f840000000000")}
LEGACY_PREFIXES = frozenset(b"\x66\x67\xf2\xf3\x2e\x3e\x26\x36\x64\x65\xf0")
ENDBR64 = b"\xf3\x0f\x1e\xfa"


@dataclass(frozen=True)
class SiteClass:
    kind: str            # emulated | single-stepped | refused | unknown
    insn: str            # what was recognised, for people: "push %rbp", "endbr64", "bytes 48 89 f8 c3"


def classify(code: bytes, page_offset: int | None = None) -> SiteClass:
    """The class of the x86-64 instruction that `code` starts with (at least 8 bytes), at
    `page_offset` in its page when known (a 5-byte NOP across a page end is not optimized)."""
    if len(code) < 8:
        return SiteClass("unknown", f"only {len(code)} bytes")
    if code.startswith(NOP5) and (page_offset is None or page_offset <= PAGE - len(NOP5)):
        return SiteClass(OPTIMIZABLE, "nop (5 bytes)")
    for n in range(8, 0, -1):
        if code[:n] in X86_NOPS:
            return SiteClass(EMULATED, f"nop ({n} bytes)")
    i = 0
    while i < 4 and code[i] in LEGACY_PREFIXES:
        i += 1
    prefixes = code[:i]
    rex = code[i] if 0x40 <= code[i] <= 0x4f else None
    op = code[i + (rex is not None)]
    if code.startswith(ENDBR64):
        return SiteClass(SINGLE_STEPPED, "endbr64")
    if op == 0x90:
        return SiteClass(EMULATED, "nop" if not prefixes and rex is None else f"{prefixes.hex()} 90 (pause/nop)")
    two = op == 0x0f and 0x80 <= code[i + (rex is not None) + 1] <= 0x8f
    if op in (0xe8, 0xe9, 0xeb) or 0x70 <= op <= 0x7f or two:
        name = {0xe8: "call", 0xe9: "jmp", 0xeb: "jmp"}.get(op, "jcc")
        if 0x66 in prefixes:
            return SiteClass(REFUSED, f"{name} with a 0x66 prefix")
        return SiteClass(EMULATED, name)
    if 0x50 <= op <= 0x57 and not prefixes and rex in (None, 0x41):
        regs = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi") if rex is None else \
            ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
        return SiteClass(EMULATED, f"push %{regs[op - 0x50]}")
    return SiteClass(SINGLE_STEPPED, "bytes " + code[:4].hex(" "))


def site_class(path: str, file_offset: int) -> SiteClass:
    """The class of the instruction at `file_offset` of the file at `path`."""
    try:
        with open(path, "rb") as f:
            f.seek(file_offset)
            # an ELF segment's file offsets and virtual addresses are congruent modulo the page size
            return classify(f.read(16), file_offset % PAGE)
    except OSError as e:
        return SiteClass("unknown", f"cannot read {path}: {e.strerror}")


# --- measuring each class on this node -----------------------------------------------------

# Code of a memfd: three functions `long f(long)`, starting with push %rbp (emulated), with
# mov %rdi,%rax (single-stepped) and with a 5-byte NOP (optimizable), and `loop(n, f)`, which calls
# f n times, so that the time measured is the calls' alone.
_CODE = {EMULATED: (0, bytes.fromhex("55 48 89 f8 5d c3")),           # push %rbp; mov %rdi,%rax; pop; ret
         SINGLE_STEPPED: (64, bytes.fromhex("48 89 f8 c3")),          # mov %rdi,%rax; ret
         OPTIMIZABLE: (192, NOP5 + bytes.fromhex("48 89 f8 c3"))}     # nop5; mov %rdi,%rax; ret
_LOOP = (128, bytes.fromhex("53 41 54 48 89 fb 49 89 f4"              # push rbx, r12; rbx = n; r12 = f
                            "48 85 db 74 0b 48 89 df 41 ff d4 48 ff cb eb f0"   # while (rbx) { f(rbx); rbx--; }
                            "41 5c 5b c3"))                           # pop r12, rbx; ret
_PERF_EVENT_OPEN = {"x86_64": 298}


def _perf_uprobe(path: bytes, offset: int, ret: bool) -> int:
    """A counting uprobe perf event on the calling thread (perf_event_open, the uprobe PMU)."""
    pmu = int(open("/sys/bus/event_source/devices/uprobe/type").read())
    attr = bytearray(128)
    c_path = ctypes.create_string_buffer(path)
    struct.pack_into("<IIQ", attr, 0, pmu, len(attr), 1 if ret else 0)    # type, size, config (retprobe bit)
    struct.pack_into("<QQ", attr, 56, ctypes.addressof(c_path), offset)    # config1: path, config2: offset
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    libc = ctypes.CDLL(None, use_errno=True)
    # this thread only (a task's event counts that thread, not the process's others); FD_CLOEXEC
    fd = libc.syscall(_PERF_EVENT_OPEN[os.uname().machine], buf, threading.get_native_id(), -1, -1, 8)
    if fd < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"perf_event_open of a uprobe: {os.strerror(errno)}")
    return fd


def _per_call_ns(loop, fn: int, calls: int) -> float:
    """This thread's CPU time per call (user and kernel: the trap is the caller's), which other
    work on the node hardly changes, unlike wall time."""
    t0 = time.thread_time_ns()
    loop(calls, fn)
    return (time.thread_time_ns() - t0) / calls


def calibrate(calls: int = 20000, rounds: int = 5) -> dict[str, float]:
    """Seconds per hit of each class on this node (emulated, single-stepped, optimizable, and
    `return`: what a uretprobe adds); OSError when this node cannot be measured (not root, no uprobe PMU, not
    x86-64, memfd not executable)."""
    if os.uname().machine not in _PERF_EVENT_OPEN:
        raise OSError(0, f"uprobe classes are known for x86-64 only, not {os.uname().machine}")
    fd = os.memfd_create("probeset-uprobe-cost")
    events: list[int] = []
    mapped: list[int] = []
    libc = None
    try:
        page = bytearray(4096)
        for offset, code in (*_CODE.values(), _LOOP):
            page[offset:offset + len(code)] = code
        os.write(fd, bytes(page))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype, libc.mmap.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                                                 ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        base = libc.mmap(None, 4096, mmap.PROT_READ | mmap.PROT_EXEC, mmap.MAP_PRIVATE, fd, 0)
        if base in (None, ctypes.c_void_p(-1).value):
            errno = ctypes.get_errno()
            raise OSError(errno, f"mmap of the calibration code (PROT_EXEC): {os.strerror(errno)}")
        mapped.append(base)
        loop = ctypes.CFUNCTYPE(None, ctypes.c_long, ctypes.c_void_p)(base + _LOOP[0])
        path = f"/proc/self/fd/{fd}".encode()
        cost: dict[str, float] = {}
        for kind, ret in ((EMULATED, False), (SINGLE_STEPPED, False), (OPTIMIZABLE, False), (RETURN, True)):
            offset = _CODE[EMULATED if kind == RETURN else kind][0]
            n = calls // 10 if kind == SINGLE_STEPPED else calls      # ~15 µs each on a VM
            plain = statistics.median(_per_call_ns(loop, base + offset, n) for _ in range(rounds))
            events.append(_perf_uprobe(path, offset, ret))
            probed = statistics.median(_per_call_ns(loop, base + offset, n) for _ in range(rounds))
            hits = struct.unpack("<Q", os.read(events[-1], 8))[0]
            os.close(events.pop())
            if hits != n * rounds:
                raise OSError(0, f"{kind}: the uprobe counted {hits} hits for {n * rounds} calls")
            cost[kind] = max(probed - plain, 0.0) / 1e9
        cost[RETURN] = max(cost[RETURN] - cost[EMULATED], 0.0)    # the entry trap is the emulated one's
        return cost
    finally:
        for event in events:
            os.close(event)
        for base in mapped:
            libc.munmap(base, 4096)
        os.close(fd)
