"""What exists on this host: tracepoints and their fields, kernel functions, binaries and their symbols.

Everything the code generator emits is either an integer or a name returned from here, i.e. a name
the host itself listed (tracefs, available_filter_functions/kallsyms, ELF symbol tables).
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
import re
from dataclasses import dataclass, field

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


class HostError(Exception):
    """A target that does not resolve on this host; the message says what and why."""


def tracefs() -> str:
    for path in TRACEFS_CANDIDATES:
        if os.path.isdir(os.path.join(path, "events")):
            return path
    raise HostError("tracefs is not mounted (mount -t tracefs tracefs /sys/kernel/tracing)")


def _glob_re(pattern: str) -> re.Pattern:
    return re.compile(fnmatch.translate(pattern))


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?")


# --- tracepoints ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TracepointField:
    name: str
    ctype: str
    offset: int
    size: int
    signed: bool

    @property
    def is_data_loc(self) -> bool:
        """A variable-length string: the u32 at offset holds (length << 16 | offset)."""
        return self.ctype.startswith("__data_loc")

    @property
    def is_string(self) -> bool:
        return self.is_data_loc or (self.ctype.startswith("char") and "[" in self.ctype)

    @property
    def is_integer(self) -> bool:
        return not self.is_string and self.size in (1, 2, 4, 8) and "[" not in self.ctype


@dataclass(frozen=True)
class TracepointFormat:
    category: str
    event: str
    fields: dict[str, TracepointField]
    # __print_symbolic() tables from the print fmt: field name -> {value: symbol}
    symbols: dict[str, dict[int, str]] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.category}:{self.event}"


log = logging.getLogger(__name__)
# __NR_bpf (asm/unistd.h) on the architectures this module knows (LIBRARY_DIRS): for the bpf()
# commands BCC does not wrap (BPF_ENABLE_STATS, BPF_LINK_CREATE of uprobe_multi links).
NR_BPF = {"x86_64": 321, "aarch64": 280}
# An ELF symbol usable as a `function` label value (the file belongs to the workload, not to us).
_SYMBOL = re.compile(r"[A-Za-z0-9_.@$]{1,1024}")

_FIELD_LINE = re.compile(
    r"field:(?P<decl>[^;]+);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>[01]);")
_SYMBOLIC = re.compile(r"__print_symbolic\(REC->(\w+),((?:\s*\{\s*-?\w+\s*,\s*\"[^\"]*\"\s*\},?)+)\)")
_SYMBOL_PAIR = re.compile(r"\{\s*(-?\w+)\s*,\s*\"([^\"]*)\"\s*\}")


def parse_tracepoint_format(category: str, event: str, text: str) -> TracepointFormat:
    fields = {}
    for m in _FIELD_LINE.finditer(text):
        decl = m["decl"].strip()
        # "unsigned int len", "__data_loc char[] name", "char comm[16]", "const void * skbaddr"
        name_m = re.search(r"(\w+)(\[\d*\])?$", decl)
        if not name_m:
            continue
        name = name_m.group(1)
        ctype = decl[: name_m.start()].strip() + (name_m.group(2) or "")
        if name.startswith("common_"):
            continue
        fields[name] = TracepointField(name, ctype, int(m["offset"]), int(m["size"]), m["signed"] == "1")
    symbols = {}
    for m in _SYMBOLIC.finditer(text):
        table = {}
        for value, symbol in _SYMBOL_PAIR.findall(m.group(2)):
            try:
                table[int(value, 0)] = symbol
            except ValueError:
                continue  # a macro name rather than a number: cannot decode it
        symbols[m.group(1)] = table
    return TracepointFormat(category, event, fields, symbols)


def match_tracepoints(pattern: str) -> list[str]:
    """CATEGORY:NAME strings on this host matching a (possibly globbed) CATEGORY:NAME."""
    category, event = pattern.split(":", 1)
    events_dir = os.path.join(tracefs(), "events")
    cat_re, ev_re = _glob_re(category), _glob_re(event)
    found = []
    for cat in sorted(os.listdir(events_dir)):
        if not cat_re.match(cat) or not os.path.isdir(os.path.join(events_dir, cat)):
            continue
        for ev in sorted(os.listdir(os.path.join(events_dir, cat))):
            if ev_re.match(ev) and os.path.isfile(os.path.join(events_dir, cat, ev, "format")):
                found.append(f"{cat}:{ev}")
    return found


def tracepoint_format(name: str) -> TracepointFormat:
    category, event = name.split(":", 1)
    path = os.path.join(tracefs(), "events", category, event, "format")
    try:
        with open(path) as f:
            return parse_tracepoint_format(category, event, f.read())
    except OSError as e:
        raise HostError(f"tracepoint {name}: cannot read {path}: {e.strerror}") from None


# --- kernel functions ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _kernel_function_list() -> tuple[str, tuple[str, ...]]:
    """(source, names): functions the kernel lets us probe, from available_filter_functions
    (ftrace-traceable) where it is readable, else the text symbols of /proc/kallsyms."""
    names: list[str] = []
    try:
        source = os.path.join(tracefs(), "available_filter_functions")
        with open(source) as f:
            names = [line.split()[0] for line in f if line.strip()]
    except (HostError, OSError):
        source = "/proc/kallsyms"
        with open(source) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in ("t", "T"):
                    names.append(parts[2])
    blacklist = set()
    try:
        with open("/sys/kernel/debug/kprobes/blacklist") as f:
            blacklist = {line.split()[1] for line in f if len(line.split()) >= 2}
    except OSError:
        pass
    return source, tuple(sorted({n for n in names if n not in blacklist}))


def kernel_function_names() -> tuple[str, ...]:
    return _kernel_function_list()[1]


def kernel_function_source() -> str:
    return _kernel_function_list()[0]


def match_kernel_functions(pattern: str) -> list[str]:
    if not is_glob(pattern):
        return [pattern] if pattern in set(kernel_function_names()) else []
    rx = _glob_re(pattern)
    return [n for n in kernel_function_names() if rx.match(n)]


# --- user-space binaries -------------------------------------------------------------------------


def _library_name(binary: str) -> str:
    """libc, c, libc.so.6 -> c"""
    name = binary[3:] if binary.startswith("lib") else binary
    return re.sub(r"\.so(\.\d+)*$", "", name)


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _check_elf(path: str, shown: str) -> str:
    if not os.path.isfile(path):
        raise HostError(f"binary {shown}: no such file")
    if not _is_elf(path):
        raise HostError(f"binary {shown}: not an ELF file")
    return path


def _check_absolute(binary: str) -> None:
    if ".." in binary.split("/"):
        raise HostError(f"binary {binary}: '..' is not allowed in the path")


def resolve_binary(binary: str) -> str:
    """An absolute path to an existing ELF file, for a path or a library name (libc, c, ssl)."""
    if binary.startswith("/"):
        _check_absolute(binary)
        return _check_elf(binary, binary)
    from bcc import BPF  # deferred: importing bcc costs ~70 MB; validation-only users do not need it
    path = BPF.find_library(_library_name(binary).encode())
    if not path:
        raise HostError(f"library {binary}: not found in the dynamic linker cache (ldconfig -p)")
    return path.decode()


# Where a root file system keeps shared libraries (Debian multiarch, RHEL lib64, Alpine /lib).
LIBRARY_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu",
                "usr/lib/aarch64-linux-gnu", "lib64", "usr/lib64", "lib", "usr/lib", "usr/local/lib")


def _is_library_file(filename: str, name: str) -> bool:
    # libc.so.6, libssl.so.3, libc-2.31.so (older glibc names the file by version)
    return re.fullmatch(rf"lib{re.escape(name)}(\.so(\.\d+)*|-[\d.]+\.so)", filename) is not None


def path_in_root(root: str, path: str) -> str:
    """`path` inside the file system whose root is `root`, symlinks followed inside it: an absolute
    link target there means root + target, not this process's own /."""
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise HostError(f"{path}: too many symbolic links under {root}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def node_root(candidate: str) -> tuple[str | None, str | None]:
    """The root to resolve the node's files in, and a warning: `candidate` (the DaemonSet mounts
    the node's / at /host), "/" when that is our own root anyway (library names then go through the
    dynamic linker cache), or None, with the reason, when it cannot be read: then no uprobe is
    placed for the node's processes (the agent's own image has files of the same names, which the
    node's processes do not run)."""
    try:
        os.listdir(candidate)
        there, here = os.stat(candidate), os.stat("/")
    except OSError as e:
        return None, (f"cannot read the node's file system at {candidate} ({e.strerror}): uprobes for the node's "
                      "own processes cannot be placed (mount the node's / there, read-only: the DaemonSet does)")
    return ("/" if (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino) else candidate), None


def find_binary(binary: str, root: str, pid: int | None = None) -> str:
    """BINARY as seen from another root (a container's /proc/<pid>/root, or the node's
    /proc/1/root from inside the agent's pod): a path under `root`. A library name is looked up in
    what process `pid` has mapped (the copy it really uses), then in the usual library
    directories of that root."""
    if root == "/" and pid is None:
        return resolve_binary(binary)
    if binary.startswith("/"):
        _check_absolute(binary)
        return _check_elf(path_in_root(root, binary), binary)
    name = _library_name(binary)
    if pid is not None:
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    parts = line.split(None, 5)
                    mapped = parts[5].strip() if len(parts) == 6 else ""
                    if mapped.startswith("/") and _is_library_file(os.path.basename(mapped), name):
                        path = path_in_root(root, mapped)
                        if os.path.isfile(path):
                            return path
        except OSError:
            pass   # the process ended; the directories below may still tell
    for directory in LIBRARY_DIRS:
        try:
            where = path_in_root(root, directory)
            entries = sorted(os.listdir(where))
        except (OSError, HostError):
            continue
        for filename in entries:
            path = path_in_root(root, os.path.join(where[len(root):], filename))
            # libc.so of libc6-dev sorts first and is a linker script, not the library
            if _is_library_file(filename, name) and os.path.isfile(path) and _is_elf(path):
                return path
    raise HostError(f"library {binary}: not found under {root} (mapped by the process or in {', '.join(LIBRARY_DIRS[:2])}, ...)")


def elf_functions(path: str, pattern: str) -> list[tuple[str, int]]:
    """(symbol, address) for the function symbols of an ELF file matching a glob; one entry per
    address (aliases such as malloc/__libc_malloc share one). A symbol whose name is not a label
    value (not UTF-8, or outside the symbol pattern: the file is the workload's, not ours) is
    skipped, and the skipped count logged."""
    from bcc import BPF
    rx = fnmatch.translate(pattern).encode()
    try:
        found = BPF.get_user_functions_and_addresses(path.encode(), rx)
    except Exception as e:  # bcc raises a bare Exception with the libbcc error code
        raise HostError(f"binary {path}: cannot read its symbols: {e}") from None
    by_addr: dict[int, str] = {}
    skipped = 0
    for raw, addr in found:
        try:
            name = raw.decode()
        except UnicodeDecodeError:
            name = ""
        if not _SYMBOL.fullmatch(name):
            skipped += 1
            continue
        # Prefer the name the user wrote (exact match), then the shortest alias.
        if addr not in by_addr or name == pattern or (by_addr[addr] != pattern and len(name) < len(by_addr[addr])):
            by_addr[addr] = name
    if skipped:
        log.warning("binary %s: %d symbol(s) matching %r skipped: not usable as a label (not UTF-8, or "
                    "characters outside [A-Za-z0-9_.@$])", shorten(path), skipped, pattern)
    return sorted(((n, a) for a, n in by_addr.items()), key=lambda x: x[0])


def shorten(text: str, limit: int = 200) -> str:
    """A user- or workload-supplied string as it may appear in a message: bounded."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# --- stale tracefs probes ------------------------------------------------------------------------

_BCC_EVENT = re.compile(r"^[pr]\d*:(?P<group>\w+)/(?P<name>\w+_bcc_(?P<pid>\d+))\s")


def remove_stale_bcc_probes() -> list[str]:
    """BCC creates kretprobes with maxactive (and probes on kernels without perf-PMU support) in
    tracefs; such entries outlive a process killed with SIGKILL. Remove the ones whose creating
    process is gone; returns their names."""
    removed = []
    try:
        base = tracefs()
    except HostError:
        return removed
    for events in ("kprobe_events", "uprobe_events"):
        path = os.path.join(base, events)
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            m = _BCC_EVENT.match(line)
            if not m or os.path.exists(f"/proc/{m['pid']}"):
                continue
            try:
                write_tracefs(path, f"-:{m['group']}/{m['name']}\n")
                removed.append(m["name"])
            except OSError:
                pass  # still enabled by someone, or not ours to remove
    return removed


def write_tracefs(path: str, line: str) -> None:
    """Append a command to a tracefs control file (Python's "a" mode seeks, which tracefs refuses)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
