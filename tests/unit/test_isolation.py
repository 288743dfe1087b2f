"""Finding the probes that break a compile by halves (isolation.failing), against a fake compiler:
which probes are found, with whose error, and how many compiles it took."""

import pytest

from probeset_agent.isolation import failing


class FakeClang:
    """Compiles a group unless it holds a bad item, or every item of a bad pair (an interaction)."""

    def __init__(self, bad=(), pairs=()):
        self.bad, self.pairs = set(bad), [set(p) for p in pairs]
        self.calls: list[tuple] = []

    def __call__(self, items):
        self.calls.append(tuple(items))
        broken = sorted(set(items) & self.bad)
        if broken:
            return f"error in {broken[0]}"
        if any(p <= set(items) for p in self.pairs):
            return "error: redefinition"
        return None


@pytest.mark.parametrize("n, bad, compiles", [
    (1, [0], 1),
    (2, [0], 2),                 # [0] fails; [1] compiles
    (2, [1], 2),                 # [0] compiles, so [1] fails: compiled alone for its own error
    (3, [1], 3),                 # [0] ok -> [1, 2]: [1] fails, [2] ok
    (8, [1], 6),
    (8, [7], 4),                 # every first half compiles: one compile per level, then [7]
    (32, [1], 10),
    (32, [31], 6),
    (32, [0, 31], 15),
    (32, list(range(32)), 62),   # everything bad: every group below the whole (the old way: 32)
    (100, [37], 10),
])
def test_bad_items_are_found_with_their_own_errors(n, bad, compiles):
    clang = FakeClang(bad)
    assert failing(list(range(n)), clang) == [(i, f"error in {i}") for i in bad]
    assert len(clang.calls) == compiles
    assert all(len(call) == 1 for call in clang.calls if set(call) & set(bad) and len(set(call)) == 1)


def test_each_bad_item_is_compiled_alone_exactly_once():
    clang = FakeClang([3, 9, 10])
    failing(list(range(16)), clang)
    alone = [call for call in clang.calls if len(call) == 1 and call[0] in (3, 9, 10)]
    assert sorted(alone) == [(3,), (9,), (10,)]


def test_an_interaction_is_left_to_the_callers_compile():
    # 2 and 5 compile alone and in any half, but not together: nothing is blamed here
    clang = FakeClang(pairs=[(2, 5)])
    assert failing(list(range(8)), clang) == []
    assert clang(list(range(8))) == "error: redefinition"    # the caller's compile of the rest still fails


def test_nothing_to_isolate():
    clang = FakeClang()
    assert failing([], clang) == [] and clang.calls == []


def test_compiles_stay_logarithmic_for_one_bad_probe():
    for n in (16, 64, 256, 1000):
        worst = 0
        for b in range(n):
            clang = FakeClang([b])
            failing(list(range(n)), clang)
            worst = max(worst, len(clang.calls))
        assert worst <= 2 * n.bit_length(), (n, worst)
