"""Attaching a compiled program's functions with BCC, one attach point at a time, and preparing its
maps before the first event. Failures raise (BCC's bare Exception, or RuntimeError): the program
turns them into the probe's status."""

from __future__ import annotations

import itertools
import logging
import os

from probeset_api.schema import USER_KINDS

from .codegen import AttachPoint, attach_key
from .filtergen import comm_literals
from .layout import KeyLayout
from .mapshape import HASH, MapShape
from .resolve import ResolvedProbe

log = logging.getLogger(__name__)


# What the agent's attachment budget counts: what BCC's per-process probe quota counts, and fentry/
# fexit, which auto chooses in place of kprobes (each is a program and a trampoline of its own).
COUNTED = ("kprobe", "kretprobe", "uprobe", "uretprobe", "fentry", "fexit")


def counted_attachments(probes: list[ResolvedProbe]) -> set[tuple]:
    """The attach points of these probes that the budget counts (uprobes: the node's copy only)."""
    return {attach_key(s) for rp in probes for s in rp.sites
            if s.mechanism in COUNTED and (s.mechanism not in USER_KINDS or s.path)}


def default_max_active() -> int:
    """The kernel's own default kretprobe pool, max(10, 2 * CPUs). We always pass it explicitly:
    BCC then creates the kretprobe through tracefs, where the kernel reports its misses."""
    return max(10, 2 * (os.cpu_count() or 1))


def prepare_maps(bpf, rp: ResolvedProbe, layout: KeyLayout, shape: MapShape) -> None:
    """Open every table now (BCC reads /sys/devices/system/cpu/possible when it opens a per-CPU
    table, and a scrape should touch nothing but the maps); give the overflow series its slot (a
    hash's: an array never overflows); set the comm filters (the probe's comm, and the comm
    literals of its filter)."""
    if rp.probe.has_histogram:
        bpf[f"hist_p{rp.id}"]
    bpf["missed"]
    counts = bpf[f"counts_p{rp.id}"]
    if shape.counts == HASH:
        counts[counts.Key.from_buffer_copy(layout.overflow_key())] = counts.Leaf()
    if rp.probe.comm is not None:
        table = bpf[f"comm_filter_p{rp.id}"]
        want = table.Leaf()
        want.c = rp.probe.comm.encode()[:15]
        table[table.Key(0)] = want
    for slot, comm in enumerate(comm_literals(rp)):
        table = bpf[f"filter_comms_p{rp.id}"]
        want = table.Leaf()
        want.c = comm.encode()[:15]
        table[table.Key(slot)] = want


def kretprobe_event(point: AttachPoint, instance: int) -> bytes:
    """The tracefs name of a kretprobe: BCC's own (r_<function>) made unique per program, since BCC
    names it after the function and process only, and two ProbeSets of one process may probe the
    same function's return. libbcc appends _bcc_<pid>."""
    return f"r_{point.site.kernel_function.replace('.', '_')}_ps{instance}".encode()


def raw_tracepoint_name(point: AttachPoint) -> str:
    """The raw tracepoint of a CATEGORY:NAME tracepoint site: NAME (hooks.py checked it exists)."""
    return point.site.tracepoint.partition(":")[2]


def attach_point(bpf, point: AttachPoint, instance: int, max_active: int, place_node_copy) -> None:
    """Attach one point; uprobes go to the node's copy through `place_node_copy(point)` (the
    containers' copies are placed later, by the placement)."""
    site, fn = point.site, point.fn_name.encode()
    if point.mechanism == "kprobe":
        bpf.attach_kprobe(event=site.kernel_function.encode(), fn_name=fn)
    elif point.mechanism == "kretprobe":
        _attach_kretprobe(bpf, point, kretprobe_event(point, instance), max_active)
    elif point.mechanism == "fentry":
        bpf.attach_kfunc(fn_name=fn)
    elif point.mechanism == "fexit":
        bpf.attach_kretfunc(fn_name=fn)
    elif point.mechanism in USER_KINDS:
        if site.path:
            place_node_copy(point)
    elif point.mechanism == "tracepoint":
        bpf.attach_tracepoint(tp=site.tracepoint.encode(), fn_name=fn)
    elif point.mechanism == "raw_tracepoint":
        bpf.attach_raw_tracepoint(tp=raw_tracepoint_name(point).encode(), fn_name=fn)
    else:
        raise AssertionError(point.mechanism)


