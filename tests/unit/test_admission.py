"""The administrator's policy, as the operator and every agent apply it (probeset_api.admission)."""

import pytest

from probeset_api.admission import Admission
from probeset_api.spec import SpecError


def body(namespace, probes=None, **spec):
    return {"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet",
            "metadata": {"name": "dns", "namespace": namespace, "uid": "u-1", "generation": 2},
            "spec": {"probes": probes or [{"name": "a", "kprobe": "vfs_read"}], **spec}}


POLICY = Admission("probeset-system", frozenset({"obs", "probeset-system"}))
RETVAL = [{"name": "r", "kretprobe": "vfs_read", "groupBy": ["retval"]}]


@pytest.mark.parametrize("policy, obj, error", [
    (POLICY, body("obs", scope="Node"), None),
    (POLICY, body("web"), None),
    (POLICY, body("web", scope="Node"), "spec.scope: Node (host processes and every pod on the node) is allowed "
                                        "only for ProbeSets in namespace(s) obs, probeset-system"),
    (POLICY, body("web", tolerations=[{"operator": "Exists"}]), "spec.tolerations: where privileged agents run is "
                                                                  "the cluster admin's choice"),
    (Admission("x", frozenset({"x"}), allow_tolerations=True), body("web", tolerations=[{"operator": "Exists"}]),
     None),
    (POLICY, body("web", RETVAL), "spec.probes[0].groupBy[0]: retval of kernel function vfs_read can be a kernel "
                                  "address"),
    (Admission("x", frozenset({"x"}), frozenset({"kretprobe:vfs_read:retval"})), body("web", RETVAL), None),
    (POLICY, body("obs", RETVAL, scope="Node"), None),
])
def test_admit(policy, obj, error):
    if error is None:
        assert policy.admit(obj).name == "dns"
    else:
        with pytest.raises(SpecError) as e:
            policy.admit(obj)
        assert str(e.value).startswith(error), str(e.value)


def test_a_rejected_probe_leaves_the_others_running():
    pset = POLICY.admit(body("web", RETVAL + [{"name": "ok", "kprobe": "vfs_read"}]))
    assert [p.name for p in pset.probes] == ["ok"] and [r.name for r in pset.rejected] == ["r"]


@pytest.mark.parametrize("policy", [
    POLICY,
    Admission("ops", frozenset({"ops"})),
    Admission("ops", frozenset({"a", "b"}), frozenset({"tracepoint:net:net_dev_xmit:name", "kprobe:f:arg1"}), True),
])
def test_the_agents_environment_gives_back_the_policy(policy):
    env = {e["name"]: e["value"] for e in policy.env()}
    assert all(env.values())                  # the API server drops empty values
    assert Admission.from_env(env) == policy


def test_defaults_from_an_empty_environment():
    assert Admission.from_env({}) == Admission("probeset-system", frozenset({"probeset-system"}))
