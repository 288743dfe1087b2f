"""Value probes (value, aggregate, unit, retvalLabel): validation, metric names, errno names, value
buckets, generated C and exposition. Pure: no root."""

import re

import pytest

from probeset_agent.codegen import generate
from probeset_agent.exposition import MetricsCollector
from probeset_agent.histogram import bucket_index, bucket_upper_ns, cumulative_buckets, value_bounds
from probeset_agent.readout import Series, label_text
from probeset_agent.resolve import GroupField, ResolvedProbe, Site
from probeset_agent.snapshot import ProbeSeries, SetSnapshot
from probeset_api.spec import Probe, parse_probeset
from probeset_api.values import errno_symbols, metric_name


def parse(probe):
    pset = parse_probeset({"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet", "metadata": {"name": "t"},
                           "spec": {"probes": [{"name": "p", **probe}]}})
    return pset


def errors(probe) -> str:
    (bad,) = parse(probe).rejected
    return bad.reason


@pytest.mark.parametrize("probe,error", [
    ({"kprobe": "vfs_read", "value": "retval"},
     "spec.probes[0].value: retval needs a return probe (kretprobe, uretprobe), not kprobe"),
    ({"uprobe": "libc:read", "value": "retval", "aggregate": "histogram"},
     "spec.probes[0].value: retval needs a return probe (kretprobe, uretprobe), not uprobe"),
    ({"kretprobe": "vfs_read", "value": "arg2"},
     "spec.probes[0].value: arg2 of a return probe is gone at return (its register is reused): use the entry "
     "probe (kprobe)"),
    ({"uretprobe": "libc:read", "value": "arg0"}, "use the entry probe (uprobe)"),
    ({"tracepoint": "block:block_rq_issue", "value": "arg1"}, "spec.probes[0].value: arg1 is for function probes"),
    ({"kprobe": "vfs_read", "value": "bytes"}, "spec.probes[0].value: 'bytes' is not available for kprobe: use arg0..arg5"),
    ({"kprobe": "vfs_read", "value": "comm"}, "spec.probes[0].value: comm is a string; a value is a number"),
    ({"kprobe": "vfs_read", "value": "arg2", "latency": True}, "spec.probes[0].value: a probe records either latency"),
    ({"kprobe": "vfs_read", "aggregate": "histogram"}, "spec.probes[0].aggregate: only applies with value"),
    ({"kprobe": "vfs_read", "unit": "bytes"}, "spec.probes[0].unit: only applies with value"),
    ({"kprobe": "vfs_read", "value": "arg2", "unit": "kilobytes"},
     'spec.probes[0].unit: "kilobytes" is not one of: bytes, seconds'),
    ({"kprobe": "vfs_read", "value": "arg2", "aggregate": "avg"},
     'spec.probes[0].aggregate: "avg" is not one of: sum, histogram'),
    ({"kprobe": "vfs_read", "value": "arg2", "bucketsPerPowerOfTwo": 2},
     "spec.probes[0].bucketsPerPowerOfTwo: only applies with latency: true or aggregate: histogram"),
    ({"kretprobe": "vfs_read", "retvalLabel": "errno"}, "spec.probes[0].retvalLabel: only applies with groupBy: [retval]"),
    ({"kretprobe": "vfs_read", "groupBy": ["retval"], "retvalLabel": "name"},
     'spec.probes[0].retvalLabel: "name" is not one of: number, errno'),
    ({"kprobe": "vfs_read", "value": "arg 2"}, "spec.probes[0].value: \"arg 2\" is not valid: expected arg0..arg5"),
])
def test_bad_values_are_rejected_naming_the_field(probe, error):
    assert error in errors(probe)


