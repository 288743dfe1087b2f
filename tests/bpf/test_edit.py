"""Editing a running ProbeSet (running.RunningSet): make-before-break on real uprobes. A process calls
a probed function without pause while the set is edited; the unchanged probe's count equals the
calls made, exactly; changed and removed probes are detached (the kernel's own list of this
process's BPF links says so)."""

import pytest

from probeset_agent.program import ProbeSetProgram
from probeset_agent.running import RunningSet
from probeset_api.spec import parse_probeset
from tests.support import Caller, uprobe_links


def spec(probes, generation, **fields):
    return parse_probeset({"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet",
                           "metadata": {"name": "edited", "generation": generation},
                           "spec": {"probes": probes, "labels": ["node"], **fields}})


def events(running, probe):
    snap = running.snapshot()
    return sum(s.count for p in snap.probes if p.probe == probe for s in p.series)


@pytest.fixture
def running():
    made = []

    def make(pset):
        prog = ProbeSetProgram(pset, "testnode")
        made.append(prog)
        return prog
    sets = []

    def start(pset):
        rs = RunningSet(make)
        rs.start(pset)
        sets.append(rs)
        return rs
    yield start
    for rs in sets:
        rs.stop()
    for prog in made:
        prog.stop()


def test_an_added_probe_does_not_reset_or_lose_the_unchanged_one(target, target_binary, running):
    work = {"name": "work", "uprobe": f"{target_binary}:probeset_target_work"}
    alpha = {"name": "alpha", "uprobe": f"{target_binary}:probeset_target_alpha"}
    rs = running(spec([work], 1))
    first = rs.programs[0]
    with Caller(target, "work 10", 10) as caller:
        caller.wait_for(200)            # the edit lands while calls go on
        edit = rs.update(spec([work, alpha], 2))
        caller.wait_for(caller.calls + 200)
    assert edit.keep == ("work",) and edit.start == ("alpha",)
    assert rs.programs[0] is first and len(rs.programs) == 2
    assert events(rs, "work") == caller.calls
    target.run("alpha 7")
    assert events(rs, "alpha") == 7
    assert [st.name for st in rs.probe_statuses()] == ["work", "alpha"]


def test_a_changed_probe_is_attached_again_before_the_old_version_goes(target, target_binary, running):
    work = {"name": "work", "uprobe": f"{target_binary}:probeset_target_work"}
    beta = {"name": "beta", "uprobe": f"{target_binary}:probeset_target_beta"}
    links = uprobe_links()
    rs = running(spec([work, beta], 1))
    assert uprobe_links() == links + 2
    target.run("work 5")
    target.run("beta 3")
    # beta now counts alpha's calls: a new version of it, counting from zero; work goes on.
    rs.update(spec([work, {**beta, "uprobe": f"{target_binary}:probeset_target_alpha"}], 2))
    assert uprobe_links() == links + 2          # the old beta was detached once the new one ran
    target.run("work 4")
    target.run("beta 100")                     # not probed any more
    target.run("alpha 6")
    assert events(rs, "work") == 9 and events(rs, "beta") == 6


def test_a_removed_probe_is_detached_and_a_program_left_empty_stops(target, target_binary, running):
    work = {"name": "work", "uprobe": f"{target_binary}:probeset_target_work"}
    alpha = {"name": "alpha", "uprobe": f"{target_binary}:probeset_target_alpha"}
    links = uprobe_links()
    rs = running(spec([work], 1))
    rs.update(spec([work, alpha], 2))           # alpha: its own program
    assert len(rs.programs) == 2 and uprobe_links() == links + 2
    target.run("alpha 2")
    rs.update(spec([work], 3))                  # alpha removed: its program stops
    assert len(rs.programs) == 1 and uprobe_links() == links + 1
    rs.update(spec([alpha], 4))                 # work removed from the first program, alpha new
    assert uprobe_links() == links + 1 and [st.name for st in rs.probe_statuses()] == ["alpha"]
    target.run("work 3")
    target.run("alpha 4")
    assert events(rs, "alpha") == 4 and events(rs, "work") == 0
    rs.stop()
    assert uprobe_links() == links


def test_a_set_level_change_starts_every_probe_afresh(target, target_binary, running):
    work = {"name": "work", "uprobe": f"{target_binary}:probeset_target_work"}
    rs = running(spec([work], 1))
    target.run("work 5")
    edit = rs.update(spec([work], 2, labels=["node", "comm"]))
    assert edit.whole and len(rs.programs) == 1
    target.run("work 3")
    snap = rs.snapshot()
    (series,) = [s for p in snap.probes for s in p.series if s.labels["function"] != "__overflow__"]
    assert series.count == 3 and series.labels["comm"] == "probeset_target"
