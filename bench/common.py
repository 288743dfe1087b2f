"""Shared helpers of the benchmarks: build the C driver, run it pinned to one CPU, load a ProbeSet
or a hand-written BCC program, and read the kernel's per-program BPF statistics."""

from __future__ import annotations

import contextlib
import json
import os
import re
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = BENCH / "build"
DRIVER = BUILD / "driver"
DRIVER_CPU = str((os.cpu_count() or 1) - 1)   # the driver runs pinned here, the agent anywhere

sys.path[:0] = [str(ROOT / "agent"), str(ROOT / "api")]   # run from a checkout even without the venv's install


def build_driver() -> str:
    """Compile bench/driver.c (gcc -O2) unless the binary is newer than the source."""
    src = BENCH / "driver.c"
    BUILD.mkdir(exist_ok=True)
    if not DRIVER.exists() or DRIVER.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(DRIVER), str(src)], check=True)
    return str(DRIVER)


def run_driver(mode: str, n: int) -> float:
    """Wall ns per operation, as measured inside the driver (no process start-up in it). The driver
    runs pinned to one CPU with SCHED_FIFO priority, so other processes on a shared machine do not
    preempt it mid-run (keep runs under ~0.9 s: RT throttling allows 95% of each second)."""
    out = subprocess.run(["chrt", "-f", "50", "taskset", "-c", DRIVER_CPU, str(DRIVER), mode, str(n)],
                         check=True, capture_output=True, text=True).stdout
    return float(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int, timeout: float = 5.0) -> bytes | None:
    """The body of an agent's /metrics on this host, or None (not serving yet, or not 200)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
            return r.read() if r.status == 200 else None
    except OSError:
        return None


def median(xs) -> float:
    return statistics.median(xs)


def cpu_ms(fn, repeat: int) -> list[float]:
    """This process's CPU ms for each of `repeat` calls of fn (warm it up first if it needs it)."""
    out = []
    for _ in range(repeat):
        c0 = time.process_time()
        fn()
        out.append((time.process_time() - c0) * 1e3)
    return out


def machine() -> str:
    """CPUs, their model with family and model numbers (a VM's model name can be only "AMD EPYC":
    machines of one name measured 2.3x apart at the same pure-Python work, docs/benchmarks.md 2),
    kernel and BCC."""
    cpus = os.cpu_count()
    info: dict[str, str] = {}
    for line in open("/proc/cpuinfo"):
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    model = f"{info.get('model name', '?')}, family {info.get('cpu family', '?')} model {info.get('model', '?')}"
    import bcc
    return f"{cpus} CPUs ({model}), kernel {platform.release()}, BCC {getattr(bcc, '__version__', '?')}"


def loadavg() -> str:
    """The 1-minute load average: other work on the machine shows up in the numbers."""
    return open("/proc/loadavg").read().split()[0]


def fdinfo_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a loaded BPF program, from /proc/self/fdinfo."""
    stats = {}
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            k, _, v = line.partition(":")
            stats[k.strip()] = v.strip()
    return int(stats.get("run_time_ns", 0)), int(stats.get("run_cnt", 0))


@contextlib.contextmanager
def bpf_stats_enabled():
    """kernel.bpf_stats_enabled=1 for the duration, then back to its previous value."""
    path = "/proc/sys/kernel/bpf_stats_enabled"
    old = open(path).read().strip()
    subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=1"], check=True)
    try:
        yield
    finally:
        subprocess.run(["sysctl", "-q", "-w", f"kernel.bpf_stats_enabled={old}"], check=True)


class Generated:
    """A one-probe ProbeSet through the agent's own code path (resolve, generate, compile, attach)."""

    def __init__(self, name: str, probe: dict, labels=("node",), max_series: int | None = None):
        spec = {"labels": list(labels), "probes": [{"name": "p", **probe}]}
        if max_series:
            spec["maxSeriesPerProbe"] = max_series
        self.name = name
        self.doc = {"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet",
                    "metadata": {"name": "bench-" + re.sub(r"[^a-z0-9]+", "-", name)}, "spec": spec}
        self.prog = None

    def start(self):
        from probeset_agent.program import ProbeSetProgram
        from probeset_api.spec import parse_probeset
        self.prog = ProbeSetProgram(parse_probeset(self.doc), node="bench")
        self.prog.start()
        bad = [st.error for st in self.prog.probe_statuses() if st.error or not all(st.functions.values())]
        if bad:
            raise RuntimeError(f"{self.name}: probe did not attach: {bad}")

    def stop(self):
        self.prog.stop()

    # Detach and re-attach the loaded program, so that repetitions do not recompile: start() once,
    # then attach()/detach() around each run. uprobes go through the agent's own placements
    # (UprobeLinks: uprobe_multi links where the kernel has them, else BCC's perf events).
    _events: list[bytes] | None = None           # our placements; None: the agent's, from start()

    def detach(self):
        bpf = self.prog.bpf
        for point in self.prog.program.attach_points:
            if point.mechanism == "tracepoint":
                bpf.detach_tracepoint(tp=point.site.tracepoint)
            elif point.mechanism == "raw_tracepoint":
                bpf.detach_raw_tracepoint(tp=point.site.tracepoint.partition(":")[2])
            elif point.mechanism == "kprobe":
                bpf.detach_kprobe(event=point.site.kernel_function)
            elif point.mechanism == "fentry":
                bpf.detach_kfunc(fn_name=point.fn_name)
            elif self._events is None and not self.prog.links.links:
                bpf.detach_uprobe(name=point.site.path, addr=point.site.address)
        if self._events is None and self.prog.links.links:
            self.prog.links.close_all()
        for event in self._events or []:
            self.prog.links.detach(event)
        self._events = []

    def attach(self):
        bpf = self.prog.bpf
        for point in self.prog.program.attach_points:
            if point.mechanism == "uprobe":
                self._events += self.prog.links.place(point, point.site.path, point.site.address)
            elif point.mechanism == "raw_tracepoint":
                bpf.attach_raw_tracepoint(tp=point.site.tracepoint.partition(":")[2], fn_name=point.fn_name)
            elif point.mechanism == "kprobe":
                bpf.attach_kprobe(event=point.site.kernel_function, fn_name=point.fn_name)
            elif point.mechanism == "fentry":
                bpf.attach_kfunc(fn_name=point.fn_name)
            else:
                bpf.attach_tracepoint(tp=point.site.tracepoint, fn_name=point.fn_name)

    @property
    def hook(self) -> str:
        """The hook and map the agent chose: what this variant measures."""
        rp = self.prog.compiled[0]
        return f"{rp.via}, {self.prog.program.shapes[rp.id].counts}"

    def count(self) -> int:
        return sum(s.count for series in self.prog.read_series().values() for s in series)

    def stats(self) -> tuple[int, int]:
        """(run_time_ns, run_cnt) summed over the probe's programs (a glob has one per function)."""
        stats = self.prog.read_program_stats()
        return sum(ns for _, ns, _ in stats), sum(cnt for _, _, cnt in stats)


