"""Pure pieces of the operator and the cluster agent."""

import time
from types import SimpleNamespace

import kopf
import pytest

from kubernetes.client.exceptions import ApiException

from probeset_agent.report import ProbeStatus, node_report
from probeset_api.admission import Admission
from probeset_api.spec import SpecError
from probeset_api.status import NodeReport, ProbeResult
from probeset_operator import fleet, handlers
from probeset_operator.handlers import admissible, settings_from_env
from probeset_operator.summary import summarize
from probeset_operator.rbac import AGENT_CLUSTER_RULES
from probeset_operator.render import AgentSettings


def test_node_report_is_small_unless_something_fails():
    ok = ProbeStatus("a", 0, "uprobe", "uprobe", functions={"f": True})
    bad = ProbeStatus("b", 1, "kprobe", error="kprobes are not supported")
    healthy = node_report([ok], 3, 1).to_status()
    assert healthy["failed"] is None and healthy["attached"] == 1 and healthy["generation"] == 3
    report = node_report([ok, bad], 4, 2).to_status()
    assert report["attached"] == 1 and report["total"] == 2
    assert report["failed"] == [{"name": "b", "attached": False, "attachedVia": None, "functions": 0,
                                 "error": "kprobes are not supported"}]
    # A compiler's error can be long: the node's report keeps its first 1,000 characters.
    wordy = ProbeStatus("c", 2, "uprobe", error="x" * 5000)
    assert node_report([wordy], 4, 1).to_status()["failed"][0]["error"] == "x" * 1000


def test_operator_settings_from_environment(monkeypatch):
    monkeypatch.setenv("PROBESET_OPERATOR_NAMESPACE", "obs")
    monkeypatch.setenv("PROBESET_AGENT_IMAGE", "reg/probeset:2")
    monkeypatch.setenv("PROBESET_AGENT_TOLERATIONS", '[{"operator": "Exists"}]')
    monkeypatch.delenv("PROBESET_NODE_WIDE_NAMESPACES", raising=False)
    namespace, agent = settings_from_env()
    assert namespace == "obs" and agent.image == "reg/probeset:2"
    assert agent.extra_tolerations == [{"operator": "Exists"}]
    assert agent.admission == Admission("obs", frozenset({"obs"}))      # default: the operator's namespace
    assert (agent.max_probesets, agent.max_probes, agent.node_selector) == (20, 500, {})
    assert agent.histogram_buckets == "nonzero"
    monkeypatch.setenv("PROBESET_NODE_WIDE_NAMESPACES", "platform, obs")
    monkeypatch.setenv("PROBESET_AGENT_MAX_PROBESETS", "5")
    monkeypatch.setenv("PROBESET_AGENT_MAX_PROBES", "300")
    monkeypatch.setenv("PROBESET_AGENT_MAX_SERIES", "250000")
    monkeypatch.setenv("PROBESET_AGENT_NODE_SELECTOR", '{"role": "obs"}')
    agent = settings_from_env()[1]
    assert agent.admission.node_wide == frozenset({"obs", "platform"})
    assert (agent.max_probesets, agent.max_probes, agent.node_selector) == (5, 300, {"role": "obs"})
    monkeypatch.setenv("PROBESET_AGENT_HISTOGRAM_BUCKETS", "sparse")
    assert settings_from_env()[1].histogram_buckets == "sparse"
    monkeypatch.setenv("PROBESET_AGENT_HISTOGRAM_BUCKETS", "trimmed")       # 2a10e05's name: gone
    with pytest.raises(ValueError, match="nonzero, sparse, all"):
        settings_from_env()


def probeset(namespace, **spec):
    return {"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet",
            "metadata": {"name": "dns", "namespace": namespace, "uid": "u-1", "generation": 2},
            "spec": {"probes": [{"name": "a", "kprobe": "vfs_read"}], **spec}}


