"""Where the agent DaemonSet runs (scheduling.py): affinity from the sets' nodeSelectors,
tolerations, and which nodes the DaemonSet controller gives an agent; table tests."""

import pytest

from probeset_operator.scheduling import (affinity_admits, node_affinity, pod_node, runs_on, selector_errors,
                                          toleration_errors, tolerates, tolerations)


def terms(*selectors):
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": k, "operator": "In", "values": [v]} for k, v in s]} for s in selectors]}}}


@pytest.mark.parametrize("selectors,expected", [
    ([], None),                                                          # no set: no constraint (no DaemonSet)
    ([{}], None),                                                        # a set for every node
    ([{"pool": "x"}, {}], None),                                         # ... wins over the others
    ([{"pool": "x"}], terms([("pool", "x")])),
    ([{"pool": "y"}, {"pool": "x"}, {"pool": "y"}], terms([("pool", "x")], [("pool", "y")])),   # sorted, once
    ([{"zone": "1", "pool": "x"}], terms([("pool", "x"), ("zone", "1")])),  # keys sorted, ANDed in one term
    ([{"pool": "x", "zone": "1"}, {"pool": "x"}], terms([("pool", "x")])),  # narrower: adds no node
    ([{"pool": "x", "zone": "1"}, {"pool": "y"}], terms([("pool", "x"), ("zone", "1")], [("pool", "y")])),
])
def test_node_affinity(selectors, expected):
    assert node_affinity(selectors) == expected


ADMIN = [{"key": "dedicated", "operator": "Equal", "value": "obs", "effect": "NoSchedule"}]


@pytest.mark.parametrize("admin,sets,allow,expected", [
    (ADMIN, [[{"operator": "Exists"}]], False, ADMIN),                       # sets' own: not allowed
    ([], [[{"operator": "Exists"}]], True, [{"operator": "Exists"}]),
    (ADMIN, [[{"key": "b", "operator": "Exists"}], [{"key": "a", "operator": "Exists"}]], True,
     ADMIN + [{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "Exists"}]),      # admin's first, sorted
    (ADMIN, [[{**ADMIN[0]}], [{"key": "a", "operator": "Exists", "effect": ""}],
             [{"operator": "Exists", "key": "a"}]], True,
     ADMIN + [{"key": "a", "operator": "Exists"}]),                            # duplicates once
    (ADMIN + ADMIN, [], True, ADMIN),
])
def test_tolerations(admin, sets, allow, expected):
    assert tolerations(admin, sets, allow) == expected


TAINT = {"key": "dedicated", "value": "obs", "effect": "NoSchedule"}


@pytest.mark.parametrize("toleration,taint,expected", [
    ({"operator": "Exists"}, TAINT, True),
    ({"key": "dedicated", "operator": "Exists"}, TAINT, True),
    ({"key": "dedicated", "operator": "Equal", "value": "obs"}, TAINT, True),
    ({"key": "dedicated", "value": "obs"}, TAINT, True),                     # operator defaults to Equal
    ({"key": "dedicated", "operator": "Equal", "value": "gpu"}, TAINT, False),
    ({"key": "other", "operator": "Exists"}, TAINT, False),
    ({"operator": "Exists", "effect": "NoExecute"}, TAINT, False),
    ({"operator": "Exists", "effect": "NoSchedule"}, TAINT, True),
])
def test_tolerates(toleration, taint, expected):
    assert tolerates(toleration, taint) is expected


def node(name="n1", labels=None, taints=None):
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": {"taints": taints or []}}


CONTROL_PLANE = {"key": "node-role.kubernetes.io/master", "effect": "NoSchedule"}


