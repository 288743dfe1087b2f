"""Agent start-up: time from `probeset run examples/gethostlatency.yaml` process start to the
first successful /metrics response, and the agent's memory after start.

Each repetition spawns the CLI (the venv's `probeset` entry point) on a free port, polls
http://127.0.0.1:PORT/metrics every 10 ms until it answers 200 with probeset_ metrics, then reads
VmRSS, VmHWM, RssAnon and RssFile (file-backed: mostly libbcc's LLVM) from /proc/PID/status,
once right after that first response and once after 5 more scrapes, and stops the agent with
SIGTERM. The agent's own log timestamps split the start-up
into phases, and its CPU time (utime + stime) at the first response is a measure that other load
on the machine barely moves. Medians over repetitions.

With --phases: the same steps run in this process, with time and VmRSS after each.

  chrt -f 50 .venv/bin/python bench/startup.py [--reps 5] [--file FILE...] [--phases]
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import signal
import subprocess
import tempfile
import time

from common import ROOT, free_port, loadavg, machine, median, save_json, scrape

TARGET_S, TARGET_RSS_MB = 3.0, 160.0
PROBESET = ROOT / ".venv" / "bin" / "probeset"


def memory_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of the agent so far (clang runs inside it, through libbcc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_phases(log: str, t0_wall: float) -> dict[str, float]:
    """Seconds from spawn to the first log line (imports done) and to 'serving metrics'."""
    stamps = []
    for line in log.splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", line)
        if m:
            t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            stamps.append((t - t0_wall, line))
    phases = {}
    if stamps:
        phases["first_log_line_s"] = stamps[0][0]
    for t, line in stamps:
        if "serving metrics" in line:
            phases["serving_s"] = t
    return phases


def measure_agent(args: list[str], ready, env: dict | None = None, timeout: float = 120.0):
    """Spawn `probeset ARGS --listen 127.0.0.1:PORT`, poll /metrics every 10 ms until ready(body),
    then read its memory and CPU time, scrape 5 more times, read memory again, stop it (SIGTERM).
    Returns (measurements, the first ready body, the agent's log, the wall time it was spawned)."""
    port = free_port()
    with tempfile.TemporaryFile(mode="w+") as log:
        t0_wall, t0 = time.time(), time.monotonic()
        agent = subprocess.Popen([str(PROBESET), *args, "--listen", f"127.0.0.1:{port}"],
                                 stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT, env=env)
        try:
            while True:
                body = scrape(port, timeout=2)
                if body and ready(body):
                    break
                if agent.poll() is not None or time.monotonic() - t0 > timeout:
                    log.seek(0)
                    raise RuntimeError(f"agent exited ({agent.returncode}) or timed out: {log.read()[-2000:]}")
                time.sleep(0.01)
            first = time.monotonic() - t0
            mem_first, cpu = memory_mb(agent.pid), cpu_seconds(agent.pid)
            for _ in range(5):
                scrape(port, timeout=2)
            mem_after = memory_mb(agent.pid)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
        log.seek(0)
        text = log.read()
    result = {"first_response_s": first, "agent_cpu_s": cpu, "rss_mb": mem_first["VmRSS"], "hwm_mb": mem_first["VmHWM"],
              "rss_anon_mb": mem_first["RssAnon"], "rss_file_mb": mem_first["RssFile"],
              "rss_after_scrapes_mb": mem_after["VmRSS"], "hwm_after_scrapes_mb": mem_after["VmHWM"]}
    return result, body, text, t0_wall


def one_run(paths: list[str]) -> dict:
    result, _, log, t0_wall = measure_agent(["run", *paths], lambda body: b"probeset_" in body)
    return {**result, **log_phases(log, t0_wall)}


def phases(path: str) -> None:
    """The same start-up steps as `probeset run`, in this process: seconds and VmRSS after each."""
    t0 = time.perf_counter()

    def mark(step: str) -> None:
        print(f"  {time.perf_counter() - t0:6.3f} s  VmRSS {memory_mb(os.getpid())['VmRSS']:5.0f} MB  {step}")

    mark("interpreter up, bench modules imported")
    import prometheus_client  # noqa: F401
    from probeset_agent import codegen, exposition, program  # noqa: F401
    mark("import prometheus_client, probeset_agent")
    import bcc  # noqa: F401
    mark("import bcc")
    from probeset_agent.features import detect
    from probeset_agent.loader import compile_program
    from probeset_api.spec import load_documents, parse_probeset
    features = detect()
    mark("features.detect(): compiles and loads a trial program")
    pset = parse_probeset(load_documents(open(ROOT / path).read())[0])
    prog = program.ProbeSetProgram(pset, "bench", features)
    mark("parse + resolve")
    bpf = compile_program(codegen.generate([rp for rp in prog.resolved if rp.ok], pset.labels,
                                            pset.max_series_per_probe).text)
    mark("compile the ProbeSet's program (alone, to time it)")
    bpf.cleanup()
    prog.start()
    mark("prog.start(): the same compile again + attach")
    prog.stop()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--file", nargs="+", default=["examples/gethostlatency.yaml"], help="ProbeSet file(s)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--phases", action="store_true", help="time the start-up steps in this process instead")
    args = ap.parse_args(argv)
    if args.phases:   # before machine(), which imports bcc
        phases(args.file[0])
        print(f"{machine()}, load average {loadavg()}")
        return {}
    print(f"{machine()}, load average {loadavg()}")
    runs = [one_run(args.file) for _ in range(args.reps)]
    print(f"probeset run {' '.join(args.file)}")
    keys = runs[0].keys()
    med = {k: median([r[k] for r in runs if k in r]) for k in keys}
    for r in runs:
        print("  " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))
    print(f"median of {args.reps}: first /metrics response {med['first_response_s']:.2f} s "
          f"(target {TARGET_S} s: {'met' if med['first_response_s'] <= TARGET_S else 'MISSED'}; "
          f"agent CPU time by then {med['agent_cpu_s']:.2f} s), "
          f"VmRSS {med['rss_mb']:.0f} MB (anon {med['rss_anon_mb']:.0f}, file {med['rss_file_mb']:.0f}), "
          f"VmHWM {med['hwm_mb']:.0f} MB "
          f"(target {TARGET_RSS_MB:.0f} MB: {'met' if med['hwm_mb'] <= TARGET_RSS_MB else 'MISSED'}); "
          f"after 5 scrapes VmRSS {med['rss_after_scrapes_mb']:.0f} MB, VmHWM {med['hwm_after_scrapes_mb']:.0f} MB")
    out = {"machine": machine(), "files": args.file, "median": med, "runs": runs}
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
