"""The agent DaemonSet rendered for a ProbeSet."""

from probeset_operator.render import AgentSettings, daemonset_name, render_daemonset

BODY = {"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet",
        "metadata": {"name": "dns", "namespace": "web", "uid": "1234-abcd"},
        "spec": {"nodeSelector": {"kubernetes.io/os": "linux"},
                 "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                 "probes": [{"name": "a", "uprobe": "libc:malloc"}]}}


def test_daemonset_runs_a_privileged_agent_for_this_probeset():
    ds = render_daemonset(BODY, "probeset-system", AgentSettings(image="reg/probeset:1", priority_class="high",
                                                                 extra_tolerations=[{"operator": "Exists"}],
                                                                 allow_probeset_tolerations=True))
    assert ds["metadata"]["namespace"] == "probeset-system" and ds["metadata"]["name"] == "probeset-web-dns"
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "reg/probeset:1" and c["securityContext"] == {"privileged": True, "runAsUser": 0}
    assert pod["hostPID"] is True and pod["priorityClassName"] == "high"
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["PROBESET_NAMESPACE"]["value"] == "web" and env["PROBESET_NAME"]["value"] == "dns"
    # The agent applies the operator's scope rule itself; no allowlist set: the operator's namespace.
    assert env["PROBESET_OPERATOR_NAMESPACE"]["value"] == "probeset-system"
    assert env["PROBESET_NODE_WIDE_NAMESPACES"]["value"] == "probeset-system"
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/sys/kernel/tracing", "/sys/fs/cgroup", "/lib/modules",
                                                          "/usr/src", "/sys/fs/bpf"}
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}, {"operator": "Exists"}]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert labels["probeset.io/probeset-uid"] == "1234-abcd"
    assert ds["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9437"


def test_long_names_are_shortened_and_stay_unique():
    a = daemonset_name("n" * 60, "x" * 60)
    b = daemonset_name("n" * 60, "x" * 59 + "y")
    assert len(a) <= 63 and len(b) <= 63 and a != b


def test_daemonset_passes_the_node_wide_allowlist_to_the_agent():
    ds = render_daemonset(BODY, "probeset-system", AgentSettings(node_wide_namespaces=("platform", "obs")))
    env = {e["name"]: e.get("value") for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PROBESET_NODE_WIDE_NAMESPACES"] == "obs,platform"
    assert env["PROBESET_OPERATOR_NAMESPACE"] == "probeset-system"


def test_only_the_admin_decides_where_privileged_agents_run():
    """A ProbeSet that tolerates everything does not put agents on control-plane nodes unless the
    administrator allows ProbeSets' tolerations; the administrator's own always apply."""
    admin = [{"key": "dedicated", "operator": "Equal", "value": "obs", "effect": "NoSchedule"}]
    body = {**BODY, "spec": {**BODY["spec"], "tolerations": [{"operator": "Exists"}]}}
    pod = render_daemonset(body, "probeset-system", AgentSettings(extra_tolerations=admin))["spec"]["template"]["spec"]
    assert pod["tolerations"] == admin
    allowed = AgentSettings(extra_tolerations=admin, allow_probeset_tolerations=True)
    pod = render_daemonset(body, "probeset-system", allowed)["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"operator": "Exists"}] + admin
