"""Per-event overhead of a generated ProbeSet program vs a minimal hand-written BCC program.

The hand-written program counts in a per-CPU hash (u32 key -> u64) on the classic hook; the generated
one is the agent's own code path with `labels: [node]`, so its key is just the function index: the
agent counts it in a per-CPU array on the cheapest hook it can (hooks.py, mapshape.py; the
`hook` column says which). A variant `generated+cgroup` uses the default labels (namespace, pod,
container), which add bpf_get_current_cgroup_id() and a hash keyed by the cgroup.

Targets, all driven by bench/driver.c pinned to the last CPU (SCHED_FIFO):
  uprobe      bench_target() of the driver (first instruction `push %rbp`, emulated by the
              kernel), called N times in a tight loop; with --xol, bench_target_xol() instead
              (first instruction `lea`, which the kernel single-steps out of line); with --cet,
              bench_target_cet() (bench_target after an `endbr64`, as -fcf-protection builds
              functions): the hand-written program attaches on endbr64 (single-stepped), the
              agent past it (uprobe_entry.py), on the emulated `push %rbp`; with --sub,
              bench_target_sub() (`sub $8,%rsp`, then a call: gcc -O2's prologue without frame
              pointers): hand-written on the single-stepped `sub`, the agent on the emulated call
  glob8       bench_glob_* (8 functions like bench_target) called in turn: the hand-written program
              has one function per uprobe, key = its index; the generated one is one glob probe
  tracepoint  syscalls:sys_enter_getppid, the driver calling syscall(SYS_getppid) N times (a syscall
              tracepoint: no raw tracepoint by that name, so classic for both)
  kprobe, fentry  __do_sys_getppid (what the driver's getppid runs; the guest's __x64_sys_* are not
              traceable), attach: kprobe / fentry; only with --only, in the QEMU guest
              (tests/vm/run-in-vm): this host's kernel has neither
  rawtp       task:task_rename, the driver calling prctl(PR_SET_NAME) N times: a count-only probe
              there attaches as a raw tracepoint; `generated classic` forces attach: tracepoint
              (the array without the raw hook)

Every program is compiled and loaded once, then attached just before its run and detached after.
Phase 1 (wall time): each repetition runs the driver once per variant (none, hand-written,
generated, ...), the order rotating every repetition. Overhead per event = driver ns/op with the
probe minus ns/op without, paired within a repetition; medians (and interquartile ranges) over
repetitions. Many short interleaved runs rather than a few long ones: on a shared 2-CPU VM
interference comes in bursts, and the median of paired differences shrugs most of it off.

Phase 2 (BPF program cost): kernel.bpf_stats_enabled=1 (restored afterwards), then the
run_time_ns / run_cnt increase of each program over a run, from /proc/self/fdinfo: the program's
own ns per run, without the uprobe trap or tracepoint dispatch around it. Medians over runs.

  chrt -f 50 .venv/bin/python bench/overhead.py [--reps 100] [--calls 200000] [--syscalls 300000] [--xol | --cet | --sub]
                                                [--only uprobe|glob8|tracepoint|rawtp|kprobe|fentry]
"""

from __future__ import annotations

import argparse

from common import (DRIVER, Generated, HandWritten, bpf_stats_enabled, build_driver, loadavg, machine, median,
                    run_driver, save_json)

DEFAULT_LABELS = ("node", "namespace", "pod", "container")
TARGETS = ("uprobe", "glob8", "tracepoint", "rawtp", "kprobe", "fentry")
KERNEL_FUNCTION = "__do_sys_getppid"      # what the driver's getppid runs (kprobe, fentry: in the QEMU guest)


def variants(target: str, symbol: str):
    """hand, generated, [generated classic,] generated+cgroup, empty (a program on the hand-written
    one's hook that returns at once: the floor every variant pays)."""
    if target == "uprobe":
        probe, where = {"uprobe": f"{DRIVER}:{symbol}"}, {"uprobe": (str(DRIVER), symbol)}
    elif target == "glob8":
        probe = {"uprobe": f"{DRIVER}:bench_glob_*"}
        where = {"uprobes": [(str(DRIVER), f"bench_glob_{i}") for i in range(8)]}
    elif target == "rawtp":
        tp = "task:task_rename"
        return [HandWritten("hand", tracepoint=tp), Generated("generated", {"tracepoint": tp}),
                Generated("generated classic", {"tracepoint": tp, "attach": "tracepoint"}),
                Generated("generated+cgroup", {"tracepoint": tp}, labels=DEFAULT_LABELS),
                HandWritten("empty", tracepoint=tp, empty=True)]
    elif target in ("kprobe", "fentry"):
        probe, where = {"kprobe": KERNEL_FUNCTION, "attach": target}, {target: KERNEL_FUNCTION}
    else:
        tp = "syscalls:sys_enter_getppid"
        probe, where = {"tracepoint": tp}, {"tracepoint": tp}
    return [HandWritten("hand", **where), Generated("generated", probe),
            Generated("generated+cgroup", probe, labels=DEFAULT_LABELS), HandWritten("empty", empty=True, **where)]


def run_attached(p, mode: str, n: int) -> tuple[float, bool]:
    """Driver ns/op with p attached, and whether p counted every event (an empty program counts none)."""
    before = p.count()
    p.attach()
    try:
        ns = run_driver(mode, n)
    finally:
        p.detach()
    return ns, getattr(p, "empty", False) or p.count() - before >= n


