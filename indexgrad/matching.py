"""What the torch backend's patterns over a plan's steps share: who writes and reads each name,
and the steps with every match put in."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .plan import Step

# a match at step k: the steps made (by the position each goes to), and the positions taken
Match = tuple[dict[int, "Step"], set[int]]


def uses(steps: list[Step]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Per name, the positions of the steps that write it and of those that read it."""
    writers: dict[str, list[int]] = {}
    readers: dict[str, list[int]] = {}
    for k, s in enumerate(steps):
        writers.setdefault(s.out, []).append(k)
        for o in s.inputs:
            readers.setdefault(o.name, []).append(k)
    return writers, readers


def matched(steps: list[Step], match: Callable[[int], Match | None]) -> list[Step]:
    """The steps with what `match` makes from each step, tried in order, put in; a step taken by an
    earlier match is not tried."""
    made: dict[int, Step] = {}
    gone: set[int] = set()
    for k in range(len(steps)):
        found = None if k in gone else match(k)
        if found is not None:
            made.update(found[0])
            gone |= found[1]
    return [made.get(k, s) for k, s in enumerate(steps) if k not in gone or k in made]


def plain_product(s: Step) -> bool:
    """Whether a broadcast product multiplies its operands as they lie: nothing moved, summed or scaled."""
    a = s.args
    moved = ("a_sum", "b_sum", "a_perm", "b_perm", "a_shape", "b_shape", "res_shape", "res_perm")
    return s.call == "multiply" and a["coef"] == 1 and a["kept"] == s.axes and not any(a[m] for m in moved)
