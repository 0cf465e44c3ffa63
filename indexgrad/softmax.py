"""`exp(a - logsumexp[u](a))` found among a plan's steps and made one softmax step reading a.

The torch backend runs it in one sweep of exp (torch's exp is slow on the large negative entries
an attention mask puts in `a - logsumexp(a)`). The logsumexp and the difference stay as steps of
their own while anything else reads them, or the program returns them; the softmax step then
reads the logsumexp rather than finding a's maximum and sum again.

Its derived gradient, four steps (`c = g p`, `a.grad = c`, `l = -Σ_u c`, `a.grad += l p`), is
a.grad (+)= p g - p Σ_u p g whatever p is; the torch backend runs it as one `softmax_grad` step,
torch's `_softmax_backward_data`, where nothing else reads c or l, nor a.grad in between.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from .lower import Elementwise
from .matching import Match, matched, plain_product, uses
from .nodes import Ref, idx

if TYPE_CHECKING:
    from .plan import Operand, Step


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


def softmax_grads(steps: list[Step], keep: set[str]) -> list[Step]:
    """The steps with each softmax gradient (see above) made one `softmax_grad` step, where its
    result is first written."""
    writers, readers = uses(steps)
    return matched(steps, lambda k: _softmax_grad(steps, k, readers, writers, keep))


def _softmax_grad(
    steps: list[Step], k: int, readers: dict[str, list[int]], writers: dict[str, list[int]], keep: set[str]
) -> Match | None:
    """The softmax gradient whose product c = g p is step k: {where it goes: the step}, the steps taken."""
    c = steps[k]
    if c.kind != "contract" or c.accumulate or len(c.inputs) != 2 or not plain_product(c):
        return None
    if c.dtype not in ("float32", "float64") or c.out in keep or len(writers[c.out]) != 1:
        return None
    if any(o.axes != c.axes or o.power != 1 or o.dtype != c.dtype for o in c.inputs):
        return None
    both = readers.get(c.out, [])
    if len(both) != 2:
        return None
    first, second = both
    if steps[first].call != "copy":
        first, second = second, first
    copy, total = steps[first], steps[second]
    if copy.call != "copy" or copy.args["coef"] != 1 or copy.inputs[0].power != 1:
        return None
    if copy.inputs[0].axes != copy.axes or copy.dtype != c.dtype:
        return None
    if total.call != "ones_sum" or total.accumulate or total.args["coef"] != -1:
        return None
    if len(total.args["over"]) != 1:
        return None
    if total.out in keep or len(writers[total.out]) != 1 or len(readers.get(total.out, [])) != 1:
        return None
    u, j = total.args["over"][0], readers[total.out][0]
    if total.axes != copy.axes[:u] + copy.axes[u + 1 :] or total.inputs[0].axes != copy.axes:
        return None
    last, out = steps[j], copy.out
    # between the copy and a.grad += l p nothing else writes or reads a.grad
    if any(first < w < j for w in writers[out]) or any(first < r <= j for r in readers.get(out, [])):
        return None
    if last.out != out or last.kind != "contract" or not last.accumulate or len(last.inputs) != 2:
        return None
    if last.dtype != c.dtype:
        return None
    a = last.args
    if a["coef"] != 1 or a["kept"] != last.axes or any(a[m] for m in ("a_sum", "b_sum", "a_perm", "b_perm")):
        return None
    if a["res_shape"] or a["res_perm"] or last.call != "multiply":
        return None
    names = [o.name for o in last.inputs]
    for g, p in (c.inputs, c.inputs[::-1]):
        if sorted(names) != sorted([total.out, p.name]) or p.name == total.out:
            continue
        pl, ll = (last.inputs[names.index(n)] for n in (p.name, total.out))
        if pl.axes != last.axes or pl.power != 1 or ll.power != 1:
            continue
        if ll.axes != last.axes[:u] + last.axes[u + 1 :]:
            continue
        return {first: _made(copy, g, p, u)}, {k, first, second, j}
    return None


def _made(copy: Step, g: Operand, p: Operand, u: int) -> Step:
    """a.grad (+)= softmax_grad(g, p) over axis u, in place of the copy of g p into a.grad."""
    g, p = replace(g, axes=copy.axes), replace(p, axes=copy.axes)
    out = Ref(copy.out, tuple(map(idx, copy.axes)))
    args = tuple(Ref(o.name, tuple(map(idx, o.axes))) for o in (g, p))
    statement = Elementwise(out, "+=" if copy.accumulate else "=", "softmax_grad", args, copy.span)
    return replace(
        copy, kind="softmax_grad", call="softmax_grad", inputs=(g, p), args={"over": (copy.axes[u],)},
        statement=statement,
    )  # fmt: skip


def describe(s: Step) -> str:
    if s.kind == "softmax_grad":
        g, p = s.inputs
        return f"_softmax_backward_data({g}, {p}, over {s.args['over'][0]})"
    if len(s.inputs) == 2:
        return f"exp({s.inputs[0]} - {s.inputs[1]})"
    return f"softmax({s.inputs[0]}, over {s.args['over'][0]})"
