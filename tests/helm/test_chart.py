"""The Helm chart (charts/probeset): renders, lints, matches rbac.py and crds/, rejects bad values,
and (tier k8s) every rendered manifest passes a server-side dry run on a real API server."""

import json
from pathlib import Path

import pytest
import yaml

try:
    import helm_python as helm
except (ImportError, OSError) as e:   # not installed, or its bundled libhelm_c.so does not load
    pytest.skip(f"PyPI package helm-python-sdk is not importable ({e}); pip install helm-python-sdk",
                allow_module_level=True)

from probeset_operator.rbac import (AGENT_CLUSTER_RULES, AGENT_NAMESPACE_RULES, OPERATOR_CLUSTER_RULES,  # noqa: E402
                                    OPERATOR_NAMESPACE_RULES, peering_objects, role_objects)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "probeset"
NS = "probeset-system"
ALL_ON = {"podMonitor": {"enabled": True}, "grafanaDashboard": {"enabled": True}}


def rules(spec):
    return [{"apiGroups": g, "resources": r, "verbs": v} for g, r, v, _ in spec]


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as c:
        yield c


def render(chart, values=None, namespace=NS):
    out = chart.render(values or {}, name="probeset", namespace=namespace)
    docs = []
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                docs.append((path, doc))
    return docs


def by_kind(docs):
    return {(d["kind"], d["metadata"]["name"]): d for _, d in docs}


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_chart_metadata(chart):
    meta = chart.metadata
    assert (meta["apiVersion"], meta["name"], meta["version"], meta["appVersion"]) == \
        ("v2", "probeset", "0.1.0", "0.1.0")


@pytest.mark.parametrize("values", [{}, ALL_ON], ids=["defaults", "all-toggles-on"])
def test_every_manifest_is_valid_yaml_with_kind_and_name(chart, values):
    docs = render(chart, values)
    assert docs
    for path, doc in docs:
        assert isinstance(doc, dict), path
        assert doc.get("apiVersion") and doc.get("kind"), path
        assert doc.get("metadata", {}).get("name"), path
    kinds = {k for k, _ in by_kind(docs)}
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
            "ClusterKopfPeering"} <= kinds
    assert ("PodMonitor" in kinds) == ("ConfigMap" in kinds) == bool(values)


def test_default_render_objects(chart):
    objs = by_kind(render(chart))
    assert ("ServiceAccount", "probeset-operator") in objs and ("ServiceAccount", "probeset-agent") in objs
    assert objs[("ClusterKopfPeering", "probeset")]["apiVersion"] == "kopf.dev/v1"
    dep = objs[("Deployment", "probeset-operator")]
    assert dep["metadata"]["namespace"] == NS and dep["spec"]["replicas"] == 1
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "probeset-operator"
    (c,) = pod["containers"]
    assert c["command"] == ["probeset", "operator"]
    assert c["image"] == "probeset:0.1.0"
    env = env_of(c)
    assert env["PROBESET_OPERATOR_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["PROBESET_AGENT_IMAGE"] == "probeset:0.1.0"
    assert env["PROBESET_AGENT_IMAGE_PULL_POLICY"] == "IfNotPresent"
    assert env["PROBESET_AGENT_SERVICE_ACCOUNT"] == "probeset-agent"
    assert env["PROBESET_AGENT_PRIORITY_CLASS"] == ""
    assert env["PROBESET_PEERING"] == "probeset"
    assert env["PROBESET_NODE_WIDE_NAMESPACES"] == NS      # empty nodeWideNamespaces: the release namespace
    assert env["PROBESET_TENANT_VALUES"] == ""             # no value beyond the namespaced rule
    assert env["PROBESET_ALLOW_PROBESET_TOLERATIONS"] == "false"   # the admin decides where agents run
    assert json.loads(env["PROBESET_AGENT_RESOURCES"]) == {"requests": {"cpu": "50m", "memory": "200Mi"},
                                                           "limits": {"memory": "512Mi"}}
    assert json.loads(env["PROBESET_AGENT_TOLERATIONS"]) == []
    assert json.loads(env["PROBESET_AGENT_NODE_SELECTOR"]) == {}           # agents wherever ProbeSets select
    assert (env["PROBESET_AGENT_MAX_PROBESETS"], env["PROBESET_AGENT_MAX_PROBES"], env["PROBESET_AGENT_MAX_SERIES"]) \
        == ("20", "500", "0")
    assert env["PROBESET_AGENT_HISTOGRAM_BUCKETS"] == "nonzero"          # safe for sum by (le)
    assert env["PROBESET_OPERATOR_DEPLOYMENT"] == dep["metadata"]["name"]  # the agent DaemonSet's owner
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8080}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"] and c["resources"]["limits"]


