"""Compile cost: clang time and memory of one ProbeSet's program, by number of probes, with and
without a probe whose C does not compile.

Each measurement runs in a fresh process (`--one`), as the agent's first compile does: BCC's LLVM
is loaded on the first compile and stays. A set is N count-only probes, one tracepoint each
(`syscalls:sys_enter_<name>`, the first N such tracepoints, labels [node]); "failing" breaks the C
of probe 1 as tests/bpf/test_bad_input.py does (codegen.site_block). Measured around
ProbeSetProgram.compile() (resolve is done before): wall and CPU seconds, how many times clang
ran (every compile_program call), and the process's VmRSS and RssAnon growth. Then the same
compile --repeat more times in that process (cleanup() between), for what each further compile
keeps. `prelude` is the C of a set with no probe (the shared prelude alone), `minimal` a one-line
BCC program: the fixed cost any compile pays.

  chrt -f 50 .venv/bin/python bench/compile.py [--probes 1 8 32] [--repeat 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import ROOT, loadavg, machine, median, save_json


def status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def tracepoints(n: int) -> list[str]:
    base = "/sys/kernel/tracing/events/syscalls"
    names = sorted(d for d in os.listdir(base) if d.startswith("sys_enter_"))
    return [f"syscalls:{d}" for d in names[:n]]


def one(n: int, failing: bool, repeat: int) -> dict:
    """One configuration, in this (fresh) process."""
    import bcc  # noqa: F401  (imported before the baseline: its import is not the compile's cost)
    from probeset_agent import codegen, program
    from probeset_agent.program import ProbeSetProgram
    from probeset_api.spec import parse_probeset
    calls = [0]
    real_compile = program.compile_program

    def counted(text, *args, **kwargs):
        calls[0] += 1
        return real_compile(text, *args, **kwargs)
    program.compile_program = counted
    if failing:
        real_block = codegen.site_block

        def broken_for_probe_1(rp, site, labels, *flags):
            block = real_block(rp, site, labels, *flags)
            return codegen.CCode(block + "    this_is_not_c;\n") if rp.id == 1 else block
        codegen.site_block = broken_for_probe_1
    doc = {"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet", "metadata": {"name": f"compile-{n}"},
           "spec": {"labels": ["node"], "probes": [{"name": f"p{i}", "tracepoint": tp}
                                                   for i, tp in enumerate(tracepoints(n))]}}
    out = {"probes": n, "failing": failing}
    rounds = []
    for _ in range(1 + repeat):
        prog = ProbeSetProgram(parse_probeset(doc), node="bench")
        calls[0] = 0
        rss0, anon0 = status_kb("VmRSS"), status_kb("RssAnon")
        t0, c0 = time.perf_counter(), time.process_time()
        ok = prog.compile()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        failed = sorted(st.name for st in prog.probe_statuses() if st.error)
        if prog.bpf is not None:
            prog.bpf.cleanup()
            prog.bpf = None
        rounds.append({"ok": ok, "failed": failed, "compiles": calls[0], "wall_s": wall, "cpu_s": cpu,
                       "rss_mb": (status_kb("VmRSS") - rss0) / 1024, "anon_mb": (status_kb("RssAnon") - anon0) / 1024,
                       "text_bytes": len(prog.render())})
    out["first"], out["again"] = rounds[0], rounds[1:]
    return out


def fixed_costs() -> dict:
    """The prelude alone and a minimal program, each compiled twice in this (fresh) process."""
    from bcc import BPF
    from probeset_agent import codegen
    prelude = codegen.generate([], ("node",), 100, False).text
    out = {}
    for name, text in (("minimal", "int f(void *ctx) { return 0; }"), ("prelude", prelude)):
        walls = []
        for _ in range(3):
            t0 = time.perf_counter()
            BPF(text=text.encode()).cleanup()
            walls.append(time.perf_counter() - t0)
        out[name] = {"first_s": walls[0], "again_s": median(walls[1:]), "text_bytes": len(text)}
    return out


def spawn(*args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "agent"), str(ROOT / "api"),
                                                         os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, __file__, "--one", *args], check=True, capture_output=True, text=True,
                         env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--repeat", type=int, default=3, help="further compiles of the same set in the process")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--one", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one is not None:
        result = fixed_costs() if args.one == ["fixed"] else one(int(args.one[0]), args.one[1] == "1", args.repeat)
        print(json.dumps(result))
        return result
    print(f"{machine()}, load average {loadavg()}")
    fixed = spawn("fixed")
    for name, r in fixed.items():
        print(f"{name:>8}: {r['text_bytes']} bytes of C, first compile {r['first_s']:.3f} s, again {r['again_s']:.3f} s")
    print(f"{'probes':>6} {'failing':>7} {'compiles':>8} {'wall s':>7} {'CPU s':>6} {'RSS MB':>7} {'anon MB':>7}"
          f"   further compiles: wall s, RSS MB kept each")
    results = []
    for n in args.probes:
        for failing in ((False, True) if n > 1 else (False,)):
            r = spawn(str(n), "1" if failing else "0", "--repeat", str(args.repeat))
            results.append(r)
            f, again = r["first"], r["again"]
            print(f"{n:6d} {str(failing):>7} {f['compiles']:8d} {f['wall_s']:7.2f} {f['cpu_s']:6.2f} "
                  f"{f['rss_mb']:7.1f} {f['anon_mb']:7.1f}   "
                  f"{median([a['wall_s'] for a in again]):.2f} s, {median([a['rss_mb'] for a in again]):.1f} MB"
                  + (f"  (failed: {', '.join(f['failed'])})" if f["failed"] else ""))
    out = {"machine": machine(), "fixed": fixed, "results": results}
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
