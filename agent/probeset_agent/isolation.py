"""Which probes break a program's compile: found by halves, not one compile per probe. Pure: the
compile is a function passed in.

Clang costs ~0.16 s per compile whatever the program's size (docs/benchmarks.md 7), so a set of
32 probes with one bad probe cost 34 compiles (7 s) when each probe was compiled alone. Here a
group that fails is split in two: a half that compiles is good as a whole; when the first half
compiles, the second is the one that fails and is split without being compiled whole. One bad
probe among N costs about 1.5 log2(N) compiles here (32 probes: 6 to 10; the old way 32), plus the
caller's compiles of the whole and of the rest; when every probe is bad on its own, 2N - 2 smaller
ones. Each bad probe is compiled alone once, so its reason is its own error.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
# A compile of these items together: None when it compiles, else the error text.
Compile = Callable[[Sequence[T]], "str | None"]


def failing(items: Sequence[T], compile_: Compile) -> list[tuple[T, str]]:
    """The items that do not compile alone, each with its error, in order, given that `items`
    together do not compile. Items that compile alone but not together (an interaction) are not found here:
    the caller's compile of the rest says so."""
    if not items:
        return []
    if len(items) == 1:
        error = compile_(items)
        return [] if error is None else [(items[0], error)]
    mid = len(items) // 2
    left, right = items[:mid], items[mid:]
    error = compile_(left)
    if error is None:
        return failing(right, compile_)            # the failure is in the second half
    bad = [(left[0], error)] if len(left) == 1 else failing(left, compile_)
    error = compile_(right)
    if error is not None:
        bad += [(right[0], error)] if len(right) == 1 else failing(right, compile_)
    return bad
