"""A probed file opened once, and named from then on by its descriptor (/proc/self/fd/N): its ELF
is read and its uprobe attached through that name, so every step acts on the same file.

A container's file is reached through /proc/<pid>/root, whose directories belong to the
container: between the agent resolving /app/bin/server and attaching to it, the tenant could make
/app a symlink to /host/usr/bin, and a path walked again by the agent's own kernel lookup would then
lead to the node's containerd (an absolute symlink is resolved against the walker's root, the
agent's, where the node's / is mounted at /host), with a uprobe at an offset read from the tenant's
file. Such paths are therefore opened with openat2(RESOLVE_IN_ROOT): the kernel resolves every
component, symlinks and `..` included, inside the container's root, in one step."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re

NR_OPENAT2 = 437                      # the same number on every architecture (asm-generic)
RESOLVE_NO_MAGICLINKS, RESOLVE_IN_ROOT = 0x02, 0x10
log = logging.getLogger(__name__)
_IN_CONTAINER = re.compile(r"(/proc/\d+/root)(/.*)")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def open_in_root(root: str, path: str) -> int:
    """A read-only descriptor of `path` resolved inside `root` (OSError if it cannot be: ENOSYS
    before Linux 5.6, ENOENT where the container has no such file)."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        how = _OpenHow(os.O_RDONLY | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        fd = _libc.syscall(ctypes.c_long(NR_OPENAT2), ctypes.c_int(root_fd), ctypes.c_char_p(path.encode()),
                           ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{os.strerror(err)} (resolving {path} inside {root})")
        return fd
    finally:
        os.close(root_fd)


_warned = False


def _open_in_container(root: str, inside: str, path: str) -> int:
    """Before Linux 5.6 (no openat2) the path is opened as it is: the caller's check that it is still
    the file found (device, inode) then leaves only the moment between finding it and that check."""
    global _warned
    try:
        return open_in_root(root, inside)
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise
        if not _warned:
            _warned = True
            log.warning("openat2 is missing (Linux < 5.6): containers' files are opened by path, checked to be "
                        "the file found")
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


class Pin:
    """`path` opened: `.path` names that very file for as long as the pin is open (a uprobe placed
    through it keeps it open while placed, so its name is never another file's), `.stat` is its."""

    def __init__(self, path: str):
        m = _IN_CONTAINER.fullmatch(path)
        self.fd = _open_in_container(m.group(1), m.group(2), path) if m else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.path = f"/proc/self/fd/{self.fd}"
        self.stat = os.fstat(self.fd)

    @property
    def key(self) -> tuple[int, int]:
        return self.stat.st_dev, self.stat.st_ino

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
