"""A uprobe hit's cost measured on this kernel (uprobe_cost.calibrate: perf uprobe events on code
this process calls), and the gauge that exports it beside each uprobe point's BPF run time."""

from prometheus_client.parser import text_string_to_metric_families

from probeset_agent.exposition import MetricsCollector
from probeset_agent.uprobe_cost import EMULATED, OPTIMIZABLE, RETURN, SINGLE_STEPPED, calibrate
from probeset_agent.uprobe_entry import point_class


def test_calibration_measures_each_class():
    cost = calibrate(calls=5000, rounds=3)      # it checks that the uprobe counted every call
    assert set(cost) == {EMULATED, SINGLE_STEPPED, OPTIMIZABLE, RETURN}
    # single-stepping is a second trap: several times the emulated hit (5x to 35x seen); a 5-byte
    # NOP is emulated, or on Linux >= 6.18 not trapped at all after the first hit (~0.75x here)
    assert 0 < cost[EMULATED] < cost[SINGLE_STEPPED] / 2 and cost[SINGLE_STEPPED] < 1e-3
    assert 0 < cost[OPTIMIZABLE] < cost[SINGLE_STEPPED] / 2
    assert 0 <= cost[RETURN] < cost[SINGLE_STEPPED]


def test_calibration_in_a_thread_of_its_own():
    """The agent measures beside serving, in another thread than the main one."""
    import threading
    out = []
    worker = threading.Thread(target=lambda: out.append(calibrate(calls=5000, rounds=3)))
    worker.start()
    worker.join()
    assert set(out[0]) == {EMULATED, SINGLE_STEPPED, OPTIMIZABLE, RETURN}


def test_each_uprobe_point_exports_its_hit_cost(target, run_probeset):
    prog = run_probeset([{"name": "work", "uprobe": f"{target.path}:probeset_target_work", "pid": target.pid,
                          "latency": True}])
    cost = {EMULATED: 4e-7, SINGLE_STEPPED: 1.5e-5, RETURN: 2e-7}
    text = MetricsCollector([prog], "testnode", hit_cost=cost).render()
    (fam,) = [f for f in text_string_to_metric_families(text) if f.name == "probeset_uprobe_hit_seconds"]
    site = prog.program.attach_points[0].site
    kind = point_class("uprobe", site.path, site.address).kind
    assert kind in (EMULATED, SINGLE_STEPPED)           # what gcc emitted first decides
    assert sorted((s.labels["via"], s.labels["class"], s.value) for s in fam.samples) == \
        sorted([("uprobe", kind, cost[kind]), ("uretprobe", RETURN, cost[RETURN])])
    assert {s.labels["probe"] for s in fam.samples} == {"work"}
    assert "probeset_uprobe_hit_seconds{" not in MetricsCollector([prog], "testnode").render()   # not measured


def test_cet_functions_are_probed_past_endbr64_and_count_every_call(build_c, run_probeset):
    """The test program built with -fcf-protection=full: its functions start with endbr64, which
    the kernel would single-step; the agent places their uprobes (entry and the uretprobe's) on the
    next instruction, and every call is still counted once, with every latency paired."""
    from tests.support import TARGET_C, Target, counts
    path = build_c("probeset_target_cet", TARGET_C, "-fcf-protection=full")
    target = Target(path)
    try:
        prog = run_probeset([
            {"name": "alpha", "uprobe": f"{path}:probeset_target_alpha", "pid": target.pid},
            {"name": "beta", "uprobe": f"{path}:probeset_target_beta", "pid": target.pid, "latency": True}])
        sites = {p.site.function: p.site for p in prog.program.attach_points if p.mechanism == "uprobe"}
        for function in ("probeset_target_alpha", "probeset_target_beta"):
            site = sites[function]
            cls = point_class("uprobe", site.path, site.address)
            assert cls.insn.endswith(" at +4"), cls
        target.run("alpha 300")
        target.run("beta 200")
        assert counts(prog, "alpha") == {"probeset_target_alpha": 300}
        assert counts(prog, "beta") == {"probeset_target_beta": 200}
        text = MetricsCollector([prog], "testnode").render()
        (latency,) = [f for f in text_string_to_metric_families(text) if f.name == "probeset_latency_seconds"]
        assert [s.value for s in latency.samples if s.name.endswith("_count")] == [200]   # every return paired
    finally:
        target.close()


MOVES_C = r"""
#include <stdio.h>
#include <stdlib.h>
#define FN(name, body) ".globl " #name "\n.type " #name ",@function\n" #name ":\n" body ".size " #name ", .-" #name "\n"
__asm__(".text\n"
        FN(leaf, " lea 1(%rdi),%rax\n ret\n")
        FN(sub_call, " sub $8,%rsp\n call leaf\n add $8,%rsp\n ret\n")
        FN(block_loop, " mov %rdi,%rax\n1: dec %rax\n jnz 1b\n ret\n"));
long leaf(long), sub_call(long), block_loop(long);
int main(void) {            /* "N": sub_call(i) and block_loop(3) N times each, then "done" */
    long n;
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("ready\n");
    while (scanf("%ld", &n) == 1) {
        for (long i = 0; i < n; i++) { sub_call(i % 4); block_loop(3); }
        printf("done\n");
    }
    return 0;
}
"""


