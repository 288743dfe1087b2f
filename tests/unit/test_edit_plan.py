"""What an edit of a running ProbeSet does to its probes (running.plan_edit): pure."""

import pytest

from probeset_agent.running import plan_edit
from probeset_api.spec import parse_probeset

WORK = {"name": "work", "uprobe": "/bin/t:work"}
ALPHA = {"name": "alpha", "uprobe": "/bin/t:alpha"}


def pset(probes, **spec):
    return parse_probeset({"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet",
                           "metadata": {"name": "s", "namespace": "web"}, "spec": {"probes": probes, **spec}})


@pytest.mark.parametrize("before, after, keep, start, stop, whole", [
    ([WORK], [WORK], ["work"], [], [], False),
    ([WORK], [WORK, ALPHA], ["work"], ["alpha"], [], False),
    ([WORK], [ALPHA, WORK], ["work"], ["alpha"], [], False),              # a move is not a change
    ([WORK, ALPHA], [WORK], ["work"], [], ["alpha"], False),
    ([WORK], [{**WORK, "latency": True}], [], ["work"], ["work"], False),  # changed: new version, then old goes
    ([WORK], [{**WORK, "uprobe": "/bin/t:beta"}], [], ["work"], ["work"], False),
    ([WORK], [{**WORK, "name": "w2"}], [], ["w2"], ["work"], False),      # a rename is a new probe
])
def test_probe_edits(before, after, keep, start, stop, whole):
    edit = plan_edit(pset(before), pset(after))
    assert (list(edit.keep), list(edit.start), list(edit.stop), edit.whole) == (keep, start, stop, whole)


@pytest.mark.parametrize("spec", [{"labels": ["node", "comm"]}, {"maxSeriesPerProbe": 7},
                                  {"podSelector": {"matchLabels": {"app": "x"}}}])
def test_a_change_every_probe_depends_on_starts_them_all_afresh(spec):
    edit = plan_edit(pset([WORK, ALPHA]), pset([WORK, ALPHA], **spec))
    assert edit.whole and edit.keep == () and set(edit.start) == set(edit.stop) == {"work", "alpha"}


def test_where_it_runs_is_not_how():
    edit = plan_edit(pset([WORK]), pset([WORK], nodeSelector={"disk": "ssd"}))
    assert edit.nothing and edit.keep == ("work",)