@pytest.mark.parametrize("probe,value,aggregate,unit", [
    ({"kretprobe": "vfs_read", "value": "retval", "unit": "bytes"}, "retval", "sum", "bytes"),
    ({"kprobe": "tcp_sendmsg", "value": "arg2", "aggregate": "histogram", "unit": "bytes",
      "bucketsPerPowerOfTwo": 2}, "arg2", "histogram", "bytes"),
    ({"tracepoint": "block:block_rq_issue", "value": "bytes", "aggregate": "histogram"}, "bytes", "histogram", None),
    ({"uprobe": "libc:usleep", "value": "arg0"}, "arg0", "sum", None),
])
def test_good_values_are_parsed(probe, value, aggregate, unit):
    (p,) = parse(probe).probes
    assert (p.value, p.aggregate, p.unit) == (value, aggregate, unit)
    assert p.records_sum and p.has_histogram == (aggregate == "histogram")


@pytest.mark.parametrize("unit,aggregate,name", [
    (None, "sum", "probeset_value_total"), (None, "histogram", "probeset_value"),
    ("bytes", "sum", "probeset_value_bytes_total"), ("bytes", "histogram", "probeset_value_bytes"),
    ("seconds", "sum", "probeset_value_seconds_total"), ("seconds", "histogram", "probeset_value_seconds"),
])
def test_metric_names_follow_prometheus(unit, aggregate, name):
    assert metric_name(unit, aggregate) == name


@pytest.mark.parametrize("value,name", [(-2, "ENOENT"), (-1, "EPERM"), (-13, "EACCES"), (-11, "EAGAIN"),
                                        (-35, "EDEADLK"), (-95, "EOPNOTSUPP"), (-110, "ETIMEDOUT"),
                                        ((1 << 32) - 2, "ENOENT"), ((1 << 32) - 4, "EINTR")])
def test_errno_names(value, name):
    assert errno_symbols()[value] == name


@pytest.mark.parametrize("value", [0, 1, 2, 4096, -512, -4096])
def test_values_without_an_errno_name_stay_numbers(value):
    assert value not in errno_symbols()


def test_value_bounds_are_powers_of_two_from_one():
    assert value_bounds(1) == tuple(1 << k for k in range(41))
    assert value_bounds(2)[:9] == (1, 2, 3, 4, 6, 8, 12, 16, 24)
    assert value_bounds(4)[:12] == (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16)


