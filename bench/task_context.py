"""What a namespaced set's task-context check costs per event (taskcontext.py): the BPF program's
own ns per run (kernel.bpf_stats_enabled, restored afterwards) of a counting tracepoint program on
syscalls:sys_enter_getppid, without and with `if (!in_task_context()) return 0;` (the agent's C
template, with this kernel's offsets from BTF). Each of --reps repetitions loads each variant anew
and calls getppid --calls times; every call must be counted. Medians; root, x86-64 with BTF.

  chrt -f 50 .venv/bin/python bench/task_context.py [--reps 7] [--calls 200000]
"""

from __future__ import annotations

import argparse
import os
import statistics

import common  # noqa: F401  (puts this tree's agent/ first on sys.path)

BODY = ("BPF_ARRAY(c, u64, 1);\nTRACEPOINT_PROBE(syscalls, sys_enter_getppid) {\n    u32 k = 0;\n%s"
        "    c.increment(k);\n    return 0;\n}\n")


def stats(fd: int) -> tuple[int, int]:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        d = dict(line.split(":", 1) for line in f if ":" in line)
    return int(d.get("run_time_ns", 0)), int(d.get("run_cnt", 0))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--calls", type=int, default=200_000)
    args = ap.parse_args(argv)
    from bcc import BPF
    from probeset_agent import ctemplates as T
    from probeset_agent.taskcontext import INTERRUPT_BITS, task_context
    tc, why = task_context()
    if tc is None:
        raise SystemExit(f"no task-context layout here: {why}")
    check = T.fill(T.TASK_CONTEXT_FUNC, TASK_CFS_RQ=tc.task_cfs_rq, CFS_RQ_RQ=tc.cfs_rq_rq, RQ_CPU=tc.rq_cpu,
                   PREEMPT_FROM_RQ=tc.preempt_from_rq, INTERRUPT_BITS=INTERRUPT_BITS)
    variants = {"count only": BODY % "", "with the task-context check": check + BODY % T.TASK_CONTEXT_CHECK}
    switch = "/proc/sys/kernel/bpf_stats_enabled"
    with open(switch) as f:
        before = f.read().strip()
    runs: dict[str, list[float]] = {name: [] for name in variants}
    try:
        with open(switch, "w") as f:
            f.write("1")
        for _ in range(args.reps):
            for name, text in variants.items():
                b = BPF(text=text)
                fd = b.funcs[b"tracepoint__syscalls__sys_enter_getppid"].fd
                t0, n0 = stats(fd)
                for _ in range(args.calls):
                    os.getppid()
                t1, n1 = stats(fd)
                counted = sum(v.value for v in b["c"].values())
                assert counted == args.calls, f"{name}: counted {counted} of {args.calls}"
                runs[name].append((t1 - t0) / (n1 - n0))
                b.cleanup()
    finally:
        with open(switch, "w") as f:
            f.write(before)
    for name, values in runs.items():
        print(f"{name:30s} {statistics.median(values):6.1f} ns/run  ({', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
