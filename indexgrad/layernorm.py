"""Layer norm's gradients found among a backward plan's steps and made `layer_norm` steps.

The forward (as examples/transformer.idx writes it, lowered):

    m[b,t] = mean[j](x[b,t,j]);  c[b,t,d] = x[b,t,d] - m[b,t];  p[b,t,d] = c[b,t,d] G[d]
    y[b,t,d] = p[b,t,d] / s[b,t] ...   (s = sqrt(mean[j](c[b,t,j]^2) + eps) as written)

Its derived backward takes eight steps from y's product's gradient g to x.grad:
`s.grad = -Σ g p / s²`, `c.grad = (g / s) G`, the square root's and the mean's gradients,
`c.grad += 2 mean.grad c / size`, `x.grad += c.grad`, `m.grad = -Σ c.grad`, `x.grad += m.grad / size`.
Given what the forward says of the values they read (p is c G; c is x less its mean over the last
axis), those eight compute  x.grad += (g G - mean(g G) - ĉ mean(g G ĉ)) / s  with ĉ = c / s, which is
torch's `native_layer_norm_backward` of g at the input c, mean 0 and 1/s (any s: the steps read it,
they do not make it). Nothing is made one step unless every step reading or writing the chain's
gradients is one of the eight (a layer norm whose intermediates are read elsewhere keeps its plain
steps), and the forward says both facts. Where p.grad = g / s is read by nothing else but
G.grad = Σ p.grad c (or by nothing else at all), those two become the kernel's weight gradient
(or go); the shift's gradient stays a step of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from .lower import Contract, Elementwise, Prim, Reduction, Terms
from .matching import Match, matched, uses
from .nodes import Ref, idx, plain_names

if TYPE_CHECKING:
    from .plan import Operand, Step


def layer_norm_grads(steps: list[Step], forward: Sequence[Prim]) -> list[Step]:
    """The steps with each layer norm's input gradient (see above) made one step, where the first
    of its steps stood, and its weight's where that one stood; `forward`: the primitives that made
    the forward values read."""
    if not forward:
        return steps
    defs: dict[str, list[Prim]] = {}
    for p in forward:
        defs.setdefault(p.out.name, []).append(p)
    writers, readers = uses(steps)
    return matched(steps, _Chain(steps, defs, writers, readers).match)


class _Chain:
    """The steps of one layer norm's gradients, matched from the one that makes s.grad."""

    def __init__(
        self, steps: list[Step], defs: dict[str, list[Prim]], writers: dict[str, list[int]],
        readers: dict[str, list[int]],
    ) -> None:  # fmt: skip
        self.steps, self.defs, self.writers, self.readers = steps, defs, writers, readers

    def _next(self, k: int) -> int | None:
        """The one step reading step k's result, when step k alone writes it."""
        out = self.steps[k].out
        readers = self.readers.get(out, [])
        return readers[0] if self.writers.get(out) == [k] and len(readers) == 1 else None

    def _reading(self, name: str, coef: float, *operands: tuple[str, float]) -> int | None:
        """The first step reading name that is `_is(step, coef, *operands)`."""
        return next((j for j in self.readers.get(name, []) if _is(self.steps[j], coef, *operands)), None)

    def match(self, k: int) -> Match | None:
        """The steps made, by where each goes, and the indices of the steps they stand for; or None."""
        a = self.steps[k]
        # s.grad[b,t] = -Σ_d g[b,t,d] p[b,t,d] / s[b,t]^2
        rows = [o for o in a.inputs if o.power == -2]
        full = [o for o in a.inputs if o.power == 1]
        if not _product(a, -1.0, 3) or a.args["kept"] != a.axes or len(rows) != 1 or len(full) != 2:
            return None
        s = rows[0]
        if s.axes != a.axes or full[0].name == full[1].name or full[0].shape != full[1].shape:
            return None
        if any(o.axes[:-1] != a.axes or len(o.axes) != len(a.axes) + 1 for o in full):
            return None
        for g, p in (full, full[::-1]):
            found = self._rest(k, g, p, s)
            if found is not None:
                return found
        return None

    def _rest(self, k: int, g: Operand, p: Operand, s: Operand) -> Match | None:
        steps, d = self.steps, g.shape[-1]
        # p.grad = g / s, p's only gradient; c.grad = p.grad G
        kd = self._reading(g.name, 1.0, (g.name, 1), (s.name, -1))
        if kd is None or self.writers[steps[kd].out] != [kd] or not _rowwise(steps[kd], g.name, s.name):
            return None
        pg = steps[kd].out
        read = self.readers.get(pg, [])  # none when p.grad is what backward returns
        gains = [o for j in read for o in steps[j].inputs if o.name != pg and len(o.axes) == 1]
        ke = next((j for o in gains if (j := self._reading(pg, 1.0, (pg, 1), (o.name, 1))) is not None), None)
        if ke is None:
            return None
        e = steps[ke]
        pgo, gain = sorted(e.inputs, key=lambda o: o.name != pg)
        if e.accumulate or e.axes != pgo.axes or gain.axes != e.axes[-1:] or e.args["kept"] != e.axes:
            return None
        # the square root's and the mean's gradients: sum.grad = 0.5 s.grad / s, mean.grad = sum.grad
        kg = self._next(k)
        if kg is None or not _is(steps[kg], 0.5, (steps[k].out, 1), (s.name, -1)):
            return None
        kh = self._next(kg)
        if kh is None or not _is(steps[kh], 1.0, (steps[kg].out, 1)):
            return None
        # c.grad += 2 mean.grad c / size[d]
        ki = self._next(kh)
        if ki is None:
            return None
        i, mg = steps[ki], steps[kh].out
        c = next((o for o in i.inputs if o.name != mg), None)
        if c is None or i.out != e.out or not i.accumulate or not _is(i, 2 / d, (mg, 1), (c.name, 1)):
            return None
        if c.axes != i.axes or i.args["kept"] != i.axes:
            return None
        # c.grad, written by those two alone, read by x.grad += c.grad and m.grad = -Σ_d c.grad only
        cg = e.out
        kj, kk = self._reading(cg, 1.0, (cg, 1)), self._reading(cg, -1.0, (cg, 1))
        if kj is None or kk is None or sorted(self.readers.get(cg, [])) != sorted([kj, kk]):
            return None
        if sorted(self.writers[cg]) != sorted([ke, ki]):
            return None
        j, m = steps[kj], steps[kk]
        if j.args["kept"] != j.axes or j.inputs[0].axes != j.axes or m.axes != m.inputs[0].axes[:-1]:
            return None
        # x.grad += m.grad / size[d]
        kl = self._next(kk)
        if kl is None or m.accumulate or not _is(steps[kl], 1 / d, (m.out, 1)):
            return None
        last = steps[kl]
        if last.out != j.out or not last.accumulate or last.inputs[0].axes != last.axes[:-1]:
            return None
        if last.args["kept"] != last.axes[:-1]:
            return None
        taken = {k, ke, kg, kh, ki, kj, kk, kl}
        at = min(taken)
        if not (kd < ke < ki and k < kg < kh < ki < min(kj, kk) and kk < kl):
            return None
        # x.grad: no other step among them writes or reads it; g complete where the step goes
        among = range(at, max(taken) + 1)
        if any(w in among and w not in taken for w in self.writers[j.out]):
            return None
        if any(r in among for r in self.readers.get(j.out, [])):
            return None
        if any(w >= at for w in self.writers.get(g.name, [])):  # (g may be a seed: no writer)
            return None
        dtypes = {o.dtype for o in (g, p, s, c, gain)} | {j.dtype}
        if len(dtypes) != 1 or j.dtype not in ("float32", "float64"):
            return None
        if {o.shape for o in (g, p, c)} != {j.shape} or gain.shape != (d,) or s.shape != j.shape[:-1]:
            return None
        if not (self._product_of(p.name, c.name, gain.name) and self._centred(c.name)):
            return None
        made = {at: _made(j, g, c, s, gain, any(w < at for w in self.writers[j.out]), "layer_norm_grad")}
        # p.grad read by G.grad = Σ p.grad c alone (or by nothing else): the kernel's weight gradient
        others = [r for r in self.readers[pg] if r != ke]
        if not others:
            taken.add(kd)
        elif (
            len(others) == 1
            and self._weight_grad(f := steps[others[0]], pg, c.name, j.shape)
            and all(w < others[0] for w in self.writers.get(g.name, []))
        ):
            made[others[0]] = _made(f, g, c, s, gain, f.accumulate, "weight_grad")
            taken |= {kd, others[0]}
        return made, taken

    def _weight_grad(self, f: Step, pg: str, c: str, shape: tuple[int, ...]) -> bool:
        """f is G.grad[d] (+)= Σ p.grad[..,d] c[..,d] over all but d."""
        if not _is(f, 1.0, (pg, 1), (c, 1)) or len(f.axes) != 1 or f.args["kept"] != f.axes:
            return False
        a, b = f.inputs
        return a.axes == b.axes and a.axes[-1:] == f.axes and a.shape == b.shape == shape

    def _def(self, name: str) -> Prim | None:
        ps = self.defs.get(name, [])
        return ps[0] if len(ps) == 1 and ps[0].op == "=" else None

    def _product_of(self, p: str, c: str, gain: str) -> bool:
        """The forward says p[..,d] = c[..,d] G[d]."""
        prim = self._def(p)
        if not isinstance(prim, Contract) or prim.coef != 1 or len(prim.factors) != 2:
            return False
        out = plain_names(prim.out)
        refs = {f.name: f for f, power in prim.factors if isinstance(f, Ref) and power == 1}
        if out is None or set(refs) != {c, gain} or not out:
            return False
        return plain_names(refs[c]) == out and plain_names(refs[gain]) == out[-1:]

    def _centred(self, c: str) -> bool:
        """The forward says c[..,d] = x[..,d] - m[..] with m[..] = mean[j](x[..,j])."""
        prim = self._def(c)
        out = None if prim is None else plain_names(prim.out)
        if not isinstance(prim, Terms) or out is None or not out or len(prim.terms) != 2:
            return False
        (k1, x), (k2, m) = sorted(prim.terms, key=lambda t: -t[0])
        if (k1, k2) != (1.0, -1.0) or not isinstance(x, Ref) or not isinstance(m, Ref):
            return False
        if plain_names(x) != out or plain_names(m) != out[:-1]:
            return False
        mean = self._def(m.name)
        if not isinstance(mean, Reduction) or mean.reducer != "mean" or len(mean.indices) != 1:
            return False
        at = plain_names(mean.out)
        return at is not None and mean.arg.name == x.name and plain_names(mean.arg) == (*at, mean.indices[0])


