"""A Plan as Python source: a standalone module of numpy, torch or jax calls, one or two readable
lines per step under its .idx statement, that needs nothing but that library.

It reads the same Steps the backends run (it plans nothing): a module holds `forward(**arrays)`
and `backward(vals, **seeds)` (or `jvp(vals, **tangents)`) for the input shapes it was planned
for, which `forward` checks first.
"""

from __future__ import annotations

import ast
import builtins
import json
import keyword
import re
import string
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import opt_einsum as oe

from .derive import derived_names, wrt_names
from .errors import IndexgradError
from .model import Model
from .model import compile as compile_model
from .nodes import Program
from .plan import Operand, Plan, Step, basic_index
from .printer import format_number
from .shapes import infer_shapes, not_a_size
from .tools import check_dims, index_names

# ---- the libraries ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Library:
    """How one array library spells what the steps do. Templates take `{x}` (and `{y}`) for
    operands, `{ns}` for the library's module, `{axes}` for a tuple of axes."""

    name: str
    imports: tuple[str, ...]
    ns: str
    asarray: str
    permute: str  # a method: transpose (numpy, jax) or permute (torch)
    astype: str  # a method: astype or to
    functions: dict[str, str]
    reductions: dict[str, str]
    vecdot: str
    grid: Callable[[list[str]], str]  # index grids over these aranges, broadcast against each other
    scatter: str  # a statement adding {v} at index arrays {idx} into {t}
    slice_add: str  # a statement adding {v} at slices {idx} into {t}
    copy: str  # what copies {t} before it is changed in place (where the statements above do)
    number: str  # a number {c} among index arrays
    clip: str  # integer positions {e} kept within [0, {hi}]
    bounds: dict[str, str] = field(default_factory=dict)  # max/min of a tensor {x} and a number {c}
    helpers: dict[str, str] = field(default_factory=dict)  # module-level functions some templates need


_COMMON = {
    "sigmoid": "jax.nn.sigmoid({x})",  # numpy's and torch's below: each exact in both tails
    "tanh": "{ns}.tanh({x})",
    "exp": "{ns}.exp({x})",
    "log": "{ns}.log({x})",
    "sqrt": "{ns}.sqrt({x})",
    "sin": "{ns}.sin({x})",
    "cos": "{ns}.cos({x})",
    "abs": "{ns}.abs({x})",
    "sign": "{ns}.sign({x})",
    "relu": "{ns}.maximum({x}, 0)",
    "softplus": "{ns}.logaddexp(0, {x})",
    "erf": "jax.lax.erf({x})",  # numpy's and torch's below
    "step": "({x} > 0).astype({x}.dtype)",
    "max": "{ns}.maximum({x}, {y})",
    "min": "{ns}.minimum({x}, {y})",
    "eq": "({x} == {y}).astype({dtype})",
    "where": "{ns}.where({0} != 0, {1}, {2}).astype({dtype})",
    **{op: f"({{x}} {op} {{y}}).astype({{dtype}})" for op in ("<", "<=", ">", ">=", "==", "!=")},
}

_NUMPY_LOGSUMEXP = '''\
def logsumexp(x, axis):
    """log(sum(exp(x))) over axis, shifted by the finite maxima so that it never overflows."""
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    return np.log(np.sum(np.exp(x - m), axis=axis)) + np.squeeze(m, axis)
'''


# fix and solve as Python loops (numpy, torch: `xp` becomes the library's module); the jax module
# gets the jax backend's own while loops (indexgrad/backends/jax_iterate.py), printed as they are
_FIXED_POINT = """\
def fixed_point(f, z, tol, max_iter, m, name):
    \"\"\"The fixed point of f from z by Anderson acceleration (type II, Walker and Ni 2011) with the
    last m iterates; when the extrapolation diverges or finds no better point in 4m evaluations,
    plain iteration from the best point. Stops when max |f(x) - x| is at most tol relative to
    1 + max |f(x)|; raises after max_iter evaluations of f without.\"\"\"
    shape, x = z.shape, z.reshape(-1)
    n = len(x)

    def g(x):
        return f(x.reshape(shape)).reshape(-1)

    def residual(x, fx):
        return float(xp.abs(fx - x).max() / (1 + xp.abs(fx).max()))

    fx = g(x)
    X, F = xp.zeros((m, n), dtype=x.dtype), xp.zeros((m, n), dtype=x.dtype)
    X[0], F[0] = x, fx
    best, best_f, since, plain, k = residual(x, fx), fx, 0, False, 1
    while k < max_iter and best > tol:
        if plain:
            x = fx
        else:  # the values' combination (weights summing to 1) whose residuals' is least
            h = min(k, m)
            G = F[:h] - X[:h]
            gram = G @ G.T
            scale = float(gram.trace()) / h
            H = xp.zeros((h + 1, h + 1), dtype=x.dtype)
            H[0, 1:] = H[1:, 0] = 1
            H[1:, 1:] = gram + 1e-10 * (scale if scale > 0 else 1) * xp.eye(h, dtype=x.dtype)
            rhs = xp.zeros(h + 1, dtype=x.dtype)
            rhs[0] = 1
            x = xp.linalg.solve(H, rhs)[1:] @ F[:h]
        fx = g(x)
        r = residual(x, fx)
        X[k % m], F[k % m] = x, fx
        k += 1
        if r < best:
            best, best_f, since = r, fx, 0
        else:
            since += 1
        if not plain and not (r <= 1e3 * best and since <= 4 * m):  # diverged, stalled or NaN
            plain, fx = True, best_f  # plain iteration goes on from the best point
    if not best <= tol:
        raise ArithmeticError(
            f"fix(...) found no fixed point for {name!r}: the residual is {best:.3g} after {k} "
            f"evaluations, over the tolerance {tol:.3g}"
        )
    return best_f.reshape(shape)
"""

