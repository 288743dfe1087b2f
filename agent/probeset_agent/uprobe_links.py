"""uprobes as uprobe_multi BPF links (Linux >= 6.6), falling back to BCC's perf-event uprobes.

Why: the kernel releases a perf-event uprobe under a global mutex and waits for a grace period
inside it, ~107 ms each, one at a time (bench/detach.py): an agent holding 1,000 uprobes needed
~110 s to stop. A link is released without that mutex, so links closed from many threads share
their grace periods: 300 in 0.6 s. Each placement is one link (one program, one file, one offset:
the file offset of the function, which a link takes where BCC takes the virtual address).
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import platform
from concurrent.futures import ThreadPoolExecutor

from . import elf, host
from .codegen import AttachPoint
from .uprobe_entry import entry_address

log = logging.getLogger(__name__)

BPF_LINK_CREATE = 28
BPF_TRACE_UPROBE_MULTI = 48
BPF_F_UPROBE_MULTI_RETURN = 1
CLOSE_THREADS = 32
_NAMES = itertools.count(1)
_libc = ctypes.CDLL(None, use_errno=True)


def _link_create(prog_fd: int, path: str, offset: int, ret: bool, ref_ctr: int = 0) -> int:
    """BPF_LINK_CREATE of a uprobe_multi link with one offset (union bpf_attr, link_create); `ref_ctr`:
    the file offset of a USDT probe's semaphore, which the kernel raises while the link exists."""
    attr = (ctypes.c_uint8 * 128)()
    base = ctypes.addressof(attr)
    c_path = ctypes.create_string_buffer(path.encode())
    offsets = (ctypes.c_uint64 * 1)(offset)
    ref_ctrs = (ctypes.c_uint64 * 1)(ref_ctr)
    for at, value in ((0, ctypes.c_uint32(prog_fd)), (8, ctypes.c_uint32(BPF_TRACE_UPROBE_MULTI)),
                      (16, ctypes.c_uint64(ctypes.addressof(c_path))), (24, ctypes.c_uint64(ctypes.addressof(offsets))),
                      (32, ctypes.c_uint64(ctypes.addressof(ref_ctrs) if ref_ctr else 0)),
                      (48, ctypes.c_uint32(1)), (52, ctypes.c_uint32(BPF_F_UPROBE_MULTI_RETURN if ret else 0))):
        ctypes.memmove(base + at, ctypes.byref(value), ctypes.sizeof(value))
    fd = _libc.syscall(host.NR_BPF[platform.machine()], BPF_LINK_CREATE, attr, ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


class UprobeLinks:
    """The uprobe placements of one BPF program: links where the kernel has them, else BCC's.
    Events are names: a link's is ours (`link<N>:...`), a perf uprobe's BCC's."""

    def __init__(self, bpf):
        self.bpf = bpf
        self.links: dict[bytes, int] = {}
        self.usable: bool | None = None        # None: not tried yet

    def place(self, point: AttachPoint, path: str, address: int) -> list[bytes]:
        from bcc import BPF
        fn_name = point.fn_name.encode()
        address = entry_address(path, address, point.movable)   # past endbr64 and more: uprobe_entry.py
        if self.usable is not False and host.NR_BPF.get(platform.machine()):
            try:
                fn = self.bpf.load_func(fn_name, BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
                ref_ctr = elf.file_offset(path, point.site.semaphore) if point.site.semaphore else 0
                fd = _link_create(fn.fd, path, elf.file_offset(path, address), point.mechanism == "uretprobe",
                                  ref_ctr)
                self.usable = True
                name = b"link%d:%s:%s" % (next(_NAMES), fn_name, os.path.basename(path).encode())
                self.links[name] = fd
                return [name]
            except Exception as e:   # bcc's bare Exception (load), OSError (link), HostError (the file)
                if self.usable:
                    raise            # links work here: this placement's own failure
                log.info("uprobe_multi links unavailable (%s): perf-event uprobes instead", e)
                self.usable = False
                self.bpf.funcs.pop(fn_name, None)    # loaded for links: load again for perf events
        if point.site.semaphore:
            raise RuntimeError(f"USDT probe {point.site.function} has a semaphore, which this agent raises through "
                               "uprobe_multi links only (Linux 6.6 and later)")
        before = set(self.bpf.uprobe_fds)
        attach = self.bpf.attach_uprobe if point.mechanism == "uprobe" else self.bpf.attach_uretprobe
        attach(name=path.encode(), addr=address, fn_name=fn_name)
        return [ev for ev in self.bpf.uprobe_fds if ev not in before]

    def detach(self, event: bytes) -> None:
        fd = self.links.pop(event, None)
        if fd is not None:
            os.close(fd)
        else:
            self.bpf.detach_uprobe_event(event)

    def close_all(self) -> None:
        """Release every link at once: their grace periods overlap."""
        fds, self.links = list(self.links.values()), {}
        if fds:
            with ThreadPoolExecutor(min(CLOSE_THREADS, len(fds))) as pool:
                list(pool.map(os.close, fds))

    def count(self) -> int:
        return len(self.links)
