"""Generate the one BPF C program of a ProbeSet from its resolved sites.

Per probe P the program has:
  counts_pP   per-CPU hash  series key -> {count, sum_ns} ({count} alone for a count-only probe);
              maxSeriesPerProbe + 1 entries, the extra one being the overflow series (func =
              OVERFLOW_FUNC), inserted by user space at load;
              or, when the key is only the function index, a per-CPU array with a slot per function
  hist_pP     per-CPU hash  (series key, log-linear bucket) -> count        (latency, value histograms)
              (or a per-CPU array, slot function x NUM_BUCKETS + bucket: mapshape.py)
  start_pP    LRU hash      (thread, function, depth) -> entry time + entry args (latency probes)
  depth_pP    LRU hash      (thread, function) -> calls open on that thread (latency probes)
and one C function per attach point (site); probes sharing an attach point share its function.
The series key of each probe is its KeyLayout (layout.py), which the map reader decodes with.
The C text and the typed substitution that fills it are in ctemplates.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import ctemplates as T
from probeset_api.filters import at_return

from . import memory
from .ctemplates import CCode, CName, fill, join
from .histogram import NUM_BUCKETS, SUB_BUCKET_BITS, SUB_BUCKETS, bucket_mask
from .mapshape import ARRAY, MapShape, choose_map
from .layout import COMM_BYTES, MAX_PROBES, MISSED_REASONS, OVERFLOW_FUNC, KeyLayout, key_uses_cgroup
from .filtergen import filter_function, filter_maps
from .spangen import span_block, span_maps
from .intload import load_int
from .uprobe_entry import movable
from .resolve import GroupField, ResolvedProbe, Site
from .taskcontext import INTERRUPT_BITS, TaskContext, kernel_sited

START_MAP_ENTRIES = 10240
# Nesting levels of one function on one thread that each get their own start slot (latency probes):
# a recursive call, or a file system stacked on another, is timed level by level; deeper calls
# are counted as missed (nesting_too_deep).
MAX_CALL_DEPTH = 8
MAX_ALLOWED_CGROUPS = 65536
HISTOGRAM_ENTRIES_PER_SERIES = 32
# A histogram map's buckets are allocated for its max_entries even without prealloc (2 MiB at this
# cap): beyond it, buckets that find no room are counted as missed (histogram_full).
MAX_HISTOGRAM_ENTRIES = 1 << 17


def histogram_entries(max_series: int) -> int:
    return min(max_series * HISTOGRAM_ENTRIES_PER_SERIES, MAX_HISTOGRAM_ENTRIES)


def probe_memory(rp: ResolvedProbe, labels: tuple[str, ...], max_series: int, cpus: int) -> int:
    """Upper bound of the kernel memory of one probe's maps (memory.py)."""
    start_args = sum(1 for label in rp.probe.group_by if label not in ("retval", "comm"))
    start_args += rp.probe.filter is not None and not at_return(rp.probe.filter)    # the skip flag
    shape = map_shape(rp, labels, max_series)
    total = memory.probe_bytes(key_layout(rp, labels), max_series, rp.probe.has_histogram, rp.probe.latency,
                               start_args, histogram_entries(max_series), START_MAP_ENTRIES, cpus,
                               value_size=_counts_value(rp)[1],
                               counts_slots=shape.functions if shape.counts == ARRAY else None,
                               hist_slots=shape.hist_slots if shape.hist == ARRAY else None)
    if rp.probe.kind == "span":     # pending_pN: key u64 k0[, k1]; value ts, cgroup, comm
        total += memory.hash_bytes(rp.probe.max_pending, 8 * len(rp.probe.start.key), 32, cpus, percpu=False)
    return total


def set_memory(cgroup_filter: bool, cpus: int) -> int:
    return memory.set_bytes(cgroup_filter, MAX_ALLOWED_CGROUPS, cpus)


@dataclass
class AttachPoint:
    """One C function and what it attaches to; `probes` lists the probe ids it serves."""

    fn_name: str
    mechanism: str
    site: Site                          # the target (shared by all probes of this attach point)
    probes: list[int] = field(default_factory=list)
    movable: bool = True                # no probe here reads a register at entry (uprobe_entry.py)


@dataclass
class Program:
    text: str
    attach_points: list[AttachPoint]
    layouts: dict[int, KeyLayout]       # probe id -> its series key
    shapes: dict[int, MapShape] = field(default_factory=dict)   # probe id -> array or hash (mapshape.py)


def key_layout(rp: ResolvedProbe, labels: tuple[str, ...]) -> KeyLayout:
    return KeyLayout.of(labels, rp.probe.group_by, rp.string_labels)