_NEWTON = """\
def newton(g, slope, z, diagonal, tol, max_iter, name):
    \"\"\"A root of g from z by Newton's method with a backtracking (Armijo) line search. g(x) gives
    (g's value, what slope reads); slope(saved, dx) is g's derivative along dx. The Jacobian is
    block diagonal along z's axes `diagonal`, formed one column of a block at a time (every block
    at once); each block is its own problem, with its own step length. Stops when max |g| is at
    most tol; raises after max_iter steps without.\"\"\"
    front = tuple(range(len(diagonal)))
    laid = xp.moveaxis(z, diagonal, front).shape
    blocks = 1
    for d in laid[: len(diagonal)]:
        blocks *= d
    width = len(z.reshape(-1)) // max(blocks, 1)

    def rows(v):  # one row per diagonal block
        v = xp.broadcast_to(v, z.shape)
        return xp.moveaxis(v, diagonal, front).reshape(blocks, width)

    def unrows(r):
        return xp.moveaxis(r.reshape(laid), front, diagonal)

    def norms(gx):
        return (rows(gx) ** 2).sum(-1) ** 0.5

    x = z
    gx, saved = g(x)
    for it in range(max_iter + 1):
        res = float(xp.abs(gx).max())
        if res <= tol:
            return x
        if it == max_iter or not res < float("inf"):
            break
        J = xp.zeros((blocks, width, width), dtype=z.dtype)
        for col in range(width):
            e = xp.zeros((blocks, width), dtype=z.dtype)
            e[:, col] = 1
            J[:, :, col] = rows(slope(saved, unrows(e)))
        try:
            d = unrows(xp.linalg.solve(J, -rows(gx)[..., None])[..., 0])
        except xp.linalg.LinAlgError:
            raise ArithmeticError(
                f"solve(...) found no root for {name!r}: its Jacobian is singular after {it} steps"
            ) from None
        before = norms(gx)
        t = xp.ones(blocks, dtype=z.dtype)
        while True:
            xn = x + unrows(xp.broadcast_to(t[:, None], (blocks, width))) * d
            gn, sn = g(xn)
            short = ~(norms(gn) <= (1 - 1e-4 * t) * before)  # too little decrease, or NaN
            if not short.any() or t.min() < 1e-6:
                break
            t = xp.where(short, t / 2, t)
        x, gx, saved = xn, gn, sn
    raise ArithmeticError(
        f"solve(...) found no root for {name!r}: max |g| is {res:.3g} after {it} steps, over the "
        f"tolerance {tol:.3g}"
    )
"""


def _solvers(ns: str) -> dict[str, str]:
    return {"fixed_point": _FIXED_POINT.replace("xp.", f"{ns}."), "newton": _NEWTON.replace("xp.", f"{ns}.")}


def _jax_solvers() -> dict[str, str]:
    """fixed_point and newton as the jax backend runs them, read from its source (not imported:
    printing a jax module needs no jax)."""
    path = Path(__file__).parent / "backends" / "jax_iterate.py"
    text = path.read_text(encoding="utf-8")
    found = {f.name: f for f in ast.parse(text).body if isinstance(f, ast.FunctionDef)}
    return {n: ast.get_source_segment(text, found[n]) + "\n" for n in ("fixed_point", "newton")}  # type: ignore[operator]


def _ix(ns: str) -> Callable[[list[str]], str]:
    def grid(ranges: list[str]) -> str:
        return ranges[0] if len(ranges) == 1 else f"{ns}.ix_({', '.join(ranges)})"

    return grid


def _meshgrid(ranges: list[str]) -> str:
    return ranges[0] if len(ranges) == 1 else f'torch.meshgrid({", ".join(ranges)}, indexing="ij")'


LIBRARIES: dict[str, Library] = {
    "numpy": Library(
        "numpy",
        ("import math", "import numpy as np"),
        "np",
        "np.asarray",
        "transpose",
        "astype",
        {
            **_COMMON,
            "sigmoid": "np.exp(-np.logaddexp(0, -{x}))",  # 1 / (1 + exp(-x)), never overflowing
            "erf": "np.asarray(np.frompyfunc(math.erf, 1, 1)({x}), {x}.dtype)",
        },
        {
            "sum": "{x}.sum({axes})",
            "mean": "{x}.mean({axes})",
            "max": "{x}.max({axes})",
            "min": "{x}.min({axes})",
            "logsumexp": "logsumexp({x}, {axes})",
        },
        "np.vecdot({x}, {y})",
        _ix("np"),
        "np.add.at({t}, {idx}, {v})",
        "{t}[{idx}] += {v}",
        "{t}.copy()",
        "{c}",
        "np.clip({e}, 0, {hi})",
        helpers={"logsumexp": _NUMPY_LOGSUMEXP, **_solvers("np")},
    ),
    "torch": Library(
        "torch",
        ("import torch",),
        "torch",
        "torch.as_tensor",
        "permute",
        "to",
        {
            **_COMMON,
            "relu": "torch.relu({x})",
            "softplus": "torch.logaddexp({x}, torch.zeros_like({x}))",
            "erf": "torch.erf({x})",
            "sigmoid": "torch.sigmoid({x})",
            "step": "({x} > 0).to({x}.dtype)",
            "eq": "({x} == {y}).to({dtype})",
            "where": "torch.where({0} != 0, {1}, {2}).to({dtype})",
            **{op: f"({{x}} {op} {{y}}).to({{dtype}})" for op in ("<", "<=", ">", ">=", "==", "!=")},
        },
        {
            "sum": "{x}.sum({axes})",
            "mean": "{x}.mean({axes})",
            "max": "{x}.amax({axes})",
            "min": "{x}.amin({axes})",
            "logsumexp": "torch.logsumexp({x}, {axes})",
        },
        "torch.linalg.vecdot({x}, {y})",
        _meshgrid,
        "{t} = {t}.index_put({idx}, {v}, accumulate=True)",
        "{t}[{idx}] += {v}",
        "{t}.clone()",
        "torch.tensor({c})",
        "torch.clamp({e}, 0, {hi})",
        bounds={"max": "torch.clamp({x}, min={c})", "min": "torch.clamp({x}, max={c})"},
        helpers=_solvers("torch"),
    ),
    "jax": Library(
        "jax",
        ("import jax", "import jax.numpy as jnp"),
        "jnp",
        "jnp.asarray",
        "transpose",
        "astype",
        dict(_COMMON),
        {
            "sum": "{x}.sum({axes})",
            "mean": "{x}.mean({axes})",
            "max": "{x}.max({axes})",
            "min": "{x}.min({axes})",
            "logsumexp": "jax.nn.logsumexp({x}, {axes})",
        },
        "jnp.vecdot({x}, {y})",
        _ix("jnp"),
        "{t} = {t}.at[{idx}].add({v})",
        "{t} = {t}.at[{idx}].add({v})",
        "",
        "{c}",
        "jnp.clip({e}, 0, {hi})",
        helpers=_jax_solvers(),
    ),
}


