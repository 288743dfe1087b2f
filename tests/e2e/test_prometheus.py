"""End to end: a real Prometheus scrapes a real `probeset run` agent watching a program we control.

The fixture compiles a tiny C program whose functions run only when the test asks (one line on
stdin = N calls), starts it, writes a ProbeSet with uprobes on those functions filtered by the
program's pid, starts the agent on a free loopback port and a Prometheus scraping it every second.
The test then drives an exact number of calls and asks Prometheus' HTTP API (PromQL) for what the
metrics contract promises: exact event counts, attach state, latency histogram count and quantile.

Needs root, BCC (python3-bpfcc), gcc and /usr/bin/prometheus; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import wait_for

PROMETHEUS = "/usr/bin/prometheus"
PROBESET = Path(sys.executable).with_name("probeset")   # the venv's console script, next to its python
PROBESET_NAME = "e2e-prometheus"
TICK_PROBE = "tick"
SLEEP_PROBE = "sleepy"
TICK_CALLS = 250
SLEEP_CALLS = 20
SLEEP_MS = 2
PROM_TIMEOUT_S = 30.0


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (BPF uprobes)"
    if not os.access(PROMETHEUS, os.X_OK):
        return f"{PROMETHEUS} missing (apt-get install prometheus)"
    try:
        import bcc  # noqa: F401
    except Exception as e:   # ImportError, or a broken libbcc
        return f"bcc not importable ({type(e).__name__}: {e}; apt-get install python3-bpfcc)"
    if shutil.which("gcc") is None:
        return "gcc missing (compiles the traced test program)"
    if not PROBESET.exists():
        return f"{PROBESET} missing (pip install -e . into this interpreter's environment)"
    return None


_reason = _missing()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

pytestmark = pytest.mark.e2e


# ---------------------------------------------------------------------------------------------
# The traced program: `tick N` calls probeset_e2e_tick N times, `sleep N` calls probeset_e2e_sleep
# (which sleeps SLEEP_MS) N times; each command answers one `done ...` line when finished.

TARGET_C = r"""
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

__attribute__((noinline, noipa, used)) int probeset_e2e_tick(int i) {
    __asm__ volatile("" ::: "memory");
    return i + 1;
}

__attribute__((noinline, noipa, used)) int probeset_e2e_sleep(int ms) {
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0) { }
    __asm__ volatile("" ::: "memory");
    return ms;
}

