"""Which hook a probe attaches with, and why: the cheapest one that can see what the probe reads.

A tracepoint probe that reads no event field (no groupBy, value or filter on a field of the event;
comm, pid, tid, uid and gid come from the current task, not the event) attaches as a raw tracepoint:
the BPF program is called straight from the tracepoint with its raw arguments, skipping the perf
event and the typed record the classic tracepoint fills first (docs/benchmarks.md, section 1c).
Syscall tracepoints (syscalls:sys_enter_NAME, sys_exit_NAME) stay classic: the kernel has no raw
tracepoint by those names (every syscall goes through one, raw_syscalls:sys_enter), and counting one
syscall there would run the program on every syscall of the node. Kernel functions: fentry/fexit
over kprobe/kretprobe where the kernel allows it (features.py). `attach:` forces either. Pure but for
raw_tracepoint_exists(), which reads /proc/kallsyms once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from probeset_api.schema import TASK_FIELDS

TRACEPOINT, RAW_TRACEPOINT = "tracepoint", "raw_tracepoint"
# Tracepoint categories whose events are not raw tracepoints of the same name.
NOT_RAW_CATEGORIES = ("syscalls",)


@dataclass(frozen=True)
class HookChoice:
    mechanism: str | None        # None: the probe cannot attach as asked
    reason: str                  # why this hook (or why not), for `probeset check` and the log


def event_fields_read(group_by: tuple[str, ...], value: str | None, filter_fields: dict[str, str]) -> list[str]:
    """The event fields a tracepoint probe reads: groupBy labels other than comm, its value, and
    the filter's fields that resolved to the event (`filter_fields`: field -> source; a task field
    the event also has is the event's)."""
    read = [label for label in group_by if label != "comm"]
    if value is not None:
        read.append(value)
    read += [f for f, source in filter_fields.items() if source not in TASK_FIELDS]
    return list(dict.fromkeys(read))


def choose_tracepoint_hook(attach: str, tracepoints: list[str], fields_read: list[str],
                           raw_exists) -> HookChoice:
    """The hook of a tracepoint probe matching `tracepoints` (CATEGORY:NAME each; one hook for all,
    so the probe has one `via`), with `attach` auto | tracepoint | raw_tracepoint.
    `raw_exists(name)` says whether the kernel has a raw tracepoint NAME."""
    if attach == TRACEPOINT:
        return HookChoice(TRACEPOINT, "attach: tracepoint (forced)")
    why_not = None
    if fields_read:
        why_not = (f"it reads event field{'s' if len(fields_read) > 1 else ''} {', '.join(fields_read)}, "
                   "which only the classic tracepoint's typed record holds")
    else:
        for tp in tracepoints:
            category, _, name = tp.partition(":")
            if category in NOT_RAW_CATEGORIES:
                why_not = (f"{tp} is a syscall tracepoint: no raw tracepoint has its name (all syscalls share "
                           "raw_syscalls:sys_enter/sys_exit)")
                break
            if not raw_exists(name):
                why_not = f"this kernel has no raw tracepoint {name} (for {tp})"
                break
    if attach == RAW_TRACEPOINT:
        if why_not:
            return HookChoice(None, f"attach: raw_tracepoint is impossible: {why_not}; use attach: auto or tracepoint")
        return HookChoice(RAW_TRACEPOINT, "attach: raw_tracepoint (forced)")
    if why_not:
        return HookChoice(TRACEPOINT, f"auto: classic tracepoint, since {why_not}")
    return HookChoice(RAW_TRACEPOINT, "auto: it reads no event field, so a raw tracepoint (no perf-event "
                                      "dispatch, no record to fill) sees all it needs")


def kernel_hook_reason(attach: str, mechanism: str, fentry_reason: str) -> str:
    """Why a kprobe-family probe got `mechanism` (fentry or kprobe) with `attach`."""
    if attach != "auto":
        return f"attach: {attach} (forced)"
    if mechanism == "fentry":
        return "auto: fentry/fexit (BPF trampoline: no trap, no kretprobe instance pool), which this kernel allows"
    return f"auto: kprobe, since fentry is not usable here ({fentry_reason})" if fentry_reason else "auto: kprobe"


@functools.lru_cache(maxsize=1)
def _raw_tracepoint_names() -> frozenset[str] | None:
    """Names of this kernel's tracepoints (each has a __traceiter_NAME function, which is what a raw
    tracepoint calls into), from /proc/kallsyms; None when it cannot be read."""
    names = set()
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                at = line.find(" __traceiter_")
                if at >= 0:
                    names.add(line[at + 13:].split()[0])
    except OSError:
        return None
    return frozenset(names) or None


def raw_tracepoint_exists(name: str) -> bool:
    """Whether BPF_RAW_TRACEPOINT_OPEN would find `name` (module tracepoints included, as kallsyms
    lists them); when kallsyms cannot tell, assume it exists (attach then says if not)."""
    names = _raw_tracepoint_names()
    return names is None or name in names
