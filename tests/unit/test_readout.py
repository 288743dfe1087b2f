"""Map rows -> series, without BCC or root: raw rows built from the KeyLayout the C side uses."""

import struct

import pytest

from probeset_agent.attribution import UNKNOWN
from probeset_agent.histogram import bucket_index, cumulative_buckets
from probeset_agent.layout import COMM_BYTES, OVERFLOW_FUNC, STRING_LABEL_BYTES, KeyLayout
from probeset_agent.readout import OVERFLOW_LABEL, Readout, UnknownAging, label_text
from probeset_agent.resolve import ResolvedProbe
from probeset_api.spec import Probe

CPUS = 2


def probe(group_by=(), latency=False, functions=("vfs_read",), strings=(), signed=(), symbols=None, kind="kprobe"):
    return ResolvedProbe(Probe(index=0, name="p", kind=kind, target="x", latency=latency, group_by=tuple(group_by)),
                         functions=list(functions), string_labels=frozenset(strings),
                         signed_labels=frozenset(signed), symbols=symbols or {})


def key(layout: KeyLayout, func=0, cgroup=0, comm="", **values) -> bytes:
    """A raw series key as the kernel writes it: little-endian fields at the layout's offsets."""
    raw = bytearray(layout.size)
    raw[0:4] = func.to_bytes(4, "little")
    for f in layout.fields[2:]:
        value = {"cgroup": cgroup, "comm": comm}.get(f.name, values.get(f.name, 0))
        if f.is_string:
            data = value.encode()[:f.size - 1]
            raw[f.offset:f.offset + len(data)] = data
        else:
            raw[f.offset:f.offset + 8] = (value % (1 << 64)).to_bytes(8, "little")
    return bytes(raw)


def value(*per_cpu):
    """{count, sum_ns} per CPU; missing CPUs are zero."""
    cells = list(per_cpu) + [(0, 0)] * (CPUS - len(per_cpu))
    return struct.pack(f"<{2 * CPUS}Q", *(x for c in cells for x in c))


def hist_row(layout, series_key: bytes, bucket: int, *per_cpu):
    raw = series_key + bucket.to_bytes(4, "little") + bytes(4)
    cells = list(per_cpu) + [0] * (CPUS - len(per_cpu))
    return raw, struct.pack(f"<{CPUS}Q", *cells)


def read(rp, labels, counts, hist=(), lookup=None, node="n1"):
    layout = KeyLayout.of(labels, rp.probe.group_by, rp.string_labels)
    readout = Readout({"probeset": "set"}, node, labels, lookup)
    readout.begin(names_changed=False)
    return readout, layout, readout.series(rp, layout, counts, hist, CPUS)


def rows_of(rp, labels, make_rows, lookup=None):
    layout = KeyLayout.of(labels, rp.probe.group_by, rp.string_labels)
    _, _, series = read(rp, labels, make_rows(layout), lookup=lookup)
    return {tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("probeset", "probe"))): s.count
            for s in series}


WORKLOADS = {7: ({"namespace": "web", "pod": "api-1", "container": "app"}, True),
             8: ({"namespace": "web", "pod": "api-1", "container": "app"}, True),    # restarted container
             9: ({}, True)}                                                           # a host process


def lookup(cgroup):
    return WORKLOADS.get(cgroup, ({name: UNKNOWN for name in ("namespace", "pod", "container")}, False))


