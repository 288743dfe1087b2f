"""What this kernel supports, found by trying (BPF.support_kfunc() says True on kernels that then
refuse to load fentry programs, e.g. under lockdown)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

# A function every kernel has and that is traceable both ways.
_TRIAL_FUNCTION = "vfs_read"
_TRIAL_C = f"""
int trial_kprobe(struct pt_regs *ctx) {{ return 0; }}
int kfunc__{_TRIAL_FUNCTION}(unsigned long long *ctx) {{ return 0; }}
"""


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


@functools.lru_cache(maxsize=1)
def detect() -> Features:
    from .loader import captured_stderr, compile_program
    bpf, error = compile_program(_TRIAL_C)
    if bpf is None:
        failed = Support(False, f"cannot compile a trial BPF program: {error}")
        return Features(failed, failed)
    try:
        kprobe = Support(True)
        try:
            with captured_stderr():
                bpf.attach_kprobe(event=_TRIAL_FUNCTION, fn_name="trial_kprobe")
        except Exception as e:
            kprobe = Support(False, _kprobe_absent_reason() or str(e))
        fentry = Support(True)
        try:
            with captured_stderr():   # libbcc prints the load error itself; we report it below
                bpf.attach_kfunc(fn_name=f"kfunc__{_TRIAL_FUNCTION}")
        except Exception as e:
            fentry = Support(False, _fentry_failure_reason(str(e)))
        return Features(kprobe, fentry)
    finally:
        bpf.cleanup()
