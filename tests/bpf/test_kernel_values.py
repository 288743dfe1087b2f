"""Value probes on this host's kernel: sums and histograms of arguments, return values and
tracepoint fields, exact (bucket by bucket), filtered to the test program's pid."""

from probeset_agent.exposition import MetricsCollector
from probeset_agent.histogram import kernel_bucket
from tests.bpf.lang import example_for, missed, one_series
from tests.support import status

def test_sum_and_histogram_of_an_argument_are_exact(lang, run_probeset):
    probes = [{"name": "s", "uprobe": f"{lang.path}:lang_value", "pid": lang.pid, "value": "arg1"},
              {"name": "h", "uprobe": f"{lang.path}:lang_value", "pid": lang.pid, "value": "arg1",
               "aggregate": "histogram", "unit": "bytes"}]
    prog = run_probeset(probes)
    lang.run("value 100 0 7")                    # arg1 = 7 * i, i < 100
    s, h = one_series(prog, "s"), one_series(prog, "h")
    assert (s.count, s.sum_ns, s.buckets) == (100, 7 * 99 * 100 // 2, None)
    want = {}
    for i in range(100):
        want[kernel_bucket(7 * i, 1)] = want.get(kernel_bucket(7 * i, 1), 0) + 1
    assert (h.count, h.sum_ns, h.buckets) == (100, 7 * 99 * 100 // 2, want)
    assert missed(prog, "s", "negative_value") == 0
    text = MetricsCollector([prog], "testnode").render()
    assert 'probeset_value_total{probeset="test",probe="s",function="lang_value",node="testnode"} 34650\n' in text
    labels = 'probeset="test",probe="h",function="lang_value",node="testnode"'
    assert f'probeset_value_bytes_bucket{{{labels},le="1.0"}} 1\n' in text      # 0
    assert f'probeset_value_bytes_bucket{{{labels},le="8.0"}} 2\n' in text      # 0, 7
    assert f'probeset_value_bytes_bucket{{{labels},le="512.0"}} 74\n' in text   # 7 * i <= 512: i <= 73
    assert f'probeset_value_bytes_bucket{{{labels},le="1024.0"}} 100\n' in text
    assert f'probeset_value_bytes_count{{{labels}}} 100\n' in text
    assert f'probeset_value_bytes_sum{{{labels}}} 34650\n' in text


def test_histogram_rows_follow_the_probes_buckets_per_power_of_two(lang, run_probeset):
    """The kernel records each value in the bucket of the probe's export grid (hist_bucket()):
    2 per power of two keeps 2 rows where 4 per power keeps 4, and the counts are exact."""
    probes = [{"name": f"h{per_power}", "uprobe": f"{lang.path}:lang_value", "pid": lang.pid, "value": "arg1",
               "aggregate": "histogram", "bucketsPerPowerOfTwo": per_power} for per_power in (1, 2, 4)]
    prog = run_probeset(probes)
    lang.run("value 64 1025 16")                 # arg1 = 1025 + 16 * i, i < 64: 1,025 to 2,033
    for per_power, rows in ((1, 1), (2, 2), (4, 4)):
        h = one_series(prog, f"h{per_power}")
        want = {}
        for i in range(64):
            want[kernel_bucket(1025 + 16 * i, per_power)] = want.get(kernel_bucket(1025 + 16 * i, per_power), 0) + 1
        assert (h.count, h.buckets, len(h.buckets)) == (64, want, rows)


def test_negative_return_values_are_counted_not_summed(lang, run_probeset):
    probes = [{"name": "r", "uretprobe": f"{lang.path}:lang_value", "pid": lang.pid, "value": "retval",
               "aggregate": "histogram"}]
    prog = run_probeset(probes)
    lang.run("value 100 -50 1")                  # returns -50 .. 49: 50 negative, then 0 .. 49
    r = one_series(prog, "r")
    want = {}
    for v in range(50):
        want[kernel_bucket(v, 1)] = want.get(kernel_bucket(v, 1), 0) + 1
    assert (r.count, r.sum_ns, r.buckets) == (100, sum(range(50)), want)
    assert missed(prog, "r", "negative_value") == 50


def test_tracepoint_field_as_bytes_read(lang, run_probeset):
    prog = run_probeset([{"name": "read_bytes", "tracepoint": "syscalls:sys_exit_read", "pid": lang.pid,
                          "value": "ret", "unit": "bytes"}])
    command = "read 100 4096"
    lang.run(command)                            # plus the one read of the command line from stdin
    s = one_series(prog, "read_bytes")
    assert (s.count, s.sum_ns) == (101, 100 * 4096 + len(command) + 1)
    assert missed(prog, "read_bytes", "negative_value") == 0


def test_bad_values_fail_alone(lang, run_probeset):
    probes = [{"name": "nofield", "tracepoint": "syscalls:sys_exit_read", "value": "bytes", "pid": lang.pid},
              {"name": "entry_retval", "uprobe": f"{lang.path}:lang_value", "value": "retval"},
              {"name": "string_field", "tracepoint": "sched:sched_process_exec", "value": "filename"},
              {"name": "good", "uprobe": f"{lang.path}:lang_value", "pid": lang.pid, "value": "arg0"}]
    prog = run_probeset(probes)
    assert status(prog, "nofield").error.startswith(
        "spec.probes[0].value: tracepoint syscalls:sys_exit_read has no field 'bytes' (fields: __syscall_nr, ")
    assert status(prog, "entry_retval").error == (
        "spec.probes[1].value: retval needs a return probe (kretprobe, uretprobe), not uprobe: at entry there is "
        "no return value yet")
    assert "spec.probes[2].value: field 'filename' of sched:sched_process_exec is __data_loc char[]" in \
        status(prog, "string_field").error
    lang.run("value 10 0 1")
    assert one_series(prog, "good").sum_ns == 45


def test_read_bytes_example_counts_exact_bytes(lang, start_program):
    prog = start_program(example_for("examples/read-bytes.yaml", lang.pid))
    lang.run("read 50 512")
    lang.run("read 3 65536")
    s = one_series(prog, "read_syscall")
    lines = len("read 50 512\n") + len("read 3 65536\n")      # stdio's reads of the commands
    assert (s.count, s.sum_ns) == (55, 50 * 512 + 3 * 65536 + lines)
    h = one_series(prog, "read_sizes")
    # one bucket per power of two (the default): the reads of 12 and 13 bytes share (8, 16]
    assert h.buckets == {kernel_bucket(512, 1): 50, kernel_bucket(65536, 1): 3, kernel_bucket(12, 1): 2}
    assert kernel_bucket(12, 1) == kernel_bucket(13, 1) == kernel_bucket(16, 1) != kernel_bucket(8, 1)
