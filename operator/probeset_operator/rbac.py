"""The least privilege each role needs, with the reason for every rule (docs/operator.md lists them;
charts/probeset/templates/rbac.yaml is the same, and tests/helm checks it)."""

from __future__ import annotations

from probeset_api import API_GROUP, PLURAL
from probeset_api.crd import NODE_PLURAL

# (apiGroups, resources, verbs, why)
OPERATOR_CLUSTER_RULES = [
    ([API_GROUP], [PLURAL], ["get", "list", "watch", "patch"],
     "follow ProbeSets in every namespace, list them all to place the agents; patch adds and removes the "
     "finalizer"),
    ([API_GROUP], [f"{PLURAL}/status"], ["get", "patch"], "write conditions and the node summary"),
    ([""], ["events"], ["create"], "Events on ProbeSets (InvalidSpec, ...)"),
    (["events.k8s.io"], ["events"], ["create"], "the same, through the newer events API"),
    (["kopf.dev"], ["clusterkopfpeerings"], ["get", "list", "watch", "patch"],
     "kopf peering: replicas elect one active operator"),
    (["apiextensions.k8s.io"], ["customresourcedefinitions"], ["get", "list", "watch"],
     "kopf checks that the resources it serves exist"),
    ([""], ["namespaces"], ["get", "list", "watch"], "kopf's cluster-wide mode follows namespaces"),
    ([""], ["nodes"], ["list", "watch"], "which nodes should run each ProbeSet (labels, taints)"),
]

# Only in the operator's own namespace, where the agent DaemonSet lives.
OPERATOR_NAMESPACE_RULES = [
    (["apps"], ["daemonsets"], ["get", "list", "watch", "create", "patch", "delete"],
     "the one agent DaemonSet (list: the per-ProbeSet DaemonSets of older versions, deleted once)"),
    ([""], ["pods"], ["list", "watch"], "which nodes run an agent, and why not (to ignore reports of others)"),
    ([API_GROUP], [NODE_PLURAL], ["list", "watch", "deletecollection"],
     "the agents' reports, one ProbeSetNode per node (deleted with the DaemonSet)"),
    (["apps"], ["deployments"], ["get"], "the operator's own Deployment: the DaemonSet's owner, so that "
                                         "uninstalling removes it"),
]

AGENT_CLUSTER_RULES = [
    ([API_GROUP], [PLURAL], ["get", "list", "watch"], "list and watch every ProbeSet: it runs those that select "
                                                      "its node"),
    ([""], ["nodes"], ["get", "list", "watch"],
     "its own Node's labels, for the sets' nodeSelectors (watched with a metadata.name field selector)"),
    ([""], ["pods"], ["get", "list", "watch"],
     "names for the pod UIDs and container IDs found in cgroups, and pod labels for podSelector "
     "(watched with a spec.nodeName field selector: only its node's pods)"),
]

# Only in the operator's namespace: its node's reports.
AGENT_NAMESPACE_RULES = [
    ([API_GROUP], [NODE_PLURAL], ["get", "create"], "its node's ProbeSetNode: made on first report, read after "
                                                    "a restart"),
    ([API_GROUP], [f"{NODE_PLURAL}/status"], ["patch"], "its reports on every set, one merge patch per change"),
]

# Only with metrics authentication (agent --metrics-auth; Helm agent.metrics.auth).
AGENT_METRICS_AUTH_RULES = [
    (["authentication.k8s.io"], ["tokenreviews"], ["create"], "authenticate the bearer token of a /metrics scraper"),
    (["authorization.k8s.io"], ["subjectaccessreviews"], ["create"],
     "ask whether that scraper may get the non-resource URL /metrics"),
]

# What a scraper needs when metrics authentication is on: bind it to Prometheus' ServiceAccount.
METRICS_READER_RULES = [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]


def _rules(rules) -> list[dict]:
    return [{"apiGroups": g, "resources": r, "verbs": v} for g, r, v, _ in rules]


def role_objects(namespace: str, operator_sa: str = "probeset-operator",
                 agent_sa: str = "probeset-agent", metrics_auth: bool = False) -> list[dict]:
    """ServiceAccounts, (Cluster)Roles and bindings for the operator and the agents (and, with
    metrics authentication, the rules it needs and the ClusterRole scrapers are bound to)."""
    agent_rules = AGENT_CLUSTER_RULES + (AGENT_METRICS_AUTH_RULES if metrics_auth else [])
    def binding(kind: str, name: str, sa: str, role_kind: str, ns: str | None = None) -> dict:
        meta = {"name": name} if ns is None else {"name": name, "namespace": ns}
        return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": operator_sa, "namespace": namespace}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": agent_sa, "namespace": namespace}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": operator_sa}, "rules": _rules(OPERATOR_CLUSTER_RULES)},
        binding("ClusterRoleBinding", operator_sa, operator_sa, "ClusterRole"),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": operator_sa, "namespace": namespace}, "rules": _rules(OPERATOR_NAMESPACE_RULES)},
        binding("RoleBinding", operator_sa, operator_sa, "Role", namespace),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": agent_sa}, "rules": _rules(agent_rules)},
        binding("ClusterRoleBinding", agent_sa, agent_sa, "ClusterRole"),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": agent_sa, "namespace": namespace}, "rules": _rules(AGENT_NAMESPACE_RULES)},
        binding("RoleBinding", agent_sa, agent_sa, "Role", namespace),
    ] + ([{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
           "metadata": {"name": "probeset-metrics-reader"}, "rules": METRICS_READER_RULES}] if metrics_auth else [])


def peering_objects() -> list[dict]:
    """kopf's ClusterKopfPeering CRD and the peering object the operator replicas share."""
    return [
        {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
         "metadata": {"name": "clusterkopfpeerings.kopf.dev"},
         "spec": {"scope": "Cluster", "group": "kopf.dev",
                  "names": {"kind": "ClusterKopfPeering", "plural": "clusterkopfpeerings",
                            "singular": "clusterkopfpeering"},
                  "versions": [{"name": "v1", "served": True, "storage": True,
                                "schema": {"openAPIV3Schema": {
                                    "type": "object",
                                    "properties": {"status": {"type": "object",
                                                              "x-kubernetes-preserve-unknown-fields": True}}}}}]}},
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "probeset"}},
    ]