def test_values_reach_the_operator_env(chart):
    tol = [{"key": "dedicated", "operator": "Equal", "value": "obs", "effect": "NoSchedule"}]
    res = {"requests": {"cpu": "100m", "memory": "200Mi"}, "limits": {"memory": "1Gi"}}
    objs = by_kind(render(chart, {
        "replicas": 3, "image": {"repository": "reg.example/probeset", "tag": "v9"},
        "nodeWideNamespaces": ["obs", "platform-team"],
        "tenantAllowedValues": ["kretprobe:vfs_read:retval", "tracepoint:net:net_dev_xmit:name"],
        "agent": {"image": "reg.example/agent:v9", "imagePullPolicy": "Always",
                  "priorityClassName": "system-node-critical", "resources": res, "tolerations": tol,
                  "nodeSelector": {"kubernetes.io/os": "linux", "obs": "yes"}, "maxProbeSets": 8,
                  "maxProbes": 900, "maxSeries": 250000, "histogramBuckets": "sparse"}},
        namespace="obs"))
    dep = objs[("Deployment", "probeset-operator")]
    assert dep["spec"]["replicas"] == 3 and dep["metadata"]["namespace"] == "obs"
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "reg.example/probeset:v9"
    env = env_of(c)
    assert env["PROBESET_AGENT_IMAGE"] == "reg.example/agent:v9"
    assert env["PROBESET_AGENT_IMAGE_PULL_POLICY"] == "Always"
    assert env["PROBESET_AGENT_PRIORITY_CLASS"] == "system-node-critical"
    assert json.loads(env["PROBESET_AGENT_RESOURCES"]) == res
    assert json.loads(env["PROBESET_AGENT_TOLERATIONS"]) == tol
    assert json.loads(env["PROBESET_AGENT_NODE_SELECTOR"]) == {"kubernetes.io/os": "linux", "obs": "yes"}
    assert (env["PROBESET_AGENT_MAX_PROBESETS"], env["PROBESET_AGENT_MAX_PROBES"], env["PROBESET_AGENT_MAX_SERIES"]) \
        == ("8", "900", "250000")
    assert env["PROBESET_AGENT_HISTOGRAM_BUCKETS"] == "sparse"
    from probeset_operator.handlers import settings_from_env       # and what the operator passes the agents
    agent = settings_from_env({k: v for k, v in env.items() if isinstance(v, str)})[1]
    assert agent.histogram_buckets == "sparse"
    assert env["PROBESET_NODE_WIDE_NAMESPACES"] == "obs,platform-team"
    assert env["PROBESET_TENANT_VALUES"] == "kretprobe:vfs_read:retval,tracepoint:net:net_dev_xmit:name"


def test_rbac_equals_rbac_py(chart):
    objs = by_kind(render(chart))
    assert objs[("ClusterRole", "probeset-operator")]["rules"] == rules(OPERATOR_CLUSTER_RULES)
    assert objs[("Role", "probeset-operator")]["rules"] == rules(OPERATOR_NAMESPACE_RULES)
    assert objs[("ClusterRole", "probeset-agent")]["rules"] == rules(AGENT_CLUSTER_RULES)
    assert objs[("Role", "probeset-agent")]["rules"] == rules(AGENT_NAMESPACE_RULES)
    # Every RBAC object and ServiceAccount equals rbac.role_objects() apart from the chart's labels.
    for want in role_objects(NS):
        got = objs[(want["kind"], want["metadata"]["name"])]
        got = {**got, "metadata": {k: v for k, v in got["metadata"].items() if k != "labels"}}
        assert got == want, want["kind"]