def library(name: str) -> Library:
    lib = LIBRARIES.get(name) if isinstance(name, str) else None
    if lib is None:
        raise IndexgradError(f"no code generation for {name!r}; available: " + ", ".join(LIBRARIES))
    return lib


# ---- names ------------------------------------------------------------------------------------

_TAKEN = set(keyword.kwlist) | set(dir(builtins)) | {
    "np", "torch", "jax", "jnp", "arrays", "vals", "seeds", "tangents", "forward", "backward",
    "jvp", "logsumexp", "SHAPES", "SIZES", "SEEDS", "TANGENTS", "check_inputs", "check_names",
    "fixed_point", "newton", "saved",
}  # fmt: skip


class Names:
    """Python names for tensor names (`x.grad` -> x_grad, a read `x[j+k]` -> x_at), each distinct."""

    def __init__(self) -> None:
        self.of: dict[str, str] = {}
        self.used = set(_TAKEN)

    def __call__(self, name: str) -> str:
        hit = self.of.get(name)
        if hit is None:
            base = name.split("[", 1)[0].replace(".", "_") + ("_at" if "[" in name else "")
            hit = self.of[name] = self.fresh(base)
        return hit

    def fresh(self, base: str) -> str:
        cand, k = base, 2
        while cand in self.used:
            cand, k = f"{base}{k}", k + 1
        self.used.add(cand)
        return cand

    def index(self, name: str) -> str:
        """A name for the grid of an index: the index's own, else with an underscore."""
        for cand in (name, name + "_"):
            if cand not in self.used:
                self.used.add(cand)
                return cand
        return self.fresh(name + "_")

    def plan(self, plan: Plan) -> None:
        """Names for every tensor of the plan, taken before any index's grid."""
        for n, _, _ in plan.inputs:
            self(n)
        for s in plan.steps:
            for o in s.inputs:
                self(o.name)
            self(s.out)


# ---- expressions --------------------------------------------------------------------------------


def _atomic(e: str) -> bool:
    """Whether e needs no parentheses before `.method` or an operator: a name, call or subscript."""
    depth = 0
    for k, c in enumerate(e):
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif depth == 0 and (c in " +*/@<>=" or (c == "-" and k == 0)):
            return False
    return True


def _atom(e: str) -> str:
    return e if _atomic(e) else f"({e})"


def _axes(axes: Sequence[int]) -> str:
    return str(axes[0]) if len(axes) == 1 else str(tuple(axes))


def _shape(shape: Sequence[int]) -> str:
    return str(tuple(shape))


def _reshape(e: str, shape: Sequence[int]) -> str:
    args = ", ".join(map(str, shape)) if shape else "()"
    return f"{_atom(e)}.reshape({args})"


def _scaled(e: str, coef: float) -> str:
    """e times coef, written as a division when coef is one over an integer (1/64: `e / 64`)."""
    if coef == 1:
        return e
    if coef == -1:
        return f"-{_atom(e)}"
    if coef != 0 and abs(1 / coef) < 1e15 and (n := round(1 / coef)) != 0 and 1.0 / n == coef:
        return f"-{_atom(e)} / {-n}" if n < 0 else f"{_atom(e)} / {n}"
    return f"{_atom(e)} * {format_number(coef)}"


