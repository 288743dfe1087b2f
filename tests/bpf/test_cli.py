"""The probeset command as a user runs it: check, render, run (metrics over HTTP), clean shutdown."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

PROBESET = [sys.executable, "-m", "probeset_cli"]


def write_set(tmp_path, probes, name="cli"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet",
                                    "metadata": {"name": name}, "spec": {"labels": ["node"], "probes": probes}}))
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_reports_each_probe_and_exit_code(tmp_path, target):
    good = write_set(tmp_path, [{"name": "work", "uprobe": f"{target.path}:probeset_target_work"},
                                {"name": "tp", "tracepoint": "sched:sched_process_exec"}], "good")
    out = subprocess.run(PROBESET + ["check", good], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"ok    work: uprobe {target.path}:probeset_target_work at offset 0x" in out.stdout
    assert "ok    tp: raw_tracepoint sched_process_exec (of sched:sched_process_exec)" in out.stdout

    mixed = write_set(tmp_path, [{"name": "work", "uprobe": f"{target.path}:probeset_target_work"},
                                 {"name": "missing", "uprobe": f"{target.path}:nope"}], "mixed")
    out = subprocess.run(PROBESET + ["check", mixed], capture_output=True, text=True)
    assert out.returncode == 1
    assert "ok    work:" in out.stdout
    assert f"FAIL  missing: {target.path}: no function symbol 'nope'" in out.stdout


def test_check_invalid_yaml_names_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: probeset.io/v1alpha1\nkind: ProbeSet\nmetadata: {name: b}\nspec: {probes: []}\n")
    out = subprocess.run(PROBESET + ["check", str(path)], capture_output=True, text=True)
    assert out.returncode == 1
    assert f"invalid: {path}: spec.probes: needs at least 1 item(s), got 0" in out.stdout


def test_render_prints_the_program(tmp_path, target):
    path = write_set(tmp_path, [{"name": "work", "uprobe": f"{target.path}:probeset_target_work", "latency": True}])
    out = subprocess.run(PROBESET + ["render", path], capture_output=True, text=True, check=True)
    assert "BPF_PERCPU_ARRAY(counts_p0" in out.stdout and "int site_1(struct pt_regs *ctx)" in out.stdout
    assert "probeset_target_work" not in out.stdout       # names stay in user space


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def start_agent(path: str, port: int, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(PROBESET + ["run", path, "--listen", f"127.0.0.1:{port}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            scrape(port)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise AssertionError("agent exited: " + proc.stdout.read())
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("agent did not serve metrics within 20 s: " + proc.stdout.read())


def sample(text: str, name: str, **labels) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def perf_links_of(pid: int) -> list:
    out = subprocess.run(["bpftool", "-j", "perf", "show"], capture_output=True, text=True)
    return [e for e in json.loads(out.stdout or "[]") if e.get("pid") == pid]


def bpf_links_of(pid: int) -> set[int]:
    """Ids of the BPF links (uprobe_multi uprobes) the process holds, from its fds' fdinfo."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                ids |= {int(line.split()[1]) for line in f if line.startswith("link_id:")}
        except OSError:
            continue
    return ids


def live_bpf_links() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True)
    return {e["id"] for e in json.loads(out.stdout or "[]")}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_exact_counts_and_detaches_on_signal(tmp_path, target, signum):
    path = write_set(tmp_path, [{"name": "work", "uprobe": f"{target.path}:probeset_target_work",
                                 "pid": target.pid}])
    port = free_port()
    agent = start_agent(path, port, "--bpf-stats")
    try:
        target.run("work 321")
        text = scrape(port)
        assert sample(text, "probeset_events_total", probe="work", function="probeset_target_work") == 321
        assert sample(text, "probeset_probe_attached", probe="work", via="uprobe") == 1
        assert sample(text, "probeset_bpf_runs_total", probe="work") >= 321
        assert sample(text, "probeset_bpf_run_seconds_total", probe="work") > 0
        assert sample(text, "probeset_agent_info", node=socket.gethostname()) == 1
        links = bpf_links_of(agent.pid)
        assert links or perf_links_of(agent.pid), "the uprobe: a BPF link, or a perf event where links are not"
        assert links <= live_bpf_links()
        agent.send_signal(signum)
        assert agent.wait(timeout=15) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
    log = agent.stdout.read()
    assert "detaching" in log and "detached" in log
    assert perf_links_of(agent.pid) == [] and not links & live_bpf_links()
    with open("/sys/kernel/tracing/uprobe_events") as f:
        assert f"_bcc_{agent.pid}" not in f.read()
