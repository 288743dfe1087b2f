"""The agent's view of its own programs' health: events they could not record (probeset_missed_events_total)
and the CPU time they cost (probeset_bpf_run_seconds_total), read from the kernel."""

from __future__ import annotations

import os

from .attach import kretprobe_event
from .codegen import AttachPoint
from .layout import MISSED_REASONS, missed_slot

TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
# The kernel counts it per kretprobe for every task's calls on the node, before any program runs:
# a namespaced set does not show it (snapshot.take_snapshot).
KRETPROBE_MISSED = "kretprobe_maxactive"


def missed_in_program(table, latency_probes: list[int]) -> dict[tuple[int, str], int]:
    """(probe id, reason) -> events the program could not pair or record (the `missed` array);
    only entry/return pairing can miss in the program itself."""
    return {(probe_id, reason): sum(table[table.Key(missed_slot(probe_id, reason))])
            for probe_id in latency_probes for reason in MISSED_REASONS}


def missed_by_kernel(kretprobes: dict[str, AttachPoint]) -> dict[tuple[int, str], int]:
    """kretprobe returns the kernel dropped for lack of instances (maxActive), from tracefs'
    kprobe_profile, for the kretprobes BCC created there (`kretprobes`: tracefs event name ->
    its attach point)."""
    if not kretprobes:
        return {}
    out = {(probe_id, KRETPROBE_MISSED): 0 for p in kretprobes.values() for probe_id in p.probes}
    for base in TRACEFS_DIRS:
        try:
            with open(os.path.join(base, "kprobe_profile")) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 3 and parts[0] in kretprobes:
                        for probe_id in kretprobes[parts[0]].probes:
                            out[(probe_id, KRETPROBE_MISSED)] += int(parts[2])
            return out
        except OSError:
            continue
    return out


def run_stats(fd: int) -> tuple[int, int] | None:
    """(run_time_ns, run_cnt) of a loaded program from its fdinfo; zero unless
    kernel.bpf_stats_enabled is on; None if unreadable."""
    stats = {}
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                k, _, v = line.partition(":")
                stats[k.strip()] = v.strip()
    except OSError:
        return None
    return int(stats.get("run_time_ns", 0)), int(stats.get("run_cnt", 0))


def missed_events(bpf, compiled, attached_points: list[AttachPoint], instance: int) -> dict[tuple[int, str], int]:
    """(probe id, reason) -> events lost: in the program (pairing, histogram room) and by the
    kernel (kretprobe instances), for a program whose kretprobes carry `instance` in their names."""
    out = missed_in_program(bpf["missed"], [rp.id for rp in compiled if rp.probe.records_sum])
    kretprobes = {f"{kretprobe_event(p, instance).decode()}_bcc_{os.getpid()}": p
                  for p in attached_points if p.mechanism == "kretprobe"}
    for key, n in missed_by_kernel(kretprobes).items():
        out[key] = out.get(key, 0) + n
    return out


def program_stats(bpf, points: list[AttachPoint]) -> list[tuple[AttachPoint, int, int]]:
    """(attach point, run_time_ns, run_cnt) of each attached point's program."""
    out = []
    for point in points:
        fn = bpf.funcs.get(point.fn_name.encode())
        stats = run_stats(fn.fd) if fn is not None else None
        if stats is not None:
            out.append((point, *stats))
    return out
