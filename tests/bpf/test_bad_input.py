"""Bad probes next to good ones: each bad one gets a clear error, the good ones still attach and count."""

import os

from tests.support import counts, status


def test_every_bad_probe_reported_and_good_ones_count(target, run_probeset):
    good = {"name": "good", "uprobe": f"{target.path}:probeset_target_work", "pid": target.pid}
    prog = run_probeset([
        {"name": "nosym", "uprobe": f"{target.path}:no_such_function"},
        {"name": "nobin", "uprobe": "/nonexistent/bin:main"},
        {"name": "nolib", "uprobe": "libdoesnotexist:f"},
        {"name": "notelf", "uprobe": "/etc/hostname:main"},
        {"name": "notp", "tracepoint": "nosuch:event"},
        {"name": "nofield", "tracepoint": "net:net_dev_xmit", "groupBy": ["nosuchfield"]},
        {"name": "noglob", "uprobe": f"{target.path}:zz_nothing_*"},
        {"name": "toomany", "tracepoint": "syscalls:*"},
        {"name": "inject", "uprobe": 'libc:malloc"); } /*'},
        {"name": "newline", "tracepoint": "sched:sched_switch\n#include <x>"},
        {"name": "bad name", "tracepoint": "sched:sched_switch"},
        good,
        {"name": "good", "tracepoint": "sched:sched_switch"},
    ])
    errors = {st.name: st.error for st in prog.probe_statuses()}
    assert f"{target.path}: no function symbol 'no_such_function'" in errors["nosym"]
    assert errors["nobin"] == "binary /nonexistent/bin: no such file"
    assert "library libdoesnotexist: not found" in errors["nolib"]
    assert errors["notelf"] == "binary /etc/hostname: not an ELF file"
    assert errors["notp"].startswith("no tracepoint matches 'nosuch:event'")
    assert "tracepoint net:net_dev_xmit has no field 'nosuchfield' (fields: len, name, rc, skbaddr)" == errors["nofield"]
    assert errors["noglob"] == f"{target.path}: no symbol matches 'zz_nothing_*'"
    assert "more than maxFunctions=128" in errors["toomany"] and "narrow the glob" in errors["toomany"]
    assert "spec.probes[8].uprobe" in errors["inject"] and "BINARY:SYMBOL" in errors["inject"]
    assert "spec.probes[9].tracepoint" in errors["newline"]
    assert errors["spec.probes[10]"].startswith('spec.probes[10].name: "bad name" is not valid')
    by_index = {st.index: st for st in prog.probe_statuses()}
    assert by_index[12].error == 'spec.probes[12].name: duplicate name "good" (also spec.probes[11])'
    assert by_index[11].error is None
    target.run("work 123")
    assert counts(prog, "good") == {"probeset_target_work": 123}
    assert by_index[11].functions == {"probeset_target_work": True}


def test_glob_bounded_by_max_functions(run_probeset):
    prog = run_probeset([{"name": "many", "tracepoint": "syscalls:sys_enter_*", "maxFunctions": 5}])
    err = status(prog, "many").error
    assert "matches" in err and "more than maxFunctions=5" in err and "first matches: syscalls:" in err


def test_a_probe_that_breaks_compilation_is_isolated(target, run_probeset, monkeypatch):
    """Fault injection: make the C of one probe invalid; that probe is reported, the others run."""
    from probeset_agent import codegen
    real = codegen.site_block

    def broken_for_probe_1(rp, site, labels, *flags):
        block = real(rp, site, labels, *flags)
        return codegen.CCode(block + "    this_is_not_c;\n") if rp.id == 1 else block
    monkeypatch.setattr(codegen, "site_block", broken_for_probe_1)
    prog = run_probeset([
        {"name": "first", "uprobe": f"{target.path}:probeset_target_alpha", "pid": target.pid},
        {"name": "broken", "uprobe": f"{target.path}:probeset_target_beta", "pid": target.pid},
        {"name": "third", "uprobe": f"{target.path}:probeset_target_work", "pid": target.pid},
    ])
    err = status(prog, "broken").error
    assert err.startswith("BPF compile failed:") and "this_is_not_c" in err
    # the whole (fails); [first] compiles, so the rest fails: [broken] alone fails, [third] compiles;
    # then first + third
    assert prog.compile_cost.compiles == 5
    target.run("alpha 4")
    target.run("work 6")
    assert counts(prog, "first") == {"probeset_target_alpha": 4}
    assert counts(prog, "third") == {"probeset_target_work": 6}


def test_missing_kernel_headers_is_a_clear_reason_not_a_crash(monkeypatch, run_probeset):
    from probeset_agent import build
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "/nonexistent/headers")
    prog = run_probeset([{"name": "tp", "tracepoint": "sched:sched_switch"}])
    assert status(prog, "tp").error == (f"kernel headers for {os.uname().release} not found at /nonexistent/headers: "
                                        f"install linux-headers-{os.uname().release} (or the distribution's "
                                        "equivalent) on the node")
    assert prog.read_series() == {}
    assert build.missing_kernel_headers() is not None
