"""Products that are 1-, 2- or 3-D correlations, found among a plan's steps and made one `conv` step each.

A correlation has three tensors: x, read through index arithmetic (`x[b,ch,s*r+d*u+c,...]`,
through `pad` or not), a kernel w[o,ch,u,...] and an output y[b,o,r,...]. Any one of them may be
the step's result: y is the forward (conv), w the kernel's gradient (conv_weight), x the input's
gradient, a scatter-add (conv_transpose). The plan's product and strided view (or the product and
the scatter-add it feeds) become one step whose arguments say each tensor's axes in the library's
order (batch, channels, space), the stride and dilation, and how far x is padded (or cropped) on
each side; the torch backend runs it with torch's convolutions.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .plan import Operand, Step

CALLS = {"y": "conv{}d", "w": "conv{}d_weight", "x": "conv_transpose{}d"}


def correlations(steps: list[Step]) -> list[Step]:
    """The steps with each product that is a correlation made one `conv` step."""
    out = list(steps)
    views: dict[str, Step] = {}  # the last strided view of each name
    k = 0
    while k < len(out):
        s = out[k]
        if s.kind == "view":
            views[s.out] = s
        if s.kind != "contract" or len(s.inputs) != 2 or s.args.get("kept") != s.axes:
            k += 1
            continue
        read = [views[o.name] for o in s.inputs if o.name in views]
        nxt = out[k + 1] if k + 1 < len(out) else None
        j = next((j for j in range(k - 1, -1, -1) if out[j] is read[0]), -1) if len(read) == 1 else -1
        if j >= 0 and _reads(out, j) == 1:
            made = _read_through(s, read[0])
            if made is not None:
                out[k] = made
                del out[j], views[read[0].out]
                continue
        elif not read and nxt is not None and nxt.kind == "scatter" and _reads(out, k) == 1:
            made = _scatter_of(s, nxt)
            if made is not None:
                out[k : k + 2] = [made]
        k += 1
    return out


def _reads(steps: list[Step], k: int) -> int:
    """How many times later steps read the value steps[k] makes, up to where its name is made
    anew (a derived program makes the same strided view, or a scatter's value, once per use)."""
    name, count = steps[k].out, 0
    for s in steps[k + 1 :]:
        count += sum(o.name == name for o in s.inputs)
        if s.out == name and not s.accumulate:
            break
    return count


def _read_through(s: Step, view: Step) -> Step | None:
    """s reads `view`, a strided view of x: the forward (s makes y) or the kernel's gradient (w)."""
    v = next(o for o in s.inputs if o.name == view.out)
    other = next(o for o in s.inputs if o is not v)
    x = view.inputs[0]
    if v.power != 1 or other.power != 1 or not _same_dtype(s, x, other):
        return None
    args = _roles(view.args["positions"], x, other.axes, s.axes, _sizes(s))
    if args is None:
        return None
    roles = args["inputs"] = ("x", args.pop("first"))
    result = "y" if roles[1] == "w" else "w"
    return _step(s, (x, other), args, result, view.out)


def _scatter_of(s: Step, scatter: Step) -> Step | None:
    """s makes the value a scatter-add adds into x through index arithmetic: x's gradient."""
    if len(scatter.inputs) != 1 or s.accumulate:
        return None
    a, b = s.inputs
    x = replace(scatter.inputs[0], axes=scatter.axes, shape=scatter.shape, dtype=scatter.dtype)
    if a.power != 1 or b.power != 1 or not _same_dtype(s, a, b, x):
        return None
    args = _roles(scatter.args["positions"], x, a.axes, b.axes, _sizes(s))
    if args is None:
        return None
    first = args.pop("first")
    args["inputs"] = (first, "y" if first == "w" else "w")
    made = _step(s, (a, b), args, "x", s.out)
    return replace(made, out=scatter.out, axes=scatter.axes, shape=scatter.shape,
                   accumulate=scatter.accumulate, release=())  # fmt: skip


def _same_dtype(s: Step, *ops: Operand) -> bool:
    return s.dtype in ("float32", "float64") and all(o.dtype == s.dtype for o in ops)


def _sizes(s: Step) -> dict[str, int]:
    size = dict(zip(s.axes, s.shape))
    for o in s.inputs:
        size.update(zip(o.axes, o.shape))
    return size


def _step(s: Step, inputs: tuple[Operand, Operand], args: dict[str, Any], result: str, x_text: str) -> Step:
    call = CALLS[result].format(len(args["space"]))
    args |= {"coef": s.args["coef"], "result": result, "x_text": x_text}
    return replace(s, kind="conv", call=call, inputs=inputs, args=args)


def _roles(
    positions: tuple[Any, ...], x: Operand, a: tuple[str, ...], b: tuple[str, ...], size: dict[str, int]
) -> dict[str, Any] | None:
    """The correlation that x's positions and two tensors' axes (a and b: the kernel and the output,
    in either order) make, or None. Returns per tensor its axes in the library's order (None where
    it has no such axis: one image, one channel), per axis of space (stride, dilation, padding of
    x before, after), and `first`: "w" when a is the kernel, else "y"."""
    plain: list[tuple[str, str]] = []  # (x's axis, the name it holds)
    space: list[tuple[str, tuple[tuple[int, str], ...], int]] = []  # (x's axis, terms, constant)
    for axis, p in zip(x.axes, positions):
        moded = p[0] == "at" and p[3] == "pad" and not p[4]
        if p[0] != "affine" and not moded:
            return None
        terms = tuple((int(c), str(n)) for c, n in p[2])
        if len(terms) == 1 and terms[0][0] == 1 and p[1] == 0 and not moded:
            plain.append((axis, terms[0][1]))
        elif len(terms) == 2 and all(c > 0 for c, _ in terms) and terms[0][1] != terms[1][1]:
            space.append((axis, terms, int(p[1])))
        else:
            return None
    if not 1 <= len(space) <= 3 or len(set(a)) != len(a) or len(set(b)) != len(b):
        return None
    # which tensor is the kernel: the one its names in x's sums are in; when either may be (the
    # kernel's gradient is a correlation of x with y, the input's of y with w), the smaller kernel
    found = [(f, first) for first, w, y in (("w", set(a), set(b)), ("y", set(b), set(a)))
             if (f := _assigned(plain, space, w, y, x, size)) is not None]  # fmt: skip
    if not found:
        return None
    best, first = min(found, key=lambda f: math.prod(size[k] for k in f[0]["kernel"]))
    n, c, o = best["n"], best["c"], best["o"]
    return {
        "first": first,
        "x_order": best["x_order"],
        "w_order": (o, c, *best["kernel"]),
        "y_order": (n, o, *best["output"]),
        "space": best["space"],
    }


def _assigned(
    plain: list[tuple[str, str]],
    space: list[tuple[str, tuple[tuple[int, str], ...], int]],
    w: set[str],
    y: set[str],
    x: Operand,
    size: dict[str, int],
) -> dict[str, Any] | None:
    """The correlation with w the kernel and y the output, or None."""
    n = [name for _, name in plain if name in y and name not in w]
    c = [name for _, name in plain if name in w and name not in y]
    if len(n) > 1 or len(c) > 1 or len(n) + len(c) != len(plain):
        return None
    kernel, output, settings = [], [], []
    extent = dict(zip(x.axes, x.shape))
    for axis, ((c1, n1), (c2, n2)), const in space:
        if n1 in w and n1 not in y and n2 in y and n2 not in w:
            (d, k), (s, p) = (c1, n1), (c2, n2)
        elif n2 in w and n2 not in y and n1 in y and n1 not in w:
            (d, k), (s, p) = (c2, n2), (c1, n1)
        else:
            return None
        if not size[k] or not size[p]:
            return None
        reach = (size[p] - 1) * s + (size[k] - 1) * d + 1
        kernel.append(k)
        output.append(p)
        settings.append((s, d, -const, const + reach - extent[axis]))
    o = list(w - set(kernel) - set(c))
    if len(o) > 1 or o and (o[0] not in y or o[0] in n):
        return None
    if y != set(output) | set(n) | set(o):
        return None
    names = [name for _, name in plain] + kernel + output
    if len(set(names)) != len(names):
        return None
    role = {name: axis for axis, name in plain}
    x_order = (role[n[0]] if n else None, role[c[0]] if c else None, *(axis for axis, _, _ in space))
    first = lambda names: names[0] if names else None  # noqa: E731
    return {
        "x_order": x_order, "space": tuple(settings), "kernel": kernel, "output": output,
        "n": first(n), "c": first(c), "o": first(o),
    }  # fmt: skip


def describe(s: Step) -> str:
    """`conv2d(x[b,ch,2*r+u,2*c+v], w[o,ch,u,v], stride 2,2)` and its settings that are not 1 or 0."""
    a = s.args
    ops = [a["x_text"] if role == "x" else str(o) for role, o in zip(a["inputs"], s.inputs)]
    text = f"{s.call}({', '.join(ops)}"
    for k, what in ((0, "stride"), (1, "dilation")):
        if any(t[k] != 1 for t in a["space"]):
            text += f", {what} {','.join(str(t[k]) for t in a['space'])}"
    if any(t[2] or t[3] for t in a["space"]):
        text += f", pad {' '.join(f'{t[2]}:{t[3]}' for t in a['space'])}"
    text += ")" + (f" into {a['x_text']}" if a["result"] == "x" else "")
    return text + (f" * {a['coef']:g}" if a["coef"] != 1 else "")
