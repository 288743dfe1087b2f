"""What this kernel supports, found by trying (BPF.support_kfunc() says True on kernels that then
refuse to load fentry programs, e.g. under lockdown)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

# A function every kernel has and that is traceable both ways.
_TRIAL_FUNCTION = b"vfs_read"
# The smallest valid program, "r0 = 0; exit", loaded as raw instructions: no clang compile needed.
_TRIAL_INSNS = bytes.fromhex("b700000000000000" "9500000000000000")
_PROG_TYPE_KPROBE, _PROG_TYPE_TRACING = 2, 26


@dataclass(frozen=True)
class Support:
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class Features:
    kprobe: Support
    fentry: Support

    def choose_kernel_attach(self, wanted: str) -> tuple[str | None, str]:
        """(mechanism, reason) for a kprobe-family probe with `attach: wanted`; mechanism None = impossible."""
        if wanted == "fentry":
            return ("fentry", "") if self.fentry.ok else (None, f"fentry is not supported on this kernel: {self.fentry.reason}")
        if wanted == "kprobe":
            return ("kprobe", "") if self.kprobe.ok else (None, f"kprobes are not supported on this kernel: {self.kprobe.reason}")
        if self.fentry.ok:
            return "fentry", ""
        if self.kprobe.ok:
            return "kprobe", ""
        return None, (f"this kernel supports neither kprobes ({self.kprobe.reason}) "
                      f"nor fentry ({self.fentry.reason})")

    def as_dict(self) -> dict[str, str]:
        return {name: ("yes" if s.ok else f"no: {s.reason}") for name, s in
                (("kprobe", self.kprobe), ("fentry", self.fentry))}


def _kprobe_absent_reason() -> str | None:
    if os.path.isdir("/sys/bus/event_source/devices/kprobe"):
        return None
    for tracefs in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if os.path.exists(os.path.join(tracefs, "kprobe_events")):
            return None
    return "no kprobe PMU and no kprobe_events in tracefs (kernel built without CONFIG_KPROBES)"


def _fentry_failure_reason(error: str) -> str:
    # BCC words every EPERM as "Need super-user privileges to run", even for root.
    if "super-user" not in error and "not permitted" not in error:
        return error
    try:
        with open("/sys/kernel/security/lockdown") as f:
            lockdown = f.read().strip()
    except OSError:
        lockdown = "unknown"
    who = "as root" if os.geteuid() == 0 else "without root"
    return f"loading an fentry program {who} fails with EPERM; kernel lockdown: {lockdown}"


def _load_trial(prog_type: int, name: bytes) -> int:
    """A trial program's fd; BCC derives an fentry program's BTF target from its kfunc__ name."""
    import ctypes as ct
    from bcc.libbcc import lib
    lib.bcc_prog_load.restype = ct.c_int
    lib.bcc_prog_load.argtypes = [ct.c_int, ct.c_char_p, ct.c_void_p, ct.c_int, ct.c_char_p, ct.c_uint,
                                  ct.c_int, ct.c_char_p, ct.c_uint]
    insns = ct.create_string_buffer(_TRIAL_INSNS, len(_TRIAL_INSNS))
    fd = lib.bcc_prog_load(prog_type, name, insns, len(_TRIAL_INSNS), b"GPL", 0, 0, None, 0)
    if fd < 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err) if err else "load failed")
    return fd


def _try_kprobe() -> Support:
    from bcc.libbcc import lib
    fd = perf_fd = -1
    try:
        fd = _load_trial(_PROG_TYPE_KPROBE, b"trial_kprobe")
        perf_fd = lib.bpf_attach_kprobe(fd, 0, b"p_probeset_trial", _TRIAL_FUNCTION, 0, 0)
        if perf_fd < 0:
            return Support(False, _kprobe_absent_reason() or "attaching a kprobe to vfs_read failed")
        return Support(True)
    except OSError as e:
        return Support(False, f"loading a kprobe program failed: {e.strerror}")
    finally:
        if perf_fd >= 0:
            lib.bpf_close_perf_event_fd(perf_fd)
        if fd >= 0:
            os.close(fd)


def _try_fentry() -> Support:
    from bcc.libbcc import lib
    fd = link = -1
    try:
        fd = _load_trial(_PROG_TYPE_TRACING, b"kfunc__" + _TRIAL_FUNCTION)
        link = lib.bpf_attach_kfunc(fd)
        if link < 0:
            return Support(False, "attaching an fentry program to vfs_read failed")
        return Support(True)
    except OSError as e:
        return Support(False, _fentry_failure_reason(e.strerror))
    finally:
        for f in (link, fd):
            if f >= 0:
                os.close(f)


@functools.lru_cache(maxsize=1)
def detect() -> Features:
    """kprobe and fentry support, by loading and attaching a trivial program of each kind."""
    from .loader import captured_stderr
    with captured_stderr():    # libbcc prints load errors itself; the reasons are returned instead
        return Features(_try_kprobe(), _try_fentry())