def _key_fields(layout: KeyLayout) -> CCode:
    return join(fill(T.KEY_FIELD_CHARS, NAME=CName(f.name), SIZE=f.size) if f.is_string
                else fill(T.KEY_FIELD_U64, NAME=CName(f.name)) for f in layout.fields[2:])


def _start_fields(rp: ResolvedProbe) -> CCode:
    skip = CCode(" u64 skip;") if rp.probe.filter is not None and not at_return(rp.probe.filter) else CCode("")
    return join([fill(" u64 g@I@;", I=i) for i, label in enumerate(rp.probe.group_by)
                 if label not in ("retval", "comm")] + [skip])


def _field_fill(gf: GroupField, i: int, site: Site, dst: str) -> CCode:
    """C that stores groupBy value i (`gf`) for this site into `dst`.g<i> (dst is key or sv)."""
    if gf.source == "comm":
        return fill(T.COMM_FIELD_FILL, I=i)
    if gf.source == "tp_str":
        return fill(T.TP_STR_FILL, OFFSET=gf.offset, SIZE=gf.size, I=i)
    if gf.source == "tp_data_loc":
        return fill(T.TP_DATA_LOC_FILL, OFFSET=gf.offset, I=i)
    return fill(T.LOAD_LINE, LOAD=load_int(gf, site, fill("@DST@.g@I@", DST=CName(dst), I=i)))


def _value_record(rp: ResolvedProbe, site: Site) -> CCode:
    """C that loads the site's value into val_ and records the event with it (or just counts it)."""
    p, gf = rp.id, site.value
    if gf is None:
        return fill(T.RECORD_COUNT, P=p)
    load = fill(T.VALUE_LOAD, LOAD=load_int(gf, site, CCode("val_")))
    return join([load, fill(T.RECORD_SIGNED_VALUE if gf.signed else T.RECORD_VALUE, P=p)])


def filtered_here(rp: ResolvedProbe, site: Site, returns: bool | None = None) -> bool:
    """Whether the probe's filter is evaluated at this site: where it counts; for latency, at entry,
    or at return when it compares retval (`returns`: at_return of the filter, if known)."""
    if site.role.startswith("span_"):
        return site.filter is not None
    if rp.probe.filter is None:
        return False
    if site.role == "count":
        return True
    return (site.role == "finish") == (at_return(rp.probe.filter) if returns is None else returns)


def filter_key(site: Site) -> tuple:
    """Sites with equal keys (and the same probe) share one filter function."""
    return site.role, site.mechanism, site.tracepoint, site.usdt_location


def filter_numbers(rp: ResolvedProbe) -> dict[tuple, int]:
    """S of each of the probe's filter functions, filter_p<P>_s<S>, by filter_key: one per distinct
    key among the sites that evaluate the filter. Worked out once per probe: a glob has up to
    thousands of sites and a filter up to hundreds of comparisons."""
    returns = rp.probe.filter is not None and at_return(rp.probe.filter)
    numbers: dict[tuple, int] = {}
    for site in rp.sites:
        if filtered_here(rp, site, returns):
            numbers.setdefault(filter_key(site), len(numbers))
    return numbers


def site_block(rp: ResolvedProbe, site: Site, labels: tuple[str, ...], both_ends_filtered: bool = False,
               numbers: dict[tuple, int] | None = None) -> CCode:
    """The C one probe runs at one site (inside the site's function, which several probes share).
    `both_ends_filtered`: a span's start and end both pass the set's selection (span_block);
    `numbers`: filter_numbers(rp), if known."""
    p = rp.id
    numbers = filter_numbers(rp) if numbers is None else numbers
    here_filter = filter_key(site) in numbers      # sites of one key all evaluate the filter, or none
    s = numbers.get(filter_key(site), 0)
    attribution = join([T.CGROUP_FILL if key_uses_cgroup(labels) else "", T.COMM_LABEL_FILL if "comm" in labels else ""])
    if site.role.startswith("span_"):
        call = fill(T.FILTER_CALL, P=p, S=s) if here_filter else CCode("")
        return span_block(rp, site, labels, call, attribution, lambda gf, i: _field_fill(gf, i, site, "key"),
                          both_ends_filtered)
    if site.role == "count":
        fill_key = join([attribution] + [_field_fill(gf, i, site, "key") for i, gf in enumerate(site.fields)])
        call = fill(T.FILTER_CALL, P=p, S=s) if here_filter else CCode("")
        return fill(T.COUNT_BLOCK, P=p, F=site.func_index, FILL_KEY=fill_key, RECORD=_value_record(rp, site),
                    FILTER=call)
    if site.role == "start":
        fill_start = join(_field_fill(gf, i, site, "sv") for i, gf in enumerate(site.fields) if gf.source == "arg")
        if here_filter:
            fill_start = join([fill_start, fill(T.FILTER_SKIP, P=p, S=s)])
        fill_start = join("        " + line + "\n" for line in fill_start.splitlines())   # two levels deeper
        return fill(T.START_BLOCK, P=p, F=site.func_index, FILL_START=fill_start, MAX_DEPTH=MAX_CALL_DEPTH)
    # finish: args come from the entry, retval and comm from here (indented one level deeper)
    from_start = join(fill(T.FROM_START, I=i) for i, gf in enumerate(site.fields) if gf.source == "arg")
    here = join([attribution] + [_field_fill(gf, i, site, "key") for i, gf in enumerate(site.fields)
                                 if gf.source != "arg"])
    if here_filter:
        keep = fill(T.KEEP_FILTERED, P=p, S=s)
    else:
        keep = T.KEEP_UNSKIPPED if rp.probe.filter is not None else T.KEEP_ALL
    return fill(T.FINISH_BLOCK, P=p, F=site.func_index, FILL_FROM_START=from_start, FILL_KEY=here, KEEP=keep,
                MAX_DEPTH=MAX_CALL_DEPTH)


