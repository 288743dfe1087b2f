"""Pure pieces of the operator and the cluster agent."""

import kopf
import pytest

from kubernetes.client.exceptions import ApiException

from probeset_agent.report import ProbeStatus, node_report
from probeset_api.spec import SpecError
from probeset_api.status import NodeReport, ProbeResult
from probeset_operator import handlers
from probeset_operator.handlers import settings_from_env, validate
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


def test_operator_settings_from_environment(monkeypatch):
    monkeypatch.setenv("PROBESET_OPERATOR_NAMESPACE", "obs")
    monkeypatch.setenv("PROBESET_AGENT_IMAGE", "reg/probeset:2")
    monkeypatch.setenv("PROBESET_AGENT_TOLERATIONS", '[{"operator": "Exists"}]')
    monkeypatch.delenv("PROBESET_NODE_WIDE_NAMESPACES", raising=False)
    namespace, agent = settings_from_env()
    assert namespace == "obs" and agent.image == "reg/probeset:2"
    assert agent.extra_tolerations == [{"operator": "Exists"}]
    assert agent.node_wide_namespaces == ("obs",)      # default: the operator's namespace
    monkeypatch.setenv("PROBESET_NODE_WIDE_NAMESPACES", "platform, obs")
    assert settings_from_env()[1].node_wide_namespaces == ("obs", "platform")


def probeset(namespace, **spec):
    return {"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet",
            "metadata": {"name": "dns", "namespace": namespace, "uid": "u-1", "generation": 2},
            "spec": {"probes": [{"name": "a", "kprobe": "vfs_read"}], **spec}}


def test_validate_grants_scope_node_only_to_the_allowlist():
    agent = AgentSettings(node_wide_namespaces=("obs", "probeset-system"))
    assert validate(probeset("obs", scope="Node"), "probeset-system", agent).scope == "Node"
    assert validate(probeset("web"), "probeset-system", agent).scope == "Namespace"
    with pytest.raises(SpecError) as e:
        validate(probeset("web", scope="Node"), "probeset-system", agent)
    assert str(e.value).startswith("spec.scope: Node (host processes and every pod on the node) is allowed only "
                                   "for ProbeSets in namespace(s) obs, probeset-system; this ProbeSet is in web")
    # No allowlist configured: the operator's namespace only.
    assert validate(probeset("ops", scope="Node"), "ops", AgentSettings()).scope == "Node"
    with pytest.raises(SpecError):
        validate(probeset("web", scope="Node"), "ops", AgentSettings())


@pytest.fixture
def cluster(monkeypatch):
    """reconcile() with the API calls replaced: what it applied, deleted and posted."""
    calls = {"applied": [], "deleted": [], "events": []}
    monkeypatch.setattr(handlers, "apply_daemonset", lambda m: calls["applied"].append(m) or "created")
    monkeypatch.setattr(handlers, "delete_daemonset", lambda ns, name: calls["deleted"].append((ns, name)) or True)
    monkeypatch.setattr(kopf, "warn", lambda body, reason, message: calls["events"].append((reason, message)))
    return calls


def reconcile(body, allowlist):
    memo = kopf.Memo()
    memo.namespace, memo.agent = "probeset-system", AgentSettings(node_wide_namespaces=allowlist)
    patch = kopf.Patch()
    try:
        handlers.reconcile(body=body, meta=body["metadata"], status={}, patch=patch, memo=memo,
                           logger=handlers.logging.getLogger("test"))
    except kopf.PermanentError:
        patch.status["raised"] = "PermanentError"
    return patch.status


def test_reconcile_rejects_scope_node_outside_the_allowlist(cluster):
    status = reconcile(probeset("web", scope="Node"), ("probeset-system",))
    assert status["raised"] == "PermanentError"      # nothing to retry until the spec changes
    valid = next(c for c in status["conditions"] if c["type"] == "Valid")
    assert (valid["status"], valid["reason"]) == ("False", "InvalidSpec")
    assert valid["message"].startswith("spec.scope: Node (host processes")
    assert status["message"].startswith("spec.scope: ") and status["observedGeneration"] == 2
    assert [r for r, _ in cluster["events"]] == ["InvalidSpec"]
    assert cluster["applied"] == [] and cluster["deleted"] == [("probeset-system", "probeset-web-dns")]


def test_reconcile_runs_scope_node_inside_the_allowlist(cluster):
    status = reconcile(probeset("obs", scope="Node"), ("obs", "probeset-system"))
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
        handlers._api_call("reading", failing)
    assert e.value.delay == handlers.API_RETRY_DELAY and f"{status} boom" in str(e.value)


def test_api_not_found_is_none_not_an_error():
    def missing(*_, **__):
        raise ApiException(status=404, reason="Not Found")
    assert handlers._api_call("deleting", missing) is None
    assert handlers._api_call("reading", lambda: "ds") == "ds"


def test_invalid_spec_is_permanent_and_deletes_agents(cluster):
    body = probeset("web")
    body["spec"]["probes"] = [{"name": "Bad!", "kprobe": "vfs_read"}]
    status = reconcile(body, ("probeset-system",))
    assert status["raised"] == "PermanentError"
    assert [c["reason"] for c in status["conditions"]] == ["InvalidSpec", "InvalidSpec"]
    assert cluster["deleted"] == [("probeset-system", "probeset-web-dns")] and cluster["applied"] == []


