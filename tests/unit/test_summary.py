"""The operator's status summary, without the API: agents' reports in, counts and conditions out."""

import pytest

from probeset_api.status import NodeReport, ProbeResult
from probeset_operator.summary import Verdict, declined, is_live, pod_problem, set_condition, summarize


def ok(generation=3, attached=2, total=2):
    return NodeReport(generation=generation, attached=attached, total=total)


def failed(generation=3, name="dns", error="no symbol"):
    return NodeReport(generation=generation, attached=1, total=2,
                      failed=(ProbeResult(name=name, attached=False, error=error),))


CASES = [
    # (name, reports, scheduled, desired, expected: summary, probes, ready, degraded, failedNodes, message)
    ("all nodes ready", {"a": ok(), "b": ok()}, {"a", "b"}, 2,
     ("2/2", "2/2", ("True", "AgentsReady"), ("False", "AllProbesAttached"), (), "")),
    ("no nodes selected", {}, set(), 0,
     ("0/0", "0/2", ("False", "NoNodes"), ("False", "Pending"), (),
      "waiting for agents: 0/0 nodes report every probe attached")),
    ("one agent not reported yet", {"a": ok()}, {"a", "b"}, 2,
     ("1/2", "2/2", ("False", "AgentsNotReady"), ("False", "Pending"), (),
      "waiting for agents: 1/2 nodes report every probe attached")),
    ("a report of the old generation does not count", {"a": ok(), "b": ok(generation=2)}, {"a", "b"}, 2,
     ("1/2", "2/2", ("False", "AgentsNotReady"), ("False", "Pending"), (),
      "waiting for agents: 1/2 nodes report every probe attached")),
    ("a failing node degrades the set and names the first failure", {"a": ok(), "b": failed(), "c": failed(name="x")},
     {"a", "b", "c"}, 3,
     ("1/3", "1/2", ("False", "AgentsNotReady"), ("True", "ProbesFailed"), ("b", "c"),
      "2 node(s) with failed probes; b: dns: no symbol")),
    ("the report of a node without an agent pod is ignored", {"a": ok(), "gone": failed()}, {"a"}, 1,
     ("1/1", "2/2", ("True", "AgentsReady"), ("False", "AllProbesAttached"), (), "")),
    ("attached counts the weakest node", {"a": ok(), "b": ok(attached=1)}, {"a", "b"}, 2,
     ("1/2", "1/2", ("False", "AgentsNotReady"), ("False", "Pending"), (),
      "waiting for agents: 1/2 nodes report every probe attached")),
]


@pytest.mark.parametrize("name,reports,scheduled,desired,expected", CASES, ids=[c[0] for c in CASES])
def test_summary(name, reports, scheduled, desired, expected):
    s = summarize(reports, scheduled, desired, total=2, generation=3)
    assert (s.nodes.summary, s.probes, (s.ready.status, s.ready.reason), (s.degraded.status, s.degraded.reason),
            tuple(f.node for f in s.failed_nodes), s.message) == expected
    assert s.ready.message == s.message and s.nodes.desired == desired


def test_failed_nodes_are_bounded_and_say_why():
    """At any number of failing nodes the set names the first ten by name, five failed probes each,
    errors cut; the counts say how many there are."""
    many = tuple(ProbeResult(name=f"p{i}", attached=False, error="e" * 2000) for i in range(8))
    reports = {f"n{i:04}": NodeReport(generation=3, attached=0, total=8, failed=many) for i in range(5000)}
    reports["a-declined"] = NodeReport(generation=3, attached=0, total=8, reason="OverBudget",
                                       failed=(ProbeResult(name="(spec)", attached=False, error="over budget"),))
    s = summarize(reports, set(reports), len(reports), total=8, generation=3)
    assert (s.nodes.failing, s.nodes.declined, s.nodes.ready) == (5000, 1, 0)
    assert [f.node for f in s.failed_nodes] == ["a-declined"] + [f"n{i:04}" for i in range(9)]
    first, second = s.failed_nodes[0].to_status(), s.failed_nodes[1].to_status()
    assert first == {"node": "a-declined", "attached": 0, "total": 8, "reason": "OverBudget",
                     "failed": [{"name": "(spec)", "attached": False, "functions": 0, "error": "over budget"}]}
    assert [f["name"] for f in second["failed"]] == ["p0", "p1", "p2", "p3", "p4"]
    assert {len(f["error"]) for f in second["failed"]} == {300} and "reason" not in second