def _attach_kretprobe(bpf, point: AttachPoint, event: bytes, max_active: int) -> None:
    """BCC's attach_kretprobe() with a name of ours (libbcc creates <name>_bcc_<pid> in tracefs,
    because maxactive is given); registered with the BPF object so that cleanup() detaches it."""
    from bcc import lib
    fn = bpf.load_func(point.fn_name.encode(), bpf.KPROBE)
    fd = lib.bpf_attach_kprobe(fn.fd, 1, event, point.site.kernel_function.encode(), 0, max_active)
    if fd < 0:
        raise RuntimeError(f"cannot attach a kretprobe to {point.site.kernel_function} "
                           "(not traceable: inlined, marked notrace, or missing)")
    bpf._add_kprobe_fd(event, point.fn_name.encode(), fd)


def detach_point(bpf, point: AttachPoint) -> None:
    """Detach one kernel attach point of a running program (a probe retired by an edit; uprobes'
    copies are the placement's to detach). Raises as BCC does."""
    fn = point.fn_name.encode()
    if point.mechanism in ("kprobe", "kretprobe"):
        for event, fns in list(bpf.kprobe_fds.items()):
            if fn in fns:
                bpf.detach_kprobe_event_by_fn(event, fn)
    elif point.mechanism == "fentry":
        bpf.detach_kfunc(fn)
    elif point.mechanism == "fexit":
        bpf.detach_kretfunc(fn)
    elif point.mechanism == "tracepoint":
        bpf.detach_tracepoint(point.site.tracepoint.encode())
    elif point.mechanism == "raw_tracepoint":
        bpf.detach_raw_tracepoint(raw_tracepoint_name(point).encode())


def detach_all(bpf) -> None:
    """bpf.cleanup(), except that a probe which fails to detach (e.g. tracefs unmounted under a
    tracefs-made kretprobe or uprobe) is logged and forgotten, and every other one still detached."""
    kinds = [(bpf.kprobe_fds, bpf.detach_kprobe_event), (bpf.uprobe_fds, bpf.detach_uprobe_event),
             (bpf.tracepoint_fds, bpf.detach_tracepoint), (bpf.raw_tracepoint_fds, bpf.detach_raw_tracepoint),
             (bpf.kfunc_entry_fds, bpf.detach_kfunc), (bpf.kfunc_exit_fds, bpf.detach_kretfunc)]
    for fds, detach in kinds:
        for name in list(fds):
            try:
                detach(name)
            except Exception as e:   # bcc raises bare Exception
                log.warning("detaching %s: %s", name.decode(errors="replace") if isinstance(name, bytes) else name, e)
                fds.pop(name, None)
    try:
        bpf.cleanup()
    except Exception as e:
        log.warning("releasing the BPF program: %s", e)


_ASIDE = itertools.count(1)


def set_aside(bpf, events: list[bytes]) -> list[bytes]:
    """Rename uprobe events in BCC's table, so that attaching the same path and address again (a
    replaced file) does not overwrite them: their fds stay attached, and cleanup() still closes
    them. The new names."""
    aside = []
    for event in events:
        fd = bpf.uprobe_fds.pop(event, None)
        if fd is None:
            aside.append(event)      # not BCC's (a link: its name is unique already)
            continue
        name = b"%s_replaced%d" % (event, next(_ASIDE))
        bpf.uprobe_fds[name] = fd
        aside.append(name)
    return aside
