"""A uprobe hit's cost measured on this kernel (uprobe_cost.calibrate: perf uprobe events on code
this process calls), and the gauge that exports it beside each uprobe point's BPF run time."""

from prometheus_client.parser import text_string_to_metric_families

from probeset_agent.exposition import MetricsCollector
from probeset_agent.uprobe_cost import EMULATED, RETURN, SINGLE_STEPPED, calibrate, point_class


def test_calibration_measures_each_class():
    cost = calibrate(calls=5000, rounds=3)      # it checks that the uprobe counted every call
    assert set(cost) == {EMULATED, SINGLE_STEPPED, RETURN}
    # single-stepping is a second trap: several times the emulated hit (5x to 35x seen)
    assert 0 < cost[EMULATED] < cost[SINGLE_STEPPED] / 2 and cost[SINGLE_STEPPED] < 1e-3
    assert 0 <= cost[RETURN] < cost[SINGLE_STEPPED]


def test_calibration_in_a_thread_of_its_own():
    """The agent measures beside serving, in another thread than the main one."""
    import threading
    out = []
    worker = threading.Thread(target=lambda: out.append(calibrate(calls=5000, rounds=3)))
    worker.start()
    worker.join()
    assert set(out[0]) == {EMULATED, SINGLE_STEPPED, RETURN}


def test_each_uprobe_point_exports_its_hit_cost(target, run_probeset):
    prog = run_probeset([{"name": "work", "uprobe": f"{target.path}:probeset_target_work", "pid": target.pid,
                          "latency": True}])
    cost = {EMULATED: 4e-7, SINGLE_STEPPED: 1.5e-5, RETURN: 2e-7}
    text = MetricsCollector([prog], "testnode", hit_cost=cost).render()
    (fam,) = [f for f in text_string_to_metric_families(text) if f.name == "probeset_uprobe_hit_seconds"]
    site = prog.program.attach_points[0].site
    kind = point_class("uprobe", site.path, site.address).kind
    assert kind in (EMULATED, SINGLE_STEPPED)           # what gcc emitted first decides
    assert sorted((s.labels["via"], s.labels["class"], s.value) for s in fam.samples) == \
        sorted([("uprobe", kind, cost[kind]), ("uretprobe", RETURN, cost[RETURN])])
    assert {s.labels["probe"] for s in fam.samples} == {"work"}
    assert "probeset_uprobe_hit_seconds{" not in MetricsCollector([prog], "testnode").render()   # not measured