@pytest.mark.parametrize("value,le", [(0, 1), (1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (8, 8), (9, 16),
                                      (4095, 4096), (4096, 4096), (4097, 8192), ((1 << 40) + 1, float("inf"))])
def test_a_value_lands_in_the_first_power_of_two_bound_at_or_above_it(value, le):
    buckets = cumulative_buckets({bucket_index(value): 1}, 1, bounds=value_bounds(1), scale=1.0)
    first = next(bound for bound, n in buckets if n == 1)
    assert first == le
    assert bucket_upper_ns(bucket_index(value)) >= value


def value_probe(index, kind, source, value_label, aggregate="sum", signed=False, unit=None, mechanism=None):
    p = Probe(index=index, name=f"v{index}", kind=kind, target="/bin/true:main", value=value_label,
              aggregate=aggregate, unit=unit)
    rp = ResolvedProbe(p, via="uprobe", functions=["main"])
    gf = GroupField(value_label, source, index=int(value_label[3:]) if source == "arg" else 0, offset=24, size=4,
                    signed=signed)
    rp.sites = [Site(0, "main", mechanism or kind, "count", path="/bin/true", address=0x10, value=gf)]
    return rp


def test_generated_c_records_values():
    prog = generate([value_probe(0, "uprobe", "arg", "arg2"),
                     value_probe(1, "uretprobe", "retval", "retval", "histogram", signed=True),
                     value_probe(2, "tracepoint", "tp_int", "bytes", "histogram", signed=False, mechanism="tracepoint")],
                    ("node",), max_series=10)
    text = prog.text
    assert "u64 val_ = 0; val_ = PT_REGS_PARM3(ctx);\n        record_p0(&key, val_, 1);" in text
    assert "hist_p0" not in text                    # a sum needs no histogram map
    assert "val->sum_ns += ns;" in re.search(r"void record_p0\(.*?\n}\n", text, re.S).group(0)
    # one function, labels [node]: the histogram is an array, slot function x NUM_BUCKETS + bucket (mapshape.py)
    assert "u64 val_ = 0; val_ = PT_REGS_RC(ctx);" in text and "BPF_PERCPU_ARRAY(hist_p1, u64, 252);" in text
    assert generate([value_probe(1, "uretprobe", "retval", "retval", "histogram", signed=True)], ("node", "comm"),
                    max_series=10).text.count("hist_p1, 320,") == 1      # per-event labels: a hash
    assert "if ((s64)val_ < 0) { count_missed(1, MISSED_NEGATIVE_VALUE); record_p1(&key, 0, 0); }" in text
    assert "{ u32 v_ = 0; bpf_probe_read_kernel(&v_, sizeof(v_), (char *)ctx + 24); val_ = (u64)v_; }" in text
    assert "count_missed(2, MISSED_NEGATIVE_VALUE)" not in text      # unsigned: never negative
    assert "#define MISSED_NEGATIVE_VALUE 2" in text
    assert "start_p" not in text


def render(probe: ProbeSeries) -> str:
    snap = SetSnapshot({"probeset": "s"}, [], probes=[probe])
    return MetricsCollector([type("S", (), {"snapshot": lambda self: snap})()], "n").render()


def test_value_sum_is_a_counter_named_by_its_unit():
    labels = {"probeset": "s", "probe": "read", "function": "vfs_read"}
    s = Series(labels, label_text(labels), count=3, sum_ns=12288)
    text = render(ProbeSeries("read", 1, [s], "probeset_value_bytes_total", "bytes"))
    assert '# TYPE probeset_value_bytes_total counter' in text
    assert 'probeset_value_bytes_total{probeset="s",probe="read",function="vfs_read"} 12288\n' in text
    assert 'probeset_events_total{probeset="s",probe="read",function="vfs_read"} 3\n' in text


def test_value_histogram_has_power_of_two_buckets_sum_and_count():
    labels = {"probeset": "s", "probe": "io", "function": "f"}
    buckets = {bucket_index(512): 2, bucket_index(4096): 3, bucket_index(1 << 20): 1}
    s = Series(labels, label_text(labels), count=6, sum_ns=2 * 512 + 3 * 4096 + (1 << 20), buckets=buckets)
    text = render(ProbeSeries("io", 1, [s], "probeset_value_bytes", "bytes"))
    assert 'probeset_value_bytes_bucket{probeset="s",probe="io",function="f",le="256.0"} 0\n' in text
    assert 'probeset_value_bytes_bucket{probeset="s",probe="io",function="f",le="512.0"} 2\n' in text
    assert 'probeset_value_bytes_bucket{probeset="s",probe="io",function="f",le="4096.0"} 5\n' in text
    assert 'probeset_value_bytes_bucket{probeset="s",probe="io",function="f",le="1.048576e+06"} 6\n' in text
    assert 'probeset_value_bytes_bucket{probeset="s",probe="io",function="f",le="+Inf"} 6\n' in text
    assert f'probeset_value_bytes_sum{{probeset="s",probe="io",function="f"}} {2 * 512 + 3 * 4096 + (1 << 20)}\n' in text
    assert 'probeset_value_bytes_count{probeset="s",probe="io",function="f"} 6\n' in text
    assert "probeset_latency_seconds_bucket" not in text


def test_value_in_seconds_is_exported_from_nanoseconds():
    labels = {"probeset": "s", "probe": "t", "function": "f"}
    s = Series(labels, label_text(labels), count=2, sum_ns=3_000_000_000)
    assert 'probeset_value_seconds_total{probeset="s",probe="t",function="f"} 3.0\n' in render(
        ProbeSeries("t", 1, [s], "probeset_value_seconds_total", "seconds"))
