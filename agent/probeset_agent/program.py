"""A ProbeSet on this host: resolve, generate, compile, attach, read, detach.

Failures stay local: a probe that does not resolve, compile, load or attach is reported with the
exact reason and the other probes of the set keep working.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import struct
import threading
import time
from dataclasses import dataclass, field

from . import codegen, host
from .attribution import UNKNOWN, WORKLOAD_LABELS
from .codegen import MAX_ALLOWED_CGROUPS, MISSED_REASONS, OVERFLOW_FUNC, AttachPoint, key_uses_cgroup
from .features import Features
from .loader import compile_program
from .maps import read_raw
from .resolve import ResolvedProbe, UserTargets, resolve
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
_INSTANCES = itertools.count(1)
CGROUP_KEY_OFFSET = 8          # series key: u32 func, u32 pad, u64 cgroup, ...
USER_MECHANISMS = ("uprobe", "uretprobe")


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


def _add_series(s: Series, extra: Series) -> None:
    s.count += extra.count
    s.sum_ns += extra.sum_ns
    if s.buckets is not None and extra.buckets:
        for bucket, n in extra.buckets.items():
            s.buckets[bucket] = s.buckets.get(bucket, 0) + n


def _delete(table, raw: bytes) -> None:
    try:
        del table[table.Key.from_buffer_copy(raw)]
    except KeyError:
        pass   # already gone


class ProbeSetProgram:
    """`attribution` (attribution.Attribution) labels events by workload. `selection`
    (pods.PodSelection, cluster mode) limits the set to some pods: an in-kernel filter of their
    cgroup ids, and uprobes attached to each selected container's own copy of BINARY; the node's
    copy (seen through `host_root`) only when host processes are observed. refresh() keeps both
    current and ages out the series of vanished cgroups."""

    def __init__(self, pset: ProbeSet, node: str, features: Features | None = None,
                 attribution=None, selection=None, host_root: str = "/"):
        self.pset = pset
        self.node = node
        self.attribution = attribution
        self.selection = selection
        self.cgroup_filter = selection is not None and not selection.host
        if selection is not None and attribution is not None:
            attribution.rescan(force=True)
        targets = UserTargets(host_root, observe_host=selection is None or selection.host,
                              copies=self._copies_now)
        self.resolved: list[ResolvedProbe] = resolve(pset, features, targets)
        self.status: dict[int, ProbeStatus] = {}
        for bad in pset.rejected:
            self.status[bad.index] = ProbeStatus(name=bad.name, index=bad.index, kind="", error=bad.reason)
        for rp in self.resolved:
            self.status[rp.id] = ProbeStatus(rp.probe.name, rp.id, rp.probe.kind, rp.via,
                                             rp.describe_sites(), {f: False for f in rp.functions}, rp.error)
        if self.cgroup_filter and (attribution is None or not attribution.tree.root):
            for st in self.status.values():
                st.error = st.error or ("selecting pods needs the cgroup v2 hierarchy (cgroup ids of the pods), "
                                        "and none is mounted on this node")
        self.bpf = None
        self.program: codegen.Program | None = None
        self.compiled: list[ResolvedProbe] = []            # the probes in self.bpf (read even if partly failed)
        self._attach_errors: dict[int, str | None] = {}    # probe id -> its error once start() attached
        # probe id -> raw map key -> (labels, rendered labels); kept across scrapes so a scrape
        # decodes only keys it has not seen. Dropped when the attribution's version changes (names).
        self._label_cache: dict[int, dict[bytes, tuple[dict[str, str], str]]] = {}
        self._instance = next(_INSTANCES)     # tells this program's tracefs kretprobes from others'
        self._label_version = attribution.version if attribution is not None else 0
        self.attached_points: list[AttachPoint] = []
        self._allowed: set[int] = set()                    # cgroup ids in the allowed_cgroups map
        # uprobe attach point -> (device, inode) of each copy of its file -> BCC event names there
        self._copies: dict[str, dict[tuple[int, int], list[bytes]]] = {}
        self._node_copy: dict[str, tuple[int, int]] = {}   # attach point -> the node's copy
        self._lacking: dict[str, dict[tuple[int, int], str]] = {}   # attach point -> copies without its function
        self._addresses: dict[tuple, int | None] = {}      # ((dev, ino), function) -> address
        # Counts of map rows removed after their cgroup vanished, by label text: kept while other
        # rows share those labels, so a series never goes backwards (e.g. a restarted container).
        self._retired: dict[int, dict[str, Series]] = {}
        self._unknown_since: dict[int, float] = {}         # cgroup id -> when first seen unknown
        self.unknown_cgroups = 0                           # distinct unknown cgroup ids at the last scrape
        self._unknown_seen: set[int] = set()
        self._lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------------

    def _generate(self, probes: list[ResolvedProbe]) -> codegen.Program:
        return codegen.generate(probes, self.pset.labels, self.pset.max_series_per_probe, self.cgroup_filter)

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
        self.compiled = usable if self.bpf is not None else []
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
        for rp in self.compiled:
            self._prepare_maps(rp)
        for point in self.program.attach_points:
            self._attach(point)
        self._attach_errors = {i: st.error for i, st in self.status.items()}
        if self.selection is not None:
            self.refresh()

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
                self._attach_kretprobe(point, max_active)
            elif point.mechanism == "fentry":
                self.bpf.attach_kfunc(fn_name=fn)
            elif point.mechanism == "fexit":
                self.bpf.attach_kretfunc(fn_name=fn)
            elif point.mechanism in USER_MECHANISMS:
                if site.path:   # the node's copy; containers' copies are placed by refresh()
                    self._place(point, site.path, site.address)
                    st = os.stat(site.path)
                    self._node_copy[point.fn_name] = (st.st_dev, st.st_ino)
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

    def _kretprobe_event(self, point: AttachPoint) -> bytes:
        """The tracefs name of a kretprobe: BCC's own (r_<function>) made unique per program, since
        BCC names it after the function and process only, and two ProbeSets of one process may
        probe the same function's return."""
        function = point.site.kernel_function.replace(".", "_")
        return f"r_{function}_ps{self._instance}".encode()

    def _attach_kretprobe(self, point: AttachPoint, max_active: int) -> None:
        """BCC's attach_kretprobe() with a name of ours (libbcc creates <name>_bcc_<pid> in tracefs,
        because maxactive is given); registered with the BPF object so that cleanup() detaches it."""
        from bcc import lib
        fn = self.bpf.load_func(point.fn_name.encode(), self.bpf.KPROBE)
        event = self._kretprobe_event(point)
        fd = lib.bpf_attach_kprobe(fn.fd, 1, event, point.site.kernel_function.encode(), 0, max_active)
        if fd < 0:
            raise RuntimeError(f"cannot attach a kretprobe to {point.site.kernel_function} "
                               "(not traceable: inlined, marked notrace, or missing)")
        self.bpf._add_kprobe_fd(event, point.fn_name.encode(), fd)

    def _place(self, point: AttachPoint, path: str, address: int) -> list[bytes]:
        """Attach a uprobe point's function to one copy of its file; the BCC event names created."""
        before = set(self.bpf.uprobe_fds)
        attach = self.bpf.attach_uprobe if point.mechanism == "uprobe" else self.bpf.attach_uretprobe
        attach(name=path.encode(), addr=address, fn_name=point.fn_name.encode())
        return [ev for ev in self.bpf.uprobe_fds if ev not in before]

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
            workload = {}
            if self.attribution is not None:
                workload, settled = self.attribution.lookup(key.cgroup)
            for name in WORKLOAD_LABELS:
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

    def _labels_for(self, rp: ResolvedProbe, cache: dict, raw: bytes, key_type) -> tuple[dict[str, str], str]:
        """Labels of a raw map key, cached unless not settled yet. The cache stays as small as the
        maps: rows leave them only through _retire(), which drops their entries too."""
        entry = cache.get(raw)
        if entry is None:
            labels, settled = self._decode_labels(rp, key_type.from_buffer_copy(raw))
            entry = (labels, label_text(labels))
            if settled:
                cache[raw] = entry
            elif labels.get("pod") == UNKNOWN or labels.get("container") == UNKNOWN:
                self._unknown_seen.add(int.from_bytes(raw[CGROUP_KEY_OFFSET:CGROUP_KEY_OFFSET + 8], "little"))
        return entry

    def _sum_rows(self, rp: ResolvedProbe, into: dict[str, Series], keep=None) -> tuple[list[bytes], list[bytes]]:
        """Add the rows of a probe's maps (those `keep(raw key)` accepts; all by default) into
        `into`, by label text: per-CPU values summed, histogram buckets to their row's series. The
        raw keys taken: (count rows, histogram rows)."""
        counts = self.bpf[f"counts_p{rp.id}"]
        cpus = counts.total_cpu
        value_fmt = struct.Struct(f"<{2 * cpus}Q")        # {count, sum_ns} per CPU
        cache = self._label_cache.setdefault(rp.id, {})
        rows: dict[bytes, Series] = {}
        track = rp.probe.latency or keep is not None     # a plain scrape of counts needs no row list
        for raw, value in read_raw(counts):
            if keep is not None and not keep(raw):
                continue
            v = value_fmt.unpack(value)
            count = sum(v[0::2])
            if count == 0 and raw.startswith(_OVERFLOW_KEY_PREFIX):
                continue
            labels, text = self._labels_for(rp, cache, raw, counts.Key)
            s = into.get(text)
            if s is None:
                s = into[text] = Series(labels, text, 0, 0, {} if rp.probe.latency else None)
            s.count += count
            s.sum_ns += sum(v[1::2])
            if track:
                rows[raw] = s
        hist_rows = []
        if rp.probe.latency:
            key_size = ctypes.sizeof(counts.Key)     # hkey = {series key, u32 bucket, pad}
            bucket_fmt = struct.Struct(f"<{cpus}Q")
            for raw, value in read_raw(self.bpf[f"hist_p{rp.id}"]):
                s = rows.get(raw[:key_size])
                if s is None:
                    continue  # not taken, or a bucket written before its count: seen next time
                bucket = int.from_bytes(raw[key_size:key_size + 4], "little")
                s.buckets[bucket] = s.buckets.get(bucket, 0) + sum(bucket_fmt.unpack(value))
                hist_rows.append(raw)
        return list(rows), hist_rows

    def read_series(self) -> dict[int, list[Series]]:
        """Per probe id: the series of its maps, per-CPU values summed, rows with equal labels merged
        (several cgroups may map to one workload, e.g. a restarted container), plus the counts of
        rows refresh() retired under labels that still have rows."""
        out: dict[int, list[Series]] = {}
        with self._lock:
            if self.bpf is None:
                return out
            version = self.attribution.version if self.attribution is not None else 0
            if version != self._label_version:     # pods' names changed: decode again
                self._label_cache.clear()
                self._label_version = version
            self._unknown_seen = set()
            for rp in self.compiled:
                merged: dict[str, Series] = {}
                self._sum_rows(rp, merged)
                retired = self._retired.get(rp.id, {})
                for text in list(retired):
                    s = merged.get(text)
                    if s is None:
                        del retired[text]            # no row has these labels any more: the series ends
                        continue
                    _add_series(s, retired[text])
                out[rp.id] = list(merged.values())
            self.unknown_cgroups = len(self._unknown_seen)
        return out

    # --- keeping up with pods and cgroups ---------------------------------------------------

    def refresh(self) -> None:
        """Housekeeping, every few seconds and when pods change: the allowed-cgroups filter and the
        containers' uprobe copies follow the selected pods; rows of cgroups that vanished longer
        than the retention ago are removed from the maps."""
        with self._lock:
            if self.bpf is None:
                return
            snapshot = self._cgroup_rows()      # read before the rescan: see _retire
            if self.attribution is not None:
                self.attribution.rescan()
            if self.cgroup_filter:
                self._sync_filter()
            if self.selection is not None:
                self._sync_copies()
            if self.attribution is not None:
                self._retire(snapshot)

    def _sync_filter(self) -> None:
        wanted = self.attribution.tree.ids_of_pods(self.selection.uids())
        if len(wanted) > MAX_ALLOWED_CGROUPS:
            log.warning("probeset %s: %d selected cgroups, more than the filter's %d; the rest are not counted",
                        self.pset.name, len(wanted), MAX_ALLOWED_CGROUPS)
            wanted = set(sorted(wanted)[:MAX_ALLOWED_CGROUPS])
        table = self.bpf["allowed_cgroups"]
        for cgroup in wanted - self._allowed:
            table[table.Key(cgroup)] = table.Leaf(1)
        for cgroup in self._allowed - wanted:
            try:
                del table[table.Key(cgroup)]
            except KeyError:
                pass
        self._allowed = wanted

    def _container_roots(self) -> list[tuple[str, list[int]]]:
        """The selected pods' processes grouped by root file system (one group per container
        image, in effect), with a pod UID each group belongs to: any live process of a group shows
        that container's files."""
        groups: dict[tuple[int, int], tuple[str, list[int]]] = {}
        for uid in self.selection.uids():
            for pid in self.attribution.tree.pids_of_pod(uid):
                try:
                    st = os.stat(f"/proc/{pid}/root")
                except OSError:
                    continue   # ended
                groups.setdefault((st.st_dev, st.st_ino), (uid, []))[1].append(pid)
        return list(groups.values())

    def _copy_in(self, binary: str, pids: list[int]) -> tuple[str, os.stat_result] | None:
        """BINARY in the root these processes share, through the first of them that shows it (a few
        are tried: one may have just ended)."""
        for pid in pids[:3]:
            try:
                path = host.find_binary(binary, f"/proc/{pid}/root", pid)
                return path, os.stat(path)
            except (host.HostError, OSError):
                continue
        return None

    def _copies_now(self, binary: str) -> list[str]:
        if self.selection is None or self.attribution is None:
            return []
        return [found[0] for _, pids in self._container_roots() if (found := self._copy_in(binary, pids))]

    def _address_in(self, path: str, file_key: tuple[int, int], function: str) -> int | None:
        key = (file_key, function)
        if key not in self._addresses:
            try:
                found = dict(host.elf_functions(path, function))
            except host.HostError as e:
                log.warning("probeset %s: %s", self.pset.name, e)
                found = {}
            self._addresses[key] = found.get(function)
            if function not in found:
                log.warning("probeset %s: %s has no function %s: that copy is not probed (see the probe's status)",
                            self.pset.name, path, function)
        return self._addresses[key]

    def _sync_copies(self) -> None:
        points = self.user_points()
        if not points:
            return
        files: dict[str, dict[tuple[int, int], tuple[str, str]]] = {}   # binary -> file -> (path, where)
        groups = self._container_roots()
        for binary in {p.site.binary for p in points}:
            found = files[binary] = {}
            for uid, pids in groups:
                copy = self._copy_in(binary, pids)
                if copy:
                    path, st = copy
                    inside = "/" + path.split("/root/", 1)[1] if path.startswith("/proc/") else path
                    found.setdefault((st.st_dev, st.st_ino), (path, f"{inside} in pod {self._pod_name(uid)}"))
        for point in {p.fn_name: p for p in points}.values():
            have = self._copies.setdefault(point.fn_name, {})
            lacking = self._lacking.setdefault(point.fn_name, {})
            wanted = files[point.site.binary]
            for file_key, (path, where) in wanted.items():
                if file_key in have or file_key in lacking or file_key == self._node_copy.get(point.fn_name):
                    continue
                address = self._address_in(path, file_key, point.site.function)
                if address is None:
                    lacking[file_key] = f"no function {point.site.function} in {where}"
                    continue
                try:
                    have[file_key] = self._place(point, path, address)
                    log.info("probeset %s: %s %s attached to %s (file %d:%d)", self.pset.name, point.mechanism,
                             point.site.function, where, *file_key)
                except Exception as e:  # the copy vanished, or the kernel refused: next refresh retries
                    log.warning("probeset %s: %s %s: %s", self.pset.name, point.mechanism, where, e)
            for file_key in [k for k in have if k not in wanted]:
                log.info("probeset %s: %s %s detached from file %d:%d (no selected container has it)",
                         self.pset.name, point.mechanism, point.site.function, *file_key)
                for event in have.pop(file_key):
                    try:
                        self.bpf.detach_uprobe_event(event)
                    except Exception as e:
                        log.warning("probeset %s: detaching %s: %s", self.pset.name, event.decode(), e)
            for file_key in [k for k in lacking if k not in wanted]:
                del lacking[file_key]
        present = {k for found in files.values() for k in found}
        self._addresses = {k: v for k, v in self._addresses.items() if k[0] in present}
        self._update_user_status()

    def _pod_name(self, uid: str) -> str:
        named = self.selection.pods.names(uid, None)
        return f"{named[0]['namespace']}/{named[0]['pod']}" if named else uid

    def _update_user_status(self) -> None:
        """uprobe probes: a function is attached when each of its attach points is on some copy; a
        selected container's copy without the function is an error (while that copy exists), and
        so is a container-only probe no selected pod has the file for."""
        for rp in self.compiled:
            points = [p for p in self.user_points() if rp.id in p.probes]
            if not points:
                continue
            st = self.status[rp.id]
            lacking: list[str] = []
            for function in rp.functions:
                mine = [p for p in points if p.site.function == function]
                st.functions[function] = bool(mine) and all(self.copies(p) > 0 for p in mine)
                for p in mine:
                    lacking += [w for w in self._lacking.get(p.fn_name, {}).values() if w not in lacking]
            error = self._attach_errors.get(rp.id)
            if not error and lacking:
                error = "; ".join(lacking[:3]) + (f"; ... {len(lacking) - 3} more" if len(lacking) > 3 else "")
            elif not error and not any(st.functions.values()) and not any(p.site.path for p in points):
                error = (f"no selected pod has {rp.probe.binary} (yet): the probe attaches to each selected "
                         "container's copy as its pods run")
            st.error = error

    def user_points(self) -> list[AttachPoint]:
        return [p for p in self.attached_points if p.mechanism in USER_MECHANISMS]

    @property
    def allowed_cgroups(self) -> int | None:
        """Cgroups in the in-kernel filter, or None without one."""
        return len(self._allowed) if self.cgroup_filter else None

    def copies(self, point: AttachPoint) -> int:
        """How many files this uprobe point is attached to (the node's copy and containers')."""
        return (point.fn_name in self._node_copy) + sum(1 for evs in self._copies.get(point.fn_name, {}).values() if evs)

    def _cgroup_rows(self) -> dict[int, list[bytes]]:
        if not key_uses_cgroup(self.pset.labels):
            return {}
        return {rp.id: [raw for raw, _ in read_raw(self.bpf[f"counts_p{rp.id}"])
                        if not raw.startswith(_OVERFLOW_KEY_PREFIX)] for rp in self.compiled}

    def _retire(self, snapshot: dict[int, list[bytes]]) -> None:
        """Remove the rows of cgroups past their retention (and of cgroups never seen, once a scan
        that began after they were first noticed still did not find them): counts move to
        self._retired under the row's labels, map entries are deleted, so the maps stay bounded."""
        tree = self.attribution.tree
        now = time.monotonic()
        expired: set[int] = set()
        unknown_since = {}
        for rows in snapshot.values():
            for raw in rows:
                cgroup = int.from_bytes(raw[CGROUP_KEY_OFFSET:CGROUP_KEY_OFFSET + 8], "little")
                _, state = tree.path(cgroup)
                if state != "unknown":
                    continue
                first = unknown_since[cgroup] = self._unknown_since.get(cgroup, now)
                if tree.last_scan > first:
                    expired.add(cgroup)
        self._unknown_since = unknown_since     # only ids still in the maps
        if not expired:
            return
        def expiring(raw: bytes) -> bool:
            return (not raw.startswith(_OVERFLOW_KEY_PREFIX)
                    and int.from_bytes(raw[CGROUP_KEY_OFFSET:CGROUP_KEY_OFFSET + 8], "little") in expired)
        for rp in self.compiled:
            count_rows, hist_rows = self._sum_rows(rp, self._retired.setdefault(rp.id, {}), expiring)
            for raw in hist_rows:
                _delete(self.bpf[f"hist_p{rp.id}"], raw)
            counts, cache = self.bpf[f"counts_p{rp.id}"], self._label_cache[rp.id]
            for raw in count_rows:
                _delete(counts, raw)
                cache.pop(raw, None)
        for cgroup in expired:
            del self._unknown_since[cgroup]

    def read_missed(self) -> dict[tuple[int, str], int]:
        """(probe id, reason) -> events whose return could not be paired or recorded."""
        out: dict[tuple[int, str], int] = {}
        with self._lock:
            if self.bpf is None:
                return out
            table = self.bpf["missed"]
            for rp in self.compiled:
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
        points = {f"{self._kretprobe_event(p).decode()}_bcc_{os.getpid()}": p
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