def test_long_messages_are_cut():
    s = summarize({"a": failed(error="x" * 1000)}, {"a"}, 1, total=2, generation=3)
    assert len(s.message) == 300 and s.degraded.message.startswith("1 node(s) with failed probes; a: dns: xxx")


def test_set_condition_keeps_transition_time_while_the_state_stays():
    first = set_condition([], "Ready", Verdict("False", "AgentsNotReady", "waiting"), 1, at="t1")
    assert first == [{"type": "Ready", "status": "False", "reason": "AgentsNotReady", "message": "waiting",
                      "observedGeneration": 1, "lastTransitionTime": "t1"}]
    same = set_condition(first, "Ready", Verdict("False", "AgentsNotReady", "still"), 2, at="t2")
    assert same[0]["lastTransitionTime"] == "t1" and same[0]["message"] == "still"
    flipped = set_condition(same, "Ready", Verdict("True", "AgentsReady"), 2, at="t3")
    assert flipped[0]["lastTransitionTime"] == "t3"


def test_conditions_are_ordered_valid_ready_degraded():
    conditions = []
    for ctype in ("Degraded", "Custom", "Ready", "Valid"):
        conditions = set_condition(conditions, ctype, Verdict("True", "R"), 1, at="t")
    assert [c["type"] for c in conditions] == ["Valid", "Ready", "Degraded", "Custom"]


def pod(name="agent-x", scheduled=True, waiting=None, restarts=0, message=""):
    status = {"conditions": [] if scheduled else [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]}
    if waiting:
        status["containerStatuses"] = [{"name": "agent", "restartCount": restarts,
                                        "state": {"waiting": {"reason": waiting, "message": message}}}]
    return {"metadata": {"name": name}, "status": status}


@pytest.mark.parametrize("pods,desired,expected", [
    ([pod()], 1, None),
    ([], 2, ("AgentPodsNotCreated", "the DaemonSet created 0 of 2 agent pod(s) (see its events)")),
    ([pod(scheduled=False, message="0/3 nodes are available: 3 Insufficient memory.")], 1,
     ("AgentsNotScheduled", "agent-x: 0/3 nodes are available: 3 Insufficient memory.")),
    ([pod(waiting="ImagePullBackOff", message='Back-off pulling image "reg/probeset:9"')], 1,
     ("ImagePullFailed", 'agent-x: ImagePullBackOff: Back-off pulling image "reg/probeset:9"')),
    ([pod("a", waiting="CrashLoopBackOff", restarts=4), pod("b", waiting="CrashLoopBackOff", restarts=2)], 2,
     ("AgentsCrashLooping", "a: CrashLoopBackOff (restarts: 4) (and 1 more)")),
    ([pod("a", waiting="CrashLoopBackOff"), pod("b", waiting="ErrImagePull")], 3,       # pulls first
     ("ImagePullFailed", "b: ErrImagePull")),
    ([pod(waiting="CreateContainerConfigError", message='secret "agent-tls" not found')], 1,
     ("AgentsNotStarting", 'agent-x: CreateContainerConfigError: secret "agent-tls" not found')),
])
def test_why_agents_do_not_run(pods, desired, expected):
    problem = pod_problem(pods, desired)
    assert (problem and (problem.reason, problem.message)) == (expected or None)


def test_a_pod_problem_explains_readiness_unless_probes_failed():
    problem = pod_problem([pod(waiting="ImagePullBackOff")], 2)
    s = summarize({}, set(), 2, total=2, generation=3, problem=problem)
    assert (s.ready.status, s.ready.reason, s.message) == ("False", "ImagePullFailed", "agent-x: ImagePullBackOff")
    s = summarize({"a": failed()}, {"a"}, 2, total=2, generation=3, problem=problem)
    assert s.ready.reason == "AgentsNotReady" and s.degraded.reason == "ProbesFailed"


def refused(reason, error, generation=3):
    return NodeReport(generation=generation, attached=0, total=2, reason=reason,
                      failed=(ProbeResult(name="dns", attached=False, error=error),))


