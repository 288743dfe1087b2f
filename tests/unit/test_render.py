"""The one agent DaemonSet rendered for the admitted ProbeSets."""

import json

import pytest

from probeset_api.admission import Admission
from probeset_operator.render import AGENT_DAEMONSET, AgentSettings, map_memory_mib, memory_bytes, render_daemonset

BODY = {"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet",
        "metadata": {"name": "dns", "namespace": "web", "uid": "1234-abcd"},
        "spec": {"nodeSelector": {"kubernetes.io/os": "linux"},
                 "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                 "probes": [{"name": "a", "uprobe": "libc:malloc"}]}}


def body(name, namespace="web", probes=None, **spec):
    return {"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}", "generation": 1},
            "spec": {"probes": probes or [{"name": "a", "uprobe": "libc:malloc"}], **spec}}


def pod_of(ds):
    return ds["spec"]["template"]["spec"]


def test_daemonset_runs_one_privileged_agent_for_every_probeset():
    admission = Admission("probeset-system", frozenset({"probeset-system"}), allow_tolerations=True)
    ds = render_daemonset([BODY], "probeset-system", AgentSettings(image="reg/probeset:1", priority_class="high",
                                                                   extra_tolerations=[{"operator": "Exists"}],
                                                                   admission=admission))
    assert ds["metadata"]["namespace"] == "probeset-system" and ds["metadata"]["name"] == AGENT_DAEMONSET
    assert AGENT_DAEMONSET == "probeset-agent"
    pod = pod_of(ds)
    (c,) = pod["containers"]
    assert c["name"] == "agent"
    assert c["image"] == "reg/probeset:1" and c["securityContext"] == {"privileged": True, "runAsUser": 0}
    assert pod["hostPID"] is True and pod["priorityClassName"] == "high"
    assert c["args"] == ["agent", "--listen", "0.0.0.0:9437", "--max-probesets", "20", "--max-probes", "500",
                         "--host-root", "/host", "--map-memory", "256"]     # a 512Mi limit, less the agent's own
    # NODE_NAME, then the administrator's policy, which the agent applies itself (Admission.from_env):
    # no ProbeSet is named.
    assert c["env"] == [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "PROBESET_OPERATOR_NAMESPACE", "value": "probeset-system"},
                        {"name": "PROBESET_NODE_WIDE_NAMESPACES", "value": "probeset-system"},
                        {"name": "PROBESET_ALLOW_PROBESET_TOLERATIONS", "value": "true"}]
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/sys/kernel/tracing", "/sys/fs/cgroup", "/lib/modules",
                                                          "/usr/src", "/sys/fs/bpf"}
    (host,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/host"]       # the node's /, read-only
    assert host["readOnly"] and {"name": host["name"], "hostPath": {"path": "/"}} in pod["volumes"]
    assert "hostNetwork" not in pod
    assert pod["nodeSelector"] == {}
    assert pod["affinity"] == {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In",
                                                     "values": ["linux"]}]}]}}}
    assert pod["tolerations"] == [{"operator": "Exists"}, {"key": "dedicated", "operator": "Exists"}]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert labels == {"app.kubernetes.io/name": "probeset", "app.kubernetes.io/component": "agent",
                      "app.kubernetes.io/managed-by": "probeset-operator"}
    assert ds["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert ds["spec"]["template"]["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "9437", "prometheus.io/path": "/metrics",
        "prometheus.io/scheme": "http"}
    assert "annotations" not in ds["metadata"]


def test_others_render_one_set_with_the_defaults():
    (c,) = render_daemonset([BODY], "probeset-system", AgentSettings())["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env == {"NODE_NAME": None, "PROBESET_OPERATOR_NAMESPACE": "probeset-system",
                   "PROBESET_NODE_WIDE_NAMESPACES": "probeset-system"}


def test_budgets_and_the_admins_node_selector():
    settings = AgentSettings(max_probesets=3, max_probes=40, node_selector={"role": "obs", "kubernetes.io/os": "linux"})
    pod = pod_of(render_daemonset([body("a")], "ops", settings))
    assert pod["containers"][0]["args"] == ["agent", "--listen", "0.0.0.0:9437", "--max-probesets", "3",
                                            "--max-probes", "40", "--host-root", "/host", "--map-memory", "256"]
    assert list(pod["nodeSelector"].items()) == [("kubernetes.io/os", "linux"), ("role", "obs")]
    # --histogram-buckets only when not the agents' default (nonzero): the default manifest is unchanged
    for mode in ("sparse", "all"):
        args = pod_of(render_daemonset([body("a")], "ops", AgentSettings(histogram_buckets=mode)))["containers"][0]["args"]
        assert args[-2:] == ["--histogram-buckets", mode]
    assert "--histogram-buckets" not in pod_of(render_daemonset([body("a")], "ops", AgentSettings(
        histogram_buckets="nonzero")))["containers"][0]["args"]
    assert "affinity" not in pod         # a set without nodeSelector: every node (the admin's narrow it)
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["PROBESET_OPERATOR_NAMESPACE"] == "ops" and env["PROBESET_NODE_WIDE_NAMESPACES"] == "ops"