def test_secured_metrics_reach_the_operator_rbac_and_podmonitor(chart):
    tls = {"ca": {"secret": {"name": "agent-ca", "key": "ca.crt"}}, "serverName": "probeset-agent"}
    auth = {"type": "Bearer", "credentials": {"name": "prometheus-token", "key": "token"}}
    objs = by_kind(render(chart, {"agent": {"metrics": {"tlsSecret": "agent-tls", "auth": True}},
                                  "podMonitor": {"enabled": True, "tlsConfig": tls, "authorization": auth}}))
    (c,) = objs[("Deployment", "probeset-operator")]["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    assert env["PROBESET_AGENT_METRICS_TLS_SECRET"] == "agent-tls" and env["PROBESET_AGENT_METRICS_AUTH"] == "true"
    for want in role_objects(NS, metrics_auth=True):
        got = objs[(want["kind"], want["metadata"]["name"])]
        assert {**got, "metadata": {k: v for k, v in got["metadata"].items() if k != "labels"}} == want
    (ep,) = objs[("PodMonitor", "probeset-agents")]["spec"]["podMetricsEndpoints"]
    assert (ep["scheme"], ep["tlsConfig"], ep["authorization"]) == ("https", tls, auth)
    plain = by_kind(render(chart, {"podMonitor": {"enabled": True}}))
    (ep,) = plain[("PodMonitor", "probeset-agents")]["spec"]["podMetricsEndpoints"]
    assert ep["scheme"] == "http" and "tlsConfig" not in ep and "authorization" not in ep
    assert ("ClusterRole", "probeset-metrics-reader") not in plain
    assert env_of(plain[("Deployment", "probeset-operator")]["spec"]["template"]["spec"]["containers"][0])[
        "PROBESET_AGENT_METRICS_AUTH"] == "false"


def test_crds_equal_the_repository_and_rbac_py():
    for name in ("probeset.io_probesets.yaml", "probeset.io_probesetnodes.yaml"):
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), name
    peering_crd, peering = peering_objects()
    assert yaml.safe_load((CHART / "crds" / "kopf.dev_clusterkopfpeerings.yaml").read_text()) == peering_crd


def test_chart_loads_both_crds(chart):
    names = {yaml.safe_load(c["data"])["metadata"]["name"] for c in chart.crds}
    assert names == {"probesets.probeset.io", "probesetnodes.probeset.io", "clusterkopfpeerings.kopf.dev"}


def test_peering_object_matches_rbac_py(chart):
    objs = by_kind(render(chart))
    got = objs[("ClusterKopfPeering", "probeset")]
    assert {**got, "metadata": {"name": got["metadata"]["name"]}} == peering_objects()[1]


def test_toggles(chart):
    objs = by_kind(render(chart, ALL_ON))
    pm = objs[("PodMonitor", "probeset-agents")]
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "agent"
    assert pm["spec"]["namespaceSelector"]["matchNames"] == [NS]
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    assert ep["port"] == "metrics" and ep["honorLabels"] is True
    cm = objs[("ConfigMap", "probeset-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["probeset.json"])
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in ("probeset_events_total", "probeset_latency_seconds_bucket", "probeset_probe_attached",
                   "probeset_missed_events_total", "probeset_bpf_run_seconds_total"):
        assert metric in exprs
    assert "0.5" in exprs and "0.99" in exprs


def test_notes(chart):
    notes = chart.render({}, name="probeset", namespace=NS)["probeset/templates/NOTES.txt"]
    assert f"kubectl label namespace {NS} pod-security.kubernetes.io/enforce=privileged" in notes
    assert "kind: ProbeSet" in notes and "kubectl get probesets" in notes


@pytest.mark.parametrize("values", [{}, ALL_ON], ids=["defaults", "all-toggles-on"])
def test_lint(values):
    report = helm.lint(CHART, values, strict=True, namespace=NS)
    assert report["errors"] == []
    # strict: warnings are errors; the only info-level note allowed is the missing icon.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values,field", [
    ({"replicas": -1}, "/replicas"),
    ({"replicas": 0}, "/replicas"),
    ({"replicas": "two"}, "/replicas"),
    ({"image": {"repository": ""}}, "/image/repository"),
    ({"image": ""}, "/image"),
    ({"resources": {"requests": {"cpu": 1}}}, "/resources/requests/cpu"),
    ({"agent": {"resources": {"limits": {"memory": "lots"}}}}, "/agent/resources/limits/memory"),
    ({"agent": {"imagePullPolicy": "Sometimes"}}, "/agent/imagePullPolicy"),
    ({"podMonitor": {"enabled": "yes"}}, "/podMonitor/enabled"),
    ({"nodeWideNamespaces": ["Bad_Namespace"]}, "/nodeWideNamespaces/0"),
    ({"nodeWideNamespaces": ["obs", "a" * 64]}, "/nodeWideNamespaces/1"),
    ({"nodeWideNamespaces": "obs"}, "/nodeWideNamespaces"),
    ({"tenantAllowedValues": ["vfs_read:retval"]}, "/tenantAllowedValues/0"),
    ({"tenantAllowedValues": ["uprobe:libc:malloc:arg0"]}, "/tenantAllowedValues/0"),
    ({"agent": {"metrics": {"auth": "yes"}}}, "/agent/metrics/auth"),
    ({"agent": {"maxProbeSets": 0}}, "/agent/maxProbeSets"),
    ({"agent": {"maxProbes": "many"}}, "/agent/maxProbes"),
    ({"agent": {"maxSeries": -1}}, "/agent/maxSeries"),
    ({"agent": {"histogramBuckets": "trimmed"}}, "/agent/histogramBuckets"),
    ({"agent": {"nodeSelector": {"obs": True}}}, "/agent/nodeSelector/obs"),
    ({"agent": {"metrics": {"tlsSecret": "Bad_Name"}}}, "/agent/metrics/tlsSecret"),
    ({"replica": 2}, "replica"),
])
def test_bad_values_are_rejected_naming_the_field(chart, values, field):
    with pytest.raises(helm.HelmValuesError) as e:
        chart.validate_schema(values)
    assert field in str(e.value)
    with pytest.raises(helm.HelmValuesError) as e:   # and the same at render (install) time
        chart.render(values, name="probeset", namespace=NS)
    assert field in str(e.value)


