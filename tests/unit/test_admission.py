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


# A start/end probe's kernel hooks: their keys and filters are held to the value policy like a
# groupBy (a filter `arg0 & 4096` counts one bit of an address; a key tests equality with a value
# the tenant chooses). (probe, the error up to its reason, the value the admin would allow.)
BIT12 = {"name": "bit12", "start": {"kprobe": "tcp_sendmsg", "key": ["tid"],
                                    "filter": {"field": "arg0", "op": "&", "value": 4096}},
         "end": {"kretprobe": "tcp_sendmsg", "key": ["tid"]}}
SPAN_HOOKS = [
    (BIT12, "spec.probes[0].start.filter.field: arg0 of kernel function tcp_sendmsg can be a kernel address",
     "kprobe:tcp_sendmsg:arg0"),
    ({"name": "eq", "start": {"uprobe": "/bin/app:lookup", "key": ["arg0"]},
      "end": {"kprobe": "tcp_sendmsg", "key": ["arg1"]}},
     "spec.probes[0].end.key[0]: arg1 of kernel function tcp_sendmsg can be a kernel address or another task's data",
     "kprobe:tcp_sendmsg:arg1"),
    ({"name": "ret", "start": {"uretprobe": "/bin/app:alloc", "key": ["retval"]},
      "end": {"kretprobe": "__kmalloc", "key": ["retval"]}},
     "spec.probes[0].end.key[0]: retval of kernel function __kmalloc can be a kernel address or another task's data",
     "kretprobe:__kmalloc:retval"),
    ({"name": "nested", "start": {"kprobe": "vfs_read", "key": ["tid"], "filter": {"all": [
        {"field": "comm", "op": "==", "value": "app"}, {"field": "arg1", "op": ">", "value": 0}]}},
      "end": {"kretprobe": "vfs_read", "key": ["tid"]}},
     "spec.probes[0].start.filter.all[1].field: arg1 of kernel function vfs_read can be a kernel address",
     "kprobe:vfs_read:arg1"),
    ({"name": "endret", "start": {"kprobe": "vfs_read", "key": ["tid"]},
      "end": {"kretprobe": "vfs_read", "key": ["tid"], "filter": {"field": "retval", "op": "<", "value": 0}}},
     "spec.probes[0].end.filter.field: retval of kernel function vfs_read can be a kernel address",
     "kretprobe:vfs_read:retval"),
]


@pytest.mark.parametrize("probe, error, value", SPAN_HOOKS, ids=[p["name"] for p, _, _ in SPAN_HOOKS])
def test_a_spans_kernel_keys_and_filters_are_held_to_the_value_policy(probe, error, value):
    with pytest.raises(SpecError) as e:
        POLICY.admit(body("web", [probe]))
    assert str(e.value) == (f"{error}: a namespaced ProbeSet may not record it (the cluster admin can allow it with "
                            f"tenantAllowedValues: {value})")
    assert Admission("x", frozenset({"x"}), frozenset({value})).admit(body("web", [probe])).rejected == []
    assert POLICY.admit(body("obs", [probe], scope="Node")).rejected == []


def test_a_spans_kernel_hooks_may_key_and_filter_on_the_tasks_own_ids():
    probe = {"name": "own", "start": {"kprobe": "vfs_read", "key": ["tid", "pid"],
                                      "filter": {"all": [{"field": "pid", "op": "==", "value": 7},
                                                         {"field": "comm", "op": "==", "value": "app"}]}},
             "end": {"kretprobe": "vfs_read", "key": ["tid", "pid"], "filter": {"field": "uid", "op": "==", "value": 0}}}
    pset = POLICY.admit(body("web", [probe]))
    assert ([p.name for p in pset.probes], pset.rejected) == (["own"], [])