int main(void) {
    char line[128], cmd[32];
    int n;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready %d\n", (int)getpid());
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "%31s %d", cmd, &n) != 2) { printf("bad %s", line); continue; }
        volatile long acc = 0;
        if (strcmp(cmd, "tick") == 0)       for (int i = 0; i < n; i++) acc += probeset_e2e_tick(i);
        else if (strcmp(cmd, "sleep") == 0) for (int i = 0; i < n; i++) acc += probeset_e2e_sleep(@SLEEP_MS@);
        else { printf("bad %s", line); continue; }
        printf("done %s %d\n", cmd, n);
    }
    return 0;
}
""".replace("@SLEEP_MS@", str(SLEEP_MS))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<{path}: {e.strerror}>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty>"


def _stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.terminate()
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _http_get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


@dataclass
class Stack:
    tmp: Path
    target: subprocess.Popen
    target_pid: int
    agent: subprocess.Popen | None = None
    agent_port: int = 0
    prom: subprocess.Popen | None = None
    prom_port: int = 0

    # -- diagnostics ---------------------------------------------------------------------------
    def logs(self) -> str:
        return (f"\n--- agent stderr (tail) ---\n{_tail(self.tmp / 'agent.err')}"
                f"\n--- agent stdout (tail) ---\n{_tail(self.tmp / 'agent.out', 15)}"
                f"\n--- prometheus stderr (tail) ---\n{_tail(self.tmp / 'prometheus.err', 25)}"
                f"\n--- probeset.yaml ---\n{(self.tmp / 'probeset.yaml').read_text()}")

    def fail(self, msg: str):
        pytest.fail(msg + self.logs(), pytrace=False)

    # -- the traced program -------------------------------------------------------------------
    def drive(self, cmd: str, n: int, timeout: float = 10.0) -> None:
        """Run `cmd n` in the target program and wait for its `done` line."""
        self.target.stdin.write(f"{cmd} {n}\n")
        self.target.stdin.flush()
        # One answer line per command, so nothing stays buffered in the pipe's reader between commands.
        ready, _, _ = select.select([self.target.stdout], [], [], timeout)
        line = self.target.stdout.readline() if ready else "<no answer within %.0f s>" % timeout
        if line.strip() != f"done {cmd} {n}":
            self.fail(f"target program answered {line!r} to {cmd!r} {n} (exit status {self.target.poll()})")

    # -- Prometheus --------------------------------------------------------------------------------
    def query(self, promql: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            body = json.loads(_http_get(url))
        except urllib.error.HTTPError as e:
            self.fail(f"PromQL {promql!r}: HTTP {e.code}: {e.read()[:500]!r}")
        if body.get("status") != "success":
            self.fail(f"PromQL {promql!r}: {body}")
        return body["data"]["result"]

    def scalar(self, promql: str) -> float | None:
        """The value of a query expected to give at most one series (None when it gives none)."""
        result = self.query(promql)
        if not result:
            return None
        if len(result) != 1:
            self.fail(f"PromQL {promql!r}: expected one series, got {len(result)}: {result}")
        return float(result[0]["value"][1])

    def wait_value(self, promql: str, want: float, timeout: float = PROM_TIMEOUT_S) -> float:
        """Poll until the query gives exactly `want`; fail early if it goes past it."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self.check_alive()
            last = self.scalar(promql)
            if last == want:
                return last
            if last is not None and last > want:
                self.fail(f"PromQL {promql!r} = {last}, more than the {want} events the test caused")
            time.sleep(0.25)
        self.fail(f"PromQL {promql!r} was {last}, not {want}, after {timeout:.0f} s")

    def check_alive(self) -> None:
        for name, proc in (("agent", self.agent), ("prometheus", self.prom), ("target program", self.target)):
            if proc is not None and proc.poll() is not None:
                self.fail(f"{name} exited early with status {proc.returncode}")


