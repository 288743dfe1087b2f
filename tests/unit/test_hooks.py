"""The choice of hook (hooks.py) and of map (mapshape.py) from a probe, table-tested; the array
rows read back exactly as the hash's would. Pure."""

import struct

import pytest

from probeset_agent.codegen import generate, map_shape
from probeset_agent.histogram import NUM_BUCKETS
from probeset_agent.hooks import choose_tracepoint_hook, event_fields_read, kernel_hook_reason
from probeset_agent.layout import KeyLayout
from probeset_agent.mapshape import ARRAY, HASH, MAX_HIST_ARRAY_SLOTS, array_count_rows, array_hist_rows, choose_map
from probeset_agent.readout import Readout
from probeset_agent.resolve import GroupField, ResolvedProbe, Site
from probeset_api.spec import Probe


def has_raw(name):
    return name != "gone"


@pytest.mark.parametrize("attach, tracepoints, fields, mechanism, why", [
    ("auto", ["sched:sched_switch"], [], "raw_tracepoint", "reads no event field"),
    ("auto", ["sched:sched_switch", "sched:sched_wakeup"], [], "raw_tracepoint", "reads no event field"),
    ("auto", ["sched:sched_switch"], ["prev_pid"], "tracepoint", "event field prev_pid"),
    ("auto", ["syscalls:sys_enter_getppid"], [], "tracepoint", "syscall tracepoint"),
    ("auto", ["sched:sched_switch", "syscalls:sys_enter_read"], [], "tracepoint", "syscall tracepoint"),
    ("auto", ["x:gone"], [], "tracepoint", "no raw tracepoint gone"),
    ("tracepoint", ["sched:sched_switch"], [], "tracepoint", "forced"),
    ("raw_tracepoint", ["sched:sched_switch"], [], "raw_tracepoint", "forced"),
    ("raw_tracepoint", ["sched:sched_switch"], ["next_pid", "prev_pid"], None, "event fields next_pid, prev_pid"),
    ("raw_tracepoint", ["syscalls:sys_enter_getppid"], [], None, "syscall tracepoint"),
    ("raw_tracepoint", ["x:gone"], [], None, "no raw tracepoint gone"),
])
def test_tracepoint_hook(attach, tracepoints, fields, mechanism, why):
    choice = choose_tracepoint_hook(attach, tracepoints, fields, has_raw)
    assert choice.mechanism == mechanism
    assert why in choice.reason
    assert choice.reason.startswith("attach: " if attach != "auto" else "auto: ")


@pytest.mark.parametrize("group_by, value, filter_fields, read", [
    ((), None, {}, []),
    (("comm",), None, {"pid": "pid", "comm": "comm", "uid": "uid"}, []),    # the task's, not the event's
    (("prev_comm", "comm"), None, {}, ["prev_comm"]),
    ((), "len", {}, ["len"]),
    ((), None, {"pid": "tp_int"}, ["pid"]),        # sched_wakeup's pid is the event's: a field
])
def test_event_fields_read(group_by, value, filter_fields, read):
    assert event_fields_read(group_by, value, filter_fields) == read


def test_kernel_hook_reasons():
    assert "fentry/fexit" in kernel_hook_reason("auto", "fentry", "")
    assert "EPERM" in kernel_hook_reason("auto", "kprobe", "loading an fentry program as root fails with EPERM")
    assert kernel_hook_reason("kprobe", "kprobe", "") == "attach: kprobe (forced)"


@pytest.mark.parametrize("labels, group_by, functions, max_series, counts, hist, why", [
    (("node",), (), 1, 5000, ARRAY, ARRAY, "array of 1 slot:"),
    ((), (), 8, 5000, ARRAY, ARRAY, "array of 8 slots"),
    (("node",), (), 16, 5000, ARRAY, ARRAY, "array"),
    (("node",), (), 17, 5000, ARRAY, HASH, "array"),            # a histogram array would pass 16 x 252 slots
    (("node",), (), 128, 100, HASH, HASH, "more than maxSeriesPerProbe=100"),   # overflow keeps its meaning
    (("node",), ("arg0",), 1, 5000, HASH, HASH, "groupBy arg0"),
    (("node", "comm"), (), 1, 5000, HASH, HASH, "comm"),
    (("node", "pod"), (), 1, 5000, HASH, HASH, "namespace/pod/container by cgroup"),
    (("namespace",), (), 1, 5000, HASH, HASH, "cgroup"),
])
def test_map_choice(labels, group_by, functions, max_series, counts, hist, why):
    shape = choose_map(labels, group_by, functions, max_series)
    assert (shape.counts, shape.hist) == (counts, hist)
    assert why in shape.reason
    assert 16 * NUM_BUCKETS == MAX_HIST_ARRAY_SLOTS


