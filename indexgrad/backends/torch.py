"""The torch backend: one builder per step kind, each turning a Step into calls of torch, on any device.

Builders read nothing but the Step, as the numpy backend's do, and share its layout data
(`alignment`, `slice_adds`, `positions_index`); index positions come from indexgrad/positions.py.
Tensors stay on the device they are given on; the constants a step makes (index tensors, a zero)
are made once per device. A run is checked before its first call: every tensor on one device (a
CPU number may join any), and none that needs a gradient while torch records one (these runs are
not recorded: `indexgrad.torch` is how torch differentiates through a program).
"""

from __future__ import annotations

import math
import operator
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np
import opt_einsum as oe
import torch

from .. import iterate
from .. import positions as index_positions
from ..errors import IndexgradError
from ..memory import keep_freed_memory
from ..nodes import DELTA, Affine, Ref
from ..plan import Operand, Plan, Step, inverse, pair_layout, sum_product_instead
from . import Chain, Env, builder_for, float_option, integers_fit
from .numpy import alignment, general_positions, positions_index, sizes, slice_adds

Tensor = torch.Tensor
Compute = Callable[[Env], Tensor]
Unary = Callable[[Tensor], Tensor]

_TORCH: dict[np.dtype, torch.dtype] = {
    np.dtype(k): v
    for k, v in {
        "float64": torch.float64,
        "float32": torch.float32,
        "float16": torch.float16,
        "complex128": torch.complex128,
        "complex64": torch.complex64,
        "int64": torch.int64,
        "int32": torch.int32,
        "int16": torch.int16,
        "int8": torch.int8,
        "uint8": torch.uint8,
        "bool": torch.bool,
    }.items()
}
_NUMPY: dict[torch.dtype, np.dtype] = {v: k for k, v in _TORCH.items()}


def torch_dtype(dtype: Any) -> torch.dtype:
    """The torch dtype for a numpy dtype or its name (a plan's dtypes are numpy's names)."""
    return _TORCH[np.dtype(dtype)]


# ---- function forwards and reductions --------------------------------------------------------


def _sign(x: Tensor) -> Tensor:
    return torch.where(torch.isnan(x), x, torch.sign(x))  # NaN stays NaN, as numpy's sign


def _sigmoid(x: Tensor) -> Tensor:
    """numpy's form (functions.sigmoid): 1 / (1 + e), times e where x < 0, with e = exp(-|x|), so
    both backends give the same values, exact in both tails (sigmoid(-40) is 4.2e-18, not the 0
    that 0.5 (1 + tanh(x/2)) rounds it to, whose 1 / sigmoid would be inf)."""
    return _sigmoid_(x.clone() if x.is_floating_point() else x.double())


def _sigmoid_(x: Tensor) -> Tensor:
    negative = x < 0  # before x is overwritten
    e = x.abs().neg_().exp_()
    s = torch.add(e, 1.0, out=x).reciprocal_()
    return torch.where(negative, e.mul_(s), s, out=s)


def _softplus(x: Tensor) -> Tensor:
    return torch.logaddexp(x, x.new_zeros(()))  # log(1 + e^x) without overflow, no threshold


# name -> its forward on tensors; comparisons give booleans, which the step casts to its dtype
FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "relu": torch.relu,
    "sigmoid": _sigmoid,
    "tanh": torch.tanh,
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "sin": torch.sin,
    "cos": torch.cos,
    "abs": torch.abs,
    "softplus": _softplus,
    "erf": torch.erf,
    "step": lambda x: x > 0,
    "sign": _sign,
    "max": torch.maximum,
    "min": torch.minimum,
    "eq": torch.eq,
    "where": lambda c, a, b: torch.where(c != 0, a, b),
    "<": torch.lt,
    "<=": torch.le,
    ">": torch.gt,
    ">=": torch.ge,
    "==": torch.eq,
    "!=": torch.ne,
}
# the functions that can overwrite their argument (a step writing `into` its dying operand)
IN_PLACE: dict[str, Unary] = {
    **{
        name: operator.methodcaller(f"{name}_")
        for name in ("relu", "tanh", "exp", "log", "sqrt", "sin", "cos", "abs")
    },
    "sigmoid": _sigmoid_,
}


_LOG2E = 1 / math.log(2)


