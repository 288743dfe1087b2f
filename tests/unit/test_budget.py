"""A set's program size: the attach points a set's program may have, reserved probe by probe."""

from probeset_agent.budget import MAX_PROGRAM_SITES, Holdings, MemoryBudget, ProbeBudget
from probeset_agent.resolve import ResolvedProbe, Site
from probeset_api.spec import Probe


def tracepoints(index: int, names: list[str]) -> ResolvedProbe:
    p = Probe(index=index, name=f"p{index}", kind="tracepoint", target="syscalls:*")
    return ResolvedProbe(p, via="tracepoint", functions=names,
                         sites=[Site(i, n, "tracepoint", "count", tracepoint=n) for i, n in enumerate(names)])


def fentry(index: int, functions: list[str]) -> ResolvedProbe:
    p = Probe(index=index, name=f"k{index}", kind="kprobe", target="vfs_*")
    return ResolvedProbe(p, via="fentry", functions=functions,
                         sites=[Site(i, f, "fentry", "count", kernel_function=f) for i, f in enumerate(functions)])


def test_a_probe_past_the_programs_size_fails_and_the_others_run():
    """Each attach point is a C function clang compiles and a program the kernel loads: a set's
    compile, which every other set waits for, is bounded by MAX_PROGRAM_SITES. Points two probes
    share count once."""
    first = tracepoints(0, [f"tp:a{i}" for i in range(1500)])
    shared = tracepoints(1, [f"tp:a{i}" for i in range(1000)])          # the same tracepoints: no new point
    over = tracepoints(2, [f"tp:b{i}" for i in range(MAX_PROGRAM_SITES - 1500 + 1)])
    fits = tracepoints(3, [f"tp:b{i}" for i in range(MAX_PROGRAM_SITES - 1500)])
    probes = [first, shared, over, fits]
    failed = {}
    held = Holdings(ProbeBudget(10_000), MemoryBudget(1 << 40), ("node",), 100)
    held.reserve(lambda: [rp for rp in probes if rp.probe.name not in failed], False,
                 lambda rp, why: failed.setdefault(rp.probe.name, why))
    assert list(failed) == ["p2"]
    assert failed["p2"] == (f"needs {MAX_PROGRAM_SITES - 1500 + 1} more attach point(s) (functions, tracepoints), "
                            f"and its set's program has 1500 of the {MAX_PROGRAM_SITES} one program may have: narrow "
                            "the glob (maxFunctions), or split the probes over more sets")


def test_fentry_programs_count_as_attachments():
    """auto picks fentry where kprobes would be: the same probe takes the same share of the
    agent's attachments either way."""
    failed = {}
    held = Holdings(ProbeBudget(12), MemoryBudget(1 << 40), ("node",), 100)
    probes = [fentry(0, [f"vfs_{i}" for i in range(8)]), fentry(1, [f"do_{i}" for i in range(5)])]
    held.reserve(lambda: [rp for rp in probes if rp.probe.name not in failed], False,
                 lambda rp, why: failed.setdefault(rp.probe.name, why))
    assert held.attachments == 8
    assert failed == {"k1": "needs 5 kprobe/uprobe/fentry attachment(s), and the agent holds 8 of the 12 one process "
                            "may have (BCC_PROBE_LIMIT), for this and other ProbeSets: narrow the glob, or split the "
                            "probes over fewer sets"}
