"""Event-rate flatness: the agent's CPU per second does not grow with the event rate.

The kernel aggregates; the agent only reads the maps at scrape time, so its CPU should be the same
at 1,000 and at 500,000 events per second. `probeset run` on a one-probe ProbeSet (a uprobe on the
driver's bench_target, `labels: [node]`: a per-CPU array; `--labels node,comm`: a hash), scraped
every second as Prometheus would; bench/driver.c (`paced N RATE`, pinned to the last CPU) calls
bench_target at each rate for --seconds; the agent's CPU time over that window (its threads'
/proc/PID/task/TID/schedstat, ns), divided by the window. Rates alternate over repetitions; medians. The events the
agent counted (probeset_events_total) say the rate was reached.

  chrt -f 50 .venv/bin/python bench/flatness.py [--rates 0 1000 500000] [--seconds 10] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import yaml
from common import DRIVER, DRIVER_CPU, ROOT, build_driver, loadavg, machine, median, save_json
from startup import free_port, scrape

PROBESET = [sys.executable, "-m", "probeset_cli"]     # this checkout's agent (sys.path as common.py sets it)


def cpu_seconds(pid: int) -> float:
    """CPU time of all the agent's threads, in ns precision (schedstat; /proc/PID/stat has 10 ms ticks)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0])
        except (OSError, ValueError):
            pass                    # a thread that ended meanwhile
    return total / 1e9


def events_total(port: int) -> int:
    text = (scrape(port) or b"").decode()
    return sum(int(float(m)) for m in re.findall(r'^probeset_events_total\{[^}]*probe="p"[^}]*\} (\S+)$', text, re.M))


def window(pid: int, port: int, rate: int, seconds: float) -> tuple[float, int]:
    """(agent CPU seconds per second, events counted) over one window at `rate` events/s."""
    before_events = events_total(port)
    driver = None
    if rate:
        driver = subprocess.Popen(["chrt", "-f", "50", "taskset", "-c", DRIVER_CPU, str(DRIVER), "paced",
                                   str(int(rate * seconds)), str(rate)], stdout=subprocess.DEVNULL)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(1.0)
        scrape(port)                         # one scrape a second, in the window
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    if driver is not None:
        driver.wait(timeout=seconds * 3)
    return (cpu1 - cpu0) / (t1 - t0), events_total(port) - before_events


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=int, nargs="+", default=[0, 1000, 500000])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--labels", default="node")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    build_driver()
    print(f"{machine()}, load average {loadavg()}")
    doc = {"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet", "metadata": {"name": "flat"},
           "spec": {"labels": args.labels.split(","), "probes": [{"name": "p", "uprobe": f"{DRIVER}:bench_target"}]}}
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "flat.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT / d) for d in ("api", "agent", "cli")] + [os.environ.get("PYTHONPATH", "")])}
        agent = subprocess.Popen(PROBESET + ["run", path, "--listen", f"127.0.0.1:{port}"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while b"probeset_probe_attached" not in (scrape(port) or b""):
                if time.monotonic() > deadline or agent.poll() is not None:
                    raise RuntimeError("the agent did not serve metrics")
                time.sleep(0.1)
            time.sleep(2)                    # start-up work (the uprobe hit calibration) done
            cpu = {r: [] for r in args.rates}
            events = {r: [] for r in args.rates}
            for rep in range(args.reps):
                order = args.rates[rep % len(args.rates):] + args.rates[:rep % len(args.rates)]
                for rate in order:
                    c, n = window(agent.pid, port, rate, args.seconds)
                    cpu[rate].append(c)
                    events[rate].append(n)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)
    out = {"machine": machine(), "labels": args.labels, "seconds": args.seconds, "reps": args.reps,
           "agent_cpu_ms_per_s": {r: 1000 * median(v) for r, v in cpu.items()},
           "events_per_s": {r: median(v) / args.seconds for r, v in events.items()},
           "raw_cpu_ms_per_s": {r: [1000 * x for x in v] for r, v in cpu.items()}}
    print(f"labels {args.labels}: agent CPU per second (one scrape a second), medians of {args.reps} windows "
          f"of {args.seconds:.0f} s")
    for r in args.rates:
        print(f"  target {r:>7} events/s: counted {out['events_per_s'][r]:>9.0f}/s, agent "
              f"{out['agent_cpu_ms_per_s'][r]:.2f} ms CPU per s (all: "
              f"{', '.join(f'{x:.2f}' for x in out['raw_cpu_ms_per_s'][r])})")
    save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