def policy(node_wide=("probeset-system",), tenant_values=(), allow_tolerations=False, namespace="probeset-system"):
    return Admission(namespace, frozenset(node_wide), frozenset(tenant_values), allow_tolerations)


def test_admit_grants_scope_node_only_to_the_allowlist():
    agent = policy(("obs", "probeset-system"))
    assert agent.admit(probeset("obs", scope="Node")).scope == "Node"
    assert agent.admit(probeset("web")).scope == "Namespace"
    with pytest.raises(SpecError) as e:
        agent.admit(probeset("web", scope="Node"))
    assert str(e.value).startswith("spec.scope: Node (host processes and every pod on the node) is allowed only "
                                   "for ProbeSets in namespace(s) obs, probeset-system; this ProbeSet is in web")
    # No allowlist configured: the operator's namespace only.
    assert AgentSettings().policy("ops").admit(probeset("ops", scope="Node")).scope == "Node"
    with pytest.raises(SpecError):
        AgentSettings().policy("ops").admit(probeset("web", scope="Node"))


@pytest.mark.parametrize("spec,allow,error", [
    ({"nodeSelector": {"pool": "a b"}}, False, "spec.nodeSelector.pool: value 'a b': a label value"),
    ({"nodeSelector": {"pool": "x"}}, False, None),
    ({"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}, True,
     "spec.tolerations[0].value: must be empty when operator is Exists"),
    ({"tolerations": [{"key": "k", "operator": "Exists"}]}, True, None),
    ({"tolerations": [{"key": "k", "operator": "Exists"}]}, False, "spec.tolerations: where privileged agents run"),
])
def test_what_the_shared_daemonset_cannot_carry_makes_the_set_invalid(spec, allow, error):
    """One set's value that the API server would refuse in the one DaemonSet would keep every
    set's agents away: the set is invalid instead, with the field."""
    if error is None:
        assert admissible(probeset("web", **spec), policy(allow_tolerations=allow)).name == "dns"
    else:
        with pytest.raises(SpecError) as e:
            admissible(probeset("web", **spec), policy(allow_tolerations=allow))
        assert str(e.value).startswith(error), str(e.value)


@pytest.fixture
def cluster(monkeypatch):
    """The handlers with the API calls replaced: the ProbeSets the cluster holds ("sets"), what
    they applied, deleted and posted."""
    calls = {"sets": [], "applied": [], "deleted": [], "events": [], "reports_deleted": []}
    monkeypatch.setattr(handlers, "list_probesets", lambda api=None: list(calls["sets"]))
    monkeypatch.setattr(handlers, "apply_daemonset", lambda m, api=None: calls["applied"].append(m) or "created")
    monkeypatch.setattr(handlers, "delete_daemonset",
                        lambda ns, name, api=None: calls["deleted"].append((ns, name)) or True)
    monkeypatch.setattr(handlers, "remove_per_set_daemonsets", lambda fleet, ns, logger: None)
    monkeypatch.setattr(handlers, "delete_node_reports", lambda ns, api=None: calls["reports_deleted"].append(ns))
    monkeypatch.setattr(kopf, "warn", lambda body, reason, message: calls["events"].append((reason, message)))
    return calls


def memo_for(agent: AgentSettings):
    memo = kopf.Memo()
    memo.namespace, memo.agent, memo.fleet = "probeset-system", agent, fleet.Fleet()
    return memo


def reconcile(body, allowlist, cluster=None, memo=None):
    """reconcile() of `body`, which the cluster then holds (with the sets it held)."""
    memo = memo or memo_for(AgentSettings(admission=policy(allowlist)))
    if cluster is not None:
        cluster["sets"] = [b for b in cluster["sets"] if b["metadata"]["uid"] != body["metadata"]["uid"]] + [body]
    patch = kopf.Patch()
    try:
        handlers.reconcile(body=body, meta=body["metadata"], status={}, patch=patch, memo=memo,
                           logger=handlers.logging.getLogger("test"))
    except kopf.PermanentError:
        patch.status["raised"] = "PermanentError"
    return patch.status


def test_reconcile_rejects_scope_node_outside_the_allowlist(cluster):
    status = reconcile(probeset("web", scope="Node"), ("probeset-system",), cluster)
    assert status["raised"] == "PermanentError"      # nothing to retry until the spec changes
    valid = next(c for c in status["conditions"] if c["type"] == "Valid")
    assert (valid["status"], valid["reason"]) == ("False", "InvalidSpec")
    assert valid["message"].startswith("spec.scope: Node (host processes")
    assert status["message"].startswith("spec.scope: ") and status["observedGeneration"] == 2
    assert [r for r, _ in cluster["events"]] == ["InvalidSpec"]
    # The only set is invalid: no ProbeSet to run, no agents.
    assert cluster["applied"] == [] and cluster["deleted"] == [("probeset-system", "probeset-agent")]


def test_reconcile_runs_scope_node_inside_the_allowlist(cluster):
    status = reconcile(probeset("obs", scope="Node"), ("obs", "probeset-system"), cluster)
    valid = next(c for c in status["conditions"] if c["type"] == "Valid")
    assert (valid["status"], valid["reason"]) == ("True", "SpecValid")
    assert "raised" not in status and status["observedGeneration"] == 2
    assert cluster["events"] == [] and cluster["deleted"] == []
    (ds,) = cluster["applied"]
    env = {e["name"]: e.get("value") for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PROBESET_NODE_WIDE_NAMESPACES"] == "obs,probeset-system"


def test_agent_may_read_pods():
    assert ([""], ["pods"], ["get", "list", "watch"]) in [(g, r, v) for g, r, v, _ in AGENT_CLUSTER_RULES]


def test_node_report_round_trips_through_the_status():
    report = NodeReport(generation=5, attached=1, total=2, updated="2026-12-02T00:00:00Z",
                        failed=(ProbeResult(name="b", attached=False, error="gone"),))
    assert NodeReport.from_status(report.to_status()) == report
    # What another agent version wrote: unknown keys ignored, missing ones defaulted.
    assert NodeReport.from_status({"generation": 1, "attached": 2, "extra": True}) == \
        NodeReport(generation=1, attached=2, total=0)


@pytest.mark.parametrize("status,error", [(500, kopf.TemporaryError), (403, kopf.TemporaryError), (409, kopf.TemporaryError)])
def test_api_failures_are_retried_after_a_delay(status, error):
    def failing(*_, **__):
        raise ApiException(status=status, reason="boom")
    with pytest.raises(error) as e:
        fleet.api_call("reading", failing)
    assert e.value.delay == fleet.API_RETRY_DELAY and f"{status} boom" in str(e.value)


def test_api_not_found_is_none_not_an_error():
    def missing(*_, **__):
        raise ApiException(status=404, reason="Not Found")
    assert fleet.api_call("deleting", missing) is None
    assert fleet.api_call("reading", lambda: "ds") == "ds"


def test_invalid_spec_is_permanent_and_deletes_agents(cluster):
    body = probeset("web")
    body["spec"]["probes"] = [{"name": "Bad!", "kprobe": "vfs_read"}]
    status = reconcile(body, ("probeset-system",), cluster)
    assert status["raised"] == "PermanentError"
    assert [c["reason"] for c in status["conditions"]] == ["InvalidSpec", "InvalidSpec"]
    assert cluster["deleted"] == [("probeset-system", "probeset-agent")] and cluster["applied"] == []


def test_namespaced_sets_may_not_record_kernel_values():
    agent = policy(("obs",))
    body = probeset("web")
    body["spec"]["probes"] = [{"name": "ret", "kretprobe": "vfs_read", "groupBy": ["retval"]},
                              {"name": "arg", "kprobe": "vfs_read", "groupBy": ["arg2", "comm"]},
                              {"name": "user", "uprobe": "libc:malloc", "groupBy": ["arg0"]},
                              {"name": "plain", "kprobe": "vfs_read", "groupBy": ["comm"]}]
    pset = agent.admit(body)
    assert [p.name for p in pset.probes] == ["user", "plain"]
    assert [str(e) for r in pset.rejected for e in r.errors] == [
        "spec.probes[0].groupBy[0]: retval of kernel function vfs_read can be a kernel address or another task's "
        "data: a namespaced ProbeSet may not record it (the cluster admin can allow it with tenantAllowedValues: "
        "kretprobe:vfs_read:retval)",
        "spec.probes[1].groupBy[0]: arg2 of kernel function vfs_read can be a kernel address or another task's "
        "data: a namespaced ProbeSet may not record it (the cluster admin can allow it with tenantAllowedValues: "
        "kprobe:vfs_read:arg2)"]
    # The admin allows one value; scope Node (granted namespaces) is not restricted.
    allowed = policy(("obs",), ("kretprobe:vfs_read:retval",))
    assert [p.name for p in allowed.admit(body).probes] == ["ret", "user", "plain"]
    wide = probeset("obs", scope="Node")
    wide["spec"]["probes"] = body["spec"]["probes"]
    assert len(agent.admit(wide).probes) == 4


def test_tenant_values_reach_operator_and_agents(monkeypatch):
    monkeypatch.setenv("PROBESET_TENANT_VALUES", "kretprobe:vfs_read:retval, tracepoint:net:net_dev_xmit:name")
    _, agent = settings_from_env()
    assert agent.admission.tenant_values == {"kretprobe:vfs_read:retval", "tracepoint:net:net_dev_xmit:name"}
    ds = handlers.render_daemonset([probeset("web")], "probeset-system", agent)
    env = {e["name"]: e.get("value") for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PROBESET_TENANT_VALUES"] == "kretprobe:vfs_read:retval,tracepoint:net:net_dev_xmit:name"


def test_secured_metrics_in_the_daemonset(monkeypatch):
    monkeypatch.setenv("PROBESET_AGENT_METRICS_TLS_SECRET", "agent-tls")
    monkeypatch.setenv("PROBESET_AGENT_METRICS_AUTH", "true")
    _, agent = settings_from_env()
    pod = handlers.render_daemonset([probeset("web")], "probeset-system", agent)["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    assert c["args"] == ["agent", "--listen", "0.0.0.0:9437", "--max-probesets", "20", "--max-probes", "500",
                         "--host-root", "/host", "--map-memory", "256",
                         "--tls-cert", "/etc/probeset/metrics-tls/tls.crt",
                         "--tls-key", "/etc/probeset/metrics-tls/tls.key", "--metrics-auth"]
    assert {"name": "metrics-tls", "secret": {"secretName": "agent-tls"}} in pod["spec"]["volumes"]
    assert {"name": "metrics-tls", "mountPath": "/etc/probeset/metrics-tls", "readOnly": True} in c["volumeMounts"]
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert pod["metadata"]["annotations"]["prometheus.io/scheme"] == "https"
    monkeypatch.delenv("PROBESET_AGENT_METRICS_TLS_SECRET")
    monkeypatch.delenv("PROBESET_AGENT_METRICS_AUTH")
    (c,) = handlers.render_daemonset([probeset("web")], "probeset-system", settings_from_env()[1])["spec"][
        "template"]["spec"]["containers"]
    assert c["args"] == ["agent", "--listen", "0.0.0.0:9437", "--max-probesets", "20", "--max-probes", "500",
                         "--host-root", "/host", "--map-memory", "256"]
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTP"


def test_agents_get_the_time_detaching_needs():
    pod = handlers.render_daemonset([probeset("web")], "probeset-system", AgentSettings())["spec"]["template"]["spec"]
    # 1,000 uprobes (the probe budget) at ~0.11 s each (docs/benchmarks.md, section 5), with margin.
    assert pod["terminationGracePeriodSeconds"] >= 1000 * 0.11 * 1.25


REFUSAL = ("the API server refused the agents' DaemonSet: spec.template.spec.containers[0].securityContext."
           "privileged: Forbidden: disallowed by cluster policy")


def test_a_refused_daemonset_is_said_on_the_probeset_and_retried(monkeypatch, cluster):
    def refuse(manifest, api=None):
        raise fleet.DaemonSetRejected(REFUSAL)
    monkeypatch.setattr(handlers, "apply_daemonset", refuse)
    memo = memo_for(AgentSettings())
    patch, body = kopf.Patch(), probeset("web")
    cluster["sets"] = [body]
    with pytest.raises(kopf.TemporaryError) as e:
        handlers.reconcile(body=body, meta=body["metadata"], status={}, patch=patch, memo=memo,
                           logger=handlers.logging.getLogger("test"))
    assert e.value.delay == fleet.REJECTED_RETRY_DELAY
    ready = next(c for c in patch.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "DaemonSetRejected")
    assert "disallowed by cluster policy" in ready["message"] and "disallowed by cluster policy" in patch.status["message"]
    assert [r for r, _ in cluster["events"]] == ["DaemonSetRejected"]
    assert memo.fleet.rejection == REFUSAL        # remembered: every admitted set says it


def test_probeset_tolerations_need_the_admins_consent(monkeypatch):
    body = probeset("web", tolerations=[{"operator": "Exists"}])
    with pytest.raises(SpecError) as e:
        AgentSettings().policy("probeset-system").admit(body)
    assert str(e.value).startswith("spec.tolerations: where privileged agents run is the cluster admin's choice")
    monkeypatch.setenv("PROBESET_ALLOW_PROBESET_TOLERATIONS", "true")
    _, agent = settings_from_env()
    assert agent.admission.admit(body).tolerations == [{"operator": "Exists"}]


def named(name, namespace="web", **spec):
    body = probeset(namespace, **spec)
    body["metadata"] = {**body["metadata"], "name": name, "uid": f"u-{namespace}-{name}"}
    return body


def terms_of(manifest):
    affinity = manifest["spec"]["template"]["spec"].get("affinity")
    return affinity and [[(e["key"], e["values"][0]) for e in t["matchExpressions"]] for t in
                         affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]]


def test_one_daemonset_for_every_admitted_set(cluster):
    """Any set's change recomputes the one DaemonSet from all sets: the invalid and the deleting
    ones do not count."""
    deleting = named("old", nodeSelector={"pool": "z"})
    deleting["metadata"]["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    cluster["sets"] = [named("b", "obs", nodeSelector={"pool": "y"}),
                       named("wide", "web", scope="Node", nodeSelector={"pool": "w"}), deleting]
    status = reconcile(named("a", nodeSelector={"pool": "x"}), ("probeset-system",), cluster)
    assert status["observedGeneration"] == 2
    (ds,) = cluster["applied"]
    assert ds["metadata"]["name"] == "probeset-agent" and terms_of(ds) == [[("pool", "x")], [("pool", "y")]]
    assert "ownerReferences" not in ds["metadata"]


def test_the_last_set_deleted_removes_the_daemonset(cluster):
    memo = memo_for(AgentSettings())
    cluster["sets"] = [named("a", nodeSelector={"pool": "x"})]
    handlers.remove_agents(memo=memo, logger=handlers.logging.getLogger("test"))
    assert terms_of(cluster["applied"][-1]) == [[("pool", "x")]] and cluster["deleted"] == []
    cluster["sets"] = []
    handlers.remove_agents(memo=memo, logger=handlers.logging.getLogger("test"))
    assert cluster["deleted"] == [("probeset-system", "probeset-agent")]
    assert cluster["reports_deleted"] == ["probeset-system"]     # no agent reports any more


def test_the_daemonset_is_owned_by_the_operators_deployment(cluster, monkeypatch):
    memo = memo_for(AgentSettings())
    memo.fleet.deployment = "probeset-operator"

    class Apps:
        def __init__(self, api=None):
            pass

        def read_namespaced_deployment(self, name, namespace):
            reads.append((namespace, name))
            return SimpleNamespace(metadata=SimpleNamespace(name=name, uid="dep-uid"))
    reads = []
    monkeypatch.setattr(fleet.client, "AppsV1Api", Apps)
    reconcile(named("a"), ("probeset-system",), cluster, memo)
    reconcile(named("b"), ("probeset-system",), cluster, memo)
    assert reads == [("probeset-system", "probeset-operator")]          # once
    assert [ds["metadata"]["ownerReferences"] for ds in cluster["applied"]] == 2 * [[
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "probeset-operator", "uid": "dep-uid"}]]


def view(*nodes, pods=(), settings=None, sets=None):
    ds = handlers.render_daemonset(sets or [named("a", nodeSelector={"pool": "x"})], "probeset-system",
                                   settings or AgentSettings())
    return fleet.ClusterView(ds, list(nodes), list(pods), 0.0)


def node(name, taints=(), **labels):
    return {"metadata": {"name": name, "labels": labels}, "spec": {"taints": list(taints)}}


def agent_pod(node_name, bound=True, waiting=None):
    spec = {"nodeName": node_name} if bound else {"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node_name]}]}]}}}}
    status = {"phase": "Pending", "containerStatuses": [{"name": "agent", "ready": False,
                                                         "state": {"waiting": {"reason": waiting}}}]} if waiting \
        else {"phase": "Running", "containerStatuses": [{"name": "agent", "ready": True, "state": {"running": {}}}]}
    return {"metadata": {"name": f"probeset-agent-{node_name}"}, "spec": spec, "status": status}


class Cache:
    """The watched ClusterCache as the timer reads it: a view, the nodes' reports (status.sets
    entries by node, for this one set)."""

    synced = True

    def __init__(self, cluster_view, reports):
        self.cluster_view, self.node_reports = cluster_view, reports
        self.version = id(self)

    def view(self):
        return self.cluster_view

    def reports(self, namespace, name):
        return {node: NodeReport.from_status(entry) for node, entry in self.node_reports.items()}


def aggregate(body, memo, status, cluster_view, reports=None):
    memo.fleet.cache = Cache(cluster_view, reports or {})
    patch = kopf.Patch()
    handlers.aggregate(body=body, meta=body["metadata"], spec=body["spec"], status=status, patch=patch, memo=memo,
                       logger=handlers.logging.getLogger("test"))
    return patch.status


def condition_of(patch_status, ctype):
    return next(c for c in patch_status["conditions"] if c["type"] == ctype)


TAINTED = {"key": "node-role.kubernetes.io/master", "effect": "NoSchedule"}
REPORT = {"generation": 2, "attached": 1, "total": 1, "updated": "2026-12-02T00:00:00Z"}


def test_a_sets_nodes_are_those_that_match_it_and_run_an_agent(cluster):
    """desired: the set's nodeSelector, the admin's, tolerated taints; a report counts only from
    such a node with an agent pod; the others are dropped."""
    body = named("a", nodeSelector={"pool": "x"})
    memo = memo_for(AgentSettings(node_selector={"obs": "yes"}))
    cluster_view = view(node("n1", pool="x", obs="yes"), node("n2", [TAINTED], pool="x", obs="yes"),
                        node("n3", pool="y", obs="yes"), node("n4", pool="x"), node("n5", pool="x", obs="yes"),
                        pods=[agent_pod("n1"), agent_pod("n3"), agent_pod("n5")],
                        settings=memo.agent)
    reports = {"n1": REPORT, "n3": REPORT, "gone": REPORT}
    out = aggregate(body, memo, {}, cluster_view, reports)
    assert out["nodes"] == {"desired": 2, "ready": 1, "failing": 0, "declined": 0, "summary": "1/2"}
    ready = condition_of(out, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "AgentsNotReady")
    # n5's agent has not reported yet; once it has, the set is Ready.
    reports["n5"] = REPORT
    ready = condition_of(aggregate(body, memo, {}, cluster_view, reports), "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "AgentsReady")


def test_pod_problems_of_the_sets_nodes_only(cluster):
    body = named("a", nodeSelector={"pool": "x"})
    memo = memo_for(AgentSettings())
    cluster_view = view(node("n1", pool="x"), node("n2", pool="y"),
                        pods=[agent_pod("n1", bound=False), agent_pod("n2", waiting="ImagePullBackOff")])
    # n1's pod, pinned there but not bound yet, counts for n1; n2's image problem is not this set's.
    ready = condition_of(aggregate(body, memo, {}, cluster_view), "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "AgentsNotReady")
    cluster_view = view(node("n1", pool="x"), node("n2", pool="x"), pods=[agent_pod("n2", waiting="ImagePullBackOff")])
    ready = condition_of(aggregate(body, memo, {}, cluster_view), "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False", "ImagePullFailed", "probeset-agent-n2: ImagePullBackOff")


def test_over_budget_on_a_node_shows_on_the_set(cluster):
    body = named("a", nodeSelector={"pool": "x"})
    memo = memo_for(AgentSettings())
    report = {**REPORT, "attached": 0, "reason": "OverBudget",
              "failed": [{"name": "t", "attached": False, "error": "over budget: 20 ProbeSets run on this node"}]}
    out = aggregate(body, memo, {}, view(node("n1", pool="x"), pods=[agent_pod("n1")]), {"n1": report})
    ready = condition_of(out, "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False", "OverBudget", "node n1: over budget: 20 ProbeSets run on this node")
    assert out["message"] == ready["message"]
    assert out["failedNodes"] == [{"node": "n1", "attached": 0, "total": 1, "reason": "OverBudget", "failed": [
        {"name": "t", "attached": False, "functions": 0, "error": "over budget: 20 ProbeSets run on this node"}]}]
    # One Event per problem, not one per tick: the next tick sees the condition it wrote.
    assert cluster["events"] == [("OverBudget", ready["message"])]
    aggregate(body, memo, {"conditions": out["conditions"]}, view(node("n1", pool="x"), pods=[agent_pod("n1")]),
              {"n1": report})
    assert len(cluster["events"]) == 1


def test_a_refusal_shows_on_every_admitted_set_until_an_apply_succeeds(cluster, monkeypatch):
    memo = memo_for(AgentSettings())
    memo.fleet.refused(REFUSAL)
    body = named("other", "obs")
    out = aggregate(body, memo, {}, None)
    ready = condition_of(out, "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "DaemonSetRejected", REFUSAL)
    assert cluster["events"] == [("DaemonSetRejected", REFUSAL)]
    # Said once: the next tick sees it said.
    aggregate(body, memo, {"conditions": out["conditions"], "message": out["message"]}, None)
    assert len(cluster["events"]) == 1
    # An invalid set says nothing of it.
    assert aggregate(named("wide", scope="Node"), memo, {}, None) == {}
    # Any successful apply forgets the refusal.
    cluster["sets"] = [body]
    reconcile(body, ("probeset-system",), cluster, memo)
    assert memo.fleet.rejection is None


def test_a_refusal_is_retried_by_the_timer(cluster, monkeypatch):
    memo = memo_for(AgentSettings())
    memo.fleet.refused(REFUSAL)
    cluster["sets"] = [named("a")]
    assert not memo.fleet.retry_due()
    memo.fleet._rejected_at -= fleet.REJECTED_RETRY_DELAY
    out = aggregate(named("a"), memo, {}, view(node("n1"), pods=[agent_pod("n1")], sets=[named("a")]))
    assert len(cluster["applied"]) == 1 and memo.fleet.rejection is None
    assert condition_of(out, "Ready")["reason"] == "AgentsNotReady"


def test_a_missing_daemonset_is_made_again(cluster):
    memo = memo_for(AgentSettings())
    cluster["sets"] = [named("a")]
    aggregate(named("a"), memo, {}, fleet.ClusterView(None, [], [], 0.0))
    assert [ds["metadata"]["name"] for ds in cluster["applied"]] == ["probeset-agent"]




def test_a_summary_is_redone_only_when_what_it_reads_changed(cluster, monkeypatch):
    """Every set's timer ticks every few seconds; at thousands of nodes a summary costs tens of
    milliseconds, so an unchanged cache, spec and status skip it (for at most SUMMARY_MAX_AGE)."""
    body = named("a", nodeSelector={"pool": "x"})
    memo = memo_for(AgentSettings())
    memo.fleet.cache = Cache(view(node("n1", pool="x"), pods=[agent_pod("n1")]), {"n1": REPORT})
    computed = []
    monkeypatch.setattr(handlers, "summarize", lambda *a, **kw: computed.append(1) or summarize(*a, **kw))

    def tick(status):
        patch = kopf.Patch()
        handlers.aggregate(body=body, meta=body["metadata"], spec=body["spec"], status=status, patch=patch,
                           memo=memo, logger=handlers.logging.getLogger("test"))
        return dict(patch.status)
    written = tick({})
    assert condition_of(written, "Ready")["status"] == "True" and len(computed) == 1
    assert tick(written) == {} and len(computed) == 2        # the status it wrote: once more, nothing to write
    assert tick(written) == {} and len(computed) == 2        # nothing changed: not computed
    memo.fleet.cache.version += 1                            # a report, a pod, a node changed
    assert tick(written) == {} and len(computed) == 3
    monkeypatch.setattr(fleet, "SUMMARY_MAX_AGE", 0.0)
    tick(written)
    assert len(computed) == 4                                # and at least every SUMMARY_MAX_AGE


def test_progress_is_written_every_few_seconds_and_the_end_at_once(cluster, monkeypatch):
    """While nodes report a generation, a summary that differs only in its counts waits for
    PROGRESS_INTERVAL (each write reaches every agent's watch); a new reason, or every node
    reported, is written at once."""
    body = named("a", nodeSelector={"pool": "x"})
    memo = memo_for(AgentSettings())
    nodes = [node(f"n{i}", pool="x") for i in range(3)]
    pods = [agent_pod(f"n{i}") for i in range(3)]
    status: dict = {}

    def tick(reports):
        memo.fleet.cache = Cache(view(*nodes, pods=pods), reports)
        patch = kopf.Patch()
        handlers.aggregate(body=body, meta=body["metadata"], spec=body["spec"], status=status, patch=patch,
                           memo=memo, logger=handlers.logging.getLogger("test"))
        for key, value in patch.status.items():       # as the API server stores the merge patch
            if value is None:
                status.pop(key, None)
            else:
                status[key] = value
        return dict(patch.status)
    assert tick({})["nodes"]["ready"] == 0                              # the first summary of generation 2
    assert tick({"n0": REPORT}) == {}                                   # only a count changed: later
    monkeypatch.setattr(fleet, "PROGRESS_INTERVAL", 0.0)
    assert tick({"n0": REPORT})["nodes"]["ready"] == 1                  # ... after PROGRESS_INTERVAL
    monkeypatch.setattr(fleet, "PROGRESS_INTERVAL", 3600.0)
    done = tick({f"n{i}": REPORT for i in range(3)})                    # every node reported: at once
    assert done["nodes"]["ready"] == 3 and condition_of(done, "Ready")["status"] == "True"