@pytest.mark.parametrize("what,n,selector,pod_spec,expected", [
    ("no selector, no taint", node(), {}, {}, True),
    ("set selector matches", node(labels={"pool": "x"}), {"pool": "x"}, {}, True),
    ("set selector does not", node(labels={"pool": "y"}), {"pool": "x"}, {}, False),
    ("the admin's nodeSelector narrows", node(labels={"pool": "x"}), {"pool": "x"}, {"nodeSelector": {"obs": "1"}},
     False),
    ("... and matches", node(labels={"pool": "x", "obs": "1"}), {"pool": "x"}, {"nodeSelector": {"obs": "1"}}, True),
    ("affinity not yet including the set", node(labels={"pool": "x"}), {"pool": "x"},
     {"affinity": terms([("pool", "y")])}, False),
    ("affinity including it", node(labels={"pool": "x"}), {"pool": "x"},
     {"affinity": terms([("pool", "y")], [("pool", "x")])}, True),
    ("control plane untolerated", node(taints=[CONTROL_PLANE]), {}, {}, False),
    ("control plane tolerated", node(taints=[CONTROL_PLANE]), {},
     {"tolerations": [{"key": "node-role.kubernetes.io/master", "operator": "Exists"}]}, True),
    ("PreferNoSchedule does not repel", node(taints=[{"key": "k", "effect": "PreferNoSchedule"}]), {}, {}, True),
    ("NoExecute repels", node(taints=[{"key": "k", "value": "v", "effect": "NoExecute"}]), {}, {}, False),
    ("the controller's own tolerations: unschedulable",
     node(taints=[{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]), {}, {}, True),
    ("... and not-ready",
     node(taints=[{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]), {}, {}, True),
    ("but not unreachable:NoSchedule (a node without heartbeats)",
     node(taints=[{"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}]), {}, {}, False),
])
def test_runs_on(what, n, selector, pod_spec, expected):
    assert runs_on(n, selector, pod_spec) is expected


@pytest.mark.parametrize("labels,expression,expected", [
    ({"a": "1"}, {"key": "a", "operator": "NotIn", "values": ["2"]}, True),
    ({"a": "2"}, {"key": "a", "operator": "NotIn", "values": ["2"]}, False),
    ({"a": "1"}, {"key": "a", "operator": "Exists"}, True),
    ({}, {"key": "a", "operator": "DoesNotExist"}, True),
    ({"a": "1"}, {"key": "a", "operator": "Gt", "values": ["0"]}, False),
])
def test_affinity_expressions(labels, expression, expected):
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [expression]}]}}}
    assert affinity_admits(labels, affinity) is expected


@pytest.mark.parametrize("pod,expected", [
    ({"spec": {"nodeName": "n1"}}, "n1"),
    ({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]}}}}},
     "n2"),                                       # not bound yet: the node the DaemonSet controller pinned
    ({"spec": {}}, None),
])
def test_pod_node(pod, expected):
    assert pod_node(pod) == expected


@pytest.mark.parametrize("selector,errors", [
    ({"pool": "x", "example.com/tier": "a-b_c.d", "empty": ""}, []),
    ({"bad key": "x"}, ["spec.nodeSelector: key 'bad key': a label name has at most 63 characters"]),
    ({"Bad.Prefix/x": "1"}, ["spec.nodeSelector: key 'Bad.Prefix/x': its prefix must be a DNS subdomain"]),
    ({"pool": "not valid"}, ["spec.nodeSelector.pool: value 'not valid': a label value is empty or has"]),
    ({"pool": "x" * 64}, ["spec.nodeSelector.pool: value "]),
])
def test_selector_errors(selector, errors):
    got = [str(e) for e in selector_errors(selector)]
    assert len(got) == len(errors) and all(g.startswith(e) for g, e in zip(got, errors)), got


@pytest.mark.parametrize("tols,errors", [
    ([{"operator": "Exists"}, {"key": "k", "value": "v"}, {"key": "k", "operator": "Exists", "effect": "NoExecute",
                                                            "tolerationSeconds": 30}], []),
    ([{"value": "v"}], ["spec.tolerations[0].operator: must be Exists when key is empty"]),
    ([{"key": "k", "operator": "Exists", "value": "v"}], ["spec.tolerations[0].value: must be empty"]),
    ([{"key": "k", "operator": "Exists", "tolerationSeconds": 5}],
     ["spec.tolerations[0].effect: must be NoExecute when tolerationSeconds is set"]),
    ([{"key": "a b", "operator": "Exists"}], ["spec.tolerations[0].key: a label name"]),
    ([{"key": "k", "value": "a b"}], ["spec.tolerations[0].value: a label value"]),
])
def test_toleration_errors(tols, errors):
    got = [str(e) for e in toleration_errors(tols)]
    assert len(got) == len(errors) and all(g.startswith(e) for g, e in zip(got, errors)), got
