"""Prometheus series per node for the examples, measured on a real standalone agent, and the bounds
a cluster admin can set.

For each ProbeSet of examples/*.yaml (every document): `probeset run FILE` (root, BCC) on this
host, a small workload for --seconds (DNS lookups through libc, curl, file opens, loopback
traffic), then one scrape of /metrics: series counted per family and per probe. What a kernel
without kprobes cannot attach (this host: vfsstat, most of tcp-drop-path) still serves its
structural series (probeset_probe_attached 0 ...) and no data series; its data series are then
estimated from its labels (docs/scale.md).

  .venv/bin/python bench/scale/series.py [--seconds 15] [--json bench/scale/results/series.json]

The bound per probe and node: data series <= maxSeriesPerProbe (+1 __overflow__ series), each
probeset_events_total, plus for `latency: true` the histogram's le buckets + _count + _sum per
series (27 + 2 with bucketsPerPowerOfTwo 1). Per node: --max-probes probes at most.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROBESET = ROOT / ".venv" / "bin" / "probeset"
sys.path.insert(0, str(ROOT / "bench"))
from common import free_port, scrape  # noqa: E402

DATA = ("probeset_events_total", "probeset_latency_seconds_bucket", "probeset_latency_seconds_count",
        "probeset_latency_seconds_sum")


def workload(seconds: float, port: int) -> None:
    """DNS lookups through libc (getaddrinfo, gethostbyname), curl, file opens, loopback traffic."""
    end = time.monotonic() + seconds
    code = ("import socket,ctypes\n"
            "libc=ctypes.CDLL('libc.so.6')\n"
            "for i in range(20):\n"
            "  socket.getaddrinfo('localhost', 80)\n"
            "  socket.gethostbyname('localhost')\n"
            "  libc.gethostbyname2(b'localhost', 2)\n")
    while time.monotonic() < end:
        subprocess.run([sys.executable, "-c", code], capture_output=True)
        subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/healthz"], capture_output=True)
        for p in ("/etc/hostname", "/etc/os-release"):
            with open(p):
                pass
        time.sleep(0.5)


def count(text: str) -> dict:
    families: collections.Counter = collections.Counter()
    per_probe: dict = collections.defaultdict(collections.Counter)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        families[name] += 1
        m = re.search(r'[{,]probe="([^"]*)"', line)
        if m:
            per_probe[m.group(1)]["data" if name in DATA else "structural"] += 1
    data = sum(families[f] for f in DATA)
    return {"total": sum(families.values()), "data": data, "structural": sum(families.values()) - data,
            "families": dict(families), "per_probe": {k: dict(v) for k, v in per_probe.items()}}


def measure(doc: dict, seconds: float) -> dict:
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(doc, f)
        path = f.name
    log = tempfile.TemporaryFile()
    agent = subprocess.Popen([str(PROBESET), "run", path, "--listen", f"127.0.0.1:{port}", "--node", "sim-node"],
                             stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while scrape(port) is None:
            if agent.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"agent for {doc['metadata']['name']} did not serve: {log.read()[-2000:]!r}")
            time.sleep(0.2)
        workload(seconds, port)
        text = (scrape(port) or b"").decode()
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(60)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        os.unlink(path)
    out = count(text)
    attached = re.findall(r'^probeset_probe_attached\{[^}]*probe="([^"]*)"[^}]*\} (\d)', text, re.M)
    out["attached"] = sorted({p for p, v in attached if v == "1"})
    out["not_attached"] = sorted({p for p, v in attached if v == "0"} - set(out["attached"]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (BPF)")
    results = {}
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            name = doc["metadata"]["name"]
            r = measure(doc, args.seconds)
            r["labels"] = doc["spec"].get("labels")
            r["probes"] = [{k: v for k, v in p.items()} for p in doc["spec"]["probes"]]
            results[name] = r
            print(f"{name:16} total {r['total']:5}  data {r['data']:5}  structural {r['structural']:4}  "
                  f"attached {r['attached']} not {r['not_attached']}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