class _Writer:
    """Lines of Python for the steps of one plan, in one library."""

    def __init__(self, lib: Library, names: Names, helpers: set[str]) -> None:
        self.lib, self.ns, self.name, self.helpers = lib, lib.ns, names, helpers
        self.lines: list[str] = []

    def emit(self, line: str) -> None:
        self.lines.extend(line.split("\n"))

    # operands

    def operand(self, o: Operand) -> str:
        x = self.name(o.name)
        k = o.power
        if k == 1:
            return x
        if k == -1:
            return f"1 / {x}"
        if k == 0.5:
            return f"{self.ns}.sqrt({x})"
        return f"{x}**{format_number(k)}" if k > 0 else f"{x}**({format_number(k)})"

    def permuted(self, e: str, perm: Sequence[int] | None) -> str:
        if perm is None or tuple(perm) == tuple(range(len(perm))):
            return e
        if tuple(perm) == (1, 0):
            return f"{_atom(e)}.T"
        return f"{_atom(e)}.{self.lib.permute}{tuple(perm)}"

    def moved(self, e: str, summed: Sequence[int], perm: Any, shape: Any) -> str:
        """An operand laid out for a call as plan.pair_layout says: summed, permuted, reshaped."""
        if summed:
            e = f"{_atom(e)}.sum({_axes(summed)})"
        e = self.permuted(e, perm)
        return e if shape is None else _reshape(e, shape)

    def aligned(self, e: str, names: tuple[str, ...], out: tuple[str, ...]) -> str:
        """e (axes `names`) with its axes in the order of `out`, and a None where out has one it
        lacks before its last one (broadcasting adds the leading ones)."""
        order = [n for n in out if n in names]
        e = self.permuted(e, [names.index(n) for n in order])
        first = next((k for k, n in enumerate(out) if n in names), len(out))
        slots = [":" if n in names else "None" for n in out[first:]]
        if "None" not in slots:
            return e
        while slots and slots[-1] == ":":
            slots.pop()
        return f"{_atom(e)}[{', '.join(slots)}]"

    def widened(self, e: str, step: Step, names: tuple[str, ...]) -> str:
        """e broadcast to the step's shape when its axes `names` lack some of the step's (added
        into a target, it is only aligned: `+` broadcasts it)."""
        if all(n in names for n in step.axes):
            return e
        e = self.aligned(e, names, step.axes)
        return e if step.accumulate else f"{self.ns}.broadcast_to({e}, {_shape(step.shape)})"

    def finish(self, step: Step, e: str) -> str:
        """The result of a contraction (over `kept`) times its coefficient, broadcast to its axes."""
        e = _scaled(e, step.args.get("coef", 1))
        return self.widened(e, step, step.args.get("kept", step.axes))

    # steps

    def step(self, s: Step) -> None:
        target = self.name(s.out)
        if s.kind in ("fix", "solve"):
            self.iteration(s)
            return
        e = getattr(self, s.kind)(s)
        if s.kind == "scatter":
            return
        self.emit(f"{target} = {target} + {e}" if s.accumulate else f"{target} = {e}")

    def function(self, head: str, plan: Plan, returned: str, first: Sequence[str] = ()) -> None:
        """A function nested in the one being written, running a plan's steps (under their
        statements) after the lines `first`."""
        inner = _Writer(self.lib, self.name, self.helpers)
        for line in first:
            inner.emit(line)
        _body(plan, inner)
        self.emit(f"def {head}:" if self.lines and not self.lines[-1] else f"\ndef {head}:")
        for line in [*inner.lines, f"return {returned}"]:
            self.emit("    " + line if line else "")
        self.emit("")

    def iteration(self, s: Step) -> None:
        """fix or solve: the steps that do not read z once, then f (or g, and g's derivative in z
        for Newton's Jacobian) as a function of z, iterated by the module's solver helper from the
        start, with the plan's tolerance and iteration limit."""
        a = s.args
        z, r = self.name(a["iterate"]), self.name(a["result"])
        if a["setup"] is not None:
            _body(a["setup"], self)
        settings = f"tol={a['tol']!r}, max_iter={a['max_iter']}"
        start = self.start(s)
        # numpy and torch raise where it does not converge; jax (jitted) gives NaN and its report
        name, got = (f", name={_q(a['iterate'])}", z) if self.lib.name != "jax" else ("", f"{z}, _, _")
        self.helpers.add("fixed_point" if s.kind == "fix" else "newton")
        if s.kind == "fix":
            f = self.name.fresh(f"f_{z}")
            self.function(f"{f}({z})", a["body"], r)
            self.emit(f"{got} = fixed_point({f}, {start}, {settings}, m={a['m']}{name})")
            return
        tangent = a["tangent"]
        saved = [n for n in _reads(tangent) if n == a["iterate"] or n in a["body"].outputs]
        names = [self.name(n) for n in saved]
        kept = "(" + ", ".join(names) + ("," if len(names) == 1 else "") + ")"
        g, dg = self.name.fresh(f"g_{z}"), self.name.fresh(f"dg_{z}")
        self.function(f"{g}({z})", a["body"], f"{r}, {kept}")
        self.function(f"{dg}(saved, {self.name(a['direction'])})", tangent, self.name(a["slope"]),
                      [f"{kept} = saved"] if names else [])  # fmt: skip
        diagonal = str(tuple(a["diagonal"]))
        got += ", _" if self.lib.name == "jax" else ""
        self.emit(f"{got} = newton({g}, {dg}, {start}, diagonal={diagonal}, {settings}{name})")

    def start(self, s: Step) -> str:
        """The iteration's first value: zeros, a number, or the start tensor laid out as z."""
        start, shape, dtype = s.args["start"], _shape(s.shape), f"{self.ns}.{s.dtype}"
        if start is None:
            return f"{self.ns}.zeros({shape}, dtype={dtype})"
        if isinstance(start, float):
            return f"{self.ns}.full({shape}, {format_number(start)}, dtype={dtype})"
        name, axes = start
        x = self.name(name)
        if len(set(axes)) < len(axes):  # s[b,b]: its diagonal
            letters = _letters([*axes, *s.axes])
            kept = "".join(letters[n] for n in s.axes if n in axes)
            x = f"{self.ns}.einsum({_q(''.join(letters[n] for n in axes) + '->' + kept)}, {x})"
            axes = tuple(n for n in s.axes if n in axes)
        x = self.aligned(x, tuple(axes), s.axes)
        return x if tuple(axes) == s.axes else f"{self.ns}.broadcast_to({x}, {shape})"

    def contract(self, s: Step) -> str:
        a = s.args
        ops = s.inputs
        if s.call in ("matmul", "vecdot", "multiply"):
            first, second = (ops[1], ops[0]) if a["swap"] else (ops[0], ops[1])
            x = self.moved(self.operand(first), a["a_sum"], a["a_perm"], a["a_shape"])
            y = self.moved(self.operand(second), a["b_sum"], a["b_perm"], a["b_shape"])
            if s.call == "matmul":
                e = f"{self.ns}.matmul({x}, {y})"
            elif s.call == "vecdot":
                e = self.lib.vecdot.format(x=x, y=y)
            else:
                e = f"{_atom(x)} * {_atom(y)}"
            if a["res_shape"] is not None:
                e = _reshape(e, a["res_shape"])
            return self.finish(s, self.permuted(e, a["res_perm"]))
        if s.call == "scale":
            t, c = ops[1 - a["scalar"]], ops[a["scalar"]]
            return f"{self.name(t.name)} * {_atom(_scaled(self.name(c.name), a['coef']))}"
        if s.call == "dot":
            x = self.name(ops[0].name)
            return self.finish(s, f"({x} * {x}).sum()")
        if s.call == "copy":
            return self.finish(s, self.permuted(self.operand(ops[0]), a["perm"]))
        if s.call == "sum":
            return self.finish(s, self.moved(self.operand(ops[0]), a["over"], a["perm"], None))
        if s.call == "ones_sum":
            return self.finish(s, f"{_atom(self.operand(ops[0]))}.sum({_axes(a['over'])})")
        if s.call == "einsum":
            return self.finish(s, self.einsum(s))
        raise IndexgradError(f"no code generation for the contraction call '{s.call}'")

    def einsum(self, s: Step) -> str:
        """A product of three or more operands as pairwise einsum calls along the plan's path,
        written with the index names as letters where they are single letters."""
        letters = _letters([n for o in s.inputs for n in o.axes] + list(s.args["kept"]))
        eq = ",".join("".join(letters[n] for n in o.axes) for o in s.inputs)
        eq += "->" + "".join(letters[n] for n in s.args["kept"])
        path = [tuple(p) for p in s.args["path"]]
        _, info = oe.contract_path(eq, *[o.shape for o in s.inputs], shapes=True, optimize=path)
        work = [self.operand(o) for o in s.inputs]
        for k, (inds, _, spec, *_) in enumerate(info.contraction_list):
            picked = [work.pop(i) for i in sorted(inds, reverse=True)][::-1]
            ins, res = spec.split("->")
            spec = ",".join(ins.split(",")[::-1]) + "->" + res  # its operands in the program's order
            call = f"{self.ns}.einsum({_q(spec)}, {', '.join(picked)})"
            if k == len(info.contraction_list) - 1:
                return call
            part = self.name.fresh(f"{self.name(s.out)}_{k + 1}")
            self.emit(f"{part} = {call}")
            work.append(part)
        raise AssertionError("an einsum step has a path of one contraction at least")

    def elementwise(self, s: Step) -> str:
        if s.call == "mask":
            return f"{self.name(s.inputs[0].name)} > 0"
        template = self.lib.functions.get(s.call)
        if template is None:
            raise IndexgradError(f"no code generation for the function '{s.call}' in {self.lib.name}")
        ops = iter(s.inputs)
        args = []
        for c in s.args["constants"]:
            if c is None:
                o = next(ops)
                args.append(self.aligned(self.operand(o), o.axes, s.axes))
            else:
                args.append(format_number(c))
        consts = [c for c in s.args["constants"] if c is not None]
        if s.call in self.lib.bounds and len(consts) == 1 and s.inputs:
            x = args[s.args["constants"].index(None)]
            e = self.lib.bounds[s.call].format(x=x, c=format_number(consts[0]))
        else:
            if not s.inputs:  # numbers only: the first made an array of the step's dtype
                args[0] = f"{self.lib.asarray}({args[0]}, dtype={self.ns}.{s.dtype})"
            e = template.format(*args, ns=self.ns, x=args[0], y=args[-1], dtype=f"{self.ns}.{s.dtype}")
        return self.widened(e, s, tuple(n for o in s.inputs for n in o.axes))

    def terms(self, s: Step) -> str:
        coefs, const = s.args["coefs"], s.args["constant"]
        parts = [self.aligned(self.operand(o), o.axes, s.axes) for o in s.inputs]
        e = _scaled(parts[0], coefs[0])
        for c, p in zip(coefs[1:], parts[1:]):
            if c < 0:
                e += f" - {_scaled(p, -c) if c != -1 else _atom(p)}"
            else:
                e += f" + {_scaled(p, c)}"
        if const:
            e += f" {'-' if const < 0 else '+'} {format_number(abs(const))}"
        return self.widened(e, s, tuple(n for o in s.inputs for n in o.axes))

    def reduce(self, s: Step) -> str:
        (o,) = s.inputs
        order = s.args["order"]
        x = self.aligned(self.operand(o), o.axes, order)
        axes = tuple(range(len(s.axes), len(order)))
        if s.call == "logsumexp" and "logsumexp" in self.lib.helpers:
            self.helpers.add("logsumexp")
        return self.lib.reductions[s.call].format(x=_atom(x), axes=_axes(axes))

    def fill(self, s: Step) -> str:
        value = format_number(s.args["value"])
        return f"{self.ns}.full({_shape(s.shape)}, {value}, dtype={self.ns}.{s.dtype})"

    # reads and writes through index arithmetic and labels

    def view(self, s: Step) -> str:
        """x[c + s*j, k] by slicing where each axis holds one name at most, else by index grids."""
        src = s.inputs[0]
        index = basic_index(s.args["positions"], dict(zip(s.axes, s.shape)))
        if index is None:
            return self.gather(s)
        parts = _trimmed([_slice_text(i, extent) for i, extent in zip(index, src.shape)])
        x = self.name(src.name)
        return f"{x}[{', '.join(parts)}]" if parts else x

    def grids(
        self, s: Step, names: tuple[str, ...], shape: tuple[int, ...], extents: tuple[int, ...]
    ) -> tuple[list[str], str | None]:
        """Index positions of a gather or scatter over `names` into axes of `extents`: grids of
        the index names its arithmetic uses (a line before), label tensors laid out along `names`,
        boundary modes as a clip or a modulo; and for `pad` positions the mask of those inside."""
        used = set().union(*(_position_names(p) for p in s.args["positions"]))
        var = {n: self.name.index(n) for n in names if n in used}
        if var:
            ranges = [f"{self.ns}.arange({d})" for d in shape]
            targets = [var.get(n, "_") for n in names]
            self.emit(f"{', '.join(targets)} = {self.lib.grid(ranges)}")
        shapes = {o.name: o.shape for o in s.inputs}
        masks: list[str] = []
        parts = [
            self.position(p, var, names, extent, shapes, masks)
            for p, extent in zip(s.args["positions"], extents)
        ]
        for n in var.values():
            self.name.used.discard(n)  # grids are per step: the next step may take the name again
        return parts, " & ".join(masks) or None

    def position(
        self,
        p: Any,
        var: dict[str, str],
        names: tuple[str, ...],
        extent: int | None,
        shapes: dict[str, Any],
        masks: list[str],
    ) -> str:
        """One position (as positions.as_data writes it) as an integer expression over the grids."""
        if p[0] == "label":
            return self.aligned(self.name(p[1]), p[2], names)
        if p[0] == "label_at":
            inner = [self.position(q, var, names, d, shapes, masks) for q, d in zip(p[2], shapes[p[1]])]
            return f"{self.name(p[1])}[{', '.join(inner)}]"
        const, terms = p[1], p[2]
        pieces = [_times(c, var[n]) for c, n in terms]
        for c, (inner, op, k) in p[4] if p[0] == "at" else ():
            inside = _atom(self.position(inner, var, names, None, shapes, masks))
            pieces.append(_times(c, f"({inside} {op} {k})"))
        if len(pieces) == 1 and not const and not terms and p[4][0][0] == 1:
            pieces[0] = pieces[0][1:-1]  # x[j // 2], not x[(j // 2)]
        e = " + ".join(pieces).replace("+ -", "- ")
        e = e if not pieces else e + (f" + {const}" if const > 0 else f" - {-const}" if const < 0 else "")
        if not pieces:
            return self.lib.number.format(c=const)
        mode = p[3] if p[0] == "at" else None
        if mode is None or extent is None:
            return e
        if mode == "wrap":
            return f"({e}) % {extent}"
        if mode == "pad":
            masks.append(f"({e} >= 0) & ({e} < {extent})")
        return self.lib.clip.format(e=e, hi=extent - 1)

    def gather(self, s: Step) -> str:
        parts, mask = self.grids(s, s.axes, s.shape, s.inputs[0].shape)
        e = f"{self.name(s.inputs[0].name)}[{', '.join(parts)}]"
        return e if mask is None else f"{self.ns}.where({mask}, {e}, 0)"

    def delta(self, s: Step) -> str:
        """`delta[i,j]`: 1 where its two positions agree, over grids of the step's index names."""
        first, second = self.grids(s, s.axes, s.shape, (None, None))[0]  # type: ignore[arg-type]
        e = f"({first} == {second})"
        if not {n for p in s.args["positions"] for n in _position_names(p)} >= set(s.axes):
            e = f"{self.ns}.broadcast_to({e}, {_shape(s.shape)})"
        return f"{e}.{self.lib.astype}({self.ns}.{s.dtype})"

    def scatter(self, s: Step) -> str:
        """target[positions] += value: a slice-add where each axis holds one name at most, else an
        add at index arrays; into zeros, or a copy of a target that is not the step's own."""
        value = s.inputs[0]
        t, v = self.name(s.out), self.name(value.name)
        dtype = f"{v}.dtype"
        index = basic_index(s.args["positions"], dict(zip(value.axes, value.shape)))
        if index is not None:
            template = self.lib.slice_add
            idx = ", ".join(_trimmed([_slice_text(i, n) for i, n in zip(index, s.shape)])) or "..."
        else:
            template = self.lib.scatter
            parts, mask = self.grids(s, value.axes, value.shape, s.shape)
            idx = f"({', '.join(parts)}{',' if len(parts) == 1 else ''})"
            if mask is not None:  # what a pad position writes outside the target is dropped
                v = f"{self.ns}.where({mask}, {v}, 0)"
        if s.args["fresh"]:
            self.emit(f"{t} = {self.ns}.zeros({_shape(s.shape)}, dtype={dtype})")
        elif self.lib.copy and not template.startswith("{t} ="):
            self.emit(f"{t} = {self.lib.copy.format(t=t)}")  # the array before may be someone else's
        self.emit(template.format(t=t, idx=idx, v=v))
        return ""