def map_shape(rp: ResolvedProbe, labels: tuple[str, ...], max_series: int) -> MapShape:
    """Array or hash, for the counts and the histogram of this probe (mapshape.py)."""
    return choose_map(labels, rp.probe.group_by, max(1, len(rp.functions)), max_series)


def _probe_decls(rp: ResolvedProbe, labels: tuple[str, ...], max_series: int, cgroup_filter: bool,
                 task_context_only: bool = False) -> CCode:
    p, shape = rp.id, map_shape(rp, labels, max_series)
    value_t = _counts_value(rp)[0]
    if shape.counts == ARRAY:
        out = [fill(T.PROBE_MAPS_ARRAY, P=p, SLOTS=shape.functions, VALUE_T=value_t)]
    else:
        out = [fill(T.PROBE_MAPS, P=p, SERIES_ENTRIES=max_series + 1, KEY_FIELDS=_key_fields(key_layout(rp, labels)),
                    VALUE_T=value_t)]
    if rp.probe.has_histogram and shape.hist == ARRAY:
        out.append(fill(T.HISTOGRAM_ARRAY, P=p, SLOTS=shape.hist_slots))
    elif rp.probe.has_histogram:
        out.append(fill(T.HISTOGRAM_MAP, P=p, HIST_ENTRIES=histogram_entries(max_series)))
    if rp.probe.kind == "span":
        out.append(span_maps(rp))
    if rp.probe.latency:
        out.append(fill(T.LATENCY_MAPS, P=p, START_ENTRIES=START_MAP_ENTRIES, START_FIELDS=_start_fields(rp)))
    checks = [T.CGROUP_CHECK] if cgroup_filter else []
    if task_context_only:
        checks.append(T.TASK_CONTEXT_CHECK)
    if rp.probe.pid is not None:
        checks.append(fill(T.PID_CHECK, PID=rp.probe.pid))
    if rp.probe.comm is not None:
        out.append(fill(T.COMM_FILTER_MAP, P=p))
        checks.append(fill(T.COMM_CHECK, P=p))
    out.append(fill(T.PASS_FUNC, P=p, CHECKS=join(checks)))
    out.append(filter_maps(rp))
    record_sum = CCode("")
    if rp.probe.records_sum:
        record_hist = CCode("")
        if rp.probe.has_histogram:
            mask = bucket_mask(rp.probe.buckets_per_power_of_two)
            record_hist = (fill(T.RECORD_HIST_ARRAY, P=p, BUCKETS=NUM_BUCKETS, MASK=mask) if shape.hist == ARRAY
                           else fill(T.RECORD_HIST, P=p, MASK=mask))
        record_sum = fill(T.RECORD_SUM, RECORD_HIST=record_hist)
    out.append(fill(T.RECORD_FUNC_ARRAY if shape.counts == ARRAY else T.RECORD_FUNC, P=p, RECORD_SUM=record_sum,
                    VALUE_T=value_t))
    return join(out)


def _counts_value(rp: ResolvedProbe) -> tuple[CCode, int]:
    """A counts map's value type and size: {count, sum_ns} where the probe keeps a sum, else the
    count alone (its per-CPU copies are half the bytes to hold and to read at each scrape)."""
    return (CCode("struct value_t"), 16) if rp.probe.records_sum else (CCode("struct count_t"), 8)


def attach_key(site: Site) -> tuple:
    """Sites with equal keys share one attach point (one C function, one attachment)."""
    # A uprobe function is attached to every copy of its file (the node's, each container's), at
    # each copy's own offset: its key is the file as the probe names it, not one resolved path.
    return (site.mechanism, site.kernel_function, site.binary, site.function if site.binary else "",
            site.tracepoint, site.usdt_location)