def test_namespaced_sets_may_not_record_kernel_values():
    agent = AgentSettings(node_wide_namespaces=("obs",))
    body = probeset("web")
    body["spec"]["probes"] = [{"name": "ret", "kretprobe": "vfs_read", "groupBy": ["retval"]},
                              {"name": "arg", "kprobe": "vfs_read", "groupBy": ["arg2", "comm"]},
                              {"name": "user", "uprobe": "libc:malloc", "groupBy": ["arg0"]},
                              {"name": "plain", "kprobe": "vfs_read", "groupBy": ["comm"]}]
    pset = validate(body, "probeset-system", agent)
    assert [p.name for p in pset.probes] == ["user", "plain"]
    assert [str(e) for r in pset.rejected for e in r.errors] == [
        "spec.probes[0].groupBy[0]: retval of kernel function vfs_read can be a kernel address or another task's "
        "data: a namespaced ProbeSet may not record it (the cluster admin can allow it with tenantAllowedValues: "
        "kretprobe:vfs_read:retval)",
        "spec.probes[1].groupBy[0]: arg2 of kernel function vfs_read can be a kernel address or another task's "
        "data: a namespaced ProbeSet may not record it (the cluster admin can allow it with tenantAllowedValues: "
        "kprobe:vfs_read:arg2)"]
    # The admin allows one value; scope Node (granted namespaces) is not restricted.
    allowed = AgentSettings(node_wide_namespaces=("obs",), tenant_values=("kretprobe:vfs_read:retval",))
    assert [p.name for p in validate(body, "probeset-system", allowed).probes] == ["ret", "user", "plain"]
    wide = probeset("obs", scope="Node")
    wide["spec"]["probes"] = body["spec"]["probes"]
    assert len(validate(wide, "probeset-system", agent).probes) == 4


def test_tenant_values_reach_operator_and_agents(monkeypatch):
    monkeypatch.setenv("PROBESET_TENANT_VALUES", "kretprobe:vfs_read:retval, tracepoint:net:net_dev_xmit:name")
    _, agent = settings_from_env()
    assert agent.tenant_values == ("kretprobe:vfs_read:retval", "tracepoint:net:net_dev_xmit:name")
    ds = handlers.render_daemonset(probeset("web"), "probeset-system", agent)
    env = {e["name"]: e.get("value") for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PROBESET_TENANT_VALUES"] == "kretprobe:vfs_read:retval,tracepoint:net:net_dev_xmit:name"


def test_secured_metrics_in_the_daemonset(monkeypatch):
    monkeypatch.setenv("PROBESET_AGENT_METRICS_TLS_SECRET", "agent-tls")
    monkeypatch.setenv("PROBESET_AGENT_METRICS_AUTH", "true")
    _, agent = settings_from_env()
    pod = handlers.render_daemonset(probeset("web"), "probeset-system", agent)["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    assert c["args"] == ["agent", "--listen", "0.0.0.0:9437", "--tls-cert", "/etc/probeset/metrics-tls/tls.crt",
                         "--tls-key", "/etc/probeset/metrics-tls/tls.key", "--metrics-auth"]
    assert {"name": "metrics-tls", "secret": {"secretName": "agent-tls"}} in pod["spec"]["volumes"]
    assert {"name": "metrics-tls", "mountPath": "/etc/probeset/metrics-tls", "readOnly": True} in c["volumeMounts"]
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert pod["metadata"]["annotations"]["prometheus.io/scheme"] == "https"
    monkeypatch.delenv("PROBESET_AGENT_METRICS_TLS_SECRET")
    monkeypatch.delenv("PROBESET_AGENT_METRICS_AUTH")
    (c,) = handlers.render_daemonset(probeset("web"), "probeset-system", settings_from_env()[1])["spec"]["template"][
        "spec"]["containers"]
    assert c["args"] == ["agent", "--listen", "0.0.0.0:9437"] and c["readinessProbe"]["httpGet"]["scheme"] == "HTTP"


def test_agents_get_the_time_detaching_needs():
    pod = handlers.render_daemonset(probeset("web"), "probeset-system", AgentSettings())["spec"]["template"]["spec"]
    # 1,000 uprobes (the probe budget) at ~0.11 s each (docs/benchmarks.md, section 5), with margin.
    assert pod["terminationGracePeriodSeconds"] >= 1000 * 0.11 * 1.25


def test_a_refused_daemonset_is_said_on_the_probeset_and_retried(monkeypatch):
    calls = []

    def refuse(manifest):
        raise handlers.DaemonSetRejected("the API server refused DaemonSet probeset-system/probeset-web-dns: "
                                         "spec.template.spec.containers[0].securityContext.privileged: Forbidden: "
                                         "disallowed by cluster policy")
    monkeypatch.setattr(handlers, "apply_daemonset", refuse)
    monkeypatch.setattr(kopf, "warn", lambda body, reason, message: calls.append(reason))
    memo = kopf.Memo()
    memo.namespace, memo.agent = "probeset-system", AgentSettings()
    patch, body = kopf.Patch(), probeset("web")
    with pytest.raises(kopf.TemporaryError) as e:
        handlers.reconcile(body=body, meta=body["metadata"], status={}, patch=patch, memo=memo,
                           logger=handlers.logging.getLogger("test"))
    assert e.value.delay == handlers.REJECTED_RETRY_DELAY
    ready = next(c for c in patch.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "DaemonSetRejected")
    assert "disallowed by cluster policy" in ready["message"] and "disallowed by cluster policy" in patch.status["message"]
    assert calls == ["DaemonSetRejected"]


def test_probeset_tolerations_need_the_admins_consent(monkeypatch):
    body = probeset("web", tolerations=[{"operator": "Exists"}])
    with pytest.raises(SpecError) as e:
        validate(body, "probeset-system", AgentSettings())
    assert str(e.value).startswith("spec.tolerations: where privileged agents run is the cluster admin's choice")
    monkeypatch.setenv("PROBESET_ALLOW_PROBESET_TOLERATIONS", "true")
    _, agent = settings_from_env()
    assert validate(body, "probeset-system", agent).tolerations == [{"operator": "Exists"}]