def measure(target: str, symbol: str, mode: str, n: int, reps: int) -> dict:
    probes = variants(target, symbol)
    for p in probes:
        p.start()
        p.detach()
    try:
        wall = {name: [] for name in ["none"] + [p.name for p in probes]}
        counts_ok = True
        for rep in range(reps):
            order = [None] + probes
            for p in order[rep % len(order):] + order[:rep % len(order)]:
                if p is None:
                    wall["none"].append(run_driver(mode, n))
                else:
                    ns, ok = run_attached(p, mode, n)
                    wall[p.name].append(ns)
                    counts_ok &= ok
        prog_ns = {p.name: [] for p in probes}
        with bpf_stats_enabled():
            for _ in range(max(5, reps // 5)):
                for p in probes:
                    ns0, cnt0 = p.stats()
                    run_attached(p, mode, n)
                    ns1, cnt1 = p.stats()
                    prog_ns[p.name].append((ns1 - ns0) / (cnt1 - cnt0))
    finally:
        for p in probes:
            p.stop()
    diffs = {p.name: sorted(w - b for w, b in zip(wall[p.name], wall["none"])) for p in probes}
    overhead = {name: median(d) for name, d in diffs.items()}
    iqr = {name: (d[len(d) // 4], d[(3 * len(d)) // 4]) for name, d in diffs.items()}
    return {
        "target": f"{target} {symbol}" if target == "uprobe" else target, "events_per_run": n, "reps": reps,
        "counts_ok": counts_ok, "wall_ns_per_op": {k: median(v) for k, v in wall.items()},
        "overhead_ns_per_event": overhead, "overhead_iqr": iqr,
        "ratio_generated_over_hand": overhead["generated"] / overhead["hand"],
        "bpf_prog_ns_per_run": {k: median(v) for k, v in prog_ns.items()},
        "bpf_ratio_generated_over_hand": median(prog_ns["generated"]) / median(prog_ns["hand"]),
        "hook": {p.name: p.hook for p in probes},
        # beyond the empty program: what counting itself costs, generated over hand-written
        "net_ratio_generated_over_hand": (overhead["generated"] - overhead["empty"]) / (overhead["hand"] - overhead["empty"]),
        "net_bpf_ratio_generated_over_hand": (median(prog_ns["generated"]) - median(prog_ns["empty"])) / (
            median(prog_ns["hand"]) - median(prog_ns["empty"])),
        "raw_wall_ns_per_op": wall, "raw_bpf_prog_ns_per_run": prog_ns,
    }


def report(r: dict) -> None:
    print(f"\n{r['target']}: {r['events_per_run']} events per run, {r['reps']} repetitions, "
          f"every event counted: {r['counts_ok']}")
    print(f"  no probe: {r['wall_ns_per_op']['none']:.1f} ns/op")
    print(f"  {'variant':18} {'hook, map':24} {'wall ns/op':>10} {'overhead ns/event':>18} {'(IQR)':>13} "
          f"{'BPF prog ns/run':>16}")
    for name, ov in r["overhead_ns_per_event"].items():
        lo, hi = r["overhead_iqr"][name]
        print(f"  {name:18} {r['hook'][name]:24} {r['wall_ns_per_op'][name]:10.1f} {ov:18.1f} "
              f"{f'{lo:.0f}..{hi:.0f}':>13} {r['bpf_prog_ns_per_run'][name]:16.1f}")
    print(f"  generated/hand-written: overhead {r['ratio_generated_over_hand']:.3f}, "
          f"BPF program {r['bpf_ratio_generated_over_hand']:.3f}; beyond the empty program: overhead "
          f"{r['net_ratio_generated_over_hand']:.3f}, BPF program {r['net_bpf_ratio_generated_over_hand']:.3f}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--calls", type=int, default=200_000, help="uprobe events per run")
    ap.add_argument("--syscalls", type=int, default=300_000, help="tracepoint events per run")
    ap.add_argument("--xol", action="store_true", help="uprobe on bench_target_xol (single-stepped first insn)")
    ap.add_argument("--cet", action="store_true", help="uprobe on bench_target_cet (endbr64 first); fewer calls "
                    "per run by default (--calls 20000: a single-stepped hit is ~16 µs on a VM)")
    ap.add_argument("--sub", action="store_true", help="uprobe on bench_target_sub (sub, then call); --calls 20000 "
                    "by default, as --cet")
    ap.add_argument("--only", choices=TARGETS, action="append", help="these targets only (repeatable)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    build_driver()
    print(f"{machine()}, load average {loadavg()}")
    out = {"machine": machine()}
    symbol, mode = next(((f"bench_target_{v}", f"call_{v}") for v in ("xol", "cet", "sub") if getattr(args, v)),
                        ("bench_target", "call"))
    if (args.cet or args.sub) and args.calls == ap.get_default("calls"):
        args.calls = 20_000           # a driver run stays under RT throttling's 0.95 s
    modes = {"uprobe": (mode, args.calls), "glob8": ("call8", args.calls), "tracepoint": ("getppid", args.syscalls),
             "rawtp": ("rename", args.syscalls), "kprobe": ("getppid", args.syscalls),
             "fentry": ("getppid", args.syscalls)}
    for target in TARGETS:
        if (args.only is None and target not in ("kprobe", "fentry")) or target in (args.only or ()):
            out[target] = measure(target, symbol, *modes[target], args.reps)
            report(out[target])
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