def _shifted_exp(x: Tensor, axes: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """exp(x - m) and m, x's maximum over `axes` (0 where that is not finite, as numpy's backend
    takes it). exp as exp2 of (x - m) log2(e): torch's exp is slow where it underflows (the -1e9
    of an attention mask), and exp2 is not; an entry's error, |x - m| ulps, is negligible against
    the maximum's exact 1 where it is summed or normalised by."""
    m = x.amax(dim=axes, keepdim=True).nan_to_num_(0.0, 0.0, 0.0)
    return torch.sub(x, m).mul_(_LOG2E).exp2_(), m


def _logsumexp(x: Tensor, axes: tuple[int, ...]) -> Tensor:
    if not x.numel():
        return x.sum(dim=axes).fill_(-math.inf)
    if not x.is_floating_point():
        return torch.logsumexp(x, dim=axes)
    e, m = _shifted_exp(x, axes)
    return e.sum(dim=axes, keepdim=True).log_().add_(m).squeeze(axes)


REDUCTIONS: dict[str, Callable[[Tensor, tuple[int, ...]], Tensor]] = {
    "sum": lambda x, axes: x.sum(dim=axes),
    "mean": lambda x, axes: x.mean(dim=axes),
    "max": lambda x, axes: x.amax(dim=axes),
    "min": lambda x, axes: x.amin(dim=axes),
    "logsumexp": _logsumexp,
}


# ---- reading operands ------------------------------------------------------------------------


def _then(f: Unary | None, g: Unary | None) -> Unary | None:
    """g after f, either of which may be None (nothing to do)."""
    if f is None or g is None:
        return f if g is None else g
    return lambda a: g(f(a))


def _chain(*fs: Unary | None) -> Unary | None:
    out = None
    for f in fs:
        out = _then(out, f)
    return out


def _permute(perm: tuple[int, ...] | None) -> Unary | None:
    if perm is None or perm == tuple(range(len(perm))):
        return None
    return operator.methodcaller("t") if perm == (1, 0) else operator.methodcaller("permute", perm)


def _reshape(shape: tuple[int, ...] | None) -> Unary | None:
    return None if shape is None else operator.methodcaller("reshape", shape)


def _summed(axes: tuple[int, ...]) -> Unary | None:
    return operator.methodcaller("sum", dim=axes) if axes else None  # dim=() would sum every axis


def aligner(names: tuple[str, ...], out: tuple[str, ...], size: dict[str, int]) -> Unary | None:
    """What puts a tensor's axes (named `names`) in the order of `out`, with length-1 axes for the
    names it lacks (see numpy's `alignment`); None when nothing needs doing."""
    how = alignment(names, out, size)
    return None if how is None else _then(_permute(how[0]), _reshape(how[1]))


def _raised(k: float) -> Unary | None:
    """a**k by its cheapest call; None for k = 1."""
    if k == 1:
        return None
    if k == 2:
        return torch.square
    if k == -1:
        return torch.reciprocal
    if k == 0.5:
        return torch.sqrt
    return lambda a: torch.pow(a, k)


def _cast(o: Operand, dtype: str) -> Unary | None:
    """A float operand of another float dtype than its step's is cast first: numpy promotes such
    operands, and torch's matmul refuses them (and a 0-d float64 does not promote a float32)."""
    have, want = np.dtype(o.dtype), np.dtype(dtype)
    if have == want or have.kind != "f" or want.kind != "f":
        return None
    to = _TORCH[want]
    return operator.methodcaller("to", to)


def _reader(o: Operand, dtype: str, move: Unary | None = None) -> Compute:
    """Reads an operand from env, cast to the step's dtype, raised to its power, laid out by `move`."""
    name, prep = o.name, _chain(_cast(o, dtype), _raised(o.power), move)
    if prep is None:
        return operator.itemgetter(name)
    return lambda env: prep(env[name])


def _aligned(step: Step, o: Operand) -> Compute:
    return _reader(o, step.dtype, aligner(o.axes, step.axes, sizes(step)))


def _full(step: Step, body: Compute) -> Compute:
    """The result broadcast to the step's shape when its operands lack some of its axes."""
    present = {n for o in step.inputs for n in o.axes}
    if all(n in present for n in step.axes) and step.inputs:
        return body
    shape = step.shape
    return lambda env: torch.broadcast_to(body(env), shape)


def _finish(step: Step, body: Compute, fresh: bool = False) -> Compute:
    """The body's result times the coefficient (in place when the body makes it `fresh`),
    broadcast to the step's axes when an index is in no operand (a gradient that broadcasts)."""
    coef = step.args.get("coef", 1)
    kept = step.args.get("kept", step.axes)
    if coef == 1:
        scaled = body
    else:
        scaled = (lambda env: body(env).mul_(coef)) if fresh else (lambda env: body(env) * coef)
    if kept == step.axes:
        return scaled
    widen = aligner(kept, step.axes, sizes(step)) or (lambda a: a)
    shape = step.shape
    return lambda env: torch.broadcast_to(widen(scaled(env)), shape)


Made = TypeVar("Made")


class _PerDevice(Generic[Made]):
    """A constant (a tensor, or tensors) made on first use on each device: index positions, a scalar."""

    def __init__(self, make: Callable[[torch.device], Made]) -> None:
        self.make = make
        self.made: dict[torch.device, Made] = {}

    def on(self, device: torch.device) -> Made:
        t = self.made.get(device)
        if t is None:
            t = self.made[device] = self.make(device)
        return t


_CPU = torch.device("cpu")


class _Run(threading.local):
    """The device of the run in progress (per thread): where a step with no operand makes its tensor."""

    device = torch.device("cpu")


# ---- contractions ----------------------------------------------------------------------------


_PRODUCTS = {"matmul": torch.matmul, "vecdot": torch.linalg.vecdot, "multiply": torch.mul}


def _movers(args: dict[str, Any]) -> tuple[Unary | None, Unary | None]:
    """What lays out the first and the second operand of a product for its call."""
    return (
        _chain(_summed(args["a_sum"]), _permute(args["a_perm"]), _reshape(args["a_shape"])),
        _chain(_summed(args["b_sum"]), _permute(args["b_perm"]), _reshape(args["b_shape"])),
    )


def _stored(order: tuple[int, ...] | None) -> Unary | None:
    """A product's result copied into memory that holds its axes in `order`, outermost first
    (`plan._stored_as_read`): the same values, in the layout its readers take as views."""
    if order is None:
        return None
    back = inverse(order)
    return lambda t: t.permute(order).contiguous().permute(back)


def _product(call: str, args: dict[str, Any], first: Compute, second: Compute) -> Compute:
    """`call` of two operands (read by `first`, `second`, in the order `args` names them) laid
    out as `plan.pair_layout` says, the result reshaped and transposed as it says."""
    ma, mb = _movers(args)
    ra = first if ma is None else (lambda env: ma(first(env)))
    rb = second if mb is None else (lambda env: mb(second(env)))
    f = _PRODUCTS[call]
    finish = _chain(_reshape(args["res_shape"]), _permute(args["res_perm"]), _stored(args.get("res_order")))
    if finish is None:
        return lambda env: f(ra(env), rb(env))
    return lambda env: finish(f(ra(env), rb(env)))


def product_add(step: Step, run: _Run) -> Compute:
    """A product plus terms (indexgrad/plus.py) as one call that adds as it multiplies: addmm or
    baddbmm with the first term as their input and the coefficient as alpha; addcmul for a
    broadcast product. Any further terms are added after."""
    args, coef = step.args, step.args["coef"]
    a, b = step.inputs[:2][::-1] if args["swap"] else step.inputs[:2]
    ma, mb = _movers(args)
    ra, rb = _reader(a, step.dtype, ma), _reader(b, step.dtype, mb)
    first, *rest = (_aligned(step, o) for o in step.inputs[2:])
    finish = _chain(_reshape(args["res_shape"]), _stored(args.get("res_order"))) or (lambda t: t)
    shape = step.shape

    def added(env: Env) -> Tensor:
        x, y = ra(env), rb(env)
        if step.call == "multiply":
            out = torch.addcmul(first(env), x, y, value=coef)
        elif x.dim() != y.dim() or x.dim() not in (2, 3):  # a product torch.matmul broadcasts
            out = finish(torch.matmul(x, y)).mul_(coef).add_(first(env))
        else:
            z = _term_input(first(env), shape, (*x.shape[:-1], y.shape[-1]))
            out = finish((torch.addmm if x.dim() == 2 else torch.baddbmm)(z, x, y, alpha=coef))
        for r in rest:
            out.add_(r(env))
        return out

    return added


def _term_input(t: Tensor, shape: tuple[int, ...], product: tuple[int, ...]) -> Tensor:
    """A term (over the step's axes, length 1 where it lacks one) as the input of addmm or baddbmm,
    whose product has the shape `product`: as it is when it lies along the last axes, which the
    product keeps as they are (a bias, an attention mask: torch broadcasts those fastest), else
    broadcast to the step's shape and laid out as the product."""
    lead = next((k for k, n in enumerate(t.shape) if n != 1), t.dim())
    tail = t.shape[lead:]
    if tail and tail == shape[len(shape) - len(tail) :] == product[len(product) - len(tail) :]:
        return t.reshape(tail)
    return torch.broadcast_to(t, shape).reshape(product)


def _multiplied_sum(
    a: tuple[str, ...], b: tuple[str, ...], out: tuple[str, ...], first: Compute, second: Compute
) -> Compute:
    """Two operands over the same names multiplied as they lie and summed over the names not in
    out (`plan.sum_product_instead`), the result's axes in out's order."""
    align = aligner(b, a, dict.fromkeys(a, 0)) or (lambda t: t)
    inner = tuple(k for k, n in enumerate(a) if n not in out)
    kept = [n for n in a if n in out]
    move = _permute(tuple(kept.index(n) for n in out)) or (lambda t: t)
    return lambda env: move(torch.mul(first(env), align(second(env))).sum(dim=inner))


def _einsum_pair(
    call: str, args: dict[str, Any], a: tuple[str, ...], b: tuple[str, ...], out: tuple[str, ...],
    first: Compute, second: Compute,
) -> Compute:
    """One pair of an einsum's path: as `plan.pair_layout` lays it out, or, a vecdot whose operands
    it would copy, as the planner plans such a step on torch (`sum_product`)."""
    if call == "vecdot" and sum_product_instead(args, a, b):
        return _multiplied_sum(a, b, out, first, second)
    return _product(call, args, first, second)


def _sum_product(step: Step, run: _Run) -> Compute:
    a, b = step.inputs
    first, second = _reader(a, step.dtype), _reader(b, step.dtype)
    return _multiplied_sum(a.axes, b.axes, step.args["kept"], first, second)


def _pairwise(step: Step, run: _Run) -> Compute:
    """matmul, vecdot or a broadcast product of two operands laid out as `plan.pair_layout` says."""
    args = step.args
    first, second = step.inputs[::-1] if args["swap"] else step.inputs
    donor = step.donor
    if donor is not None:  # a product into the buffer of the operand that dies here
        ma, mb = _movers(args)
        read = _reader(*((second, step.dtype, mb) if donor == first.name else (first, step.dtype, ma)))
        return lambda env: env[donor].mul_(read(env))
    return _product(step.call, args, _reader(first, step.dtype), _reader(second, step.dtype))


def _scale(step: Step, run: _Run) -> Compute:
    """A tensor times a scalar tensor and the coefficient (into the tensor's buffer when it dies)."""
    s = _reader(step.inputs[step.args["scalar"]], step.dtype)
    t = _reader(step.inputs[1 - step.args["scalar"]], step.dtype)
    coef = step.args["coef"]
    if step.donor is not None:
        return lambda env: t(env).mul_(s(env) * coef)
    return lambda env: torch.mul(t(env), s(env) * coef)


def _dot(step: Step, run: _Run) -> Compute:
    """Σ a² as one dot product of a with itself, times the coefficient."""
    o, coef = step.inputs[0], step.args["coef"]
    read = _reader(Operand(o.name, o.axes, o.shape, o.dtype), step.dtype)  # a, not a²: the dot squares

    def dot(env: Env) -> Tensor:
        a = read(env).reshape(-1)
        return torch.dot(a, a) * coef

    if not step.axes:
        return dot
    shape = step.shape
    return lambda env: torch.broadcast_to(dot(env), shape)


def _copy(step: Step, run: _Run) -> Compute:
    return _finish(step, _reader(step.inputs[0], step.dtype, _permute(step.args["perm"])))


def _sum(step: Step, run: _Run) -> Compute:
    move = _then(_summed(step.args["over"]), _permute(step.args["perm"]))
    return _finish(step, _reader(step.inputs[0], step.dtype, move))


def _ones_sum(step: Step, run: _Run) -> Compute:
    """numpy's product with a vector of ones; torch's own sum is as fast."""
    return _finish(step, _reader(step.inputs[0], step.dtype, _summed(step.args["over"])))


def _einsum(step: Step, run: _Run) -> Compute:
    """The plan's path as pairwise products, each a matmul, vecdot or broadcast product laid out
    by `plan.pair_layout` (opt_einsum's call would parse its equation on every run, and runs a
    dot product per entry as a batch of 1×n by n×1 matmuls)."""
    kept, path, size = step.args["kept"], step.args["path"], sizes(step)
    work = [(_reader(o, step.dtype), o.axes) for o in step.inputs]
    if any(len(pick) != 2 for pick in path):
        expression = oe.contract_expression(
            step.args["equation"], *[o.shape for o in step.inputs], optimize=path
        )
        reads = [r for r, _ in work]
        return _finish(step, lambda env: expression(*[r(env) for r in reads], backend="torch"))
    for k, pick in enumerate(path):
        i, j = sorted(pick)
        (b, bx), (a, ax) = work.pop(j), work.pop(i)
        later = set(kept).union(*(axes for _, axes in work))
        out = kept if k == len(path) - 1 else tuple(n for n in dict.fromkeys(ax + bx) if n in later)
        call, layout = pair_layout(ax, bx, out, size)
        (first, fx), (second, sx) = ((b, bx), (a, ax)) if layout["swap"] else ((a, ax), (b, bx))
        work.append((_einsum_pair(call, layout, fx, sx, out, first, second), out))
    ((body, _),) = work
    return _finish(step, body, fresh=True)


_CONTRACTIONS: dict[str, Callable[[Step, _Run], Compute]] = {
    "matmul": _pairwise,
    "vecdot": _pairwise,
    "sum_product": _sum_product,
    "multiply": _pairwise,
    "scale": _scale,
    "dot": _dot,
    "copy": _copy,
    "sum": _sum,
    "ones_sum": _ones_sum,
    "einsum": _einsum,
}


def contract(step: Step, run: _Run) -> Compute:
    body = _CONTRACTIONS[step.call](step, run)
    fresh = step.call in ("matmul", "vecdot", "multiply", "sum_product")
    return _finish(step, body, fresh=True) if fresh else body


def _added_into(step: Step) -> Compute | None:
    """`t += c a` / `t += c a b` / `t += c A B` into t's own buffer (the plan's `into` it) as one
    call that adds as it computes (add_ with alpha, addcmul_, addmm_): no array of the product.
    The result is t itself, which the executor then assigns. None for other steps."""
    if step.kind != "contract" or not step.accumulate or step.into != step.out:
        return None
    args, out = step.args, step.out
    coef, kept = args["coef"], args["kept"]
    if step.call == "copy":
        (o,) = step.inputs
        widen = aligner(kept, step.axes, sizes(step)) if kept != step.axes else None
        x = _reader(o, step.dtype, _then(_permute(args["perm"]), widen))
        return lambda env: env[out].add_(x(env), alpha=coef)
    if step.call not in ("multiply", "matmul") or kept != step.axes:
        return None
    if any(o.dtype != step.dtype for o in step.inputs):
        return None  # a boolean mask: addcmul_ takes floats
    first, second = step.inputs[::-1] if args["swap"] else step.inputs
    ma, mb = _movers(args)
    ra, rb = _reader(first, step.dtype, ma), _reader(second, step.dtype, mb)
    if step.call == "multiply":
        return lambda env: env[out].addcmul_(ra(env), rb(env), value=coef)
    if args["res_perm"] is not None:
        return None
    product = _finish(step, _product("matmul", args, _reader(first, step.dtype), _reader(second, step.dtype)))

    def added(env: Env) -> Tensor:
        t, a, b = env[out], ra(env), rb(env)
        if a.dim() == b.dim() == 2 and t.is_contiguous():
            t.view(a.shape[0], b.shape[1]).addmm_(a, b, alpha=coef)
            return t
        return t.add_(product(env))

    return added


# ---- elementwise work, sums of terms, reductions, constants ---------------------------------


def _scalar(value: float, dtype: str) -> _PerDevice[Tensor]:
    to = torch_dtype(dtype)
    return _PerDevice(lambda device: torch.tensor(value, dtype=to, device=device))


def elementwise(step: Step, run: _Run) -> Compute:
    if step.call == "mask":
        name = step.inputs[0].name
        return lambda env: env[name] > 0
    fn = FUNCTIONS.get(step.call)
    if fn is None:
        raise IndexgradError(
            f"the torch backend has no forward for the function '{step.call}'; it has: "
            + ", ".join(sorted(FUNCTIONS))
            + " (add one to FUNCTIONS in indexgrad/backends/torch.py)",
            step.span,
        )
    if step.donor is not None and step.call in IN_PLACE:
        in_place, name = IN_PLACE[step.call], step.donor
        return lambda env: in_place(env[name])
    to = torch_dtype(step.dtype)
    if step.dtype != "bool":
        fn = _boolean_as(fn, to)
    getters: list[Compute] = []
    ops = iter(step.inputs)
    for c in step.args["constants"]:
        if c is None:
            getters.append(_aligned(step, next(ops)))
        else:  # a number: a 0-d tensor of the step's dtype on the run's device
            number = _scalar(c, step.dtype)
            getters.append(lambda env, number=number: number.on(run.device))
    if len(getters) == 1:
        (g,) = getters
        return _full(step, lambda env: fn(g(env)))
    return _full(step, lambda env: fn(*[g(env) for g in getters]))


def _boolean_as(fn: Callable[..., Tensor], to: torch.dtype) -> Callable[..., Tensor]:
    """fn, its result cast to the step's dtype when it is a comparison's booleans."""

    def cast(*args: Tensor) -> Tensor:
        r = fn(*args)
        return r.to(to) if r.dtype == torch.bool else r

    return cast


def terms(step: Step, run: _Run) -> Compute:
    gets = [_aligned(step, o) for o in step.inputs]
    coefs, const = step.args["coefs"], step.args["constant"]
    if step.call in ("add", "subtract"):
        op = torch.add if step.call == "add" else torch.sub
        g0, g1 = gets
        if step.donor == step.inputs[0].name:
            n0 = step.donor
            return lambda env: op(env[n0], g1(env), out=env[n0])
        if step.donor == step.inputs[1].name:
            n1 = step.donor
            return lambda env: op(g0(env), env[n1], out=env[n1])
        return _full(step, lambda env: op(g0(env), g1(env)))
    rest = list(zip(coefs[1:], gets[1:]))
    first = step.donor

    def total(env: Env) -> Tensor:
        if first is not None:
            t = env[first]
            for c, g in rest:
                if c == 1:
                    t.add_(g(env))
                elif c == -1:
                    t.sub_(g(env))  # = t + (-1 * term), exactly
                else:
                    t.add_(g(env) * c)
            return t.add_(const) if const else t
        c0, g0 = coefs[0], gets[0]
        t = g0(env) * c0 if c0 != 1 else g0(env)
        for c, g in rest:
            t = t + g(env) if c == 1 else t - g(env) if c == -1 else t + g(env) * c
        return t + const if const else t

    return _full(step, total)


def reduce(step: Step, run: _Run) -> Compute:
    (o,) = step.inputs
    order = step.args["order"]
    read = _reader(o, step.dtype, aligner(o.axes, order, sizes(step)))
    axes = tuple(range(len(step.axes), len(order)))
    red = REDUCTIONS[step.call]
    return lambda env: red(read(env), axes)


def fill(step: Step, run: _Run) -> Compute:
    shape, to, value = step.shape, torch_dtype(step.dtype), step.args["value"]
    if math.prod(shape) <= 4096:
        return lambda env: torch.full(shape, value, dtype=to, device=run.device)
    one = _scalar(value, step.dtype)
    return lambda env: one.on(run.device).expand(shape)  # one value, as the plan counts it


def gate(step: Step, run: _Run) -> Compute:
    """g step(u) as u > 0 compared into floats, times g: numpy's values, NaNs included. torch's
    comparison into booleans, and a product with them, each take several times as long."""
    g, u = (_reader(o, step.dtype) for o in step.inputs)

    def gated(env: Env) -> Tensor:
        incoming = g(env)
        return torch.gt(u(env), 0, out=torch.empty_like(incoming)).mul_(incoming)

    return gated


# ---- correlations -------------------------------------------------------------------------------


def _to_library(names: tuple[str, ...], order: tuple[str | None, ...]) -> Unary | None:
    """What puts a tensor's axes (named `names`) in a convolution's order, a length-1 axis where
    `order` has None (one image, one channel)."""
    move = _permute(tuple(names.index(n) for n in order if n is not None))
    missing = [k for k, n in enumerate(order) if n is None]
    if not missing:
        return move

    def unsqueezed(a: Tensor) -> Tensor:
        for k in missing:
            a = a.unsqueeze(k)
        return a

    return _then(move, unsqueezed)


def _from_library(order: tuple[str | None, ...], names: tuple[str, ...]) -> Unary | None:
    """A convolution's result, its axes in `order`, as a tensor over `names`."""
    present = [n for n in order if n is not None]
    drop = tuple(k for k, n in enumerate(order) if n is None)
    squeeze = operator.methodcaller("squeeze", drop) if drop else None
    return _then(squeeze, _permute(tuple(present.index(n) for n in names)))


def _margins(adjust: list[tuple[int, int]]) -> Unary | None:
    """Each axis of space (from the third on) padded with zeros by (before, after), or cropped
    where they are negative."""
    if not any(lo or hi for lo, hi in adjust):
        return None
    crops = [(2 + k, max(0, -lo), max(0, -hi)) for k, (lo, hi) in enumerate(adjust) if lo < 0 or hi < 0]
    pads = [v for lo, hi in reversed(adjust) for v in (max(0, lo), max(0, hi))]

    def fit(a: Tensor) -> Tensor:
        for dim, lo, hi in crops:
            a = a.narrow(dim, lo, a.shape[dim] - lo - hi)
        return torch.nn.functional.pad(a, pads) if any(pads) else a

    return fit


def conv(step: Step, run: _Run) -> Compute:
    """A correlation (indexgrad/correlate.py) by torch's convolutions: the forward as conv, the
    kernel's gradient as convolution_backward, the input's as conv_transpose. x is padded on both
    sides alike by the convolution, any difference by a pad (or a crop) of its own."""
    a = step.args
    n, space = len(a["space"]), a["space"]
    stride, dilation = [s[0] for s in space], [s[1] for s in space]
    padding = [max(0, min(lo, hi)) for _, _, lo, hi in space]
    orders = {"x": a["x_order"], "w": a["w_order"], "y": a["y_order"]}
    reads = {
        r: _reader(o, step.dtype, _to_library(o.axes, orders[r])) for o, r in zip(step.inputs, a["inputs"])
    }
    first, second = (reads[r] for r in {"y": "xw", "w": "xy", "x": "yw"}[a["result"]])
    finish = _from_library(orders[a["result"]], step.axes)
    F = torch.nn.functional
    if a["result"] == "y":
        fit = _margins([(lo - p, hi - p) for (_, _, lo, hi), p in zip(space, padding)]) or (lambda t: t)
        call = getattr(F, f"conv{n}d")
        body = lambda env: call(fit(first(env)), second(env), None, stride, padding, dilation)  # noqa: E731
    elif a["result"] == "w":
        fit = _margins([(lo - p, hi - p) for (_, _, lo, hi), p in zip(space, padding)]) or (lambda t: t)
        size = sizes(step)
        shape = [size[m] if m is not None else 1 for m in a["w_order"]]
        backward = torch.ops.aten.convolution_backward

        def body(env: Env) -> Tensor:
            x, g = fit(first(env)), second(env)
            kernel = g.new_empty(1).expand(shape)  # its shape is all convolution_backward reads
            out = (False, True, False)
            return backward(g, x, kernel, None, stride, padding, dilation, False, [0] * n, 1, out)[1]
    else:
        ends = [p - hi for (_, _, _, hi), p in zip(space, padding)]
        extra = [e if 0 < e < max(s, d) else 0 for e, s, d in zip(ends, stride, dilation)]
        fit = _margins([(p - lo, e - x) for (_, _, lo, _), p, e, x in zip(space, padding, ends, extra)])
        call, fit = getattr(F, f"conv_transpose{n}d"), fit or (lambda t: t)
        body = lambda env: fit(call(first(env), second(env), None, stride, padding, extra, 1, dilation))  # noqa: E731
    coef = a["coef"]
    scaled = body if coef == 1 else (lambda env: body(env).mul_(coef))
    return scaled if finish is None else (lambda env: finish(scaled(env)))


def softmax(step: Step, run: _Run) -> Compute:
    """exp(a - logsumexp(a)) along one axis (indexgrad/softmax.py): exp(a - m) / Σ exp(a - m),
    with the maximum m as logsumexp takes it (so a row holding +inf, or only -inf, gives the NaNs
    and zeros the three steps give); or, where the plan made the logsumexp, exp(a - logsumexp)
    itself, as exp2 (see _shifted_exp)."""
    a = step.inputs[0]
    read, dims = _reader(a, step.dtype), (a.axes.index(step.args["over"][0]),)
    if len(step.inputs) == 2:
        total = _aligned(step, step.inputs[1])
        return lambda env: torch.sub(read(env), total(env)).mul_(_LOG2E).exp2_()

    def normalised(env: Env) -> Tensor:
        e, _ = _shifted_exp(read(env), dims)
        return e.div_(e.sum(dim=dims, keepdim=True))

    return normalised


def softmax_grad(step: Step, run: _Run) -> Compute:
    """p g - p Σ p g along one axis (indexgrad/softmax.py) by torch's softmax gradient kernel."""
    g, p = (_reader(o, step.dtype) for o in step.inputs)
    dim, dtype = step.axes.index(step.args["over"][0]), torch_dtype(step.dtype)
    backward = torch.ops.aten._softmax_backward_data
    return lambda env: backward(g(env), p(env), dim, dtype)


def layer_norm_grad(step: Step, run: _Run) -> Compute:
    """A layer norm's input gradient, or its weight's (indexgrad/layernorm.py), by torch's own
    kernel: the gradient g at the input c (already centred: mean 0) with 1/s for the reciprocal
    standard deviation."""
    g, c, s, gain = (_reader(o, step.dtype) for o in step.inputs)
    normalised, backward = step.inputs[1].shape[-1:], torch.ops.aten.native_layer_norm_backward
    which = 0 if step.call == "layer_norm_grad" else 1  # the input's gradient, or the weight's
    wanted = (which == 0, which == 1, False)
    mean = _PerDevice(lambda d: torch.zeros(step.inputs[2].shape, dtype=torch_dtype(step.dtype), device=d))

    def grad(env: Env) -> Tensor:
        rstd = s(env).reciprocal()
        grads = backward(g(env), c(env), normalised, mean.on(rstd.device), rstd, gain(env), None, wanted)
        return grads[which]

    return grad


# ---- reads and writes through index arithmetic and labels -----------------------------------


def view(step: Step, run: _Run) -> Compute:
    """A strided view: x[j+k] as a tensor over (j, k), sharing x's memory. A negative step, which
    torch's views cannot take, and a boundary mode are read as a gather (a copy)."""
    positions = step.args["positions"]
    if general_positions(step) or any(c < 0 for _, _, terms_ in positions for c, _ in terms_):
        return gather(step, run)
    src = step.inputs[0].name
    names, shape = step.axes, step.shape
    pos = {n: k for k, n in enumerate(names)}
    unit = tuple(d > 1 for d in shape)

    def read(env: Env) -> Tensor:
        a = env[src]
        along = a.stride()
        strides = [0] * len(names)
        offset = a.storage_offset()
        for axis, (_, const, terms_) in enumerate(positions):
            offset += const * along[axis]
            for c, n in terms_:
                strides[pos[n]] += c * along[axis]
        strides = [st if u else 0 for st, u in zip(strides, unit)]
        return a.as_strided(shape, strides, offset)

    return read


def _index(step: Step, names: tuple[str, ...], shape: tuple[int, ...], extents: tuple[int, ...]) -> Any:
    """Per axis of the tensor read or written, a long tensor broadcast over `names` (labels checked)."""
    size = dict(zip(names, shape))
    fixed: list[Any] = []
    for axis, p in enumerate(step.args["positions"]):
        at = index_positions.from_data(p)
        if isinstance(at, Affine):
            positions = index_positions.values(at, names, size)
            fixed.append(_PerDevice(lambda d, a=positions: torch.as_tensor(a, dtype=torch.long, device=d)))
        else:
            fixed.append((p[1], aligner(p[2], names, size) or (lambda a: a), axis))
    span = step.span

    def index(env: Env, device: torch.device) -> tuple[Tensor, ...]:
        out = []
        for f in fixed:
            if isinstance(f, _PerDevice):
                out.append(f.on(device))
                continue
            label, align, axis = f
            lab = align(env[label]).long()
            if lab.numel():
                low, high = int(lab.min()), int(lab.max())
                if low < 0 or high >= extents[axis]:
                    bad = low if low < 0 else high
                    into = step.inputs[0].name if step.kind != "scatter" else step.out
                    raise IndexgradError(
                        f"label {bad} in '{label}' is out of range for axis {axis} of "
                        f"'{into}', which has size {extents[axis]}",
                        span,
                    )
            out.append(lab)
        return tuple(out)

    return index


Positions = tuple[tuple[Tensor, ...], Tensor | None]


def _general_index(
    step: Step, names: tuple[str, ...], shape: tuple[int, ...], extents: tuple[int, ...]
) -> Callable[[Env, torch.device], Positions]:
    """General positions (boundary modes, // and %, labels read through arithmetic): the numpy
    backend's integer positions and pad mask, as tensors on the run's device; made once per
    device unless a label is read (labels are read on the CPU)."""
    arrays = positions_index(step, names, shape, extents)
    labels = [p[1] for p in step.args["positions"] if p[0] in ("label", "label_at")]

    def made(env: Env, device: torch.device) -> Positions:
        idx, mask = arrays({n: env[n].cpu().numpy() for n in labels})
        on = [torch.as_tensor(np.asarray(i, dtype=np.int64), device=device) for i in idx]
        return tuple(on), None if mask is None else torch.as_tensor(mask, device=device)

    if labels:
        return made
    per_device = _PerDevice(lambda device: made({}, device))
    return lambda env, device: per_device.on(device)


def gather(step: Step, run: _Run) -> Compute:
    src = step.inputs[0]
    name = src.name
    if general_positions(step):
        general = _general_index(step, step.axes, step.shape, src.shape)

        def take(env: Env) -> Tensor:
            a = env[name]
            idx, mask = general(env, a.device)
            v = a[idx]
            return v if mask is None else torch.where(mask, v, v.new_zeros(()))

        return take
    index = _index(step, step.axes, step.shape, src.shape)
    return lambda env: env[name][index(env, env[name].device)]


def scatter(step: Step, run: _Run) -> Compute:
    """target[positions] += value: strided slice-adds where each index sits in one axis, else
    index_put_ with accumulate (through boundary modes, clamped and wrapped positions add up)."""
    value = step.inputs[0]
    out, shape, to = step.out, step.shape, torch_dtype(step.dtype)
    read = _reader(value, step.dtype)
    general = _general_index(step, value.axes, value.shape, shape) if general_positions(step) else None
    slices = None if general else slice_adds(step.args["positions"], value.axes, value.shape)
    index = None if slices is not None or general else _index(step, value.axes, value.shape, shape)
    fresh, in_place = step.args["fresh"], step.into == step.out

    def add(env: Env) -> Tensor:
        v = read(env)
        if fresh:
            t = torch.zeros(shape, dtype=to, device=v.device)
        elif in_place:
            t = env[out]
            if v.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
                v = v.clone()  # the value is the target's own memory (a plain copy passed it along)
        else:
            t = env[out].to(to, copy=True)
        if slices is None:
            idx, mask = general(env, v.device) if general else (index(env, v.device), None)  # type: ignore[misc]
            if mask is not None:  # what pad reads outside is dropped
                v = torch.where(mask, v, v.new_zeros(()))
            t.index_put_(torch.broadcast_tensors(*idx, v)[:-1], v, accumulate=True)
        else:
            order, moves = slices
            v = v.permute(order)
            for target, part in moves:
                t[target].add_(v[part])
        return t

    return add


def delta(step: Step, run: _Run) -> Compute:
    """`delta[i,j]`: 1 where its two positions agree (made once per device, copied per run, as
    later steps may write into it)."""
    r = Ref(DELTA, tuple(index_positions.from_data(t) for t in step.args["positions"]))
    value = index_positions.delta_values(r, step.axes, dict(zip(step.axes, step.shape)))
    to = torch_dtype(step.dtype)
    # delta_values is a read-only broadcast view, which torch.as_tensor warns about: copy it
    values = _PerDevice(lambda device: torch.tensor(np.array(value), dtype=to, device=device))
    return lambda env: values.on(run.device).clone()


def _implicit(kind: str) -> Callable[[Step, _Run], Compute]:
    """fix and solve: the iteration's bookkeeping in numpy, each evaluation of the body a nested
    plan run on the device of the run in progress."""

    def build(step: Step, run: _Run) -> Compute:
        runtime = iterate.Runtime(
            TorchExecutor,
            lambda t: t.detach().cpu().numpy(),
            lambda a: torch.as_tensor(a, device=run.device),
        )
        return iterate.builders(runtime)[kind](step)

    return build


BUILDERS: dict[str, Callable[[Step, _Run], Compute]] = {
    "contract": contract,
    "conv": conv,
    "softmax": softmax,
    "softmax_grad": softmax_grad,
    "layer_norm": layer_norm_grad,
    "product_add": product_add,
    "elementwise": elementwise,
    "terms": terms,
    "reduce": reduce,
    "fill": fill,
    "gate": gate,
    "view": view,
    "gather": gather,
    "scatter": scatter,
    "delta": delta,
    "fix": _implicit("fix"),
    "solve": _implicit("solve"),
}


# ---- the executor ------------------------------------------------------------------------------


_ASSIGN, _ADD_INTO, _ADD = 0, 1, 2  # as in the numpy backend


class TorchExecutor:
    """A Plan made runnable on torch tensors: a loop over its steps' computes, not recorded by autograd."""

    def __init__(self, plan: Plan, device: torch.device | None = None) -> None:
        self.plan = plan
        self.device = device
        self.run_state = _Run()
        self.entries = []
        for step in plan.steps:
            compute, write = _added_into(step), _ASSIGN
            if compute is None:
                compute = builder_for(BUILDERS, step, "torch")(step, self.run_state)  # type: ignore[arg-type]
                if step.accumulate and step.kind != "scatter":
                    write = _ADD_INTO if step.into == step.out else _ADD
            self.entries.append((compute, step.out, write, torch_dtype(step.dtype), step.release))
        if device is None or device.type == "cpu":
            keep_freed_memory(plan.peak_bytes)  # torch's CPU tensors come from glibc's malloc too

    def run(self, env: Env, check_finite: bool = False) -> Env:
        """Run the steps on env; with `check_finite`, the first NaN or Inf is an error at its statement."""
        try:
            self.run_state.device = self._device(env)
            with torch.no_grad():
                return self._loop(env, check_finite)
        except IndexgradError as e:
            raise e.located(self.plan.filename, self.plan.source) from None

    def _device(self, env: Env) -> torch.device:
        """The one device of env's tensors (a CPU number joins any: it is moved), or a user error."""
        device, first = self.device, None
        recording = torch.is_grad_enabled()
        if (device is None or device.type == "cpu") and all(t.is_cpu for t in env.values()):
            if not (recording and any(t.requires_grad for t in env.values())):
                return _CPU  # the common case, in one pass of two flags per tensor
        for name, t in env.items():
            if recording and t.requires_grad:
                raise IndexgradError(
                    f"'{name}' requires grad, but this call is not recorded by torch's autograd: "
                    f"pass {name}.detach() (or call under torch.no_grad()) and use the model's "
                    "backward(), or differentiate with indexgrad.torch.function / Module"
                )
            if t.ndim == 0 and t.device.type == "cpu":
                continue
            if device is None:
                device, first = t.device, name
            elif t.device != device:
                where = f"'{first}' is on {device}" if first else f"the model is on {device}"
                raise IndexgradError(
                    f"'{name}' is on {t.device} but {where}: a program runs on one device; "
                    f"move it with .to('{device}')"
                )
        device = device or torch.device("cpu")
        if device.type != "cpu":
            for name, t in env.items():
                if t.device != device:
                    env[name] = t.to(device)
        return device

    def _loop(self, env: Env, check: bool) -> Env:
        for k, (compute, out, write, to, release) in enumerate(self.entries):
            if write == _ASSIGN:
                env[out] = compute(env)
            elif write == _ADD_INTO:
                env[out].add_(compute(env))
            else:
                env[out] = torch.add(env[out].to(to), compute(env).to(to))
            if check and env[out].dtype != torch.bool and not bool(torch.isfinite(env[out]).all()):
                bad = "NaN" if bool(torch.isnan(env[out]).any()) else "Inf"
                raise IndexgradError(f"this statement produced {bad} in '{out}'", self.plan.steps[k].span)
            for n in release:
                del env[n]
        return env


class TorchBackend:
    """Plans run on torch tensors: on `device` (or the device of the tensors given), and with
    `dtype` (or the dtype of the tensors given) for every float."""

    name = "torch"
    in_place = True
    array_types: tuple[type, ...] = (torch.Tensor, torch.nn.Parameter)

    def __init__(self, device: torch.device | None = None, dtype: np.dtype | None = None) -> None:
        self.device = device
        self.dtype = dtype

    def executor(self, plan: Plan) -> TorchExecutor:
        return TorchExecutor(plan, self.device)

    chain = staticmethod(Chain)

    def asarray(self, value: Any, dtype: Any = None) -> Tensor:
        """value as a tensor on the model's device: a float dtype asked for becomes the model's."""
        want = None if dtype is None else np.dtype(dtype)
        if want is not None and want.kind == "f" and self.dtype is not None:
            want = self.dtype
        if isinstance(value, Tensor):
            if self.device is not None and value.device != self.device and value.ndim:
                raise IndexgradError(
                    f"is on {value.device}, but the model runs on {self.device}; "
                    f"move it with .to('{self.device}')"
                )
            if want is None:
                self._check_float(value.dtype)
                return value
            return value.to(torch_dtype(want))
        typed = isinstance(value, (np.ndarray, np.generic))
        a = np.asarray(value)
        if a.dtype.kind not in "biufc":
            raise IndexgradError(f"holds {a.dtype}, not numbers")
        if a.dtype.kind == "u" and a.dtype.itemsize > 1:
            integers_fit(a, np.dtype(np.int64), "torch", "convert the array to float64")
            a = a.astype(np.int64)  # torch's wider unsigned integers cannot index
        native = a.dtype.newbyteorder("=")
        if native not in _TORCH:  # float128
            raise IndexgradError(f"holds {a.dtype}, which torch does not compute in; convert it to float64")
        if want is None and a.dtype.kind == "f":
            if typed:
                self._check_float(_TORCH[native])
            elif self.dtype is not None:
                want = self.dtype  # a list or a Python number takes the model's dtype
        if not a.flags.writeable or any(s < 0 for s in a.strides) or not a.dtype.isnative:
            a = np.array(a, dtype=a.dtype.newbyteorder("="))  # what torch can share
        t = torch.as_tensor(a, device=self.device)
        return t if want is None else t.to(torch_dtype(want))

    def _check_float(self, dtype: torch.dtype) -> None:
        if self.dtype is not None and dtype.is_floating_point and dtype != torch_dtype(self.dtype):
            raise IndexgradError(
                f"holds {_NUMPY.get(dtype, dtype)}, but the model computes in {self.dtype} "
                f"(compile(..., dtype=...)); convert it with .to(torch.{self.dtype})"
            )

    def describe(self, a: Tensor) -> tuple[tuple[int, ...], np.dtype]:
        """(shape, numpy dtype) of a tensor: what a plan is found by."""
        dtype = _NUMPY.get(a.dtype)
        if dtype is None:
            if not isinstance(a, Tensor):
                raise TypeError(f"not a tensor: {type(a).__name__}")  # the caller converts it
            raise IndexgradError(f"holds {a.dtype}, which is not computed in; convert it: .to(torch.float32)")
        if a.layout is not torch.strided or a.is_nested:  # torch's kernels for these take few of the steps
            kind = "nested" if a.is_nested else str(a.layout).removeprefix("torch.")
            raise IndexgradError(f"is a {kind} tensor; pass a dense one (.to_dense())")
        return tuple(a.shape), dtype

    def to_numpy(self, a: Tensor) -> np.ndarray:
        return a.detach().cpu().numpy()

    def zeros_like(self, a: Tensor) -> Tensor:
        return torch.zeros_like(a)

    def contiguous(self, a: Tensor) -> Tensor:
        return a.contiguous()

    def copy(self, a: Tensor) -> Tensor:
        return a.clone(memory_format=torch.contiguous_format)

    def one(self, dtype: np.dtype) -> Tensor:
        return torch.ones((), dtype=torch_dtype(dtype), device=self.device)


def make_backend(device: Any = None, dtype: Any = None) -> TorchBackend:
    """A torch backend on `device` (a name such as "cpu" or "cuda", or a torch.device) computing in
    `dtype` (float32 or float64, as numpy or torch names it); either None follows the tensors given."""
    return TorchBackend(device_option(device), dtype_option(dtype))


def device_option(device: Any) -> torch.device | None:
    """The torch.device a device= option names (None: follow the tensors), or a user error."""
    if device is None:
        return None
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise IndexgradError(
            f"device={device!r} is not a torch device ({e}); use e.g. 'cpu' or 'cuda'"
        ) from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise IndexgradError(
            f"device={device!r}, but CUDA is not available here (torch.cuda.is_available() is False); "
            "use device='cpu'"
        )
    try:
        d = torch.empty(0, device=d).device  # "cuda" names the current GPU, as tensors say: cuda:0
    except RuntimeError as e:
        raise IndexgradError(f"device={device!r} cannot be used: {e}") from None
    return d


def dtype_option(dtype: Any) -> np.dtype | None:
    """The float dtype a dtype= option names (None: follow the tensors), or a user error."""
    if isinstance(dtype, torch.dtype):
        dtype = _NUMPY.get(dtype, str(dtype))
    return float_option(dtype, "torch", ("float16", "float32", "float64"))


__all__ = ["BUILDERS", "FUNCTIONS", "REDUCTIONS", "TorchBackend", "TorchExecutor", "make_backend"]
