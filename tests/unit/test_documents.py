"""ProbeSet files are bounded before they are believed: size, nesting, aliases, duplicate keys,
and the length of anything an error message quotes."""

import time

import pytest

from probeset_agent.commands import _load_sets
from probeset_api.validation import show
from probeset_api.spec import MAX_DOCUMENT_VALUES, DocumentError, SpecError, load_documents, parse_probeset

# 550 bytes that stand for 9^9 (387 million) strings once the aliases are expanded.
ALIAS_BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
ALIAS_BOMB = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + ALIAS_BOMB


def test_alias_bomb_is_refused_quickly():
    assert len(ALIAS_BOMB) < 600
    t = time.monotonic()
    with pytest.raises(DocumentError, match=f"more than {MAX_DOCUMENT_VALUES} values once YAML aliases are expanded"):
        load_documents(ALIAS_BOMB)
    assert time.monotonic() - t < 2


def test_a_bomb_inside_a_probeset_field_is_refused_too():
    doc = ("apiVersion: probeset.io/v1alpha1\nkind: ProbeSet\nmetadata: {name: x}\nspec:\n  probes:\n"
           "  - name: a\n    tracepoint: sched:sched_switch\n    groupBy: *i\n" + ALIAS_BOMB)
    with pytest.raises(DocumentError):
        load_documents(doc)


@pytest.mark.parametrize("text,reason", [
    ("a: 1\nb: 2\na: 3\n", 'duplicate key "a"'),
    ("spec:\n  probes:\n  - name: x\n    name: y\n", 'duplicate key "name"'),
    ("[" * 40 + "]" * 40, "nested deeper than 32 levels"),
    ("x" * ((1 << 20) + 1), "more than the 1048576 a ProbeSet file may have"),
    ("a: [1\n", "not valid YAML: while parsing a flow sequence"),
])
def test_bad_documents_get_a_reason(text, reason):
    with pytest.raises(DocumentError, match=reason.replace("[", r"\[")):
        load_documents(text)


def test_anchors_within_bounds_still_work():
    docs = load_documents("base: &b {name: a, tracepoint: 'sched:sched_switch'}\nuse: [*b, *b]\n---\nk: v\n")
    assert docs[0]["use"] == [{"name": "a", "tracepoint": "sched:sched_switch"}] * 2 and docs[1] == {"k": "v"}


def test_error_messages_quote_a_bounded_part_of_a_value():
    huge = "x" * 20_000_000
    assert len(show(huge)) <= 80 and show(huge).startswith('"xxx')
    assert len(show({"k": [list(range(10**6))]})) <= 80
    pset = parse_probeset({"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet", "metadata": {"name": "n"},
                           "spec": {"probes": [{"name": "a", "tracepoint": huge}]}})
    (rejected,) = pset.rejected
    assert rejected.reason.startswith("spec.probes[0].tracepoint: ") and len(rejected.reason) < 400
    with pytest.raises(SpecError) as e:
        parse_probeset({"apiVersion": huge, "kind": "ProbeSet", "metadata": {"name": "n"}, "spec": {"probes": []}})
    assert len(str(e.value)) < 400


def test_a_huge_path_is_not_echoed_whole(tmp_path):
    path = str(tmp_path / ("d" * 200)) + "/" + "p" * 20_000
    sets, problems = _load_sets([path])
    assert sets == [] and len(problems) == 1 and len(problems[0]) < 400
