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
    # found by fuzzing: these raised past DocumentError, and the CLI stopped with a traceback
    ("a: \x01\n", "not valid YAML: unacceptable character #x0001"),
    ("a: 2001-13-45\n", "not valid YAML: month must be in 1..12"),
    ("a: !!int abc\n", "not valid YAML: invalid literal for int"),
    ("a: " + "9" * 4301 + "\n", "not valid YAML: Exceeds the limit .4300 digits."),
    # a megabyte's worth of nodes, documents or values is refused as it is read, not once it is built
    ("[" + "1," * 500_000 + "1]", "more than 100000 values in the file"),
    ("---\n" * 262_000, "more than 100000 values in the file"),
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


def test_huge_integers_are_shown_by_their_size():
    """YAML reads hex and binary literals of any length; repr() refuses integers past 4,300
    digits, and an error message must still say which field and why."""
    huge = int("f" * 4000, 16)
    assert show(huge) == "<an integer of 16000 bits>" and show([huge]) == "[<an integer of 16000 bits>]"
    pset = parse_probeset({"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet", "metadata": {"name": "n"},
                           "spec": {"probes": [
                               {"name": "a", "tracepoint": "sched:sched_switch", "pid": huge},
                               {"name": "b", "uprobe": "/bin/true:main",
                                "filter": {"field": "arg0", "op": "==", "value": huge}}]}})
    reasons = [r.reason for r in pset.rejected]
    assert reasons[0] == "spec.probes[0].pid: <an integer of 16000 bits> is above the maximum 4194304", reasons
    assert reasons[1].startswith("spec.probes[1].filter.value: <an integer of 16000 bits> is out of range for u64")


def test_one_bad_file_does_not_stop_the_others(tmp_path):
    bad, good = tmp_path / "bad.yaml", tmp_path / "good.yaml"
    bad.write_text("a: 2001-13-45\n")
    good.write_text("apiVersion: probeset.io/v1alpha1\nkind: ProbeSet\nmetadata: {name: good}\n"
                    "spec:\n  probes: [{name: x, tracepoint: 'sched:sched_switch'}]\n")
    sets, problems = _load_sets([str(bad), str(good)])
    assert [pset.name for _, pset in sets] == ["good"]
    assert len(problems) == 1 and problems[0].endswith("bad.yaml: not valid YAML: month must be in 1..12")
