"""The one agent DaemonSet the operator applies, as a plain dict built from typed values (no YAML
templating).

One agent per node runs every ProbeSet that selects its node (it lists and watches them all), so
the operator owns exactly one DaemonSet, `probeset-agent`, whatever the number of ProbeSets; what
the sets change is only where it runs (scheduling.py). It lives in the operator's namespace, not a
ProbeSet's: agents are privileged pods (hostPID, BPF, host mounts), which Pod Security Admission's
"privileged" level must allow, and granting that to one operator namespace keeps user namespaces
at "baseline"/"restricted".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from probeset_api import DEFAULT_HISTOGRAM_BUCKETS
from probeset_api.admission import Admission

from .scheduling import node_affinity, tolerations

AGENT_DAEMONSET = "probeset-agent"
METRICS_PORT = 9437
COMPONENT = "agent"
TLS_DIR = "/etc/probeset/metrics-tls"
HOST_ROOT = "/host"                 # the node's / in the agent's container (read-only)
# Time to detach at SIGTERM before the kubelet kills the agent. uprobes are BPF links where the
# kernel has them (Linux >= 6.6: 1,000 released in ~2 s, bench/detach.py); older kernels get
# perf-event uprobes, which the kernel releases one at a time (~107 ms each): an agent may hold
# BCC's 1,000 per process, ~110 s, plus margin. tracefs kretprobes, which a kill would leave
# behind, are detached first.
DETACH_GRACE_SECONDS = 150
# BPF maps are charged to the agent's memory cgroup, beside the agent's own memory (~150-220 MB with
# up to 20 sets, and clang's ~60 MB while a set compiles: docs/benchmarks.md 3b and 7): the map
# budget (--map-memory) is the pod's memory limit minus this, so that maps the budget admits never
# get the agent killed for memory, which would stop every set on its node.
AGENT_OWN_MEMORY_MIB = 256
_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]*)?(?:[eE][0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?")
_UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
          **{u: 1024 ** (i + 1) for i, u in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))}}
# The agent pods' labels; the first two are the DaemonSet's selector (immutable: never change them).
SELECTOR = {"app.kubernetes.io/name": "probeset", "app.kubernetes.io/component": COMPONENT}
LABELS = {**SELECTOR, "app.kubernetes.io/managed-by": "probeset-operator"}


@dataclass
class AgentSettings:
    """How agents run; set once by the operator (environment from the Helm values)."""

    image: str = "probeset:latest"
    image_pull_policy: str = "IfNotPresent"
    service_account: str = "probeset-agent"
    resources: dict = field(default_factory=lambda: {
        "requests": {"cpu": "50m", "memory": "200Mi"},
        "limits": {"memory": "512Mi"},
    })
    priority_class: str | None = None
    # Where privileged agents may run is the administrator's choice: these tolerations, a
    # nodeSelector that narrows every set's nodes, and (admission.allow_tolerations) whether sets'
    # own tolerations count.
    extra_tolerations: list[dict] = field(default_factory=list)
    node_selector: dict[str, str] = field(default_factory=dict)
    # What one agent runs at most (its --max-probesets, --max-probes): the sets beyond, oldest
    # first, report OverBudget on that node.
    max_probesets: int = 20
    max_probes: int = 500
    max_series: int = 0          # --max-series when set: series of all sets of a node, at worst
    # Latency buckets each agent exports per series (--histogram-buckets; docs/metrics.md): nonzero
    # (the agents' default, not passed), sparse or all.
    histogram_buckets: str = DEFAULT_HISTOGRAM_BUCKETS
    # The administrator's policy for ProbeSets (scope Node, tenant values, tolerations), which the
    # agents apply too; None: the defaults for the operator's namespace (policy()).
    admission: Admission | None = None
    # /metrics: over TLS with this kubernetes.io/tls Secret of the operator's namespace (empty:
    # plain HTTP), and only for scrapers allowed `get /metrics` (TokenReview + SubjectAccessReview).
    metrics_tls_secret: str = ""
    metrics_auth: bool = False
    # The node's network namespace (serving :9437 on the node's addresses), where pods get no other
    # network; extra environment, e.g. KUBERNETES_SERVICE_HOST/PORT where the Service's ClusterIP
    # is not routed (both from the Helm values agent.hostNetwork, agent.extraEnv).
    host_network: bool = False
    extra_env: list[dict] = field(default_factory=list)

    def policy(self, operator_namespace: str) -> Admission:
        """`admission`, or the defaults for this operator namespace: scope Node only there, no
        tenant values, no ProbeSet tolerations."""
        return self.admission or Admission(operator_namespace, frozenset({operator_namespace}))


def _host_mount(name: str, path: str, read_only: bool = True, mount_propagation: str | None = None,
                at: str | None = None):
    volume = {"name": name, "hostPath": {"path": path}}
    mount = {"name": name, "mountPath": at or path, "readOnly": read_only}
    if mount_propagation:
        mount["mountPropagation"] = mount_propagation
    return volume, mount


def render_daemonset(bodies: list[dict], operator_namespace: str, settings: AgentSettings) -> dict:
    """The agent DaemonSet for these ProbeSet objects (those agents may run: admitted; at least one,
    else there is no DaemonSet). Nothing of a set but its nodeSelector and (where the admin allows
    them) tolerations reaches it, and those sorted: a set change that does not move agents renders
    the same manifest."""
    policy = settings.policy(operator_namespace)
    specs = [b.get("spec") or {} for b in bodies]
    mounts = [
        _host_mount("tracefs", "/sys/kernel/tracing"),
        _host_mount("debugfs", "/sys/kernel/debug"),
        _host_mount("bpffs", "/sys/fs/bpf", read_only=False),
        _host_mount("cgroup", "/sys/fs/cgroup"),
        _host_mount("modules", "/lib/modules"),
        _host_mount("usr-src", "/usr/src"),
        # The node's files, for uprobes on the node's own processes (node_exporter's way: /proc/1/root
        # needs the node's init to be ptrace-readable, which not every runtime allows). No mount
        # propagation: the runtime refuses HostToContainer where / is a private mount (measured:
        # "path / is mounted on / but it is not a shared or slave mount"), and the files are there.
        _host_mount("host-root", "/", at=HOST_ROOT),
    ]
    map_memory = map_memory_mib(settings.resources)
    args = ["agent", "--listen", f"0.0.0.0:{METRICS_PORT}", "--max-probesets", str(settings.max_probesets),
            "--max-probes", str(settings.max_probes), "--host-root", HOST_ROOT] + \
        (["--map-memory", str(map_memory)] if map_memory is not None else []) + \
        (["--max-series", str(settings.max_series)] if settings.max_series else []) + \
        (["--histogram-buckets", settings.histogram_buckets] if settings.histogram_buckets != DEFAULT_HISTOGRAM_BUCKETS
         else [])
    volumes = [v for v, _ in mounts]
    volume_mounts = [m for _, m in mounts]
    if settings.metrics_tls_secret:
        args += ["--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key"]
        volumes.append({"name": "metrics-tls", "secret": {"secretName": settings.metrics_tls_secret}})
        volume_mounts.append({"name": "metrics-tls", "mountPath": TLS_DIR, "readOnly": True})
    if settings.metrics_auth:
        args.append("--metrics-auth")
    container = {
        "name": "agent",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": args,
        # The agent applies the administrator's policy itself (an edited spec reaches it first).
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}] + policy.env()
        + [dict(e) for e in settings.extra_env],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "securityContext": {"privileged": True, "runAsUser": 0},   # the image defaults to non-root
        "resources": settings.resources,
        "volumeMounts": volume_mounts,
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "metrics",
                                       "scheme": "HTTPS" if settings.metrics_tls_secret else "HTTP"},
                           "periodSeconds": 10},
    }
    pod_spec = {
        "serviceAccountName": settings.service_account,
        "hostPID": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "containers": [container],
        "volumes": volumes,
        "nodeSelector": dict(sorted(settings.node_selector.items())),
        "tolerations": tolerations(settings.extra_tolerations, (s.get("tolerations") or [] for s in specs),
                                   policy.allow_tolerations),
        "terminationGracePeriodSeconds": DETACH_GRACE_SECONDS,
    }
    if settings.host_network:
        pod_spec["hostNetwork"] = True
    affinity = node_affinity(s.get("nodeSelector") or {} for s in specs)
    if affinity:
        pod_spec["affinity"] = affinity
    if settings.priority_class:
        pod_spec["priorityClassName"] = settings.priority_class
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": AGENT_DAEMONSET,
            "namespace": operator_namespace,
            "labels": dict(LABELS),
        },
        "spec": {
            "selector": {"matchLabels": dict(SELECTOR)},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}},
            "template": {
                "metadata": {
                    "labels": dict(LABELS),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                        "prometheus.io/scheme": "https" if settings.metrics_tls_secret else "http",
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity ("512Mi", "1Gi", "500M", "1e9", "268435456") in bytes;
    ValueError for anything else."""
    m = _QUANTITY.fullmatch(str(quantity).strip())
    if not m:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def map_memory_mib(resources: dict | None) -> int | None:
    """The agents' --map-memory for this memory limit (AGENT_OWN_MEMORY_MIB less); None without a
    limit or an unreadable one (the agent's own default then, 256 MiB). A limit too small for the
    agent itself leaves the maps nothing: every set then reports OverBudget, saying so."""
    limit = ((resources or {}).get("limits") or {}).get("memory")
    try:
        return None if limit is None else max(0, memory_bytes(limit) // (1 << 20) - AGENT_OWN_MEMORY_MIB)
    except ValueError:          # the API server refuses the DaemonSet for it, and the sets say so
        return None
