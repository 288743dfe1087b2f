"""Entry/return pairing per (thread, depth): a function that calls itself gets one latency sample
per nesting level, up to MAX_CALL_DEPTH; deeper levels are counted as missed, exactly."""

from probeset_agent.codegen import MAX_CALL_DEPTH
from tests.bpf.lang import one_series


def missed(prog, reason):
    return prog.read_missed()[(0, reason)]


def test_each_nesting_level_is_timed(lang, run_probeset):
    prog = run_probeset([{"name": "nest", "uprobe": f"{lang.path}:lang_nest", "pid": lang.pid, "latency": True}])
    lang.run("nest 50 4")                  # 5 nested calls each
    s = one_series(prog, "nest")
    assert (s.count, sum(s.buckets.values())) == (250, 250)
    assert (missed(prog, "unpaired_return"), missed(prog, "nesting_too_deep")) == (0, 0)


def test_nesting_deeper_than_the_bound_is_counted(lang, run_probeset):
    assert MAX_CALL_DEPTH == 8
    prog = run_probeset([{"name": "nest", "uprobe": f"{lang.path}:lang_nest", "pid": lang.pid, "latency": True}])
    lang.run("nest 20 10")                 # 11 nested calls each: 8 timed, 3 too deep
    s = one_series(prog, "nest")
    assert s.count == 20 * 8
    assert (missed(prog, "unpaired_return"), missed(prog, "nesting_too_deep")) == (0, 20 * 3)
    lang.run("nest 10 0")                  # the thread's depth is back to 0: plain calls pair again
    assert one_series(prog, "nest").count == 20 * 8 + 10
    assert missed(prog, "nesting_too_deep") == 20 * 3
