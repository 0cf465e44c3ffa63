"""A product whose one reader adds terms to it (`y = x W + B`), found among a plan's steps and made one step.

The torch backend runs such a step as one call that adds as it multiplies: addmm or baddbmm
(a bias, a residual, an attention mask; the product's coefficient as their alpha), addcmul for
a broadcast product (`n = c G / s + S`). The product must be read by the sum alone and not kept,
laid out by the sum's axes, and every term of the sum must be added whole (coefficient 1, no
constant); the step is made where the sum stood.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from .matching import uses

if TYPE_CHECKING:
    from .plan import Step

_LAYOUTS = ("a_im2col", "b_im2col", "a_flip", "b_flip", "sum_batch")  # the numpy backend's


def products_plus(steps: list[Step], keep: set[str]) -> list[Step]:
    """The steps with each product and the sum adding terms to it made one `product_add` step,
    where the sum stood (no step between them writes what the product reads)."""
    reader = uses(steps)[1]
    out: list[Step | None] = list(steps)
    for k, p in enumerate(steps):
        readers = reader.get(p.out, [])
        if len(readers) != 1 or readers[0] <= k:
            continue
        j = readers[0]
        if out[j] is not steps[j]:  # the sum took another product already
            continue
        read = {o.name for o in p.inputs}
        if any(steps[i].out in read for i in range(k + 1, j)):
            continue
        made = _plus(p, steps[j], keep)
        if made is not None:
            out[k], out[j] = None, made
    return [s for s in out if s is not None]


def _plus(p: Step, t: Step, keep: set[str]) -> Step | None:
    if p.kind != "contract" or p.call not in ("matmul", "multiply") or len(p.inputs) != 2:
        return None
    if t.kind != "terms" or p.accumulate or t.accumulate or p.out in keep:
        return None
    a = p.args
    if a["kept"] != p.axes or a["res_perm"] is not None or any(a.get(k) for k in _LAYOUTS):
        return None
    if any(c != 1 for c in t.args["coefs"]) or t.args["constant"] or len(t.inputs) < 2:
        return None
    mine = [o for o in t.inputs if o.name == p.out]
    terms = tuple(o for o in t.inputs if o.name != p.out)
    if len(mine) != 1 or mine[0].axes != t.axes or mine[0].power != 1 or p.axes != t.axes:
        return None
    dtypes = {o.dtype for o in (*p.inputs, *terms)} | {p.dtype}
    if dtypes != {t.dtype} or t.dtype not in ("float32", "float64"):
        return None
    if p.call == "multiply" and a["res_shape"] is not None:
        return None
    return replace(
        t, kind="product_add", call=p.call, inputs=(*p.inputs, *terms), args={**a, "terms": len(terms)}
    )


def describe(s: Step, product: str) -> str:
    """`product` (the product as its own step would print) plus the terms."""
    return " + ".join([product, *map(str, s.inputs[2:])])