class HandWritten:
    """The minimal BCC program doing the same count: a per-CPU hash, u32 key, u64 counter; on a glob
    of uprobes, one such function per probed function (key = its index), as one writes it by hand."""

    TEXT = """
BPF_PERCPU_HASH(counts, u32, u64, 8);
"""
    FUNC = """
int count_event_@I@(CTX ctx) {
    u32 key = @I@;
    u64 *val = counts.lookup(&key);
    if (val) {
        (*val)++;
    } else {
        u64 one = 1;
        counts.update(&key, &one);
    }
    return 0;
}
"""

    EMPTY = """
int count_event_@I@(CTX ctx) {
    return 0;
}
"""

    def __init__(self, name: str, uprobe: tuple[str, str] | None = None, tracepoint: str | None = None,
                 uprobes: list[tuple[str, str]] | None = None, kprobe: str | None = None, fentry: str | None = None,
                 empty: bool = False):
        """`empty`: a program that counts nothing (returns at once): the floor of the hook's cost."""
        self.name, self.tracepoint, self.kprobe, self.fentry = name, tracepoint, kprobe, fentry
        self.empty = empty
        if empty:
            self.FUNC = self.EMPTY
        self.uprobes = uprobes or ([uprobe] if uprobe else [])
        self.bpf = None
        hook = 'tracepoint' if tracepoint else 'kprobe' if kprobe else 'fentry' if fentry else 'uprobe'
        self.hook = f"{hook}, {'no map' if empty else 'hash'}"

    def start(self):
        from bcc import BPF
        ctx = "struct pt_regs *" if self.uprobes or self.kprobe else "void *"
        funcs = "".join(self.FUNC.replace("@I@", str(i)) for i in range(max(1, len(self.uprobes))))
        if self.fentry:     # BCC attaches KFUNC_PROBE functions itself when it loads them
            funcs = funcs.replace("int count_event_0(CTX ctx)", f"KFUNC_PROBE({self.fentry})")
            self.bpf = BPF(text=self.TEXT + funcs)
            return
        self.bpf = BPF(text=self.TEXT + funcs.replace("CTX ", ctx))
        self.attach()

    @property
    def _fn0(self) -> bytes:
        return f"kfunc__{self.fentry}".encode() if self.fentry else b"count_event_0"

    def stop(self):
        self.bpf.cleanup()

    def attach(self):
        for i, (path, sym) in enumerate(self.uprobes):
            self.bpf.attach_uprobe(name=path, sym=sym, fn_name=f"count_event_{i}")
        if self.tracepoint:
            self.bpf.attach_tracepoint(tp=self.tracepoint, fn_name="count_event_0")
        if self.kprobe:
            self.bpf.attach_kprobe(event=self.kprobe, fn_name="count_event_0")
        if self.fentry:
            self.bpf.attach_kfunc(fn_name=self._fn0)

    def detach(self):
        for path, sym in self.uprobes:
            self.bpf.detach_uprobe(name=path, sym=sym)
        if self.tracepoint:
            self.bpf.detach_tracepoint(tp=self.tracepoint)
        if self.kprobe:
            self.bpf.detach_kprobe(event=self.kprobe)
        if self.fentry:
            self.bpf.detach_kfunc(fn_name=self._fn0)

    def count(self) -> int:
        if self.empty:      # counts nothing (run_attached does not check it)
            return 0
        return sum(sum(per_cpu) for per_cpu in self.bpf["counts"].values())

    def stats(self) -> tuple[int, int]:
        names = [self._fn0] + [f"count_event_{i}".encode() for i in range(1, len(self.uprobes))]
        out = [fdinfo_stats(self.bpf.funcs[name].fd) for name in names]
        return sum(ns for ns, _ in out), sum(cnt for _, cnt in out)


def save_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2) + "\n")