def test_default_values_pass_the_schema(chart):
    chart.validate_schema(chart.values)
    chart.validate_schema(ALL_ON)


# --- API-server tier -------------------------------------------------------------------------------

@pytest.mark.k8s
def test_server_side_dry_run_of_every_manifest(kube, chart):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from kubernetes.dynamic import DynamicClient

    from tests.k8s.operator_env import create_if_absent, wait_established

    ns = "probeset-helm-dryrun"
    with kube.api_client() as api:
        ext = client.ApiextensionsV1Api(api)
        # Helm installs crds/ for real before the templates; do the same (idempotent, same content as
        # the operator tests install), and wait until they serve.
        crds = [yaml.safe_load(c["data"]) for c in chart.crds]
        for crd in crds:
            create_if_absent(ext.create_custom_resource_definition, crd)
        wait_established(api, *(crd["metadata"]["name"] for crd in crds))
        create_if_absent(client.CoreV1Api(api).create_namespace, {"metadata": {"name": ns}})
        dyn = DynamicClient(api)
        docs = render(chart, {"grafanaDashboard": {"enabled": True}}, namespace=ns)
        checked = []
        for path, doc in docs:
            res = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
            # Server-side apply with dryRun=All: validates against the real schemas (built-in and the
            # CRDs) and admission, whether or not another test already created the object.
            dyn.server_side_apply(res, body=doc, namespace=ns if res.namespaced else None,
                                  field_manager="probeset-helm-test", force_conflicts=True, dry_run="All")
            checked.append(doc["kind"])
        assert {"Deployment", "ClusterRole", "Role", "ClusterKopfPeering", "ConfigMap"} <= set(checked)
        # It was only a dry run: nothing was created ...
        assert not client.AppsV1Api(api).list_namespaced_deployment(ns).items
        # ... and the server does check: a broken Deployment is refused.
        dep = next(d for _, d in docs if d["kind"] == "Deployment")
        bad = json.loads(json.dumps(dep))
        bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = 99999
        with pytest.raises(ApiException) as e:
            dyn.server_side_apply(dyn.resources.get(api_version="apps/v1", kind="Deployment"), body=bad,
                                  namespace=ns, field_manager="probeset-helm-test", force_conflicts=True,
                                  dry_run="All")
        assert e.value.status == 422 and "containerPort" in str(e.value.body)
        # The PodMonitor needs the Prometheus Operator's CRD, which this cluster does not have: it is
        # checked offline above (test_toggles).


def test_host_network_and_extra_env_reach_the_operator_and_through_it_the_agents(chart):
    api = [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"}, {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"}]
    objs = by_kind(render(chart, {"hostNetwork": True, "extraEnv": api,
                                  "agent": {"hostNetwork": True, "extraEnv": api}}))
    pod = objs[("Deployment", "probeset-operator")]["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    # A surge pod could not bind the health port beside the old one: upgrades replace instead.
    assert objs[("Deployment", "probeset-operator")]["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    (c,) = pod["containers"]
    assert c["env"][-2:] == api
    env = env_of(c)
    assert env["PROBESET_AGENT_HOST_NETWORK"] == "true"
    # What the operator makes of it (handlers.settings_from_env reads the same environment).
    from probeset_operator.handlers import settings_from_env
    _, agent = settings_from_env({k: v for k, v in env.items() if isinstance(v, str)})
    assert agent.host_network and agent.extra_env == api
    defaults = by_kind(render(chart))[("Deployment", "probeset-operator")]["spec"]["template"]["spec"]
    assert "hostNetwork" not in defaults and env_of(defaults["containers"][0])["PROBESET_AGENT_EXTRA_ENV"] == "[]"
    assert "strategy" not in by_kind(render(chart))[("Deployment", "probeset-operator")]["spec"]