def _fn_name(site: Site, n: int) -> CName:
    if site.mechanism == "fentry":
        return CName("kfunc__" + site.kernel_function)   # BCC derives the BTF target from the name
    if site.mechanism == "fexit":
        return CName("kretfunc__" + site.kernel_function)
    return CName(f"site_{n}")


_PT_REGS, _TRAMPOLINE_CTX = CCode("struct pt_regs *"), CCode("unsigned long long *")
_CTX_TYPES = {"kprobe": _PT_REGS, "kretprobe": _PT_REGS, "uprobe": _PT_REGS, "uretprobe": _PT_REGS,
              "fentry": _TRAMPOLINE_CTX, "fexit": _TRAMPOLINE_CTX, "tracepoint": CCode("void *"),
              "raw_tracepoint": CCode("void *")}     # struct bpf_raw_tracepoint_args; never read (hooks.py)


def generate(resolved: list[ResolvedProbe], labels: tuple[str, ...], max_series: int,
             cgroup_filter: bool = False, both_ends_filtered: bool = False,
             task_context: TaskContext | None = None) -> Program:
    """The C program for the probes that resolved (rp.ok); failed probes are left out. With
    `cgroup_filter`, only tasks whose cgroup id is in the allowed_cgroups map are counted. With
    `both_ends_filtered` (a namespaced set), a span's start and end must both pass (spangen.py).
    With `task_context` (a namespaced set), probes with kernel sites count nothing in interrupts
    (taskcontext.py)."""
    probes = [rp for rp in resolved if rp.ok]
    for rp in probes:
        if not 0 <= rp.id < MAX_PROBES:
            raise ValueError(f"probe id {rp.id} out of range")
    missed_defines = join(fill(T.MISSED_DEFINE, NAME=CName(reason.upper()), INDEX=i)
                          for i, reason in enumerate(MISSED_REASONS))
    parts = [fill(T.PRELUDE, OVERFLOW_FUNC=OVERFLOW_FUNC, COMM_BYTES=COMM_BYTES, MISSED_REASONS=len(MISSED_REASONS),
                  MISSED_DEFINES=missed_defines, MISSED_SLOTS=MAX_PROBES * len(MISSED_REASONS),
                  SUB_BUCKETS=SUB_BUCKETS, SUB_BITS=SUB_BUCKET_BITS, SUB_BITS_MINUS_1=SUB_BUCKET_BITS - 1)]
    if cgroup_filter:
        parts.append(fill(T.CGROUP_FILTER_MAP, ENTRIES=MAX_ALLOWED_CGROUPS))
    in_task = {rp.id for rp in probes if task_context is not None and kernel_sited(rp)}
    if in_task:
        tc = task_context
        parts.append(fill(T.TASK_CONTEXT_FUNC, TASK_CFS_RQ=tc.task_cfs_rq, CFS_RQ_RQ=tc.cfs_rq_rq, RQ_CPU=tc.rq_cpu,
                          PREEMPT_FROM_RQ=tc.preempt_from_rq, INTERRUPT_BITS=INTERRUPT_BITS))
    parts += [_probe_decls(rp, labels, max_series, cgroup_filter, rp.id in in_task) for rp in probes]

    points: dict[tuple, AttachPoint] = {}
    bodies: dict[tuple, list[str]] = {}
    for rp in probes:
        filters: set[tuple] = set()
        numbers = filter_numbers(rp)
        for site in rp.sites:
            key = attach_key(site)
            if key not in points:
                points[key] = AttachPoint(_fn_name(site, len(points)), site.mechanism, site)
                bodies[key] = []
            point = points[key]
            if rp.id not in point.probes:
                point.probes.append(rp.id)
            point.movable = point.movable and movable(site, site.mechanism)
            if filter_key(site) in numbers and filter_key(site) not in filters:
                filters.add(filter_key(site))
                parts.append(filter_function(rp, site, numbers[filter_key(site)], _CTX_TYPES[site.mechanism]))
            bodies[key].append(site_block(rp, site, labels, both_ends_filtered, numbers))
    for key, point in points.items():
        parts.append(fill(T.SITE_FUNC, FN=CName(point.fn_name), CTX_TYPE=_CTX_TYPES[point.mechanism],
                          BODY=join(bodies[key])))
    text = "\n".join(parts)
    leftover = T.TOKEN.search(text)
    if leftover:
        raise AssertionError(f"unfilled template token {leftover.group(0)}")
    return Program(text, list(points.values()), {rp.id: key_layout(rp, labels) for rp in probes},
                   {rp.id: map_shape(rp, labels, max_series) for rp in probes})
