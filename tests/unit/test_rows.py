"""maps.Rows: a map's entries as two buffers (what read_rows returns and the readout decodes in
bulk), built from (key, value) pairs as the array shapes and the tests give them. Pure."""

import pytest

from probeset_agent.maps import Rows

PAIRS = [(b"k1______", b"v1"), (b"k2______", b"v2"), (b"k3______", b"v3")]


@pytest.mark.parametrize("pairs", [PAIRS, PAIRS[:1], []])
def test_rows_round_trip_their_pairs(pairs):
    rows = Rows.of(iter(pairs))
    assert (len(rows), list(rows), rows.key_list()) == (len(pairs), pairs, [k for k, _ in pairs])
    assert rows.key_list(2) == [k[:2] for k, _ in pairs]
    assert Rows.of(rows) is rows


def test_rows_are_the_buffers_back_to_back():
    rows = Rows.of(PAIRS)
    assert (rows.keys, rows.key_size, rows.values, rows.value_size) == (
        b"k1______k2______k3______", 8, b"v1v2v3", 2)