def _position_names(p: Any) -> set[str]:
    """The index names a position's arithmetic uses (a label's own axes are laid out instead)."""
    if p[0] == "label":
        return set()
    if p[0] == "label_at":
        return set().union(*(_position_names(q) for q in p[2]))
    names = {n for _, n in p[2]}
    for _, (inner, _, _) in p[4] if p[0] == "at" else ():
        names |= _position_names(inner)
    return names


def _times(c: int, e: str) -> str:
    return e if c == 1 else f"-{e}" if c == -1 else f"{c} * {e}"


def _trimmed(parts: list[str]) -> list[str]:
    """Slices without the trailing whole axes (`x[:, 2]` for `x[:, 2, :]`)."""
    while parts and parts[-1] == ":":
        parts.pop()
    return parts


def _slice_text(i: int | slice, extent: int) -> str:
    if isinstance(i, int):
        return str(i)
    if i.start == 0 and i.step == 1 and i.stop == extent:
        return ":"
    return f"{i.start}:{i.stop}" + (f":{i.step}" if i.step != 1 else "")


def _letters(names: list[str]) -> dict[str, str]:
    """einsum letters for index names: a name's own letter when it is one, else a free letter."""
    out: dict[str, str] = {}
    for n in dict.fromkeys(names):
        if len(n) == 1 and n in string.ascii_letters and n not in out.values():
            out[n] = n
    free = (c for c in string.ascii_letters if c not in out.values())
    for n in dict.fromkeys(names):
        if n not in out:
            out[n] = next(free)
    return out