def _compile_target(tmp: Path) -> Path:
    src, exe = tmp / "probeset_e2e_target.c", tmp / "probeset_e2e_target"
    src.write_text(TARGET_C)
    res = subprocess.run(["gcc", "-O1", "-g", "-fno-inline", "-o", str(exe), str(src)],
                         capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        pytest.fail(f"gcc failed ({res.returncode}):\n{res.stderr}", pytrace=False)
    return exe


def _write_probeset(path: Path, exe: Path, pid: int) -> None:
    # YAML written by hand: the binary path comes from pytest's tmp dir (letters, digits, - _ / .).
    path.write_text(f"""\
apiVersion: probeset.io/v1alpha1
kind: ProbeSet
metadata:
  name: {PROBESET_NAME}
spec:
  labels: [node, comm]
  probes:
  - name: {TICK_PROBE}
    uprobe: {exe}:probeset_e2e_tick
    pid: {pid}
  - name: {SLEEP_PROBE}
    uprobe: {exe}:probeset_e2e_sleep
    pid: {pid}
    latency: true
""")


def _launch(stack: Stack, yaml_path: Path, attempt: int) -> None:
    """Start the agent and Prometheus together: Prometheus 2.42 applies its targets only about 5 s
    after start-up (its scrape manager reloads on a 5 s tick), which hides the agent's BPF compile."""
    stack.agent_port, stack.prom_port = _free_port(), _free_port()
    with open(stack.tmp / "agent.out", "w") as out, open(stack.tmp / "agent.err", "w") as err:
        stack.agent = subprocess.Popen(
            [str(PROBESET), "run", str(yaml_path), "--listen", f"127.0.0.1:{stack.agent_port}",
             "--node", "e2e-node"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
    config = stack.tmp / "prometheus.yml"
    config.write_text(f"""\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
- job_name: probeset
  static_configs:
  - targets: ["127.0.0.1:{stack.agent_port}"]
""")
    with open(stack.tmp / "prometheus.err", "w") as err:
        stack.prom = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={stack.tmp / f'tsdb-{attempt}'}",
             f"--web.listen-address=127.0.0.1:{stack.prom_port}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)


def _wait_http(proc: subprocess.Popen, url: str, want: bytes | None, deadline: float) -> str | None:
    """None once `url` answers (with `want` in its body); else why not: 'exited' or 'timeout'."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return "exited"
        try:
            body = _http_get(url)
            if want is None or want in body:
                return None
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    return "timeout"


def _start(stack: Stack, yaml_path: Path) -> None:
    for attempt in range(3):   # a free port can be taken between finding it and binding it: retry
        _launch(stack, yaml_path, attempt)
        deadline = time.monotonic() + 30
        agent = _wait_http(stack.agent, f"http://127.0.0.1:{stack.agent_port}/metrics",
                           b"probeset_agent_info", deadline)
        prom = _wait_http(stack.prom, f"http://127.0.0.1:{stack.prom_port}/-/ready", None, deadline)
        if agent is None and prom is None:
            return
        clash = ("already in use" in _tail(stack.tmp / "agent.err").lower()
                 or "already in use" in _tail(stack.tmp / "prometheus.err").lower())
        if not clash or attempt == 2:
            what = []
            if agent == "exited":
                what.append(f"agent exited with status {stack.agent.returncode} before serving metrics")
            elif agent:
                what.append(f"agent did not serve http://127.0.0.1:{stack.agent_port}/metrics within 30 s")
            if prom == "exited":
                what.append(f"prometheus exited with status {stack.prom.returncode} before it was ready")
            elif prom:
                what.append("prometheus was not ready within 30 s")
            stack.fail("; ".join(what))
        _stop(stack.prom)
        _stop(stack.agent)


@pytest.fixture
def stack(tmp_path):
    tmp = tmp_path
    exe = _compile_target(tmp)
    target = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, bufsize=1)
    s = None
    try:
        ready = target.stdout.readline().split()
        assert ready == ["ready", str(target.pid)], f"target program said {ready!r}"
        s = Stack(tmp=tmp, target=target, target_pid=target.pid)
        yaml_path = tmp / "probeset.yaml"
        _write_probeset(yaml_path, exe, target.pid)
        _start(s, yaml_path)
        yield s
    finally:
        if s is not None:
            _stop(s.prom)
            agent = s.agent
            _stop(agent)
            if agent is not None and agent.returncode not in (0, None, -signal.SIGKILL):
                # Not a test failure by itself (teardown), but worth seeing: SIGTERM should detach and exit 0.
                sys.stderr.write(f"agent exited with {agent.returncode} on SIGTERM\n{_tail(tmp / 'agent.err')}\n")
        try:
            target.stdin.close()
        except OSError:
            pass
        _stop(target)


def test_prometheus_scrapes_exact_counts(stack: Stack):
    sel = f'probeset="{PROBESET_NAME}",probe="{TICK_PROBE}"'
    lat = f'probeset="{PROBESET_NAME}",probe="{SLEEP_PROBE}"'

    # Prometheus scrapes the agent (2.42 applies static targets ~5 s after its start, then every 1 s).
    stack.wait_value('up{job="probeset"}', 1.0, timeout=15)

    # Both probes attached: every probeset_probe_attached series of each is 1.
    for probe in (TICK_PROBE, SLEEP_PROBE):
        series = stack.query(f'probeset_probe_attached{{probeset="{PROBESET_NAME}",probe="{probe}"}}')
        if not series or any(r["value"][1] != "1" for r in series):
            stack.fail(f"probeset_probe_attached for probe {probe!r}: expected 1, got {series}")
    via = {r["metric"].get("via") for r in stack.query(f"probeset_probe_attached{{{sel}}}")}
    assert via == {"uprobe"}, f"probe {TICK_PROBE!r} attached via {via}, expected uprobe"

    # Nothing counted before the program runs its functions (the pid filter, and no stray hits).
    before = stack.scalar(f"sum(probeset_events_total{{{sel}}})")
    assert before in (None, 0.0), f"{before} events before any call" + stack.logs()

    stack.drive("tick", TICK_CALLS)
    stack.drive("sleep", SLEEP_CALLS)

    got = stack.wait_value(f"sum(probeset_events_total{{{sel}}})", TICK_CALLS)
    assert got == TICK_CALLS

    got = stack.wait_value(f"sum(probeset_latency_seconds_count{{{lat}}})", SLEEP_CALLS)
    assert got == SLEEP_CALLS
    # The latency probe counts its calls as events too.
    got = stack.wait_value(f"sum(probeset_events_total{{{lat}}})", SLEEP_CALLS)
    assert got == SLEEP_CALLS

    # Attribution: the series carry the agent's node label and the traced program's comm.
    series = stack.query(f"probeset_events_total{{{sel}}}")
    labels = [r["metric"] for r in series]
    assert all(m.get("node") == "e2e-node" for m in labels), labels
    assert {m.get("comm") for m in labels} == {"probeset_e2e_ta"}, labels   # comm: the first 15 characters

    # Latency: every call sleeps at least SLEEP_MS (nanosleep and bpf_ktime_get_ns both use
    # CLOCK_MONOTONIC), so no observation may fall in a bucket whose upper bound is below it.
    sleep_s = SLEEP_MS / 1000
    buckets = {float(r["metric"]["le"]): float(r["value"][1])
               for r in stack.query(f"sum by (le) (probeset_latency_seconds_bucket{{{lat}}})")}
    bounds = sorted(buckets)
    assert bounds and bounds[-1] == float("inf"), f"no +Inf bucket: {bounds}"
    assert all(buckets[a] <= buckets[b] for a, b in zip(bounds, bounds[1:])), f"not cumulative: {buckets}"
    below = max(le for le in bounds if le < sleep_s)
    assert buckets[below] == 0, f"{buckets[below]} calls of a {SLEEP_MS} ms sleep took <= {below} s"
    # The median: histogram_quantile interpolates linearly inside the bucket holding SLEEP_MS, so
    # its lower bound is that bucket's lower edge (`below`), not SLEEP_MS itself.
    p50 = stack.scalar(f"histogram_quantile(0.5, sum by (le) (probeset_latency_seconds_bucket{{{lat}}}))")
    assert p50 is not None and below <= p50 <= 0.05, \
        f"p50 latency {p50} s, expected within [{below}, 0.05]; buckets {buckets}" + stack.logs()
    # The mean (exact: the sum is kept in nanoseconds) is at least SLEEP_MS.
    total = stack.scalar(f"sum(probeset_latency_seconds_sum{{{lat}}})")
    mean = total / SLEEP_CALLS
    assert sleep_s <= mean <= 0.05, f"mean latency {mean} s" + stack.logs()
    # Buckets are cumulative and end with +Inf == count.
    inf = stack.scalar(f'sum(probeset_latency_seconds_bucket{{{lat},le="+Inf"}})')
    assert inf == SLEEP_CALLS, f"+Inf bucket {inf}"

    # Still exact a few scrapes later (no double counting across scrapes): wait until Prometheus has
    # stored two more scrapes of the agent (1 s apart) after the latest one so far.
    up_at = 'timestamp(up{job="probeset"})'
    last_scrape = stack.scalar(up_at)

    def two_more_scrapes() -> bool:
        stack.check_alive()
        return stack.scalar(up_at) >= last_scrape + 1.5
    wait_for(two_more_scrapes, 15, "two more scrapes of the agent", 0.25)
    assert stack.scalar(f"sum(probeset_events_total{{{sel}}})") == TICK_CALLS
    stack.check_alive()

    # SIGTERM detaches and exits 0; the traced program keeps running undisturbed.
    stack.agent.send_signal(signal.SIGTERM)
    try:
        rc = stack.agent.wait(timeout=15)
    except subprocess.TimeoutExpired:
        stack.fail("agent still running 15 s after SIGTERM")
    if rc != 0:
        stack.fail(f"agent exited with status {rc} on SIGTERM, expected 0")
    stack.drive("tick", 10)