CPUS = 2


def counts_value(*per_cpu):
    cells = list(per_cpu) + [(0, 0)] * (CPUS - len(per_cpu))
    return struct.pack(f"<{2 * CPUS}Q", *(x for c in cells for x in c))


def slot(i):
    return i.to_bytes(4, "little")


def probe(functions, latency=False):
    return ResolvedProbe(Probe(index=0, name="p", kind="uprobe", target="x:f*", latency=latency),
                         via="uprobe", functions=list(functions))


def series_of(rp, counts, hist=()):
    layout = KeyLayout.of(("node",), (), frozenset())
    readout = Readout({"probeset": "set"}, "n1", ("node",))
    readout.begin(names_changed=False)
    return {s.labels["function"]: s for s in readout.series(rp, layout, counts, hist, CPUS)}


def test_array_rows_read_exactly_as_hash_rows():
    """The same counts, from an array (slot = function index) and from a hash (key = function index):
    equal series; a slot that never counted has no series, as a hash has no row for it."""
    rp = probe(["f0", "f1", "f2"])
    layout = KeyLayout.of(("node",), (), frozenset())
    array = [(slot(0), counts_value((3, 0), (4, 0))), (slot(1), counts_value()), (slot(2), counts_value((0, 0), (1000000007, 0)))]
    hash_rows = [(slot(0) + bytes(4), counts_value((3, 0), (4, 0))), (slot(2) + bytes(4), counts_value((0, 0), (1000000007, 0)))]
    from_array = series_of(rp, list(array_count_rows(array, layout)))
    from_hash = series_of(rp, hash_rows)
    assert {f: s.count for f, s in from_array.items()} == {f: s.count for f, s in from_hash.items()} == {
        "f0": 7, "f2": 1000000007}


def test_histogram_array_rows_become_buckets():
    rp = probe(["f0", "f1"], latency=True)
    layout = KeyLayout.of(("node",), (), frozenset())
    counts = [(slot(0), counts_value((2, 300))), (slot(1), counts_value((1, 50), (1, 60)))]
    cells = [struct.pack(f"<{CPUS}Q", 0, 0)] * (2 * NUM_BUCKETS)
    cells[5] = struct.pack(f"<{CPUS}Q", 2, 0)                      # f0, bucket 5
    cells[NUM_BUCKETS + 9] = struct.pack(f"<{CPUS}Q", 1, 1)        # f1, bucket 9
    hist = [(slot(i), c) for i, c in enumerate(cells)]
    got = series_of(rp, list(array_count_rows(counts, layout)), list(array_hist_rows(hist, layout)))
    assert (got["f0"].count, got["f0"].sum_ns, got["f0"].buckets) == (2, 300, {5: 2})
    assert (got["f1"].count, got["f1"].sum_ns, got["f1"].buckets) == (2, 110, {9: 2})


def tp_probe(mechanism, labels_from_fields=()):
    p = Probe(index=0, name="t", kind="tracepoint", target="sched:sched_switch",
              group_by=tuple(gf.label for gf in labels_from_fields))
    rp = ResolvedProbe(p, via=mechanism, functions=["sched:sched_switch"])
    rp.sites = [Site(0, "sched:sched_switch", mechanism, "count", tracepoint="sched:sched_switch",
                     fields=tuple(labels_from_fields))]
    return rp


def test_generated_c_of_the_cheapest_hook_and_map():
    text = generate([tp_probe("raw_tracepoint")], ("node",), max_series=10).text
    assert "BPF_PERCPU_ARRAY(counts_p0, struct count_t, 1);" in text
    assert "struct count_t *val = counts_p0.lookup(&slot);" in text
    assert "lookup_or_try_init" not in text and "BPF_PERCPU_HASH" not in text
    assert "int site_0(void *ctx)" in text
    hashed = generate([tp_probe("tracepoint", [GroupField("prev_pid", "tp_int", offset=24, size=4)])],
                      ("node",), max_series=10)
    assert "BPF_PERCPU_HASH(counts_p0, struct key_p0, struct count_t, 11);" in hashed.text
    assert hashed.shapes[0].counts == HASH
    assert map_shape(tp_probe("raw_tracepoint"), ("node", "pod"), 10).counts == HASH