# ---- a module -----------------------------------------------------------------------------------


def _statements(plan: Plan) -> list[tuple[str, list[Step]]]:
    """Steps grouped under the .idx statement they run: a view or gather goes with the step that
    reads it, a scatter with the step whose value it adds."""
    groups: list[tuple[str, list[Step]]] = []
    pending: list[Step] = []
    for s in plan.steps:
        if s.kind in ("view", "gather", "delta"):
            pending.append(s)
            continue
        if s.kind == "scatter" and groups and groups[-1][0] == s.text and not pending:
            groups[-1][1].append(s)
            continue
        groups.append((s.text, [*pending, s]))
        pending = []
    if pending:
        groups.append((pending[0].text, pending))
    return groups


def _body(plan: Plan, w: _Writer) -> None:
    for text, steps in _statements(plan):
        w.emit(f"# {text}")
        for s in steps:
            w.step(s)


def _reads(plan: Plan) -> list[str]:
    """The plan's inputs its steps read, in order."""
    given = {n for n, _, _ in plan.inputs}
    read = [o.name for s in plan.steps for o in s.inputs] + [s.out for s in plan.steps if s.accumulate]
    for s in plan.steps:
        if s.kind in ("gather", "scatter"):
            read += [p[1] for p in s.args["positions"] if p[0] == "label"]
    return [n for n in dict.fromkeys(read) if n in given]


def _dict(pairs: list[tuple[str, str]], indent: str = "    ") -> str:
    """A dict display, one entry a line."""
    if not pairs:
        return "{}"
    return "{\n" + "".join(f"{indent}    {_q(k)}: {v},\n" for k, v in pairs) + indent + "}"


def _tuple(names: list[str]) -> str:
    """A tuple display of string literals, one a line when they are many."""
    one = "(" + ", ".join(map(_q, names)) + ("," if len(names) == 1 else "") + ")"
    return one if len(one) <= _WIDTH // 2 else "(\n" + "".join(f"    {_q(n)},\n" for n in names) + ")"


def _q(text: str) -> str:
    """A string literal in double quotes."""
    return json.dumps(text)


