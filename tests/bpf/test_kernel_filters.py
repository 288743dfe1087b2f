"""Filters in the kernel: each operator, all/any, negative numbers, unsigned bounds, task fields and
tracepoint fields, on the test program's own calls. The expected counts come from the filter's
meaning in Python (probeset_api.filters.evaluate) over the same calls, and are also written out."""

from probeset_api.filters import evaluate, parse_filter
from tests.bpf.lang import example_for, one_series
from tests.support import counts, status

M64 = (1 << 64) - 1
N = 100


def cmp(field, op, value, **extra):
    return {"field": field, "op": op, "value": value, **extra}


FILTERS = {   # name -> (filter, calls of lang_value(i, -50 + i, i % 3), i < 100, that pass it)
    "eq": (cmp("arg0", "==", 7), 1),
    "ne": (cmp("arg0", "!=", 7), 99),
    "lt": (cmp("arg0", "<", 10), 10),
    "le": (cmp("arg0", "<=", 10), 11),
    "gt": (cmp("arg0", ">", 90), 9),
    "ge": (cmp("arg0", ">=", 90), 10),
    "bits": (cmp("arg2", "&", 2), 33),                            # i % 3 == 2
    "negative_s64": (cmp("arg1", "<", 0, type="s64"), 50),        # -50 .. -1
    "unsigned_huge": (cmp("arg1", ">", 1000), 50),                # the same, as u64: above 2^63
    "s32_minus_3": (cmp("arg1", "==", -3, type="s32"), 1),
    "u64_max": (cmp("arg1", "==", M64), 1),                       # -1 as u64
    "u8_low_byte": (cmp("arg1", "==", 0xFE, type="u8"), 1),       # -2 & 0xff
    "any_all": ({"any": [cmp("arg0", "<", 5), {"all": [cmp("arg0", ">=", 95), cmp("arg2", "==", 1)]}]}, 6),   # 0..4, 97
    "all_comm": ({"all": [cmp("comm", "==", "probeset_lang"), cmp("arg0", "<", 3)]}, 3),
    "not_comm": (cmp("comm", "!=", "probeset_lang"), 0),
    "uid": (cmp("uid", "==", 0), 100),
}


def test_each_operator_and_combination_keeps_exactly_its_calls(lang, run_probeset):
    probes = [{"name": name, "uprobe": f"{lang.path}:lang_value", "pid": lang.pid, "filter": f}
              for name, (f, _) in FILTERS.items()]
    probes += [{"name": "pid", "uprobe": f"{lang.path}:lang_value", "filter": cmp("pid", "==", lang.pid)},
               {"name": "tid", "uprobe": f"{lang.path}:lang_value", "filter": cmp("tid", "==", lang.pid)}]
    prog = run_probeset(probes)
    lang.run(f"value {N} -50 1")
    events = [{"arg0": i, "arg1": (-50 + i) & M64, "arg2": i % 3, "comm": "probeset_lang", "uid": 0}
              for i in range(N)]
    for name, (f, want) in FILTERS.items():
        assert status(prog, name).error is None, (name, status(prog, name).error)
        ir, errors = parse_filter(f, "uprobe", False, "p")
        assert sum(evaluate(ir, e) for e in events) == want, name        # the written-out count is right
        assert sum(counts(prog, name).values()) == want, name            # and the kernel agrees
    assert counts(prog, "pid") == counts(prog, "tid") == {"lang_value": N}


def test_errors_only_grouped_by_errno_name(lang, run_probeset):
    probes = [{"name": "errors", "uretprobe": f"{lang.path}:lang_value", "pid": lang.pid,
               "filter": cmp("retval", "<", 0), "groupBy": ["retval"], "retvalLabel": "errno"},
              {"name": "int_errors", "uretprobe": f"{lang.path}:lang_int", "pid": lang.pid,
               "filter": cmp("retval", "<", 0, type="s32"), "groupBy": ["retval"], "retvalLabel": "errno"}]
    prog = run_probeset(probes)
    lang.run("value 8 -5 1")              # returns -5 .. 2: five errors
    lang.run("int 6 -3")                  # an int function returns -3 .. 2
    assert counts(prog, "errors", by="retval") == {"EIO": 1, "EINTR": 1, "ESRCH": 1, "ENOENT": 1, "EPERM": 1}
    assert counts(prog, "int_errors", by="retval") == {"ESRCH": 1, "ENOENT": 1, "EPERM": 1}


def test_filter_on_a_tracepoint_field(lang, run_probeset):
    prog = run_probeset([{"name": "big_reads", "tracepoint": "syscalls:sys_exit_read", "pid": lang.pid,
                          "filter": cmp("ret", ">=", 4096), "value": "ret", "unit": "bytes"}])
    lang.run("read 10 4096")
    lang.run("read 5 100")
    s = one_series(prog, "big_reads")
    assert (s.count, s.sum_ns) == (10, 10 * 4096)      # not the small reads, not stdio's command reads


def test_bad_filters_fail_alone(lang, run_probeset):
    probes = [{"name": "nofield", "tracepoint": "syscalls:sys_exit_read", "filter": cmp("bytes", ">", 1)},
              {"name": "range", "tracepoint": "syscalls:sys_exit_read",
               "filter": {"all": [cmp("__syscall_nr", "==", 1 << 40)]}},
              {"name": "string", "tracepoint": "sched:sched_process_exec", "filter": cmp("filename", "==", 1)},
              {"name": "entry_retval", "uprobe": f"{lang.path}:lang_value", "filter": cmp("retval", "<", 0)},
              {"name": "good", "uprobe": f"{lang.path}:lang_value", "pid": lang.pid, "filter": cmp("arg0", "<", 4)}]
    prog = run_probeset(probes)
    assert status(prog, "nofield").error.startswith(
        "spec.probes[0].filter.field: tracepoint syscalls:sys_exit_read has no field 'bytes' (fields: ")
    assert status(prog, "range").error == ("spec.probes[1].filter.all[0].value: 1099511627776 is out of range for "
                                           "s32 field '__syscall_nr' (-2147483648..2147483647)")
    assert status(prog, "string").error.startswith("spec.probes[2].filter.field: field 'filename' of "
                                                   "sched:sched_process_exec is __data_loc char[]")
    assert status(prog, "entry_retval").error.startswith("spec.probes[3].filter.field: retval needs a return probe")
    lang.run("value 10 0 1")
    assert counts(prog, "good") == {"lang_value": 4}


def test_latency_filter_at_entry_and_at_return(lang, run_probeset):
    probes = [{"name": "entry", "uprobe": f"{lang.path}:lang_value", "pid": lang.pid, "latency": True,
               "filter": cmp("arg2", "==", 0)},
              {"name": "exit", "uprobe": f"{lang.path}:lang_value", "pid": lang.pid, "latency": True,
               "filter": cmp("retval", "<", 0)}]
    prog = run_probeset(probes)
    lang.run("value 30 -10 1")           # arg2 = i % 3 == 0: 10 calls; retval -10 .. 19: 10 negative
    for name in ("entry", "exit"):
        s = one_series(prog, name)
        assert (s.count, sum(s.buckets.values())) == (10, 10), name
        rp = next(r for r in prog.resolved if r.probe.name == name)
        assert prog.read_missed()[(rp.id, "unpaired_return")] == 0, name


def test_errors_by_errno_example(lang, start_program):
    prog = start_program(example_for("examples/errors-by-errno.yaml", lang.pid))
    lang.run("open 3 0")
    lang.run("open 2 1")
    assert counts(prog, "openat_errors", by="ret") == {"ENOENT": 3, "ENOTDIR": 2}
