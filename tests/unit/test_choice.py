"""Which ProbeSets a node's agent runs (probeset_agent.choice): selection, admission, limits, order."""

from probeset_agent.choice import Limits, choose, selects, series_bound
from probeset_api.admission import Admission

POLICY = Admission("probeset-system", frozenset({"probeset-system"}))


def obj(name, namespace="web", created="2026-12-01T10:00:00Z", probes=1, generation=1, **spec):
    return {"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created, "uid": name,
                         "generation": generation},
            "spec": {"probes": [{"name": f"p{i}", "uprobe": "libc:malloc"} for i in range(probes)], **spec}}


def test_selects_is_node_selector_semantics():
    assert selects({}, None) and selects({}, {"a": "1"})
    assert selects({"a": "1"}, {"a": "1", "b": "2"})
    assert not selects({"a": "1"}, {"a": "2"}) and not selects({"a": "1", "b": "2"}, {"a": "1"})
    assert not selects({"a": "1"}, None)          # labels not known yet


def test_a_set_runs_where_its_node_selector_matches():
    sets = [obj("all"), obj("here", nodeSelector={"disk": "ssd"}), obj("there", nodeSelector={"disk": "hdd"})]
    choice = choose(sets, {"disk": "ssd"}, POLICY, Limits())
    assert list(choice.run) == [("web", "all"), ("web", "here")]
    assert choice.unselected == {("web", "there")} and not choice.refused


def test_an_invalid_set_is_refused_with_the_field_and_reason():
    sets = [obj("node", scope="Node"), obj("ok")]
    choice = choose(sets, {}, POLICY, Limits())
    assert list(choice.run) == [("web", "ok")]
    refusal = choice.refused[("web", "node")]
    assert refusal.reason == "InvalidSpec" and refusal.message.startswith("spec.scope: Node") and refusal.total == 1


def test_limits_keep_the_oldest_sets_whatever_order_they_come_in():
    sets = [obj("c", created="2026-12-01T12:00:00Z"), obj("a", created="2026-12-01T10:00:00Z"),
            obj("b", created="2026-12-01T11:00:00Z")]
    for order in (sets, sets[::-1]):
        choice = choose(order, {}, POLICY, Limits(max_sets=2))
        assert list(choice.run) == [("web", "a"), ("web", "b")]
        assert choice.refused[("web", "c")].reason == "OverBudget"
        assert "runs 2 ProbeSets, the most it may (--max-probesets" in choice.refused[("web", "c")].message


def test_the_probe_limit_skips_a_set_too_big_and_runs_a_smaller_newer_one():
    sets = [obj("a", probes=3, created="2026-12-01T10:00:00Z"), obj("big", probes=5, created="2026-12-01T11:00:00Z"),
            obj("small", probes=2, created="2026-12-01T12:00:00Z")]
    choice = choose(sets, {}, POLICY, Limits(max_probes=6))
    assert list(choice.run) == [("web", "a"), ("web", "small")]
    assert "its 5 probe(s) would take the agent of this node past 6 probes (it runs 3" in \
        choice.refused[("web", "big")].message


def test_series_bound_is_each_probes_worst_case():
    """maxSeriesPerProbe + 1 (overflow) series per probe; with latency each is a histogram: 27 le
    bounds with one bucket per power of two (256 ns .. 17 s; 53 with 2, 105 with 4), +Inf, _count,
    _sum, and the counter beside it."""
    lat = {"name": "l", "uprobe": "libc:getaddrinfo", "latency": True}
    cases = [
        ({"probes": [{"name": "c", "uprobe": "libc:malloc"}], "maxSeriesPerProbe": 99}, 100),
        ({"probes": [lat], "maxSeriesPerProbe": 9}, 10 * (1 + 27 + 3)),
        ({"probes": [{**lat, "bucketsPerPowerOfTwo": 4}], "maxSeriesPerProbe": 9}, 10 * (1 + 105 + 3)),
        ({"probes": [{"name": "c", "uprobe": "libc:malloc"}, lat]}, 5001 + 5001 * 31),
        # a value's sum: the events counter and the sum; its histogram: 41 bounds 1 .. 2^40
        ({"probes": [{"name": "v", "uretprobe": "libc:read", "value": "retval"}], "maxSeriesPerProbe": 9}, 10 * 2),
        ({"probes": [{"name": "v", "uretprobe": "libc:read", "value": "retval", "aggregate": "histogram"}],
          "maxSeriesPerProbe": 9}, 10 * (1 + 41 + 3)),
        # two points: a latency histogram
        ({"probes": [{"name": "s", "start": {"tracepoint": "sched:sched_wakeup", "key": ["pid"]},
                      "end": {"tracepoint": "sched:sched_switch", "key": ["next_pid"]}}], "maxSeriesPerProbe": 9},
         10 * (1 + 27 + 3)),
    ]
    for spec, want in cases:
        assert series_bound(POLICY.admit({**obj("s"), "spec": spec})) == want, spec


def test_the_series_limit_refuses_a_set_that_could_export_too_many():
    sets = [obj("a", created="2026-12-01T10:00:00Z", maxSeriesPerProbe=999),
            obj("wide", created="2026-12-01T11:00:00Z", maxSeriesPerProbe=5000),
            obj("narrow", created="2026-12-01T12:00:00Z", maxSeriesPerProbe=100)]
    choice = choose(sets, {}, POLICY, Limits(max_series=2000))
    assert list(choice.run) == [("web", "a"), ("web", "narrow")]
    assert "it may export up to 5001 series" in choice.refused[("web", "wide")].message
    assert "past 2000 series (its sets take 1000; --max-series, Helm agent.maxSeries)" in \
        choice.refused[("web", "wide")].message
    assert list(choose(sets, {}, POLICY, Limits()).run) == [("web", "a"), ("web", "wide"), ("web", "narrow")]


def test_same_age_is_ordered_by_namespace_and_name():
    sets = [obj("b", "x"), obj("a", "y"), obj("a", "x")]
    assert list(choose(sets, {}, POLICY, Limits(max_sets=2)).run) == [("x", "a"), ("x", "b")]


def test_unselected_and_refused_sets_use_no_budget():
    sets = [obj("invalid", scope="Node", created="2026-12-01T09:00:00Z"),
            obj("elsewhere", nodeSelector={"x": "y"}, created="2026-12-01T09:30:00Z"), obj("ok")]
    assert list(choose(sets, {}, POLICY, Limits(max_sets=1)).run) == [("web", "ok")]