CASES = [
    # (name, probe, set labels, rows built from the layout, expected {labels: count})
    ("count per function", probe(functions=("vfs_read", "vfs_write")), (),
     lambda L: [(key(L, 0), value((3, 0), (4, 0))), (key(L, 1), value((5, 0)))],
     {(("function", "vfs_read"),): 7, (("function", "vfs_write"),): 5}),
    ("per-CPU values summed", probe(), (), lambda L: [(key(L), value((1, 0), (2, 0)))],
     {(("function", "vfs_read"),): 3}),
    ("node label is the agent's", probe(), ("node",), lambda L: [(key(L), value((1, 0)))],
     {(("function", "vfs_read"), ("node", "n1")): 1}),
    ("comm label from the key", probe(), ("comm",), lambda L: [(key(L, comm="curl"), value((2, 0)))],
     {(("comm", "curl"), ("function", "vfs_read")): 2}),
    ("retval negative", probe(["retval"], signed={"retval"}, kind="kretprobe"), (),
     lambda L: [(key(L, g0=-2), value((4, 0)))], {(("function", "vfs_read"), ("retval", "-2")): 4}),
    ("retval positive", probe(["retval"], signed={"retval"}, kind="kretprobe"), (),
     lambda L: [(key(L, g0=4096), value((1, 0)))], {(("function", "vfs_read"), ("retval", "4096")): 1}),
    ("unsigned argument stays unsigned", probe(["arg0"]), (),
     lambda L: [(key(L, g0=-1), value((1, 0)))], {(("arg0", str(2**64 - 1)), ("function", "vfs_read")): 1}),
    ("tracepoint string field", probe(["name"], strings={"name"}, functions=("net:net_dev_xmit",), kind="tracepoint"),
     (), lambda L: [(key(L, g0="eth0"), value((2, 0))), (key(L, g0="lo"), value((1, 0)))],
     {(("function", "net:net_dev_xmit"), ("name", "eth0")): 2, (("function", "net:net_dev_xmit"), ("name", "lo")): 1}),
    ("tracepoint enum named by __print_symbolic", probe(["reason"], symbols={"reason": {2: "NO_SOCKET"}},
                                                        functions=("skb:kfree_skb",), kind="tracepoint"), (),
     lambda L: [(key(L, g0=2), value((6, 0))), (key(L, g0=99), value((1, 0)))],
     {(("function", "skb:kfree_skb"), ("reason", "NO_SOCKET")): 6, (("function", "skb:kfree_skb"), ("reason", "99")): 1}),
    ("overflow series has empty event labels", probe(["arg1"]), ("node", "comm"),
     lambda L: [(key(L, func=OVERFLOW_FUNC, comm="x", g1=5), value((9, 0)))],
     {(("arg1", ""), ("comm", ""), ("function", OVERFLOW_LABEL), ("node", "n1")): 9}),
    ("empty overflow slot is not a series", probe(), (), lambda L: [(key(L, func=OVERFLOW_FUNC), value((0, 0)))], {}),
    ("workload labels from the cgroup", probe(), ("namespace", "pod", "container"),
     lambda L: [(key(L, cgroup=7), value((2, 0)))],
     {(("container", "app"), ("function", "vfs_read"), ("namespace", "web"), ("pod", "api-1")): 2}),
    ("two cgroups of one workload merge", probe(), ("pod",),
     lambda L: [(key(L, cgroup=7), value((2, 0))), (key(L, cgroup=8), value((3, 0)))],
     {(("function", "vfs_read"), ("pod", "api-1")): 5}),
    ("host process has empty workload labels", probe(), ("namespace", "pod"),
     lambda L: [(key(L, cgroup=9), value((1, 0)))], {(("function", "vfs_read"), ("namespace", ""), ("pod", "")): 1}),
    ("unknown cgroups fold into one __unknown__ series", probe(), ("pod",),
     lambda L: [(key(L, cgroup=100), value((1, 0))), (key(L, cgroup=101), value((2, 0)))],
     {(("function", "vfs_read"), ("pod", UNKNOWN)): 3}),
    ("group by two fields, string and integer", probe(["comm_name", "pid"], strings={"comm_name"},
                                                      functions=("sched:sched_switch",), kind="tracepoint"), (),
     lambda L: [(key(L, g0="a" * (STRING_LABEL_BYTES + 5), g1=42), value((1, 0)))],
     {(("comm_name", "a" * (STRING_LABEL_BYTES - 1)), ("function", "sched:sched_switch"), ("pid", "42")): 1}),
]


@pytest.mark.parametrize("name,rp,labels,make_rows,expected", CASES, ids=[c[0] for c in CASES])
def test_rows_become_series(name, rp, labels, make_rows, expected):
    assert rows_of(rp, labels, make_rows, lookup) == expected


