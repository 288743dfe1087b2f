"""A ProbeSet on this host: resolve, generate, compile, attach, read, detach.

Failures stay local: a probe that does not resolve, compile, load or attach is reported with the
exact reason and the other probes of the set keep working.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
import threading
from dataclasses import dataclass, field

from . import codegen
from .codegen import MISSED_REASONS, OVERFLOW_FUNC, AttachPoint, key_uses_cgroup
from .features import Features
from .loader import compile_program
from .maps import read_raw
from .resolve import ResolvedProbe, resolve
from .spec import ProbeSet

log = logging.getLogger(__name__)

OVERFLOW_LABEL = "__overflow__"


def default_max_active() -> int:
    """The kernel's own default kretprobe pool, max(10, 2 * CPUs). We always pass it explicitly:
    BCC then creates the kretprobe through tracefs, where the kernel reports its misses."""
    return max(10, 2 * (os.cpu_count() or 1))


@dataclass
class ProbeStatus:
    name: str
    index: int
    kind: str
    via: str = ""
    targets: list[str] = field(default_factory=list)
    functions: dict[str, bool] = field(default_factory=dict)   # function label -> attached
    error: str | None = None

    @property
    def attached(self) -> bool:
        return self.error is None or any(self.functions.values())

    def as_dict(self) -> dict:
        out = {"name": self.name, "attached": self.attached, "attachedVia": self.via or None,
               "functions": sum(self.functions.values())}
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class Series:
    labels: dict[str, str]
    text: str                                # the labels rendered for the exposition: {a="b",...}
    count: int
    sum_ns: int = 0
    buckets: dict[int, int] | None = None    # latency bucket index -> count


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_text(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels.items()) + "}"


_OVERFLOW_KEY_PREFIX = OVERFLOW_FUNC.to_bytes(4, "little")


def missing_kernel_headers() -> str | None:
    """Why BCC cannot compile here, said plainly, or None. BCC compiles against the running kernel's
    headers at /lib/modules/$(uname -r)/build (or $BCC_KERNEL_SOURCE); in a pod they come from the
    node through the /lib/modules and /usr/src host mounts."""
    release = os.uname().release
    source = os.environ.get("BCC_KERNEL_SOURCE") or f"/lib/modules/{release}/build"
    if os.path.isdir(os.path.join(source, "include")):
        return None
    return (f"kernel headers for {release} not found at {source}: install linux-headers-{release} "
            "(or the distribution's equivalent) on the node")


class ProbeSetProgram:
    def __init__(self, pset: ProbeSet, node: str, features: Features | None = None,
                 attribution=None):
        self.pset = pset
        self.node = node
        self.attribution = attribution
        self.resolved: list[ResolvedProbe] = resolve(pset, features)
        self.status: dict[int, ProbeStatus] = {}
        for bad in pset.rejected:
            self.status[bad.index] = ProbeStatus(name=bad.name, index=bad.index, kind="", error=bad.reason)
        for rp in self.resolved:
            self.status[rp.id] = ProbeStatus(rp.probe.name, rp.id, rp.probe.kind, rp.via,
                                             rp.describe_sites(), {f: False for f in rp.functions}, rp.error)
        self.bpf = None
        self.program: codegen.Program | None = None
        # probe id -> raw map key -> (labels, rendered labels); kept across scrapes so a scrape
        # decodes only keys it has not seen. invalidate_labels() drops it (attribution changed).
        self._label_cache: dict[int, dict[bytes, tuple[dict[str, str], str]]] = {}
        self.attached_points: list[AttachPoint] = []
        self._lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------------

    def _generate(self, probes: list[ResolvedProbe]) -> codegen.Program:
        return codegen.generate(probes, self.pset.labels, self.pset.max_series_per_probe)

    def render(self) -> str:
        return self._generate(self.resolved).text

    def _usable(self) -> list[ResolvedProbe]:
        return [rp for rp in self.resolved if rp.ok and self.status[rp.id].error is None]

    def _compile_usable(self) -> str:
        """Compile the probes still usable into self.bpf; the error, or "" on success."""
        usable = self._usable()
        if not usable:
            return ""
        self.program = self._generate(usable)
        self.bpf, error = compile_program(self.program.text)
        return error

    def compile(self) -> bool:
        """Compile the usable probes into self.bpf, reporting the ones that cannot be (kernel headers
        missing, or a probe whose C fails: it is found by compiling each alone). True if any compiled."""
        missing = missing_kernel_headers()
        if missing:
            for rp in self._usable():
                self.status[rp.id].error = missing
            return False
        error = self._compile_usable()
        if error:
            log.warning("probeset %s: %s; isolating the failing probe(s)", self.pset.name, error)
            for rp in self._usable():
                bpf, err = compile_program(self._generate([rp]).text)
                if bpf is None:
                    self.status[rp.id].error = err
                else:
                    bpf.cleanup()
            error = self._compile_usable()
            if error:
                for rp in self._usable():
                    self.status[rp.id].error = error
                return False
        return self.bpf is not None

    def start(self) -> None:
        if not self.compile():
            return
        for rp in self._usable():
            self._prepare_maps(rp)
        for point in self.program.attach_points:
            self._attach(point)

    def _prepare_maps(self, rp: ResolvedProbe) -> None:
        # Open every table now: BCC reads /sys/devices/system/cpu/possible when it opens a per-CPU
        # table, and a scrape should touch nothing but the maps.
        if rp.probe.latency:
            self.bpf[f"hist_p{rp.id}"]
        self.bpf["missed"]
        counts = self.bpf[f"counts_p{rp.id}"]
        key = counts.Key()
        key.func = OVERFLOW_FUNC
        counts[key] = counts.Leaf()    # the overflow series always has a slot
        if rp.probe.comm is not None:
            table = self.bpf[f"comm_filter_p{rp.id}"]
            want = table.Leaf()
            want.c = rp.probe.comm.encode()[:15]
            table[table.Key(0)] = want

    def _attach(self, point: AttachPoint) -> None:
        site, fn = point.site, point.fn_name.encode()
        try:
            if point.mechanism == "kprobe":
                self.bpf.attach_kprobe(event=site.kernel_function.encode(), fn_name=fn)
            elif point.mechanism == "kretprobe":
                max_active = max((self._probe(p).probe.max_active or 0) for p in point.probes) or default_max_active()
                self.bpf.attach_kretprobe(event=site.kernel_function.encode(), fn_name=fn, maxactive=max_active)
            elif point.mechanism == "fentry":
                self.bpf.attach_kfunc(fn_name=fn)
            elif point.mechanism == "fexit":
                self.bpf.attach_kretfunc(fn_name=fn)
            elif point.mechanism == "uprobe":
                self.bpf.attach_uprobe(name=site.path.encode(), addr=site.address, fn_name=fn)
            elif point.mechanism == "uretprobe":
                self.bpf.attach_uretprobe(name=site.path.encode(), addr=site.address, fn_name=fn)
            elif point.mechanism == "tracepoint":
                self.bpf.attach_tracepoint(tp=site.tracepoint.encode(), fn_name=fn)
            else:
                raise AssertionError(point.mechanism)
        except Exception as e:   # bcc raises bare Exception with its own message
            reason = f"{point.mechanism} {site.function}: {e}"
            log.warning("probeset %s: %s", self.pset.name, reason)
            for pid in point.probes:
                st = self.status[pid]
                st.functions[site.function] = False
                st.error = st.error or reason
            return
        self.attached_points.append(point)
        for pid in point.probes:
            st = self.status[pid]
            # A latency function counts as attached only when both its entry and return are.
            pair_ok = all(p in self.attached_points for p in self._points_of(pid, site.function))
            st.functions[site.function] = pair_ok

    def _points_of(self, probe_id: int, function: str) -> list[AttachPoint]:
        return [p for p in self.program.attach_points if probe_id in p.probes and p.site.function == function]

    def _probe(self, probe_id: int) -> ResolvedProbe:
        return next(rp for rp in self.resolved if rp.id == probe_id)

    def stop(self) -> None:
        with self._lock:
            if self.bpf is not None:
                self.bpf.cleanup()
                self.bpf = None
            self.attached_points = []

    # --- reading --------------------------------------------------------------------------------

    def probe_statuses(self) -> list[ProbeStatus]:
        return [self.status[i] for i in sorted(self.status)]

    def _decode_labels(self, rp: ResolvedProbe, key) -> tuple[dict[str, str], bool]:
        """(labels, settled): settled is False while the key's cgroup is not found yet."""
        labels = {"probeset": self.pset.name, "probe": rp.probe.name}
        settled = True
        if key.func == OVERFLOW_FUNC:
            # The overflow series carries no event labels: its events came from anywhere.
            labels["function"] = OVERFLOW_LABEL
            labels.update({name: "" for name in self.pset.labels})
            labels.update({name: "" for name in rp.probe.group_by})
            if "node" in labels:
                labels["node"] = self.node
            return labels, settled
        labels["function"] = rp.functions[key.func]
        for name in self.pset.labels:
            if name == "node":
                labels["node"] = self.node
            elif name == "comm":
                labels["comm"] = bytes(key.comm).split(b"\0", 1)[0].decode(errors="replace")
        if key_uses_cgroup(self.pset.labels):
            workload = self.attribution.workload(key.cgroup) if self.attribution else {}
            if workload is None:
                workload, settled = {}, False
            for name in ("namespace", "pod", "container"):
                if name in self.pset.labels:
                    labels[name] = workload.get(name, "")
        for i, label in enumerate(rp.probe.group_by):
            raw = getattr(key, f"g{i}")
            if label in rp.string_labels:
                labels[label] = bytes(raw).split(b"\0", 1)[0].decode(errors="replace")
                continue
            value = raw - (1 << 64) if label in rp.signed_labels and raw >= 1 << 63 else raw
            labels[label] = rp.symbols.get(label, {}).get(value, str(value))
        return labels, settled

    def invalidate_labels(self) -> None:
        """Forget decoded labels: call when what a cgroup id means (pod, container) has changed."""
        with self._lock:
            self._label_cache.clear()

    def _labels_for(self, rp: ResolvedProbe, cache: dict, raw: bytes, key_type) -> tuple[dict[str, str], str]:
        entry = cache.get(raw)
        if entry is None:
            labels, settled = self._decode_labels(rp, key_type.from_buffer_copy(raw))
            entry = (labels, label_text(labels))
            if settled:   # a cgroup not found yet is looked up again next scrape
                cache[raw] = entry
        return entry

    def read_series(self) -> dict[int, list[Series]]:
        """Per probe id: the series of its maps, per-CPU values summed, rows with equal labels merged
        (cgroup ids are recycled, and several may map to one workload)."""
        out: dict[int, list[Series]] = {}
        with self._lock:
            if self.bpf is None:
                return out
            for rp in self._usable():
                counts = self.bpf[f"counts_p{rp.id}"]
                cpus = counts.total_cpu
                value_fmt = struct.Struct(f"<{2 * cpus}Q")        # {count, sum_ns} per CPU
                cache = self._label_cache.setdefault(rp.id, {})
                merged: dict[str, Series] = {}
                for raw, value in read_raw(counts):
                    v = value_fmt.unpack(value)
                    count = sum(v[0::2])
                    if count == 0 and raw.startswith(_OVERFLOW_KEY_PREFIX):
                        continue
                    labels, text = self._labels_for(rp, cache, raw, counts.Key)
                    s = merged.get(text)
                    if s is None:
                        s = merged[text] = Series(labels, text, 0, 0, {} if rp.probe.latency else None)
                    s.count += count
                    s.sum_ns += sum(v[1::2])
                if rp.probe.latency:
                    key_size = ctypes.sizeof(counts.Key)     # hkey = {series key, u32 bucket, pad}
                    bucket_fmt = struct.Struct(f"<{cpus}Q")
                    for raw, value in read_raw(self.bpf[f"hist_p{rp.id}"]):
                        _, text = self._labels_for(rp, cache, raw[:key_size], counts.Key)
                        s = merged.get(text)
                        if s is None:
                            continue  # bucket written before its count: seen next scrape
                        bucket = int.from_bytes(raw[key_size:key_size + 4], "little")
                        s.buckets[bucket] = s.buckets.get(bucket, 0) + sum(bucket_fmt.unpack(value))
                out[rp.id] = list(merged.values())
        return out

    def read_missed(self) -> dict[tuple[int, str], int]:
        """(probe id, reason) -> events whose return could not be paired or recorded."""
        out: dict[tuple[int, str], int] = {}
        with self._lock:
            if self.bpf is None:
                return out
            table = self.bpf["missed"]
            for rp in self._usable():
                if not rp.probe.latency:
                    continue   # only entry/return pairing can miss in the program itself
                for r, reason in enumerate(MISSED_REASONS):
                    slot = rp.id * len(MISSED_REASONS) + r
                    out[(rp.id, reason)] = sum(table[table.Key(slot)])
            for (probe_id, reason), n in self._kernel_missed().items():
                out[(probe_id, reason)] = out.get((probe_id, reason), 0) + n
        return out

    def _kernel_missed(self) -> dict[tuple[int, str], int]:
        """kretprobe returns the kernel dropped for lack of instances (maxActive), from tracefs'
        kprobe_profile, for the kretprobes BCC created there."""
        points = {f"r_{p.site.kernel_function.replace('.', '_')}_bcc_{os.getpid()}": p
                  for p in self.attached_points if p.mechanism == "kretprobe"}
        if not points:
            return {}
        out = {(probe_id, "kretprobe_maxactive"): 0 for p in points.values() for probe_id in p.probes}
        for base in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
            try:
                with open(os.path.join(base, "kprobe_profile")) as f:
                    for line in f:
                        parts = line.split()
                        if len(parts) == 3 and parts[0] in points:
                            for probe_id in points[parts[0]].probes:
                                k = (probe_id, "kretprobe_maxactive")
                                out[k] = out.get(k, 0) + int(parts[2])
                return out
            except OSError:
                continue
        return out

    def read_program_stats(self) -> list[tuple[AttachPoint, int, int]]:
        """(attach point, run_time_ns, run_cnt) from each program's fdinfo; zero unless
        kernel.bpf_stats_enabled is on."""
        out = []
        with self._lock:
            if self.bpf is None:
                return out
            for point in self.attached_points:
                fn = self.bpf.funcs.get(point.fn_name.encode())
                if fn is None:
                    continue
                stats = {}
                try:
                    with open(f"/proc/self/fdinfo/{fn.fd}") as f:
                        for line in f:
                            k, _, v = line.partition(":")
                            stats[k.strip()] = v.strip()
                except OSError:
                    continue
                out.append((point, int(stats.get("run_time_ns", 0)), int(stats.get("run_cnt", 0))))
        return out

    def probe_names(self, point: AttachPoint) -> str:
        return "+".join(self._probe(p).probe.name for p in point.probes)
