"""`exp(a - logsumexp[u](a))` found among a plan's steps and made one softmax step reading a.

The torch backend runs it in one sweep of exp (torch's exp is slow on the large negative entries
an attention mask puts in `a - logsumexp(a)`). The logsumexp and the difference stay as steps of
their own while anything else reads them, or the program returns them; the softmax step then
reads the logsumexp rather than finding a's maximum and sum again.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .plan import Step


def softmaxes(steps: list[Step], keep: set[str]) -> list[Step]:
    """The steps with each logsumexp, subtract, exp in a row that is a softmax made one step."""
    reads: dict[str, int] = {}
    for s in steps:
        for o in s.inputs:
            reads[o.name] = reads.get(o.name, 0) + 1
    out: list[Step] = []
    k = 0
    while k < len(steps):
        made = _softmax(steps[k : k + 3], reads, keep) if k + 3 <= len(steps) else None
        if made is None:
            out.append(steps[k])
            k += 1
        else:
            out += made
            k += 3
    return out


def _softmax(three: list[Step], reads: dict[str, int], keep: set[str]) -> list[Step] | None:
    lse, sub, exp = three
    if lse.kind != "reduce" or lse.call != "logsumexp" or len(lse.args["over"]) != 1:
        return None
    if sub.call != "subtract" or exp.kind != "elementwise" or exp.call != "exp":
        return None
    (a,), (x, m), (e,) = lse.inputs, sub.inputs, exp.inputs
    if (a.name, m.name, e.name) != (x.name, lse.out, sub.out) or not e.axes == x.axes == sub.axes:
        return None
    if exp.dtype not in ("float32", "float64") or any(s.accumulate for s in three):
        return None
    if any(o.power != 1 or o.dtype != exp.dtype for o in (a, x, m, e)):
        return None
    # logsumexp's axes, as subtract names them, are a's axes but the one summed, at the same places
    u = a.axes.index(lse.args["over"][0])
    if [a.axes.index(n) for n in lse.axes] != [x.axes.index(n) if n in x.axes else -1 for n in m.axes]:
        return None
    if len(x.axes) != len(a.axes) or x.axes[u] in m.axes:
        return None
    difference = sub.out in keep or reads[sub.out] > 1
    total = difference or lse.out in keep or reads[lse.out] > 1
    # a logsumexp made anyway is read, exp(a - logsumexp(a)) in one sweep; else a's maximum and sum
    made = replace(
        exp, kind="softmax", call="softmax", inputs=(x, m) if total else (x,), args={"over": (x.axes[u],)}
    )
    return [lse] * total + [sub] * difference + [made]


def describe(s: Step) -> str:
    if len(s.inputs) == 2:
        return f"exp({s.inputs[0]} - {s.inputs[1]})"
    return f"softmax({s.inputs[0]}, over {s.args['over'][0]})"