def _product(s: Step, coef: float, n: int) -> bool:
    """s is a contraction of n operands times coef."""
    if s.kind != "contract" or len(s.inputs) != n:
        return False
    return math.isclose(s.args["coef"], coef, rel_tol=1e-12)


def _is(s: Step, coef: float, *operands: tuple[str, float]) -> bool:
    """s is a product (or copy) of these operands (name, power), times coef, summing nothing away
    but what its result lacks."""
    got = sorted((o.name, o.power) for o in s.inputs)
    return _product(s, coef, len(operands)) and got == sorted(operands)


def _rowwise(s: Step, full: str, rows: str) -> bool:
    """s's result and its operand `full` lie alike, and `rows` lacks just their last axis."""
    f, r = (next(o for o in s.inputs if o.name == n) for n in (full, rows))
    return f.axes == s.axes == s.args["kept"] and r.axes == f.axes[:-1]


def _made(j: Step, g: Operand, c: Operand, s: Operand, gain: Operand, accumulate: bool, call: str) -> Step:
    """x.grad (+)= layer_norm_grad(g, c, s, G), or G.grad (+)= weight_grad(g, c, s, G), in place of
    step j (the one writing that gradient), the operands' index names x.grad's or G.grad's."""
    axes = j.inputs[0].axes if call == "weight_grad" else j.axes
    g, c = replace(g, axes=axes), replace(c, axes=axes)
    s, gain = replace(s, axes=axes[:-1], power=1.0), replace(gain, axes=axes[-1:])
    out = Ref(j.out, tuple(map(idx, j.axes)))
    args = tuple(Ref(o.name, tuple(map(idx, o.axes))) for o in (g, c, s, gain))
    statement = Elementwise(out, "+=" if accumulate else "=", call, args, j.span)
    return replace(
        j, kind="layer_norm", call=call, inputs=(g, c, s, gain), args={}, accumulate=accumulate,
        statement=statement,
    )  # fmt: skip


def describe(s: Step) -> str:
    g, c, rows, gain = s.inputs
    which = "" if s.call == "layer_norm_grad" else ", the weight's gradient"
    return f"native_layer_norm_backward({g}, input {c}, mean 0, rstd 1 / {rows}, weight {gain}{which})"