@dataclass
class Source:
    """The plans a module is written from, and what its functions return."""

    model: Model
    shapes: dict[str, tuple[int, ...]]
    sizes: str
    forward: Plan
    derived: Plan
    mode: str  # grad or jvp
    pairs: list[tuple[str, str]]  # (name returned, derived tensor holding it)
    seeds: list[tuple[str, str]]  # (seeded tensor, its derivative's name) given to backward / jvp


def plans(
    program: Program | Model,
    mode: str = "grad",
    dims: dict[str, int] | None = None,
    loss: str | None = None,
    wrt: Sequence[str] | str | None = None,
) -> Source:
    """The forward plan and the backward (mode "grad") or tangent (mode "jvp") plan, as the model
    plans them, for the input shapes `dims` gives (sizes by index name; others 3)."""
    if mode not in ("grad", "jvp"):
        raise IndexgradError(f"mode must be grad or jvp, not {mode!r}")
    model = compile_model(program.program if isinstance(program, Model) else program)
    model.numpy_layouts = False  # steps every library's module can write as they are
    if isinstance(program, Model):
        model.iterations = program.iterations
    if dims is not None and not isinstance(dims, Mapping):
        raise IndexgradError(f"dims must be a dict from index names to sizes, not {type(dims).__name__}")
    dims = dict(dims or {})
    for n, k in dims.items():
        message = not_a_size(n, k)
        if message:
            raise IndexgradError(message)
    check_dims(model.program, dims)
    inputs = model.inputs + model.labels
    shapes = {n: s for n, s in infer_shapes(model.program, dims).items() if n in inputs}
    forward = model.plan(shapes, "forward")
    names = wrt_names(wrt) or list(model.inputs)
    if mode == "grad":
        derived = model.plan(shapes, "backward", loss=loss, wrt=wrt)
        suffix, returned = ".grad", names
    else:
        derived = model.plan(shapes, "jvp", wrt=wrt)
        suffix, returned = ".tan", list(model.program.defined())
    rename = derived_names(model.program, suffix)
    if mode == "grad":
        out = loss or model.program.statements[-1].target.name
        seeds = [(out, rename[out])]
    else:
        seeds = [(n, rename[n]) for n in names]
    used = index_names(model.program)
    sizes = ", ".join(f"{k}={v}" for k, v in dims.items() if k in used)
    if any(n not in dims for n in used):
        sizes += "; others 3" if sizes else "every index 3"
    return Source(model, shapes, sizes, forward, derived, mode, [(n, rename[n]) for n in returned], seeds)


def to_python(
    program: Program | Model,
    lib: str = "numpy",
    mode: str = "grad",
    dims: dict[str, int] | None = None,
    loss: str | None = None,
    wrt: Sequence[str] | str | None = None,
) -> str:
    """A standalone module of `lib` calls running the program's forward plan and its backward
    (mode "grad") or tangent (mode "jvp") plan, for the input shapes `dims` gives."""
    return module(plans(program, mode, dims, loss, wrt), library(lib))


def module(src: Source, lib: Library) -> str:
    """The module's text: docstring, imports, SHAPES, check_inputs, helpers, forward, and
    backward or jvp."""
    names = Names()
    names.plan(src.forward)
    names.plan(src.derived)
    helpers: set[str] = set()
    forward = _forward(src, _Writer(lib, names, helpers))
    derived = _derived(src, _Writer(lib, names, helpers))
    program = src.model.program
    what = "gradients" if src.mode == "grad" else "tangents (forward mode)"
    doc = textwrap.fill(
        f"{program.filename}: the forward program and its {what}, as {lib.name} calls, generated by "
        f"indexgrad from its plans for the input shapes in SHAPES; forward() checks them. Each "
        "step is written under the .idx statement it runs.",
        _WIDTH - 4,
    )
    check = _CHECK.format(asarray=lib.asarray) + "\n\n" + _CHECK_NAMES
    parts = [
        f'"""{doc}\n"""',
        "",
        *_imports(lib, "\n".join([check, forward, derived, *(lib.helpers[h] for h in helpers)])),
        "",
        f"SIZES = {_q(src.sizes)}",
        f"SHAPES = {_dict([(n, str(tuple(sh))) for n, sh in src.shapes.items()], '')}",
        f"{'SEEDS' if src.mode == 'grad' else 'TANGENTS'} = {_tuple([n for n, _ in src.seeds])}",
        "",
        "",
        check,
        *(f"\n{lib.helpers[h]}" for h in sorted(helpers)),
        "",
        forward,
        "",
        "",
        derived,
    ]
    return "\n".join(parts) + "\n"


def _imports(lib: Library, body: str) -> list[str]:
    """The library's imports the body uses (`import jax` only for jax.nn, say)."""
    return [line for line in lib.imports if re.search(rf"\b{line.split()[-1]}\.", body)]


def _function(head: str, doc: str, w: _Writer, returned: str) -> str:
    lines = [head, f'    """{doc}"""']
    for line in w.lines:
        lines.extend(_wrap("    " + line) if line else [""])
    return "\n".join([*lines, f"    return {returned}"])


def _forward(src: Source, w: _Writer) -> str:
    w.emit("arrays = check_inputs(arrays)")
    for n in src.shapes:
        w.emit(f"{w.name(n)} = arrays[{_q(n)}]")
    _body(src.forward, w)
    returned = _dict([(n, w.name(n)) for n in src.forward.outputs])
    doc = "Every tensor the program defines, and the inputs, from arrays for every input."
    return _function("def forward(**arrays):", doc, w, returned)