OVER = "over this node's budget of 20 ProbeSets (oldest first): 20 older sets run here"


@pytest.mark.parametrize("name,reports,scheduled,expected", [
    # (name, reports, scheduled (desired 2), expected: ready, degraded, message, summary)
    ("over budget on one node", {"a": ok(), "b": refused("OverBudget", OVER)}, {"a", "b"},
     (("False", "OverBudget"), ("True", "OverBudget"), f"node b: {OVER}", "1/2")),
    ("the agent refuses the spec", {"a": refused("InvalidSpec", "spec.scope: Node is allowed only ..."), "b": ok()},
     {"a", "b"},
     (("False", "AgentRejectedSpec"), ("True", "AgentRejectedSpec"), "node a: spec.scope: Node is allowed only ...",
      "1/2")),
    ("several nodes: the first by name, and how many more",
     {"b": refused("OverBudget", OVER), "a": refused("OverBudget", "x")}, {"a", "b"},
     (("False", "OverBudget"), ("True", "OverBudget"), "node a: x (and 1 more node(s))", "0/2")),
    ("a report of an older generation does not count", {"a": ok(), "b": refused("OverBudget", OVER, generation=2)},
     {"a", "b"},
     (("False", "AgentsNotReady"), ("False", "Pending"), "waiting for agents: 1/2 nodes report every probe attached",
      "1/2")),
    ("nor one of a node without an agent", {"a": ok(), "b": ok(), "c": refused("OverBudget", OVER)}, {"a", "b"},
     (("True", "AgentsReady"), ("False", "AllProbesAttached"), "", "2/2")),
    ("failed probes elsewhere: Degraded says those, Ready the refusal",
     {"a": failed(), "b": refused("OverBudget", OVER)}, {"a", "b"},
     (("False", "OverBudget"), ("True", "ProbesFailed"), "1 node(s) with failed probes; a: dns: no symbol", "0/2")),
])
def test_a_node_that_does_not_run_the_set(name, reports, scheduled, expected):
    s = summarize(reports, scheduled, 2, total=2, generation=3)
    assert ((s.ready.status, s.ready.reason), (s.degraded.status, s.degraded.reason), s.message,
            s.nodes.summary) == expected
    assert s.nodes.failing == sum(1 for n, r in reports.items() if n in scheduled and r.failed and not r.reason
                                  and r.generation == 3)


def test_a_refusal_explains_readiness_before_a_pod_problem():
    s = summarize({"a": refused("OverBudget", OVER)}, {"a"}, 2, total=2, generation=3,
                  problem=Verdict("False", "AgentsNotScheduled", "b-pod: 0/3 nodes are available"))
    assert (s.ready.reason, s.message) == ("OverBudget", f"node a: {OVER}")


def test_declined_without_a_message_says_the_reason():
    assert declined({"n": NodeReport(generation=1, attached=0, total=1, reason="OverBudget")}) == \
        Verdict("False", "OverBudget", "node n: OverBudget")
    assert declined({"n": ok()}) is None


def test_a_report_counts_only_while_its_nodes_agent_lives():
    """The agent that wrote the report was replaced by a pod that cannot start: its report,
    current as it is, says nothing of now; the pod's problem does."""
    problem = pod_problem([pod(waiting="ErrImagePull")], 1)
    s = summarize({"a": ok()}, {"a"}, 1, total=2, generation=3, problem=problem, live=set())
    assert (s.ready.status, s.ready.reason, s.nodes.ready) == ("False", "ImagePullFailed", 0)
    s = summarize({"a": ok()}, {"a"}, 1, total=2, generation=3, live={"a"})
    assert (s.ready.status, s.nodes.ready) == ("True", 1)


@pytest.mark.parametrize("phase, ready, deleting, live", [
    ("Running", True, False, True),
    ("Running", False, False, False),
    ("Running", True, True, False),           # being replaced
    ("Pending", False, False, False),
])
def test_is_live(phase, ready, deleting, live):
    p = {"metadata": {"name": "agent-x", **({"deletionTimestamp": "2026-12-02T00:00:00Z"} if deleting else {})},
         "status": {"phase": phase, "containerStatuses": [{"name": "agent", "ready": ready}]}}
    assert is_live(p) is live