def test_count_probes_move_to_the_entry_blocks_emulated_instruction_and_count_every_call(build_c, run_probeset):
    """sub_call starts with `sub` (single-stepped) then `call` (emulated): a count probe goes on the
    call; one grouping by arg0 reads a register and stays on `sub`; block_loop loops back inside its
    entry block, so its probe stays at the entry. Each counts every call exactly."""
    from tests.support import Target, counts
    path = build_c("probeset_moves", MOVES_C)
    target = Target(path)
    try:
        prog = run_probeset([
            {"name": "calls", "uprobe": f"{path}:sub_call", "pid": target.pid},
            {"name": "byarg", "uprobe": f"{path}:sub_call", "pid": target.pid, "groupBy": ["arg0"]},
            {"name": "loop", "uprobe": f"{path}:block_loop", "pid": target.pid}])
        where = {p.site.function: point_class("uprobe", p.site.path, p.site.address, p.movable).insn
                 for p in prog.program.attach_points}
        # one point serves both probes of sub_call: byarg reads arg0 there, so it stays at entry
        assert where == {"sub_call": "bytes 48 83 ec 08", "block_loop": "bytes 48 89 f8 48"}
        target.run("250")
        assert counts(prog, "calls") == {"sub_call": 250}
        assert counts(prog, "byarg", by="arg0") == {"0": 63, "1": 63, "2": 62, "3": 62}
        assert counts(prog, "loop") == {"block_loop": 250}
        prog.stop()
        prog = run_probeset([{"name": "calls", "uprobe": f"{path}:sub_call", "pid": target.pid}], name="alone")
        ((point),) = prog.program.attach_points
        assert point_class("uprobe", path, point.site.address, point.movable).insn == "call at +4"
        target.run("250")
        assert counts(prog, "calls") == {"sub_call": 250}
    finally:
        target.close()


NOP5_C = r"""
#include <stdio.h>
#include <stdlib.h>
__asm__(".text\n.globl nop5_first\n.type nop5_first,@function\nnop5_first:\n"
        " .byte 0x0f,0x1f,0x44,0x00,0x00\n push %rbp\n mov %rsp,%rbp\n lea 1(%rdi),%rax\n pop %rbp\n ret\n"
        ".size nop5_first, .-nop5_first\n");
long nop5_first(long);
int main(void) {            /* "N": nop5_first(i) N times, then "done" */
    long n;
    volatile long sink = 0;
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("ready\n");
    while (scanf("%ld", &n) == 1) {
        for (long i = 0; i < n; i++) sink += nop5_first(i);
        printf("done\n");
    }
    return 0;
}
"""


def test_a_function_starting_with_a_5_byte_nop_counts_every_call(build_c, run_probeset):
    """On a 5-byte NOP the kernel (Linux >= 6.18) turns the uprobe into a call of a trampoline after
    its first hit in the process: every later hit goes that way, and each call is still counted once,
    by a count probe and by a latency probe (entry and return) on the same function."""
    from tests.support import Target, counts
    path = build_c("probeset_nop5", NOP5_C)
    target = Target(path)
    try:
        prog = run_probeset([
            {"name": "calls", "uprobe": f"{path}:nop5_first", "pid": target.pid},
            {"name": "timed", "uprobe": f"{path}:nop5_first", "pid": target.pid, "latency": True}])
        (entry,) = [p for p in prog.program.attach_points if p.mechanism == "uprobe"]
        assert point_class("uprobe", path, entry.site.address, entry.movable).kind == OPTIMIZABLE
        target.run("1000")
        target.run("234")
        assert counts(prog, "calls") == {"nop5_first": 1234}
        assert counts(prog, "timed") == {"nop5_first": 1234}
        cost = {EMULATED: 9e-7, OPTIMIZABLE: 7e-7, SINGLE_STEPPED: 1.1e-5, RETURN: 5e-7}
        text = MetricsCollector([prog], "testnode", hit_cost=cost).render()
        (latency,) = [f for f in text_string_to_metric_families(text) if f.name == "probeset_latency_seconds"]
        assert [s.value for s in latency.samples if s.name.endswith("_count")] == [1234]   # every return paired
        (fam,) = [f for f in text_string_to_metric_families(text) if f.name == "probeset_uprobe_hit_seconds"]
        assert sorted((s.labels["via"], s.labels["class"], s.value) for s in fam.samples) == \
            [("uprobe", OPTIMIZABLE, 7e-7), ("uretprobe", RETURN, 5e-7)]
    finally:
        target.close()