def _derived(src: Source, w: _Writer) -> str:
    seeded = {d: n for n, d in src.seeds}
    given = "seeds" if src.mode == "grad" else "tangents"
    w.emit(f"check_names({given}, {given.upper()})")
    for d in _reads(src.derived):
        n = seeded.get(d)
        if n is None:
            w.emit(f"{w.name(d)} = vals[{_q(d)}]")
        elif src.mode == "grad":
            w.emit(f"{w.name(d)} = seeds[{_q(n)}]")
        else:
            w.emit(f"{w.name(d)} = tangents.get({_q(n)}, {w.ns}.zeros_like(vals[{_q(n)}]))")
    _body(src.derived, w)
    defined = {s.out for s in src.derived.steps} | set(seeded)
    # a scalar loss's seed is folded into the plan as 1; the gradients are linear in it
    scale = src.mode == "grad" and src.seeds[0][1] in {n for n, _ in src.derived.constants}
    if scale:
        seed = w.name.fresh("seed")
        w.emit(f"{seed} = seeds.get({_q(src.seeds[0][0])}, 1)")
    times = f"{seed} * " if scale else ""
    zero = f"{w.ns}.zeros_like(vals[{{}}])"
    returned = _dict([(n, times + w.name(d) if d in defined else zero.format(_q(n))) for n, d in src.pairs])
    if src.mode == "jvp":
        doc = "The tangent of every tensor the program defines, given tangents of inputs (else 0)."
        return _function("def jvp(vals, **tangents):", doc, w, returned)
    loss = _q(src.seeds[0][0])
    if scale:
        doc = "The gradients of the loss per input, from forward()'s values, times its seed (else 1)."
    else:
        doc = f"The vector-Jacobian product with seeds[{loss}] per input, from forward()'s values."
    return _function("def backward(vals, **seeds):", doc, w, returned)


_CHECK = '''\
def check_inputs(arrays):
    """The arrays as arrays of the library, checked against SHAPES."""
    unknown = sorted(set(arrays) - set(SHAPES))
    if unknown:
        raise TypeError("not inputs of the program: " + ", ".join(unknown))
    out = {{}}
    for name, shape in SHAPES.items():
        if name not in arrays:
            raise TypeError(f"no array was given for input {{name!r}}")
        out[name] = {asarray}(arrays[name])
        if tuple(out[name].shape) != shape:
            raise ValueError(
                f"{{name!r}} has shape {{tuple(out[name].shape)}}, but this module was generated "
                f"for {{shape}} ({{SIZES}}): generate it again for these sizes"
            )
    return out
'''

_CHECK_NAMES = '''\
def check_names(given, accepted):
    """Refuses a seed or tangent for a name not in accepted, which would otherwise count as 0."""
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        wrong, right = ", ".join(unknown), ", ".join(accepted)
        raise TypeError(f"no seed or tangent is taken for {wrong}; give one for: {right}")
'''


# ---- lines short enough to read ---------------------------------------------------------------

_WIDTH = 100


def _scan(e: str) -> list[tuple[int, str, int]]:
    """(position, char, bracket depth before it) of each character of e outside strings."""
    out, depth, quote = [], 0, ""
    for k, c in enumerate(e):
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        else:
            out.append((k, c, depth))
            depth += (c in "([{") - (c in ")]}")
    return out


def _top_level(e: str) -> list[tuple[int, str]]:
    """(position, char) of each character of e outside brackets and strings."""
    return [(k, c) for k, c, depth in _scan(e) if depth == 0 and c not in "([{"]


def _wrap(line: str, width: int = _WIDTH) -> list[str]:
    """A line longer than width, broken as black would break it: a comment at spaces, a
    statement's expression at its operators, between the calls of a method chain, or between a
    call's arguments, inside parentheses."""
    if len(line) <= width:
        return [line]
    indent = line[: len(line) - len(line.lstrip())]
    body = line.strip()
    if body.startswith("#"):
        return textwrap.wrap(body, width, initial_indent=indent, subsequent_indent=indent + "#   ")
    eq = next((k for k, _ in _top_level(body) if body[k : k + 3] == " = "), None)
    head, expr = ("", body) if eq is None else (body[: eq + 3], body[eq + 3 :])
    return _broken(indent + head, expr, indent, width)


def _broken(first: str, expr: str, indent: str, width: int) -> list[str]:
    """`first + expr` on lines no longer than width where expr can be broken; the lines after
    the first are indented from `indent`."""
    if len(first) + len(expr) <= width:
        return [first + expr]
    inner = indent + "    "
    parts = _parts(expr)
    start = _opening(expr)
    if len(parts) == 1 and start is not None:
        inside = expr[start + 1 : -1]
        if start == 0:  # a parenthesised group
            return [first + "(", *_stacked(inside, inner, width), indent + ")"]
        commas = [k for k, c in _top_level(inside) if c == ","]
        out = [first + expr[: start + 1]]
        for a, b in zip([0, *commas], [*commas, len(inside)]):
            arg = _broken(inner, inside[a:b].strip(", "), inner, width)
            out += [*arg[:-1], arg[-1] + ","]
        return [*out, indent + ")"]
    if len(parts) > 1:
        return [first + "(", *_stacked(expr, inner, width), indent + ")"]
    return [first + expr]


def _stacked(expr: str, indent: str, width: int) -> list[str]:
    """expr's operands (an operator before each but the first), or the links of its method chain,
    one a line at indent, each broken further where it is too long."""
    out = []
    for p in _parts(expr):
        op = p[:2] if p[:2] in ("+ ", "- ", "* ", "/ ", "@ ", "& ", "| ") else ""
        out += _broken(indent + op, p[len(op) :], indent, width)
    return out


def _parts(expr: str) -> list[str]:
    """expr cut before each operator outside brackets, else before each `.method(` of a chain."""
    top = _top_level(expr)
    ops = [k for k, c in top if c in "+-*/@&|" and expr[k - 1 : k + 2] == f" {c} "]
    if ops:
        return [expr[a:b].strip() for a, b in zip([0, *ops], [*ops, len(expr)])]
    cuts = [k for k, c in top if c == "." and k > 0 and expr[k - 1] in ")]"]
    return [expr[a:b] for a, b in zip([0, *cuts], [*cuts, len(expr)])]


def _opening(e: str) -> int | None:
    """Where the parenthesis that closes at the end of e opens, if e ends with one that is the
    whole of e or a call's (not a group after an operator, which a trailing comma would make a
    tuple)."""
    if not e.endswith(")"):
        return None
    scan = _scan(e)
    if scan[-1] != (len(e) - 1, ")", 1):  # the last ")" must close a bracket opened at depth 0
        return None
    opened = max(k for k, c, depth in scan if depth == 0 and c in "([{")
    if e[opened] != "(" or (opened and not (e[opened - 1].isalnum() or e[opened - 1] in "_)]")):
        return None
    return opened


__all__ = ["LIBRARIES", "Library", "library", "module", "plans", "to_python"]