def test_layout_offsets_are_aligned_and_follow_the_c_struct():
    layout = KeyLayout.of(("node", "pod", "comm"), ("name", "retval"), frozenset({"name"}))
    assert [(f.name, f.offset, f.size) for f in layout.fields] == [
        ("func", 0, 4), ("pad", 4, 4), ("cgroup", 8, 8), ("comm", 16, COMM_BYTES),
        ("g0", 32, STRING_LABEL_BYTES), ("g1", 64, 8)]
    assert layout.size == 72 and layout.bucket_offset == 72
    assert layout.c_fields() == [("u64", "cgroup"), ("char", "comm[16]"), ("char", "g0[32]"), ("u64", "g1")]
    plain = KeyLayout.of(("node",), (), frozenset())
    assert plain.size == 8 and plain.cgroup(bytes(8)) is None and plain.is_overflow(plain.overflow_key())


def test_histogram_buckets_become_cumulative_le():
    rp = probe(latency=True)
    layout = KeyLayout.of((), (), frozenset())
    k = key(layout)
    b1, b2 = bucket_index(1000), bucket_index(50_000)
    hist = [hist_row(layout, k, b1, 2, 1), hist_row(layout, k, b2, 1)]
    _, _, (s,) = read(rp, (), [(k, value((3, 3000), (1, 50_000)))], hist)
    assert (s.count, s.sum_ns, s.buckets) == (4, 53_000, {b1: 3, b2: 1})
    cumulative = dict(cumulative_buckets(s.buckets, 1))
    assert cumulative[1024 / 1e9] == 3 and cumulative[65536 / 1e9] == 4 and cumulative[float("inf")] == 4
    assert cumulative[512 / 1e9] == 0


@pytest.mark.parametrize("cpus", [1, 3, 64])
def test_per_cpu_values_are_summed_for_any_number_of_cpus(cpus):
    """Each CPU's {count, sum_ns} and bucket count adds up, whatever the node's CPU count (the
    readout sums them column by column: readout._columns); big values stay exact."""
    rp = probe(["arg0"], latency=True)
    layout = KeyLayout.of((), ("arg0",), frozenset())
    big = (1 << 63) + 5
    counts, hist = [], []
    for series in range(3):
        k = key(layout, g0=series)
        cells = [(series + cpu + 1, big if cpu == cpus - 1 else 10 * cpu) for cpu in range(cpus)]
        counts.append((k, struct.pack(f"<{2 * cpus}Q", *(x for c in cells for x in c))))
        hist.append((k + (4).to_bytes(4, "little") + bytes(4), struct.pack(f"<{cpus}Q", *(c for c, _ in cells))))
    readout = Readout({"probeset": "set"}, "n1", ())
    readout.begin(names_changed=False)
    got = {s.labels["arg0"]: (s.count, s.sum_ns, s.buckets) for s in readout.series(rp, layout, counts, hist, cpus)}
    assert got == {str(series): (n := sum(series + cpu + 1 for cpu in range(cpus)),
                                 big + sum(10 * cpu for cpu in range(cpus - 1)), {4: n})
                   for series in range(3)}


@pytest.mark.parametrize("cpus", [1, 3, 64])
def test_a_count_only_probes_rows_hold_the_count_alone(cpus):
    """A count-only probe's map value is {count} per CPU (codegen._counts_value), not {count, sum_ns}:
    the readout takes the width from the rows."""
    rp = probe(["arg0"])
    layout = KeyLayout.of((), ("arg0",), frozenset())
    counts = [(key(layout, g0=g), struct.pack(f"<{cpus}Q", *[g + cpu for cpu in range(cpus)])) for g in range(3)]
    readout = Readout({"probeset": "set"}, "n1", ())
    readout.begin(names_changed=False)
    got = {s.labels["arg0"]: (s.count, s.sum_ns, s.buckets) for s in readout.series(rp, layout, counts, [], cpus)}
    assert got == {str(g): (sum(g + cpu for cpu in range(cpus)), 0, None) for g in range(3)}


