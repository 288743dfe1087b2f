"""Debian's Prometheus finding the agents the way a cluster's Prometheus does: pod discovery through
the tier's API server, keeping the pods the DaemonSet annotates for scraping and their `metrics`
port, with honor_labels (the agents' own pod/namespace labels name workloads). Also the chart's
Grafana dashboard, as the PromQL its panels run.

Debian builds Prometheus 2.42 without kubernetes_sd_configs (the package leaves out the Kubernetes
client: "field kubernetes_sd_configs not found in type config.ScrapeConfig"). So PodDiscovery
plays Prometheus' Kubernetes discoverer for role pod: it lists the pods from the API server and
serves them to http_sd_configs with the same target and the same __meta_kubernetes_pod_* labels
(one target per container port); the relabelling is what a kubernetes_sd_configs job would use.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

PROMETHEUS = "/usr/bin/prometheus"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _label_name(text: str) -> str:
    """Prometheus' label name of an annotation or label key (strutil.SanitizeLabelName)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", text)


def pod_targets(pods: list[dict]) -> list[dict]:
    """Prometheus' Kubernetes discovery for role pod, as http_sd target groups: per container
    port, the target podIP:port and the __meta_kubernetes_pod_* labels the relabelling uses."""
    groups = []
    for pod in pods:
        meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
        if not status.get("podIP"):
            continue
        common = {"__meta_kubernetes_namespace": meta["namespace"], "__meta_kubernetes_pod_name": meta["name"],
                  "__meta_kubernetes_pod_ip": status["podIP"], "__meta_kubernetes_pod_node_name": spec.get("nodeName", ""),
                  "__meta_kubernetes_pod_phase": status.get("phase", ""), "__meta_kubernetes_pod_uid": meta["uid"]}
        for key, value in (meta.get("labels") or {}).items():
            common[f"__meta_kubernetes_pod_label_{_label_name(key)}"] = value
        for key, value in (meta.get("annotations") or {}).items():
            common[f"__meta_kubernetes_pod_annotation_{_label_name(key)}"] = value
        for container in spec["containers"]:
            for port in container.get("ports") or []:
                groups.append({"targets": [f"{status['podIP']}:{port['containerPort']}"], "labels": {
                    **common, "__meta_kubernetes_pod_container_name": container["name"],
                    "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                    "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                    "__meta_kubernetes_pod_container_port_protocol": port.get("protocol", "TCP")}})
    return groups


class PodDiscovery:
    """Serves pod_targets() of `namespace`'s pods, listed from the API server at each request."""

    def __init__(self, api_client, namespace: str):
        from kubernetes import client
        core = client.CoreV1Api(api_client)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                pods = api_client.sanitize_for_serialization(core.list_namespaced_pod(namespace).items)
                body = json.dumps(pod_targets(pods)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Prometheus:
    def __init__(self, workdir: Path, api_client, namespace: str):
        if not Path(PROMETHEUS).is_file():
            pytest.skip(f"{PROMETHEUS} missing (apt-get install prometheus; scripts/setup --test)")
        self.workdir, self.port = workdir, _free_port()
        self.discovery = PodDiscovery(api_client, namespace)
        self.config = workdir / "prometheus.yml"
        self.config.write_text(f"""\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
- job_name: probeset-agents
  honor_labels: true
  http_sd_configs:        # PodDiscovery: role pod of namespace {namespace}
  - url: {self.discovery.url}
    refresh_interval: 1s
  relabel_configs:
  - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
    regex: "true"
    action: keep
  - source_labels: [__meta_kubernetes_pod_container_port_name]
    regex: metrics
    action: keep
  - source_labels: [__meta_kubernetes_pod_name]
    target_label: agent_pod
""")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Prometheus":
        self.log = open(self.workdir / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                self._get("/-/ready")
                return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        pytest.fail(f"prometheus not ready within 60 s: {self.log_tail()}")

    def __exit__(self, *exc) -> None:
        self.discovery.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def log_tail(self, chars: int = 3000) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")[-chars:]

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            body = r.read()
        return json.loads(body) if body.startswith(b"{") else {}

    def targets(self) -> list[dict]:
        """Active targets: {labels, health, lastError, ...}."""
        return self._get("/api/v1/targets?state=active")["data"]["activeTargets"]

    def query(self, promql: str) -> list[dict]:
        body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        if body.get("status") != "success":
            pytest.fail(f"PromQL {promql!r}: {body}")
        return body["data"]["result"]

    def wait_value(self, promql: str, want: float, timeout: float = 60) -> None:
        """Until the query gives exactly `want` (one series); fails at once past it."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            result = self.query(promql)
            last = float(result[0]["value"][1]) if len(result) == 1 else result
            if last == want:
                return
            if isinstance(last, float) and last > want:
                pytest.fail(f"PromQL {promql!r} = {last}, more than the {want} events the test caused")
            time.sleep(0.5)
        pytest.fail(f"PromQL {promql!r} was {last}, not {want}, after {timeout:.0f} s")


def dashboard_queries(chart: Path) -> dict[str, str]:
    """{panel title (and target): PromQL} of the chart's dashboard, its variables set to 'All' and
    $__rate_interval to one minute (fifteen of this Prometheus' 1 s scrapes, and more)."""
    board = json.loads((chart / "dashboards" / "probeset.json").read_text())
    variables = [v["name"] for v in board.get("templating", {}).get("list", []) if v.get("type") == "query"]
    out = {}
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m")
            for name in sorted(variables, key=len, reverse=True):
                expr = expr.replace(f"${name}", ".*")
            out[f"{panel['title']} ({target.get('refId', '')})"] = expr
    return out
