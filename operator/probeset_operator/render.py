"""Manifests the operator applies, as plain dicts built from typed values (no YAML templating).

DaemonSets live in the operator's namespace, not the ProbeSet's: agents are privileged pods
(hostPID, BPF, host mounts), which Pod Security Admission's "privileged" level must allow. Granting
that to one operator namespace keeps user namespaces at "baseline"/"restricted". Owner references
cannot cross namespaces, so the ProbeSet carries a finalizer and the operator deletes its DaemonSet
on deletion.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from probeset_api import API_GROUP, NODE_WIDE_NAMESPACES_ENV, OPERATOR_NAMESPACE_ENV, TENANT_VALUES_ENV

METRICS_PORT = 9437
LABEL_UID = f"{API_GROUP}/probeset-uid"
LABEL_NAME = f"{API_GROUP}/probeset"
LABEL_NAMESPACE = f"{API_GROUP}/probeset-namespace"
COMPONENT = "agent"
TLS_DIR = "/etc/probeset/metrics-tls"
# Time to detach at SIGTERM before the kubelet kills the agent. uprobes are BPF links where the
# kernel has them (Linux >= 6.6: 1,000 released in ~2 s, bench/detach.py); older kernels get
# perf-event uprobes, which the kernel releases one at a time (~107 ms each): an agent may hold
# BCC's 1,000 per process, ~110 s, plus margin. tracefs kretprobes, which a kill would leave
# behind, are detached first.
DETACH_GRACE_SECONDS = 150


@dataclass
class AgentSettings:
    """How agents run; set once by the operator (flags / Helm values)."""

    image: str = "probeset:latest"
    image_pull_policy: str = "IfNotPresent"
    service_account: str = "probeset-agent"
    resources: dict = field(default_factory=lambda: {
        "requests": {"cpu": "50m", "memory": "200Mi"},
        "limits": {"memory": "400Mi"},
    })
    priority_class: str | None = None
    extra_tolerations: list[dict] = field(default_factory=list)
    # Where privileged agents may run is the administrator's choice: a ProbeSet's own tolerations
    # are used only when the administrator allows them (PROBESET_ALLOW_PROBESET_TOLERATIONS).
    allow_probeset_tolerations: bool = False
    # Namespaces whose ProbeSets may use scope Node (PROBESET_NODE_WIDE_NAMESPACES); empty: the
    # operator's namespace only.
    node_wide_namespaces: tuple[str, ...] = ()
    # Values namespaced ProbeSets may record although they can carry addresses or other tasks'
    # identity (PROBESET_TENANT_VALUES: KIND:TARGET:FIELD each); empty: none.
    tenant_values: tuple[str, ...] = ()
    # /metrics: over TLS with this kubernetes.io/tls Secret of the operator's namespace (empty:
    # plain HTTP), and only for scrapers allowed `get /metrics` (TokenReview + SubjectAccessReview).
    metrics_tls_secret: str = ""
    metrics_auth: bool = False

    def node_wide(self, operator_namespace: str) -> frozenset[str]:
        """The namespaces allowed scope Node: node_wide_namespaces, or the operator's namespace."""
        return frozenset(self.node_wide_namespaces or (operator_namespace,))


def daemonset_name(namespace: str, name: str) -> str:
    """probeset-<namespace>-<name>, shortened with a hash to stay a valid 63-character name."""
    base = f"probeset-{namespace}-{name}"
    if len(base) <= 63:
        return base
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:8]
    return f"{base[:54].rstrip('-.')}-{digest}"


def _host_mount(name: str, path: str, read_only: bool = True, mount_propagation: str | None = None):
    volume = {"name": name, "hostPath": {"path": path}}
    mount = {"name": name, "mountPath": path, "readOnly": read_only}
    if mount_propagation:
        mount["mountPropagation"] = mount_propagation
    return volume, mount


def render_daemonset(body: dict, operator_namespace: str, settings: AgentSettings) -> dict:
    """The agent DaemonSet for one (valid) ProbeSet object."""
    meta, spec = body["metadata"], body.get("spec", {})
    ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
    labels = {
        "app.kubernetes.io/name": "probeset",
        "app.kubernetes.io/component": COMPONENT,
        "app.kubernetes.io/managed-by": "probeset-operator",
        LABEL_UID: uid,
    }
    # Label values must be <= 63 chars; names and namespaces are, by their own rules.
    selector = {"app.kubernetes.io/component": COMPONENT, LABEL_UID: uid}
    mounts = [
        _host_mount("tracefs", "/sys/kernel/tracing"),
        _host_mount("debugfs", "/sys/kernel/debug"),
        _host_mount("bpffs", "/sys/fs/bpf", read_only=False),
        _host_mount("cgroup", "/sys/fs/cgroup"),
        _host_mount("modules", "/lib/modules"),
        _host_mount("usr-src", "/usr/src"),
    ]
    args = ["agent", "--listen", f"0.0.0.0:{METRICS_PORT}"]
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
        "env": [
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "PROBESET_NAMESPACE", "value": ns},
            {"name": "PROBESET_NAME", "value": name},
            # The agent applies the operator's scope rule itself (an edited spec reaches it first).
            {"name": OPERATOR_NAMESPACE_ENV, "value": operator_namespace},
            {"name": NODE_WIDE_NAMESPACES_ENV,
             "value": ",".join(sorted(settings.node_wide(operator_namespace)))},
        ] + ([{"name": TENANT_VALUES_ENV, "value": ",".join(settings.tenant_values)}] if settings.tenant_values else []),
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
        "nodeSelector": dict(spec.get("nodeSelector") or {}),
        "tolerations": (list(spec.get("tolerations") or []) if settings.allow_probeset_tolerations else [])
        + list(settings.extra_tolerations),
        "terminationGracePeriodSeconds": DETACH_GRACE_SECONDS,
    }
    if settings.priority_class:
        pod_spec["priorityClassName"] = settings.priority_class
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": daemonset_name(ns, name),
            "namespace": operator_namespace,
            "labels": labels,
            "annotations": {LABEL_NAME: name, LABEL_NAMESPACE: ns},
        },
        "spec": {
            "selector": {"matchLabels": selector},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                        "prometheus.io/scheme": "https" if settings.metrics_tls_secret else "http",
                        LABEL_NAME: name,
                        LABEL_NAMESPACE: ns,
                    },
                },
                "spec": pod_spec,
            },
        },
    }