def test_histogram_row_without_its_count_row_waits():
    rp = probe(["arg0"], latency=True)
    layout = KeyLayout.of((), ("arg0",), frozenset())
    seen, unseen = key(layout, g0=1), key(layout, g0=2)
    hist = [hist_row(layout, seen, 3, 1), hist_row(layout, unseen, 3, 5)]
    _, _, series = read(rp, (), [(seen, value((1, 10)))], hist)
    assert [(s.labels["arg0"], s.buckets) for s in series] == [("1", {3: 1})]


def test_retired_rows_keep_the_series_monotonic():
    """A cgroup vanishes (a restarted container): its counts stay in the workload's series while
    another row has those labels, and end with the last such row."""
    rp, labels = probe(latency=True), ("pod",)
    layout = KeyLayout.of(labels, (), frozenset())
    old, new = key(layout, cgroup=7), key(layout, cgroup=8)
    readout = Readout({"probeset": "set"}, "n1", labels, lookup)
    counts = [(old, value((5, 500))), (new, value((2, 200)))]
    hist = [hist_row(layout, old, 4, 5), hist_row(layout, new, 4, 2)]
    readout.begin(False)
    (before,) = readout.series(rp, layout, counts, hist, CPUS)
    gone_counts, gone_hist = readout.retire(rp, layout, counts, hist, CPUS, {7})
    assert gone_counts == [old] and gone_hist == [hist[0][0]]        # what the caller deletes from the maps
    readout.begin(False)
    (after,) = readout.series(rp, layout, [counts[1]], [hist[1]], CPUS)  # the old row is gone from the map
    assert (after.count, after.sum_ns, after.buckets) == (before.count, before.sum_ns, before.buckets) == (7, 700, {4: 7})
    assert readout.cached_keys(0) == 1                                # the retired key left the label cache
    readout.begin(False)
    assert readout.series(rp, layout, [], [], CPUS) == []             # no row left: the series ends...
    readout.begin(False)
    assert readout.series(rp, layout, [(key(layout, cgroup=8), value((1, 0)))], [], CPUS)[0].count == 1  # ...for good


def test_unsettled_labels_are_decoded_again_and_unknown_ids_counted():
    names = {}

    def late(cgroup):
        return names.get(cgroup, ({"namespace": "", "pod": "uid-1", "container": ""}, False))
    rp, labels = probe(), ("pod",)
    layout = KeyLayout.of(labels, (), frozenset())
    readout = Readout({"probeset": "set"}, "n1", labels, late)
    row = [(key(layout, cgroup=5), value((1, 0)))]
    readout.begin(False)
    assert readout.series(rp, layout, row, [], CPUS)[0].labels["pod"] == "uid-1"
    assert readout.cached_keys(0) == 0 and readout.unknown == set()   # not settled, but not unknown either
    names[5] = ({"namespace": "web", "pod": "api-1", "container": ""}, True)
    readout.begin(False)
    assert readout.series(rp, layout, row, [], CPUS)[0].labels["pod"] == "api-1"
    readout2 = Readout({"probeset": "set"}, "n1", labels, lookup)
    readout2.begin(False)
    readout2.series(rp, layout, [(key(layout, cgroup=77), value((1, 0))), (key(layout, cgroup=78), value((1, 0)))],
                    [], CPUS)
    assert readout2.unknown == {77, 78}


def test_unknown_cgroups_expire_after_a_later_scan():
    aging = UnknownAging()
    state = {1: "live", 2: "unknown", 3: "gone"}.get
    assert aging.expired({1, 2, 3}, state, last_scan=10.0, now=11.0) == set()   # first noticed after the scan
    assert aging.expired({1, 2, 3}, state, last_scan=10.5, now=12.0) == set()   # scan began before it was noticed
    assert aging.expired({1, 2, 3}, state, last_scan=11.5, now=13.0) == {2}     # a later scan still did not find it
    assert aging.expired({2}, state, last_scan=11.5, now=14.0) == set()         # noticed anew after retiring


def test_label_text_escapes_values():
    assert label_text({"a": 'x"y', "b": "back\\slash", "c": "new\nline"}) == \
        '{a="x\\"y",b="back\\\\slash",c="new\\nline"}'