def test_daemonset_passes_the_admins_policy_to_the_agent():
    policy = Admission("probeset-system", frozenset({"platform", "obs"}), frozenset({"kretprobe:vfs_read:retval"}))
    ds = render_daemonset([BODY], "probeset-system", AgentSettings(admission=policy))
    env = {e["name"]: e.get("value") for e in pod_of(ds)["containers"][0]["env"]}
    assert env["PROBESET_NODE_WIDE_NAMESPACES"] == "obs,platform"
    assert env["PROBESET_OPERATOR_NAMESPACE"] == "probeset-system"
    assert env["PROBESET_TENANT_VALUES"] == "kretprobe:vfs_read:retval"
    assert Admission.from_env(env) == policy


def test_only_the_admin_decides_where_privileged_agents_run():
    """Sets' tolerations count only where the administrator allows them; the administrator's own
    always apply."""
    admin = [{"key": "dedicated", "operator": "Equal", "value": "obs", "effect": "NoSchedule"}]
    tolerant = {**BODY, "spec": {**BODY["spec"], "tolerations": [{"operator": "Exists"}]}}
    pod = pod_of(render_daemonset([tolerant], "probeset-system", AgentSettings(extra_tolerations=admin)))
    assert pod["tolerations"] == admin
    allowed = AgentSettings(extra_tolerations=admin,
                            admission=Admission("probeset-system", frozenset({"probeset-system"}),
                                                allow_tolerations=True))
    pod = pod_of(render_daemonset([tolerant], "probeset-system", allowed))
    assert pod["tolerations"] == admin + [{"operator": "Exists"}]


def test_one_daemonset_whatever_the_number_of_sets():
    sets = [body("a", nodeSelector={"pool": "x"}), body("b", "other", nodeSelector={"pool": "y"}),
            body("c", nodeSelector={"pool": "x"})]
    ds = render_daemonset(sets, "probeset-system", AgentSettings())
    terms = pod_of(ds)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["x"]}]},
                     {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["y"]}]}]
    assert "affinity" not in pod_of(render_daemonset(sets + [body("d")], "probeset-system", AgentSettings()))


def test_a_change_that_does_not_move_agents_renders_the_same_bytes():
    """Probes, order of sets, order of labels, a duplicate selector: none of it changes the
    manifest, so server-side apply rolls nothing."""
    policy = Admission("probeset-system", frozenset({"probeset-system"}), allow_tolerations=True)
    settings = AgentSettings(admission=policy)
    before = [body("a", nodeSelector={"pool": "x", "zone": "1"}, tolerations=[{"key": "k", "operator": "Exists"}]),
              body("b", "other", nodeSelector={"pool": "y"})]
    after = [body("b", "other", probes=[{"name": "other", "kprobe": "vfs_read"}], nodeSelector={"pool": "y"}),
             body("a", probes=[{"name": "z", "tracepoint": "sched:sched_process_exec"}],
                  nodeSelector={"zone": "1", "pool": "x"}, tolerations=[{"operator": "Exists", "key": "k"}]),
             body("e", nodeSelector={"pool": "y", "zone": "2"}, tolerations=[{"key": "k", "operator": "Exists",
                                                                              "effect": ""}])]
    assert json.dumps(render_daemonset(before, "probeset-system", settings)) == \
        json.dumps(render_daemonset(after, "probeset-system", settings))
    moved = before + [body("f", nodeSelector={"pool": "z"})]
    assert json.dumps(render_daemonset(moved, "probeset-system", settings)) != \
        json.dumps(render_daemonset(before, "probeset-system", settings))


def test_host_network_and_extra_env_for_clusters_without_a_pod_network():
    extra = [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"}, {"name": "KUBERNETES_SERVICE_PORT",
                                                                         "value": "6443"}]
    pod = render_daemonset([BODY], "probeset-system", AgentSettings(host_network=True, extra_env=extra))[
        "spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["containers"][0]["env"][-2:] == extra


@pytest.mark.parametrize("quantity,expected", [
    ("512Mi", 512 << 20), ("1Gi", 1 << 30), ("1.5Gi", 3 << 29), ("500M", 500 * 10**6), ("2G", 2 * 10**9),
    ("268435456", 1 << 28), ("1e9", 10**9), ("64Ki", 64 << 10), ("128k", 128000)])
def test_memory_quantities(quantity, expected):
    assert memory_bytes(quantity) == expected


@pytest.mark.parametrize("bad", ["", "lots", "512mi", "-1Gi", "1 Gi", "0x10"])
def test_memory_quantities_refused(bad):
    with pytest.raises(ValueError, match="not a memory quantity"):
        memory_bytes(bad)


@pytest.mark.parametrize("resources,mib", [
    ({"limits": {"memory": "512Mi"}}, 256), ({"limits": {"memory": "2Gi"}}, 1792), ({"limits": {"memory": "300Mi"}}, 44),
    ({"limits": {"memory": "200Mi"}}, 0), ({"requests": {"memory": "200Mi"}}, None), ({}, None), (None, None),
    ({"limits": {"memory": "lots"}}, None)])
def test_the_map_budget_fits_the_agents_memory_limit(resources, mib):
    """BPF maps are charged to the agent's cgroup beside its own memory (AGENT_OWN_MEMORY_MIB): the
    budget the agent admits sets against must leave the agent room, or a set that fits the budget
    gets the agent killed for memory and every set of its node with it."""
    assert map_memory_mib(resources) == mib
    args = pod_of(render_daemonset([body("a")], "ops", AgentSettings(resources=resources or {})))["containers"][0]["args"]
    assert (args[args.index("--map-memory") + 1] if "--map-memory" in args else None) == (
        None if mib is None else str(mib))
