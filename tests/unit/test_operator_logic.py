"""Pure pieces of the operator and the cluster agent."""

from probeset_agent.cluster import node_report
from probeset_agent.program import ProbeStatus
from probeset_operator.handlers import _difference, settings_from_env


def test_difference_ignores_server_defaults_and_omitted_zero_values():
    wanted = {"spec": {"a": 1, "tolerations": [], "nodeSelector": {}, "ro": False, "list": [{"x": 1}]}}
    actual = {"spec": {"a": 1, "added": "by the server", "list": [{"x": 1, "default": True}]}}
    assert _difference(actual, wanted, "") is None
    actual["spec"]["list"][0]["x"] = 2
    assert _difference(actual, wanted, "") == ".spec.list[0].x"
    assert _difference({"spec": {"a": 1, "list": []}}, wanted, "") == ".spec.list"


def test_node_report_is_small_unless_something_fails():
    ok = ProbeStatus("a", 0, "uprobe", "uprobe", functions={"f": True})
    bad = ProbeStatus("b", 1, "kprobe", error="kprobes are not supported")
    healthy = node_report([ok], 3, 1)
    assert healthy["failed"] is None and healthy["attached"] == 1 and healthy["generation"] == 3
    report = node_report([ok, bad], 4, 2)
    assert report["attached"] == 1 and report["total"] == 2
    assert report["failed"] == [{"name": "b", "attached": False, "attachedVia": None, "functions": 0,
                                 "error": "kprobes are not supported"}]


def test_operator_settings_from_environment(monkeypatch):
    monkeypatch.setenv("PROBESET_OPERATOR_NAMESPACE", "obs")
    monkeypatch.setenv("PROBESET_AGENT_IMAGE", "reg/probeset:2")
    monkeypatch.setenv("PROBESET_AGENT_TOLERATIONS", '[{"operator": "Exists"}]')
    namespace, agent = settings_from_env()
    assert namespace == "obs" and agent.image == "reg/probeset:2"
    assert agent.extra_tolerations == [{"operator": "Exists"}]
