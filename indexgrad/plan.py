"""The plan: primitive statements and the inputs' shapes made into an ordered list of Steps, plain records.

Every decision about how a program runs is a field of a Step: the library call and its operands'
layout, the contraction order, the dead buffer a result is written into, the steps that hand one
buffer along (a group), the names dropped after each step. `str(plan)` prints them one per line;
each backend (indexgrad/backends/) turns the same Steps into calls of its array library.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import opt_einsum as oe

from . import correlate, layernorm, plus, positions, softmax
from .errors import IndexgradError
from .functions import FUNCTIONS
from .iterate import ANDERSON_M, ANDERSON_MOST, DEFAULT_MAX_ITER, DEFAULT_TOL
from .lower import (
    Contract,
    Elementwise,
    Implicit,
    Prim,
    Reduction,
    Terms,
    lower,
    number_value,
    prim_refs,
    prim_statement,
)
from .lower import Operand as Factor
from .matching import plain_product
from .memory import check_fits, human_bytes, memory_limit
from .nodes import (
    DELTA,
    NOSPAN,
    Affine,
    Gather,
    Num,
    Program,
    Ref,
    SizeOf,
    Span,
    is_plain,
    plain_names,
    ref_index_names,
    refs_in,
)
from .printer import format_index, format_number, format_ref, format_statement
from .sizes import Shape, Sizer

# ---- the records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Operand:
    """A tensor a step reads: its name, the index names of its axes, its shape, and its power."""

    name: str
    axes: tuple[str, ...]
    shape: Shape
    dtype: str
    power: float = 1.0

    def __str__(self) -> str:
        text = f"{self.name}[{','.join(self.axes)}]" if self.axes else self.name
        return text if self.power == 1 else f"{text}^{format_number(self.power)}"


@dataclass(frozen=True)
class Step:
    """One call of the array library.

    kind: contract, elementwise, terms, reduce, fill, view, gather, scatter or delta. call: the library
    call chosen (matmul, vecdot, einsum, sum, a function's name, add, ...), with its settings in
    `args`. `into` names an operand that dies here and lends its buffer to the result; steps that
    hand one buffer along share a `group`; `release` names what is dropped after the step.
    """

    kind: str
    call: str
    out: str
    axes: tuple[str, ...]
    shape: Shape
    dtype: str
    inputs: tuple[Operand, ...] = ()
    args: dict[str, Any] = field(default_factory=dict)
    accumulate: bool = False
    into: str | None = None
    group: int | None = None
    release: tuple[str, ...] = ()
    # the primitive statement the step runs (a Ref for a view or gather made for a read)
    statement: Prim | Ref | None = field(default=None, compare=False, repr=False)
    span: Span = field(default=NOSPAN, compare=False, repr=False)

    @cached_property
    def text(self) -> str:
        """The statement as the printed plan shows it; made when first read, as planning never prints."""
        s = self.statement
        if isinstance(s, Ref):
            return f"{format_ref(s)} = {format_ref(s)}"
        return "" if s is None else format_statement(prim_statement(s))

    @property
    def donor(self) -> str | None:
        """The operand whose buffer the call overwrites with its result (`into`, unless that is the
        step's own target, which a `+=` updates in place)."""
        return self.into if self.into != self.out else None

    def describe(self) -> str:
        """The call as a reader would write it: `matmul(x.T, W)`, `relu(h.sum)`, `sum(y, over b)`."""
        return _DESCRIBE.get(self.kind, _describe_call)(self)

    def to_dict(self) -> dict[str, Any]:
        """The step as JSON data: its fields, its text, and the line of its statement."""
        return _jsonable({
            "kind": self.kind, "call": self.call, "text": self.text, "out": self.out, "axes": self.axes,
            "shape": self.shape, "dtype": self.dtype, "inputs": [asdict(o) for o in self.inputs],
            "args": self.args, "accumulate": self.accumulate, "into": self.into, "group": self.group,
            "release": self.release, "line": self.span.line or None,
        })  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """The steps that run a program on inputs of one signature, and what the run returns."""

    mode: str
    inputs: tuple[tuple[str, Shape, str], ...]
    steps: tuple[Step, ...]
    outputs: tuple[str, ...]
    fresh: tuple[str, ...]  # the outputs in buffers the plan made for them alone
    peak_bytes: int
    backend: str = "numpy"
    constants: tuple[tuple[str, float], ...] = ()  # inputs every run gives this value, folded in
    filename: str = field(default="<string>", compare=False)
    source: str = field(default="", compare=False, repr=False)
    # backend="auto": (backend, seconds per run or None, why it was left out), the one chosen first
    auto: tuple[tuple[str, float | None, str], ...] = field(default=(), compare=False)

    # a Plan is the ordered list of its steps (SPEC 7): len(plan), plan[0], list(plan)
    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, k: int | slice) -> Step | tuple[Step, ...]:
        return self.steps[k]

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __str__(self) -> str:
        sig = ", ".join(f"{n}: {d}[{','.join(map(str, s))}]" for n, s, d in self.inputs)
        head = (
            f"{self.mode} plan ({self.backend}) for {sig or 'no inputs'}; peak {human_bytes(self.peak_bytes)}"
        )
        folded = "".join(f"; {n} = {format_number(v)}" for n, v in self.constants)
        lines = [head + folded]
        if self.auto:
            lines.append(_auto_text(self.auto))
        width = max((len(s.text) for s in self.steps), default=0)
        for k, s in enumerate(self.steps, 1):
            notes = []
            if s.into:
                notes.append(f"into {s.into}")
            if s.group is not None:
                notes.append(f"group {s.group}")
            if s.release:
                notes.append("frees " + " ".join(s.release))
            shape = f"{s.dtype}[{','.join(map(str, s.shape))}]"
            line = f"{k:3d}  {s.text:<{width}}  {s.kind:<11} {s.describe()} -> {shape}"
            lines.append(line + (f"  ({'; '.join(notes)})" if notes else ""))
        lines.append("returns " + (", ".join(self.outputs) or "nothing"))
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(
            {
                "mode": self.mode,
                "backend": self.backend,
                "inputs": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in self.inputs],
                "steps": [s.to_dict() for s in self.steps],
                "outputs": list(self.outputs),
                "constants": dict(self.constants),
                "peak_bytes": self.peak_bytes,
                "auto": [{"backend": n, "seconds": t, "left_out": why or None} for n, t, why in self.auto],
            },
            indent=1,
        )


def _auto_text(auto: tuple[tuple[str, float | None, str], ...]) -> str:
    """backend="auto"'s choice as one line: what each backend took per run, and what was left out."""
    chosen = auto[0][0]
    timed = [f"{n} {t * 1e3:.3g} ms" for n, t, why in auto if t is not None]
    text = f"backend auto chose {chosen}" + (f" (per run: {', '.join(timed)})" if timed else "")
    left = [f"{n}: {why}" for n, _, why in auto if why]
    return text + ("; left out: " + "; ".join(left) if left else "")


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Plan):
        return json.loads(v.to_json())
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


# ---- contraction orders (opt_einsum) ---------------------------------------------------------


@dataclass(frozen=True)
class ContractionPlan:
    """A planned contraction: its equation, opt_einsum's path, and its cost."""

    equation: str
    path: list[tuple[int, ...]]
    flops: int
    naive_flops: int
    largest_intermediate: int


_PATHS: dict[tuple[Any, ...], ContractionPlan] = {}
_LOCK = threading.Lock()


def plan_contraction(
    operand_names: list[tuple[str, ...]], out_names: tuple[str, ...], shapes: list[Shape]
) -> ContractionPlan:
    """opt_einsum's path for one contraction on operands with these index names and shapes (cached)."""
    key = (tuple(operand_names), out_names, tuple(shapes))
    hit = _PATHS.get(key)
    if hit is not None:
        return hit
    every = dict.fromkeys([n for names in operand_names for n in names] + list(out_names))
    sym = {n: oe.get_symbol(k) for k, n in enumerate(every)}  # einsum's letters for index names
    eq = ",".join("".join(sym[n] for n in names) for names in operand_names)
    eq += "->" + "".join(sym[n] for n in out_names)
    if len(shapes) == 1:
        flops = int(np.prod(shapes[0], dtype=np.int64)) if shapes[0] else 1
        plan = ContractionPlan(eq, [(0,)], flops, flops, flops)
    else:
        path, info = oe.contract_path(eq, *shapes, shapes=True, optimize="auto")
        plan = ContractionPlan(
            eq, list(path), int(info.opt_cost), int(info.naive_cost), int(info.largest_intermediate)
        )
    with _LOCK:
        _PATHS[key] = plan
    return plan


def clear_cache() -> None:
    with _LOCK:
        _PATHS.clear()
        _LAYOUTS.clear()


# ---- how two operands meet in one library call -----------------------------------------------


_LAYOUTS: dict[tuple[Any, ...], tuple[str, dict[str, Any]]] = {}


def pair_layout(
    a: tuple[str, ...], b: tuple[str, ...], out: tuple[str, ...], size: dict[str, int]
) -> tuple[str, dict[str, Any]]:
    """`_pair_layout`, remembered per index names and sizes (a network's layers ask alike)."""
    key = (a, b, out, tuple(map(size.__getitem__, a)), tuple(map(size.__getitem__, b)))
    hit = _LAYOUTS.get(key)
    if hit is None:
        hit = _LAYOUTS[key] = _pair_layout(a, b, out, size)
    return hit[0], dict(hit[1])


def _pair_layout(
    a: tuple[str, ...], b: tuple[str, ...], out: tuple[str, ...], size: dict[str, int]
) -> tuple[str, dict[str, Any]]:
    """The call that contracts two operands (axes `a` and `b`) into `out`, and how it lays them out.

    Returns (call, args): call is matmul (a matrix or a batch of matrices), vecdot (one dot
    product per batch entry) or multiply (nothing summed between them: a broadcast product).
    args: `swap` (multiply b by a), per operand `*_sum` (axes summed before the call, which
    only that operand has), `*_perm` and `*_shape` (the transpose and reshape that follow), and
    `res_shape`, `res_perm` for the result. Every name in `out` must be in a or b.
    """
    a_set, b_set, o_set = set(a), set(b), set(out)
    batch = [n for n in out if n in a_set and n in b_set]
    left = [n for n in out if n in a_set and n not in b_set]
    right = [n for n in out if n in b_set and n not in a_set]
    inner = [n for n in a if n in b_set and n not in o_set]
    if inner and batch + right + left == list(out) and batch + left + right != list(out):
        # C = A B would come out transposed: compute it as B^T A^T, born in order
        call, args = pair_layout(b, a, out, size)
        return call, {**args, "swap": not args["swap"]}
    a_sum = tuple(k for k, n in enumerate(a) if n not in b_set and n not in o_set)
    b_sum = tuple(k for k, n in enumerate(b) if n not in a_set and n not in o_set)
    a_rest = [n for n in a if n in b_set or n in o_set]
    b_rest = [n for n in b if n in a_set or n in o_set]

    def prep(rest: list[str], order: list[str], shape: tuple[int, ...]) -> tuple[Any, Any]:
        perm = tuple(rest.index(n) for n in order)
        moved = tuple(size[rest[k]] for k in perm)
        return (None if perm == tuple(range(len(perm))) else perm), (None if moved == shape else shape)

    nb, nl, nr, nk = (math.prod(size[n] for n in g) for g in (batch, left, right, inner))
    res_shape = res_perm = None
    if not inner:  # a broadcast product: each operand in out's order, length 1 where it lacks a name
        call, a_order, b_order = "multiply", [n for n in out if n in a_set], [n for n in out if n in b_set]
        a_rows = tuple(size[n] if n in a_set else 1 for n in out)
        b_rows = tuple(size[n] if n in b_set else 1 for n in out)
    elif not left and not right:  # one dot product (per batch entry)
        call, a_order, b_order = "vecdot", batch + inner, batch + inner
        a_rows = b_rows = (nb, nk) if batch else (nk,)
        res_shape = None if len(batch) <= 1 else tuple(size[n] for n in batch)
    else:
        call, a_order, b_order = "matmul", batch + left + inner, batch + inner + right
        a_rows, b_rows = ((nb, nl, nk), (nb, nk, nr)) if batch else ((nl, nk), (nk, nr))
        mid = batch + left + right
        natural = ((nb,) if batch else ()) + (nl, nr)
        res_shape = tuple(size[n] for n in mid)
        res_shape = None if res_shape == natural else res_shape
        res_perm = tuple(mid.index(n) for n in out)
        res_perm = None if res_perm == tuple(range(len(res_perm))) else res_perm
    a_perm, a_shape = prep(a_rest, a_order, a_rows)
    b_perm, b_shape = prep(b_rest, b_order, b_rows)
    return call, {
        "swap": False, "a_sum": a_sum, "a_perm": a_perm, "a_shape": a_shape,
        "b_sum": b_sum, "b_perm": b_perm, "b_shape": b_shape, "res_shape": res_shape, "res_perm": res_perm,
    }  # fmt: skip


# OpenBLAS multiplies A Bᵀ slowly when A has few rows: 16 x 1024 times (1024 x 1024)ᵀ takes
# 1.1 ms in float32 on one core, B Aᵀ (then read transposed) 0.5 ms; 12 x 784 times (256 x 784)ᵀ,
# 142 µs against 96. Below about a million multiply-adds the difference is a few µs either way.
_FEW_ROWS, _WORTH_SWAPPING = 16, 1 << 20


def few_rows_instead(
    a: tuple[str, ...], b: tuple[str, ...], out: tuple[str, ...], size: dict[str, int]
) -> tuple[str, dict[str, Any]] | None:
    """For the numpy backend: C = A Bᵀ of matrices whose contracted names trail both (C[l,r] =
    A[l,k] B[r,k]), when A has at most 16 rows and B more, as the product B Aᵀ and its transposed
    view (`res_perm`), which OpenBLAS runs up to twice as fast; None for any other product."""
    a_set, b_set = set(a), set(b)
    left = [n for n in out if n in a_set and n not in b_set]
    right = [n for n in out if n in b_set and n not in a_set]
    inner = [n for n in a if n in b_set and n not in out]
    if not (left and right and inner) or list(out) != left + right:
        return None
    if list(a) != left + inner or list(b) != right + inner:
        return None
    nl, nr, nk = (math.prod(size[n] for n in g) for g in (left, right, inner))
    if not (nl <= _FEW_ROWS < nr and nl * nr * nk >= _WORTH_SWAPPING):
        return None
    mid = tuple(right + left)
    call, args = pair_layout(b, a, mid, size)
    return call, {**args, "swap": not args["swap"], "res_perm": tuple(mid.index(n) for n in out)}


def sum_product_instead(layout: dict[str, Any], a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether a vecdot laid out by `pair_layout` runs better on torch as the product of its
    operands as they lie, summed (`sum_product`): torch's vecdot is that product and sum itself, so
    the copies that put the operands in rows (`a[b,t,d] c[b,t,d] -> [d]`) would be all it adds."""
    moved = layout["a_perm"] is not None or layout["b_perm"] is not None
    distinct = len(set(a)) == len(a) and len(set(b)) == len(b)  # no diagonal (a[i,i])
    return moved and distinct and not layout["a_sum"] and not layout["b_sum"]


def basic_index(positions: tuple[Any, ...], size: dict[str, int]) -> tuple[int | slice, ...] | None:
    """A view's positions (its `positions` arg) as numbers and slices, `x[c + s*j, k]` as
    `x[c : c + s*(J-1) + 1 : s, :]`, when each axis holds one index name at most, with a positive
    step, and no name holds two axes (the view's axes then come out in order); else None."""
    seen: set[str] = set()
    out: list[int | slice] = []
    for p in positions:
        if p[0] != "affine" or len(p[2]) > 1:
            return None
        if not p[2]:
            out.append(p[1])
            continue
        ((c, n),) = p[2]
        if c <= 0 or n in seen:
            return None
        seen.add(n)
        out.append(slice(p[1], p[1] + c * (size[n] - 1) + 1, c))
    return tuple(out)


# ---- products that read through index arithmetic: the copy a matmul needs, laid out well --------


@dataclass(frozen=True)
class Memory:
    """How an operand of a product lies in memory: per index name, how many elements one step
    along it moves; `view`: a strided view (index arithmetic), which a matmul reads only copied."""

    strides: dict[str, int]
    view: bool = False


def plain_memory(axes: tuple[str, ...], shape: Shape) -> Memory:
    """A C-ordered array's strides, in elements, by index name."""
    strides, step = {}, 1
    for n, d in zip(reversed(axes), reversed(shape)):
        strides[n] = step
        step *= d
    return Memory(strides)


# A copy whose innermost run is one element apart and at least this long streams through
# memory; anything else (a gather of short runs) costs about PENALTY times as much per element.
_RUN, _PENALTY = 16, 4
_PER_BATCH = 256  # what one more matrix of a batched matmul costs, in elements copied


def copy_layout(
    a: tuple[str, ...],
    b: tuple[str, ...],
    out: tuple[str, ...],
    size: dict[str, int],
    mem: tuple[Memory, Memory],
) -> dict[str, Any] | None:
    """A matmul of a and b into `out` laid out for the copy it needs, or None when nothing is summed.

    For products reading a strided view (a convolution's `x[b,ch,r+u,c+v]`, im2col) or feeding a
    scatter. Beyond `pair_layout`, an operand is copied in the order that streams through its
    memory and handed to matmul transposed when that order is the matrix's transpose (`*_flip`);
    out's leading names may be batch axes that only one operand has (the other is broadcast,
    `w[o,ch·u·v] @ x_cols[b][ch·u·v, r·c]`), so that the result is born in out's order; and a
    summed name leading both operands may be a batch axis summed after the matmul (`sum_batch`),
    so that neither operand is copied for it (a weight gradient: Σ over b of one matmul per
    image). Each layout is priced by the elements copied (a copy that does not stream costs
    more), the result's transposition and sum, and the matrices batched; the cheapest is taken.
    """
    best: tuple[float, dict[str, Any]] | None = None
    for swap in (False, True):
        (fx, fm), (sx, sm) = ((b, mem[1]), (a, mem[0])) if swap else ((a, mem[0]), (b, mem[1]))
        f_set, s_set = set(fx), set(sx)
        inner = [n for n in fx if n in s_set and n not in out]
        if not inner:
            return None
        shared = [n for n in out if n in f_set and n in s_set]
        firsts = [n for n in out if n in f_set and n not in s_set]
        seconds = [n for n in out if n in s_set and n not in f_set]
        layouts = [(shared, firsts, seconds)]
        for k in range(len(out)):  # the shortest prefix of out after which come firsts, then seconds
            rest = out[k:]
            j = next((i for i, n in enumerate(rest) if n not in firsts), len(rest))
            if 0 < j < len(rest) and all(n in seconds for n in rest[j:]) and set(shared) <= set(out[:k]):
                layouts.append((list(out[:k]), list(rest[:j]), list(rest[j:])))
                break
        summed = [[]]
        if inner[0] == fx[0] == sx[0] and len(inner) > 1:
            summed.append([inner[0]])
        plain = sx if not sm.view else fx
        for batch, left, right in layouts:
            if not left or not right:
                continue
            for over in summed:
                contracted = [n for n in plain if n in inner and n not in over]
                args, cost = _priced(fx, fm, sx, sm, batch + over, left, contracted, right, size)
                args |= {"swap": swap, "sum_batch": tuple(range(len(batch), len(batch) + len(over)))}
                mid = batch + left + right
                res_perm = tuple(mid.index(n) for n in out)
                natural = tuple(size[n] for n in batch) + (math.prod(size[n] for n in left),) + (
                    math.prod(size[n] for n in right),
                )
                res_shape = tuple(size[n] for n in mid)
                args["res_shape"] = None if res_shape == natural else res_shape
                args["res_perm"] = None if res_perm == tuple(range(len(res_perm))) else res_perm
                total = math.prod(size[n] for n in batch + over) * (
                    math.prod(size[n] for n in left) * math.prod(size[n] for n in right)
                )
                cost += _PER_BATCH * math.prod(size[n] for n in batch + over)
                cost += total if over else 0
                cost += 2 * math.prod(size[n] for n in out) if args["res_perm"] is not None else 0
                if best is None or cost < best[0]:
                    best = (cost, args)
    return None if best is None else best[1]


def _priced(
    fx: tuple[str, ...],
    fm: Memory,
    sx: tuple[str, ...],
    sm: Memory,
    batch: list[str],
    left: list[str],
    inner: list[str],
    right: list[str],
    size: dict[str, int],
) -> tuple[dict[str, Any], float]:
    """The first operand as [batch, left, inner] and the second as [batch, inner, right], each
    copied straight or transposed, whichever costs less; the settings and the elements' cost."""
    args: dict[str, Any] = {}
    cost = 0.0
    for key, axes, memory, rows, cols in (("a", fx, fm, left, inner), ("b", sx, sm, inner, right)):
        options = []
        for flip in (False, True):
            own = [n for n in batch if n in axes]
            alone = tuple(k for k, n in enumerate(axes) if n not in batch + rows + cols)
            rest = [n for n in axes if n in batch + rows + cols]
            order = own + (cols + rows if flip else rows + cols)
            perm = tuple(rest.index(n) for n in order)
            groups = (cols, rows) if flip else (rows, cols)
            shape = tuple(size[n] if n in axes else 1 for n in batch if own) + tuple(
                math.prod(size[n] for n in g) for g in groups
            )  # an operand without batch axes is one matrix, which matmul broadcasts
            moved = tuple(size[n] for n in order)
            identity = perm == tuple(range(len(perm)))
            price = 0.0
            if memory.view or not identity:
                last = order[-1]
                streams = memory.strides.get(last) == 1 and size[last] >= _RUN and not alone
                price = math.prod(size[n] for n in rest) * (1 if streams else _PENALTY)
            options.append((price, flip, {
                f"{key}_sum": alone, f"{key}_perm": None if identity else perm,
                f"{key}_shape": None if shape == moved else shape, f"{key}_flip": flip,
                f"{key}_im2col": tuple(tuple(g) for g in (own, *groups)) if memory.view else None,
            }))  # fmt: skip
        price, _, chosen = min(options, key=lambda o: (o[0], o[1]))
        args |= chosen
        cost += price
    return args, cost


# ---- the planner -------------------------------------------------------------------------------


Dtypes = dict[str, np.dtype]


def make_plan(
    prims: list[Prim],
    shapes: dict[str, Shape],
    dtypes: Dtypes,
    keep: set[str],
    *,
    mode: str = "forward",
    temporaries: set[str] | None = None,
    backend: str = "numpy",
    in_place: bool = True,
    constants: dict[str, float] | None = None,
    iterations: dict[str, Any] | None = None,
    numpy_layouts: bool = True,
    forward: list[Prim] | None = None,
    filename: str = "<string>",
    source: str = "",
) -> Plan:
    """The Plan that runs `prims` on inputs of these shapes and dtypes, returning the names in `keep`.

    Sizes every statement (a size error is located at what the user wrote), chooses each step's
    call, then decides what is dropped when, which dead buffers results are written into
    (`in_place`: whether the backend updates arrays in place), and refuses a plan whose peak
    memory exceeds the limit. `constants` are scalar inputs whose value every run gives (the seed
    1 of a scalar loss): steps fold them in as numbers of the input's dtype. `iterations` holds
    the tolerance and iteration limit of fix and solve (`tol`, `max_iter`; None: the defaults).
    `numpy_layouts`: on the numpy backend, lay products out with `copy_layout` (settings only its
    builders read; code generation plans without them). `forward`: the primitives that made the
    forward values a backward plan reads, which a backend's recognised patterns may rely on.
    """
    try:
        planner = _Planner(
            prims, dict(shapes), dict(dtypes), temporaries or set(), constants=constants, backend=backend,
            in_place=in_place, iterations=iterations, numpy_layouts=numpy_layouts,
        )  # fmt: skip
        steps = _empties(planner.steps())
        if backend == "torch":  # torch's own calls: conv, softmax and its gradient, layer norm's, addmm
            steps = softmax.softmax_grads(softmax.softmaxes(correlate.correlations(steps), keep), keep)
            steps = plus.products_plus(layernorm.layer_norm_grads(steps, forward or []), keep)
            steps = _stored_as_read(steps, keep)
        steps = _masks(steps, keep, gate=backend == "torch")
        steps, peak, fresh = _buffers(steps, set(shapes), keep, in_place)
    except IndexgradError as e:
        raise e.located(filename, source) from None
    inputs = tuple((n, tuple(s), _dtype_name(dtypes[n])) for n, s in shapes.items())
    outputs = tuple(n for n in dict.fromkeys([*shapes, *(s.out for s in steps)]) if n in keep)
    fresh_outputs = tuple(n for n in outputs if n in fresh)
    folded = tuple((constants or {}).items())
    plan = Plan(mode, inputs, tuple(steps), outputs, fresh_outputs, peak, backend, folded, filename, source)
    _guard_memory(plan)
    return plan


def shapes_after(
    prims: list[Prim], shapes: dict[str, Shape], dtypes: Dtypes, temporaries: set[str] | None = None
) -> tuple[dict[str, Shape], Dtypes, list[dict[str, int]]]:
    """The shape and dtype of every name once `prims` have run on inputs of these shapes and
    dtypes, and each primitive's index sizes."""
    planner = _Planner(prims, dict(shapes), dict(dtypes), temporaries or set(), build=False)
    planner.steps()
    return planner.shapes, planner.dtypes, planner.sized


_DTYPE_NAMES: dict[np.dtype, str] = {}


def _dtype_name(d: np.dtype) -> str:
    """str(d), remembered: numpy builds the name anew on every call."""
    name = _DTYPE_NAMES.get(d)
    if name is None:
        name = _DTYPE_NAMES[d] = str(d)
    return name


_DTYPES: dict[str, np.dtype] = {}


def _dtype(name: str) -> np.dtype:
    """np.dtype(name), remembered: a step holds its dtype's name, and numpy parses it each call."""
    d = _DTYPES.get(name)
    if d is None:
        d = _DTYPES[name] = np.dtype(name)
    return d


_RESULT_DTYPES: dict[tuple[np.dtype, ...], np.dtype] = {}


def _result_dtype(dtypes: list[np.dtype]) -> np.dtype:
    """The float dtype of a statement reading these dtypes (remembered: np.result_type takes a µs)."""
    key = tuple(dtypes)
    d = _RESULT_DTYPES.get(key)
    if d is None:
        floats = [d for d in dtypes if d.kind in "fc"]
        d = _RESULT_DTYPES[key] = np.result_type(*floats) if floats else np.dtype(np.float64)
    return d


class _Planner:
    """Turns primitive statements into steps, keeping the shape and dtype of every name."""

    def __init__(
        self,
        prims: list[Prim],
        shapes: dict[str, Shape],
        dtypes: Dtypes,
        temps: set[str],
        *,
        build: bool = True,
        constants: dict[str, float] | None = None,
        backend: str = "numpy",
        in_place: bool = True,
        iterations: dict[str, Any] | None = None,
        numpy_layouts: bool = True,
    ) -> None:
        self.prims = prims
        self.views: dict[str, Memory] = {}  # strided views made so far: their source's strides
        self.constants = constants or {}
        self.shapes = shapes
        self.dtypes = dtypes
        self.sizer = Sizer(prims, temps)
        self.sized: list[dict[str, int]] = []
        self.out: list[Step] = []
        self.backend, self.in_place, self.iterations = backend, in_place, iterations or {}  # nested plans
        self.layouts = backend == "numpy" and numpy_layouts  # copy_layout's settings (numpy's builders')
        self.build = build  # False: only the shape and dtype of what each statement writes (shapes_after)

    def steps(self) -> list[Step]:
        if self.sizer.added and not self.sizer.growing:
            # a tensor several '+=' define is as long as the farthest writes: size them all first
            temporaries = self.sizer.temporaries
            first = _Planner(self.prims, dict(self.shapes), dict(self.dtypes), temporaries, build=False)
            first.sizer.growing = True
            first.steps()
            self.sizer.grown = first.sizer.grown
        for k, p in enumerate(self.prims):
            try:
                self.prim(k, p)
            except IndexgradError as e:
                if e.span is None and p.span.line:
                    e.span = p.span
                raise
        return self.out

    def prim(self, k: int, p: Prim) -> None:
        if isinstance(p, Implicit):
            step, sizes = plan_implicit(self, p)
            self.sized.append(sizes)
            self.emit(step)
            return
        sizes = self.sizes = self.sizer.sizes(k, self.shapes, self.dtypes)
        self.sized.append(sizes)
        if isinstance(p, Reduction) and p.reducer in ("max", "min"):
            for n in p.indices:
                if sizes[n] == 0:
                    raise IndexgradError(f"{p.reducer}[{n}] over an empty range: '{n}' has size 0", p.span)
        out_axes = ref_index_names(p.out)
        shape = tuple(sizes[n] for n in out_axes)
        scatter = not is_plain(p.out)
        target = p.out.name
        exists = target in self.shapes
        # the statement's steps compute in the float dtype of the tensors it reads (delta too, which
        # has no array; constants folded in keep their dtype), and `+=` keeps the wider of that and
        # its target's; a first scatter-add into x.grad, the wider of x's, as `x + value` would be
        self.value_dtype = _result_dtype([self.dtypes[r.name] for r in prim_refs(p) if r.name in self.dtypes])
        written = self.value_dtype
        if exists and (scatter or p.op == "+="):
            written = np.result_type(self.dtypes[target], written)
        elif scatter and (base := target.rsplit(".", 1)[0]) in self.dtypes:
            written = np.result_type(self.dtypes[base], written)
        target_shape = self.sizer.out_shape(k, self.shapes, sizes) if scatter else shape
        if not self.build:
            self.shapes[target], self.dtypes[target] = target_shape, written
            return
        self.span, self.statement = p.span, p
        name = format_ref(p.out) if scatter else target
        self.scattered = scatter and self.layouts
        if isinstance(p, Contract):
            if self.scattered:  # a value laid out for the scatter's slice-adds
                out_axes = _scatter_order(p.out, sizes)
                shape = tuple(sizes[n] for n in out_axes)
            step = self.contract(p, name, out_axes, shape)
        elif isinstance(p, Elementwise):
            step = self.elementwise(p, name, out_axes, shape)
        elif isinstance(p, Terms):
            step = self.terms(p, name, out_axes, shape)
        else:
            arg = self.read(p.arg)
            args = {"over": tuple(p.indices), "order": out_axes + tuple(p.indices)}
            step = self.step("reduce", p.reducer, name, out_axes, shape, (arg,), args)
        if exists and p.op == "+=" and not scatter:
            step = _with(step, accumulate=True, dtype=_dtype_name(written))
        self.emit(step)
        if scatter:
            self.scatter(p, step, target_shape, written)

    # ---- building steps

    def step(
        self,
        kind: str,
        call: str,
        out: str,
        axes: tuple[str, ...],
        shape: Shape,
        inputs: tuple[Operand, ...] = (),
        args: dict[str, Any] | None = None,
    ) -> Step:
        """A step of the statement being planned, in its dtype."""
        return Step(
            kind, call, out, axes, shape, _dtype_name(self.value_dtype), inputs, args or {},
            statement=self.statement, span=self.span,
        )  # fmt: skip

    def emit(self, step: Step) -> None:
        self.out.append(step)
        self.shapes[step.out] = step.shape
        self.dtypes[step.out] = _dtype(step.dtype)

    def operand(self, name: str, axes: tuple[str, ...], power: float = 1.0) -> Operand:
        return Operand(name, axes, self.shapes[name], _dtype_name(self.dtypes[name]), power)

    def read(self, r: Ref, power: float = 1.0) -> Operand:
        """An operand for r: the array itself when every position is a plain name, else a view or
        a gather made by a step of its own (its name is r's text)."""
        axes = ref_index_names(r)
        if r.name == DELTA:
            return self.delta(r, axes, power)
        if is_plain(r):
            return self.operand(r.name, axes, power)
        name = format_ref(r)
        shape = tuple(self.sizes[n] for n in axes)
        source = self.operand(r.name, tuple(f"{r.name}{a}" for a in range(len(r.indices))))
        # index arithmetic with // or %, and labels, are gathered; sums of names (through a
        # boundary mode or not) are strided views
        gather = any(isinstance(i, Gather) or i.parts for i in r.indices)
        step = Step(
            "gather" if gather else "view",
            "take" if gather else "strided",
            name,
            axes,
            shape,
            _dtype_name(self.dtypes[r.name]),
            (source, *self.labels(r)),
            {"positions": _positions(r, self.sizes, source.shape)},
            statement=r,
            span=r.span if r.span.line else self.span,
        )
        self.emit(step)
        if not gather:
            self.views[name] = view_memory(step)
        return self.operand(name, axes, power)

    def labels(self, r: Ref) -> tuple[Operand, ...]:
        """The label tensors r's positions read (`l[b]` in `P[b,l[b]]`)."""
        return tuple(self.operand(i.ref.name, ref_index_names(i.ref)) for i in r.indices if type(i) is Gather)

    def delta(self, r: Ref, axes: tuple[str, ...], power: float) -> Operand:
        """`delta[i,j]`, made for this statement's sizes: 1 where its two positions agree."""
        name = format_ref(r)
        shape = tuple(self.sizes[n] for n in axes)
        args = {"positions": _positions(r)}
        self.emit(self.step("delta", "equal", name, axes, shape, (), args))
        return self.operand(name, axes, power)

    def scatter(self, p: Prim, value: Step, shape: Shape, dtype: np.dtype) -> None:
        """`x.grad[j+k] += value`: a scatter-add into x.grad (zeros first, when it holds nothing)."""
        target = p.out.name
        exists = target in self.shapes
        step = Step(
            "scatter",
            "add_at",
            target,
            tuple(f"{target}{a}" for a in range(len(shape))),
            shape,
            _dtype_name(dtype),
            (self.operand(value.out, value.axes), *self.labels(p.out)),
            {"positions": _positions(p.out, self.sizes, shape), "fresh": not exists},
            accumulate=exists,
            statement=p,
            span=self.span,
        )
        self.emit(step)

    def constant(self, f: Factor) -> float | None:
        """f's value when it is known while planning: a number, a size, or a constant tensor (the
        seed 1 of a scalar loss); None for a tensor."""
        if isinstance(f, Num):
            return f.value
        if isinstance(f, SizeOf):
            return float(self.sizes[f.index])
        if not isinstance(f, Ref):  # numbers and sizes, combined: `sqrt(size[e])`
            return number_value(f, self.sizes)
        if f.name in self.constants and not f.indices:
            return self.constants[f.name]
        return None

    def fill(self, name: str, axes: tuple[str, ...], shape: Shape, value: float) -> Step:
        return self.step("fill", "full", name, axes, shape, (), {"value": value})

    def contract(self, p: Contract, name: str, out: tuple[str, ...], shape: Shape) -> Step:
        coef = p.coef
        ops: list[Operand] = []
        for f, k in p.factors:
            v = self.constant(f)
            if v is None:
                ops.append(self.read(f, k))  # type: ignore[arg-type]
            else:
                coef *= _power(v, k)
        if not ops:
            return self.fill(name, out, shape, coef)
        present = {n for o in ops for n in o.axes}
        kept = tuple(n for n in out if n in present)
        args: dict[str, Any] = {"coef": coef, "kept": kept}

        def make(call: str, **more: Any) -> Step:
            return self.step("contract", call, name, out, shape, tuple(ops), args | more)

        if len(ops) == 1:
            (o,) = ops
            summed = tuple(k for k, n in enumerate(o.axes) if n not in kept)
            rest = [n for n in o.axes if n in kept]
            perm = tuple(rest.index(n) for n in kept)
            if o.power == 2 and not kept:
                return make("dot")
            if o.power == 2 and summed:  # Σ a² per entry: one dot product of a with itself each
                call, layout = pair_layout(o.axes, o.axes, kept, self.sizes)
                if call == "vecdot":
                    ops = [replace(o, power=1.0)] * 2
                    return make("vecdot", **layout)
            if not summed:
                return make("copy", perm=perm)
            if o.power == 1 and perm == tuple(range(len(perm))) and _ones_sum(o, summed, self.value_dtype):
                return make("ones_sum", over=summed)
            return make("sum", over=summed, perm=perm)
        if len(ops) == 2:
            a, b = ops
            if kept == out and a.power == b.power == 1 and a.name != b.name:
                if not a.axes and b.axes == out or not b.axes and a.axes == out:
                    return make("scale", scalar=0 if not a.axes else 1)
            if self.layouts and (self.scattered or a.name in self.views or b.name in self.views):
                mem = tuple(self.views.get(o.name) or plain_memory(o.axes, o.shape) for o in (a, b))
                layout = copy_layout(a.axes, b.axes, kept, self.sizes, mem)  # type: ignore[arg-type]
                if layout is not None:
                    return make("matmul", **layout)
            call, layout = pair_layout(a.axes, b.axes, kept, self.sizes)
            if self.backend == "numpy":
                call, layout = few_rows_instead(a.axes, b.axes, kept, self.sizes) or (call, layout)
            if call == "vecdot" and self.backend == "torch" and sum_product_instead(layout, a.axes, b.axes):
                return make("sum_product")
            return make(call, **layout)
        cp = plan_contraction([o.axes for o in ops], kept, [o.shape for o in ops])
        return make("einsum", equation=cp.equation, path=cp.path)

    def elementwise(self, p: Elementwise, name: str, out: tuple[str, ...], shape: Shape) -> Step:
        ops: list[Operand] = []
        consts: list[float | None] = []
        for a in p.args:
            v = self.constant(a)
            if v is None:
                ops.append(self.read(a))  # type: ignore[arg-type]
            consts.append(v)
        args = {"constants": tuple(consts)}
        return self.step("elementwise", p.func, name, out, shape, tuple(ops), args)

    def terms(self, p: Terms, name: str, out: tuple[str, ...], shape: Shape) -> Step:
        ops: list[Operand] = []
        coefs: list[float] = []
        const = 0.0
        for c, u in p.terms:
            v = self.constant(u)
            if v is None:
                ops.append(self.read(u))  # type: ignore[arg-type]
                coefs.append(c)
            else:
                const += c * v
        if not ops:
            return self.fill(name, out, shape, const)
        call = "add" if len(ops) == 2 and coefs[0] == 1 and coefs[1] in (1, -1) and const == 0 else "terms"
        if call == "add" and coefs[1] == -1:
            call = "subtract"
        args = {"coefs": tuple(coefs), "constant": const}
        return self.step("terms", call, name, out, shape, tuple(ops), args)


def _power(v: float, k: float) -> float:
    """v**k for a number, with IEEE results where Python raises: 0**-1 is inf (a size of 0)."""
    try:
        return v**k
    except ZeroDivisionError:
        return math.inf


def _ones_sum(o: Operand, summed: tuple[int, ...], dtype: np.dtype) -> bool:
    """A sum over the leading or trailing axes of a float32/float64 array of two or more axes: one
    BLAS product with a vector of ones (about twice as fast as a reduction)."""
    nd, k = len(o.shape), len(summed)
    if dtype not in (np.float32, np.float64) or nd < 2 or k >= nd or 0 in o.shape:
        return False
    return summed in (tuple(range(k)), tuple(range(nd - k, nd)))


def view_memory(step: Step) -> Memory:
    """A strided view's strides by index name, in elements of its C-ordered source."""
    source = plain_memory(step.inputs[0].axes, step.inputs[0].shape)
    strides = dict.fromkeys(step.axes, 0)
    for axis, position in zip(step.inputs[0].axes, step.args["positions"]):
        for c, n in position[2]:  # a sum of names: its terms
            strides[n] += c * source.strides[axis]
    return Memory(strides, view=True)


def _scatter_order(r: Ref, size: dict[str, int]) -> tuple[str, ...]:
    """The axes of the value a scatter-add `x.grad[b,ch,r+u,c+v] += ...` adds, in the order the
    slice-adds read best: names alone in a position, the kernel's offsets, then the names each
    slice runs along (b, ch, u, v, r, c). The reference's own order where a name is in two
    positions or a position is not a sum of names."""
    alone: list[str] = []
    offsets: list[str] = []
    along: list[str] = []
    for i in r.indices:
        if not isinstance(i, Affine) or getattr(i, "parts", ()):  # labels, // and %: as written
            return ref_index_names(r)
        names = [n for _, n in i.terms]
        if len(names) == 1:
            alone += names
        elif names:  # each slice runs along the largest name, as the numpy backend's scatter does
            ahead = [(size[n], c, n) for c, n in i.terms if c > 0]
            main = max(ahead)[2] if ahead else None
            along += [n for n in names if n == main]
            offsets += [n for n in names if n != main]
    order = tuple(alone + offsets + along)
    return order if sorted(order) == sorted(ref_index_names(r)) else ref_index_names(r)


def _positions(r: Ref, sizes: Mapping[str, int] | None = None, extents: Shape = ()) -> tuple[Any, ...]:
    """Per axis of r, its position as data: ("affine", const, ((coef, name), ...)), ("label", label
    name, its axes), or the general forms of positions.as_data; given the sizes and the axes'
    extents, a boundary mode's constant near the axis (positions.nearest)."""
    at = r.indices if sizes is None else [positions.nearest(i, sizes, e) for i, e in zip(r.indices, extents)]
    return tuple(positions.as_data(i) for i in at)


# ---- passes over steps -------------------------------------------------------------------------


def _with(s: Step, **changes: Any) -> Step:
    """s with some fields changed: dataclasses.replace without running __init__ again (Step has
    no __post_init__), about five times faster, for passes that touch every step."""
    new = object.__new__(Step)
    new.__dict__.update(s.__dict__, **changes)
    return new


def _empties(steps: list[Step]) -> list[Step]:
    """Steps that compute nothing made fills of 0: a result with no entries, a product summed over
    an index of size 0, a scatter-add of no values. Every backend then runs them alike, where a
    library's kernels (convolutions, stacked slices) refuse empty windows and batches."""
    out = []
    for s in steps:
        empty = 0 in s.shape and s.kind != "fill"
        if s.kind == "contract":
            empty = empty or any(0 in o.shape for o in s.inputs)
        elif s.kind == "scatter":
            empty = empty or 0 in s.inputs[0].shape
        elif s.kind in ("view", "gather") and not empty and 0 in s.inputs[0].shape:
            empty = _outside_empty_axes(s)
        out.append(_with(s, kind="fill", call="full", inputs=(), args={"value": 0.0}) if empty else s)
    return out


def _outside_empty_axes(s: Step) -> bool:
    """Whether a read of a tensor with an axis of size 0 reads only the zeros pad(...) puts
    outside it; clamp(...) and wrap(...) have no entry to read there, an error at the read."""
    source = s.inputs[0]
    for extent, p in zip(source.shape, s.args["positions"]):
        at = positions.from_data(p)
        mode = at.mode if isinstance(at, Affine) and not extent else None
        if mode in ("clamp", "wrap"):
            raise IndexgradError(
                f"{mode}(...) reads an axis of '{source.name}' that has size 0, where there is no "
                "entry to repeat; give the tensor entries, or read through pad(...) for zeros",
                s.span,
            )
        if not extent and mode != "pad":
            return False  # a label's range check says what is wrong
    return True


def _masks(steps: list[Step], keep: set[str], gate: bool = False) -> list[Step]:
    """`T = step(u)` whose only reader is the next step, a product `g T` with nothing summed, made a
    boolean mask (`u > 0`): the product then has the same values and dtype, without the array of
    0s and 1s. g must be a float array at least as wide as u; T must not be kept (a tensor the
    program defines is returned, and read by its derivatives, as the floats it is). With `gate`
    (torch, whose products with booleans are slow), a product of g and the mask on the same axes,
    neither transposed nor scaled, is one step instead: `g step(u)`, u > 0 compared into floats."""
    reads: dict[str, int] = {}
    for s in steps:
        for o in s.inputs:
            reads[o.name] = reads.get(o.name, 0) + 1
    out: list[Step | None] = list(steps)
    for k, s in enumerate(steps[:-1]):
        nxt = steps[k + 1]
        if not (s.kind == "elementwise" and s.call == "step" and len(s.inputs) == 1 and not s.accumulate):
            continue
        if s.out in keep:
            continue
        if not (nxt.kind == "contract" and nxt.call in ("multiply", "scale") and len(nxt.inputs) == 2):
            continue
        names = [o.name for o in nxt.inputs]
        if names.count(s.out) != 1 or reads.get(s.out) != 1 or nxt.accumulate:
            continue
        g, u = nxt.inputs[1 - names.index(s.out)], s.inputs[0]
        if any(o.power != 1 for o in nxt.inputs) or u.axes != s.axes:
            continue
        if np.dtype(g.dtype).kind == "f" and np.result_type(g.dtype, u.dtype) == np.dtype(g.dtype):
            if gate and g.axes == u.axes == nxt.axes and g.dtype == nxt.dtype and plain_product(nxt):
                out[k], out[k + 1] = None, _with(nxt, kind="gate", call="gate", inputs=(g, u), args={})
                continue
            out[k] = _with(s, call="mask", dtype="bool")
            out[k + 1] = _with(
                nxt, inputs=tuple(replace(o, dtype="bool") if o.name == s.out else o for o in nxt.inputs)
            )
    return [s for s in out if s is not None]


def _stored_as_read(steps: list[Step], keep: set[str]) -> list[Step]:
    """Each product's result stored, where it is made, with its axes in the memory order that makes
    the most of its reads by later matrix products views rather than copies (args `res_order`):
    torch reshapes a transposed tensor by copying it, and takes a batch of matrices transposed.
    A store costs one copy: it is made when it saves two reads' copies, or one read's of a kept
    result, which a backward reads too, mostly in the same orders (the swap rule's products
    read their operands as the forward's did, or with the last two groups of axes swapped)."""
    reads: dict[str, list[tuple[tuple[int, ...] | None, tuple[int, ...] | None]]] = {}
    writers: dict[str, int] = {}
    for s in steps:
        writers[s.out] = writers.get(s.out, 0) + 1
        for o, perm, shape in _matrix_reads(s):
            reads.setdefault(o.name, []).append((perm, shape))
    out = []
    for s in steps:
        asked = reads.get(s.out)
        if asked and s.kind in ("contract", "product_add") and s.call == "matmul" and writers[s.out] == 1:
            perm = s.args.get("res_perm")
            current = None if perm is None else inverse(perm)
            order = _best_order(s.shape, current, asked, 1 if s.out in keep else 2)
            if order is not None:
                s = _with(s, args={**s.args, "res_order": order})
        out.append(s)
    return out


def inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation that undoes `perm` (numpy's argsort of it, as Python ints)."""
    return tuple(sorted(range(len(perm)), key=perm.__getitem__))


def _matrix_reads(s: Step) -> list[tuple[Operand, tuple[int, ...] | None, tuple[int, ...] | None]]:
    """The operands a matrix product reads as they lie (not summed, raised or cast first), each
    with the transpose and the reshape that lay it out for the call."""
    if s.call != "matmul" or s.kind not in ("contract", "product_add") or len(s.inputs) < 2:
        return []
    a, b = s.inputs[1::-1] if s.args["swap"] else s.inputs[:2]
    return [
        (o, s.args[f"{k}_perm"], s.args[f"{k}_shape"])
        for o, k in ((a, "a"), (b, "b"))
        if not s.args[f"{k}_sum"] and o.power == 1 and o.dtype == s.dtype
    ]


def _best_order(
    shape: Shape, current: tuple[int, ...] | None,
    reads: list[tuple[tuple[int, ...] | None, tuple[int, ...] | None]], gain: int,
) -> tuple[int, ...] | None:  # fmt: skip
    """The memory order (axes outermost first) that makes the most reads views, if it makes at
    least `gain` more than the `current` one (None: in order) does; else None."""
    plain = tuple(range(len(shape)))

    def views(order: tuple[int, ...]) -> int:
        return sum(_viewed(shape, order, perm, to) for perm, to in reads)

    best = max([plain, *(p for p, _ in reads if p is not None)], key=views)
    now = current or plain
    return best if best != now and views(best) - views(now) >= gain else None


def _viewed(shape: Shape, order: tuple[int, ...], perm: tuple[int, ...] | None, to: Shape | None) -> bool:
    """Whether an array stored with its axes in `order`, transposed by `perm` and reshaped `to`,
    is a view whose matrices lie in rows or in columns (numpy's rule for a reshape without a copy
    is torch's)."""
    strides, size = [0] * len(shape), 1
    for k in reversed(order):
        strides[k], size = size, size * shape[k]
    a = np.lib.stride_tricks.as_strided(np.zeros(1, np.int8), shape, strides)
    a = a if perm is None else a.transpose(perm)
    if to is not None:
        try:
            a = np.reshape(a, to, copy=False)
        except ValueError:
            return False
    return a.ndim < 2 or 1 in a.strides[-2:] or 1 in a.shape[-2:]


# Calls that can write their result into the buffer of an operand of the same shape and dtype
_IN_PLACE = {"multiply", "scale", "add", "subtract", "terms"}


def _may_lend(s: Step) -> bool:
    """Whether s can compute its result in the buffer of one of its operands: the products and
    sums above, and every one-argument function (its numpy forward takes `out=`)."""
    if s.accumulate or s.kind == "scatter":
        return False
    if s.kind == "elementwise":
        return s.call != "mask" and len(s.inputs) == 1 and FUNCTIONS[s.call].arity == 1
    return s.call in _IN_PLACE


def _fresh(s: Step) -> bool:
    """Whether the step's result is a new writeable buffer of its full shape (not an operand, a
    view of one, or a broadcast)."""
    if s.kind == "fill":
        return math.prod(s.shape) <= 4096  # small fills are made; large ones broadcast one value
    if _shares(s):
        return False
    if s.kind in ("reduce", "elementwise", "terms"):
        return _covers(s)
    if s.kind == "contract":
        return s.args["kept"] == s.axes  # else broadcast along an index no operand has
    return True  # gathers and scatters


def _shares(s: Step) -> bool:
    """Whether the step's result is its first operand's memory (itself, a transpose, a broadcast or
    a strided view of it)."""
    if s.kind == "view":
        return True
    if s.call == "copy":
        return s.args["coef"] == 1 and s.inputs[0].power == 1
    if s.kind == "terms" and len(s.inputs) == 1:
        return s.args["coefs"][0] == 1 and s.args["constant"] == 0
    return False


def _alias(s: Step) -> bool:
    """A step whose result is an operand itself, or a transpose of it: its whole buffer, writeable."""
    return _shares(s) and s.kind != "view" and all(n in s.inputs[0].axes for n in s.axes)


def _covers(s: Step) -> bool:
    """Whether the step's operands hold every axis of its result (so the result is not a broadcast)."""
    present = {n for o in s.inputs for n in o.axes}
    return all(n in present for n in s.axes) and len(s.inputs) > 0


class _Buffers:
    """Which buffer each name holds while the steps run, who else holds it, and the bytes alive."""

    def __init__(self, inputs: set[str]) -> None:
        self.of: dict[str, int] = {n: -1 - k for k, n in enumerate(inputs)}  # inputs: negative ids
        self.holders: dict[int, set[str]] = {b: {n} for n, b in self.of.items()}
        self.nbytes: dict[int, int] = {}
        self.owned: set[int] = set()  # buffers the plan allocated, which nobody outside holds
        self.writable: set[str] = set()  # names holding their buffer whole (not a view or a broadcast)
        self.live = 0

    def new(self, bid: int, nbytes: int, owned: bool) -> None:
        self.nbytes[bid] = nbytes
        self.live += nbytes
        if owned:
            self.owned.add(bid)

    def bind(self, name: str, bid: int, writable: bool) -> None:
        old = self.of.get(name)
        if old is not None and old != bid:
            self.unbind(name)
        self.of[name] = bid
        self.holders.setdefault(bid, set()).add(name)
        if writable:
            self.writable.add(name)
        else:
            self.writable.discard(name)

    def unbind(self, name: str) -> None:
        self.writable.discard(name)
        bid = self.of.pop(name)
        names = self.holders[bid]
        names.discard(name)
        if not names:
            self.live -= self.nbytes.pop(bid, 0)
            self.owned.discard(bid)
            del self.holders[bid]


def _buffers(
    steps: list[Step], inputs: set[str], keep: set[str], in_place: bool
) -> tuple[list[Step], int, set[str]]:
    """Release lists, buffers lent to results (`into`), groups, and the plan's peak memory.

    A buffer is lent only when the plan made it (never an input or anything aliasing one), no
    name holding it is read later or kept, and it has the result's axes, shape and dtype. Also
    returns the kept names whose buffer the plan made for them alone (safe to hand out)."""
    last: dict[str, int] = {}
    for k, s in enumerate(steps):
        for o in s.inputs:
            last[o.name] = k
        last.setdefault(s.out, k)
        last[s.out] = max(last[s.out], k)
    bufs = _Buffers(inputs)
    dtype_of: dict[str, str] = {}
    peak = 0
    out: list[Step] = []
    groups = 0
    for k, s in enumerate(steps):
        into = _donor(s, k, bufs, last, keep) if in_place and _may_lend(s) else None
        if (
            in_place
            and s.accumulate
            and dtype_of.get(s.out) == s.dtype
            and _alone(s.out, s, k, bufs, last, keep)
        ):
            into = s.out  # `+=` (or a scatter-add) into a buffer of the plan's own
        size = math.prod(s.shape) * _dtype(s.dtype).itemsize
        peak = max(peak, bufs.live + (0 if into else size) + _scratch(s))
        writable = True
        if into is not None:
            bid = bufs.of[into]
        elif _shares(s):
            bid = bufs.of[s.inputs[0].name]  # the same memory under another name
            writable = _alias(s) and s.inputs[0].name in bufs.writable
        else:
            bid = k
            writable = bool(s.shape) and (_fresh(s) or s.accumulate or s.kind == "scatter")
            bufs.new(bid, size, writable)
        dtype_of[s.out] = s.dtype
        bufs.bind(s.out, bid, writable)
        group = None
        if into is not None and out and out[-1].out == into:
            group = out[-1].group
            if group is None:
                groups += 1
                group = groups
                out[-1] = _with(out[-1], group=group)
        release = tuple(
            n for n in dict.fromkeys([*(o.name for o in s.inputs), s.out])
            if last.get(n) == k and n not in keep and n not in inputs and n in bufs.of
        )  # fmt: skip
        for n in release:
            bufs.unbind(n)
        out.append(_with(s, into=into, group=group, release=release))
    fresh = {
        n for n in keep
        if (b := bufs.of.get(n)) is not None and b in bufs.owned and len(bufs.holders[b] & keep) == 1
    }  # fmt: skip
    return out, peak, fresh


def _alone(name: str, s: Step, k: int, bufs: _Buffers, last: dict[str, int], keep: set[str]) -> bool:
    """Whether name holds a whole buffer of the plan's own that no other name read by step k (s)
    or after it, or kept, holds too: then s may overwrite it. (Another name is the same memory in
    another layout, a transpose: s would write entries it has still to read.)"""
    bid = bufs.of.get(name)
    if bid is None or bid not in bufs.owned or name not in bufs.writable:
        return False
    reads = {o.name for o in s.inputs}
    return all(
        n == name or (last.get(n, -1) <= k and n not in keep and n not in reads) for n in bufs.holders[bid]
    )


def _donor(s: Step, k: int, bufs: _Buffers, last: dict[str, int], keep: set[str]) -> str | None:
    """An operand of s whose buffer s may overwrite with its result."""
    names = [o.name for o in s.inputs]
    candidates = list(s.inputs)
    if s.call == "terms":
        candidates = candidates[:1] if s.args["coefs"][0] == 1 else []
    for o in candidates:
        if names.count(o.name) != 1 or o.power != 1 or o.name in keep or last.get(o.name, -1) > k:
            continue
        if o.axes != s.axes or o.shape != s.shape or o.dtype != s.dtype or not s.shape:
            continue
        if _alone(o.name, s, k, bufs, last, keep):
            return o.name
    return None


def _scratch(s: Step) -> int:
    """Bytes a step needs beyond its result: opt_einsum's largest intermediate, or what an
    iteration holds besides (its body's plan, its history)."""
    if "scratch" in s.args:
        return int(s.args["scratch"])
    if s.call != "einsum":
        return 0
    cp = plan_contraction([o.axes for o in s.inputs], s.args["kept"], [o.shape for o in s.inputs])
    return cp.largest_intermediate * _dtype(s.dtype).itemsize


def _guard_memory(plan: Plan) -> None:
    """Refuse a plan whose arrays would not fit at once (SPEC: a clear error, never an OOM)."""
    limit = memory_limit()  # read once: it asks the operating system
    if plan.peak_bytes <= limit:  # the peak counts every step's result and scratch while it runs
        return
    for s in plan.steps:
        need = math.prod(s.shape) * _dtype(s.dtype).itemsize + _scratch(s)
        if need > limit:  # (worded only then: most plans have thousands of steps that fit)
            what = f"this statement ('{s.out}' or an intermediate)"
            check_fits(need, what, s.span, plan.filename, plan.source, smaller="sizes", limit=limit)
    what = "this program, holding its arrays at once,"
    check_fits(plan.peak_bytes, what, None, plan.filename, plan.source, smaller="sizes", limit=limit)


# ---- how steps read in a printed plan --------------------------------------------------------


def _operand_text(o: Operand, perm: Any = None, shape: Any = None, summed: Any = ()) -> str:
    text = str(o)
    if summed:
        text = f"sum({text}, over {','.join(o.axes[k] for k in summed)})"
    if perm == (1, 0) and shape is None:
        return text + ".T"
    if perm is not None:
        text = f"{text}.transpose{tuple(perm)}"
    if shape is not None:
        text = f"{text}.reshape{tuple(shape)}"
    return text


def _laid_out(o: Operand, args: dict[str, Any], key: str) -> str:
    """An operand of a product as its call takes it: summed, transposed, reshaped; a strided view
    as the copy made of it (`im2col(x[b,ch,r+u,c+v] as [b; ch,u,v; r,c])`); `.mT` when the
    matrices are handed over transposed."""
    groups = args.get(f"{key}_im2col")
    if groups is not None:
        summed = args[f"{key}_sum"]
        inner = f"sum({o.name}, over {','.join(o.axes[k] for k in summed)})" if summed else o.name
        text = f"im2col({inner} as [{'; '.join(','.join(g) for g in groups if g)}])"
    else:
        text = _operand_text(o, args[f"{key}_perm"], args[f"{key}_shape"], args[f"{key}_sum"])
    return text + (".mT" if args.get(f"{key}_flip") else "")


def _describe_call(s: Step) -> str:
    args = s.args
    ops = list(s.inputs)
    coef = args.get("coef", 1)
    tail = f" * {format_number(coef)}" if coef != 1 else ""
    if s.call in ("matmul", "vecdot", "multiply") and len(ops) == 2:
        a, b = (ops[1], ops[0]) if args["swap"] else (ops[0], ops[1])
        x, y = (_laid_out(o, args, k) for o, k in ((a, "a"), (b, "b")))
        text = f"{s.call}({x}, {y})"
        if args.get("sum_batch"):
            text = f"sum({text}, axis {','.join(map(str, args['sum_batch']))})"
        if args.get("res_shape") is not None:
            text += f".reshape{tuple(args['res_shape'])}"
        if args.get("res_perm") is not None:
            text += f".transpose{tuple(args['res_perm'])}"
        order = args.get("res_order")
        if order is not None:  # numpy's x.transpose(order).copy().transpose(back): same values, laid out anew
            laid = "" if order == tuple(range(len(order))) else f"as [{','.join(s.axes[k] for k in order)}]"
            text += f".copy({laid})"
        return text + tail
    if s.call == "einsum":
        order = path_order(args["path"], [o.name for o in ops])
        return f"einsum({', '.join(map(str, ops))} -> [{','.join(args['kept'])}]; order {order})" + tail
    if s.call == "sum_product":
        over = ",".join(n for n in ops[0].axes if n not in args["kept"])
        return f"sum(multiply({ops[0]}, {ops[1]}), over {over})" + tail
    if s.call in ("sum", "ones_sum"):
        over = ",".join(ops[0].axes[k] for k in args["over"])
        return f"{s.call}({ops[0]}, over {over})" + tail
    if s.kind == "terms":
        parts = []
        for c, o in zip(args["coefs"], ops):
            parts.append(f"{'-' if c < 0 else '+'} {'' if abs(c) == 1 else format_number(abs(c)) + ' '}{o}")
        if args["constant"]:
            parts.append(f"+ {format_number(args['constant'])}")
        text = " ".join(parts).removeprefix("+ ")
        return f"{s.call}({', '.join(map(str, ops))})" if s.call != "terms" else f"terms({text})"
    if s.kind == "elementwise":
        if s.call == "mask":
            return f"greater({ops[0]}, 0)"
        names = iter(ops)
        shown = [str(next(names)) if c is None else format_number(c) for c in args["constants"]]
        return f"{s.call}({', '.join(shown)})"
    if s.kind == "reduce":
        return f"{s.call}({ops[0]}, over {','.join(args['over'])})"
    if s.kind == "fill":
        return f"full({format_number(args['value'])})"
    return f"{s.call}({', '.join(map(str, ops))})" + tail


def path_order(path: list[tuple[int, ...]], labels: list[str]) -> str:
    """A contraction path as nested groups of operand names: `((x W1) W2)`."""
    work = list(labels)
    for step in path:
        picked = [work.pop(i) for i in sorted(step, reverse=True)][::-1]
        work.append("(" + " ".join(picked) + ")" if len(picked) > 1 else picked[0])
    return " ".join(work)


def _describe_access(s: Step) -> str:
    src = s.inputs[0].name
    verb = (
        "strided view of" if s.kind == "view" else "gather from" if s.kind == "gather" else "scatter-add into"
    )
    what = s.inputs[0].name if s.kind == "scatter" else src
    modes = sorted({t[3] for t in s.args["positions"] if t[0] == "at" and t[3]})
    if modes:  # the array is extended (a copy) as the modes read outside it, then read or folded back
        what += f" through {', '.join(modes)}"
    return f"{verb} {what}" if s.kind != "scatter" else f"add_at({s.out}, {what})"


def _describe_delta(s: Step) -> str:
    first, second = (format_index(positions.from_data(t)) for t in s.args["positions"])
    return f"equal({first}, {second})"


def _describe_iteration(s: Step) -> str:
    a = s.args
    method = f"anderson(m={a['m']})" if s.call == "anderson" else "newton(backtracking)"
    setup = a.get("setup")
    once = f"{len(setup.steps)} step{'s' * (len(setup.steps) != 1)} once, then " if setup is not None else ""
    return (
        f"{method} of {a['result']} = {'f' if s.kind == 'fix' else 'g'}({a['iterate']}): {once}"
        f"{len(a['body'].steps)} per iteration, tol {format_number(a['tol'])}, at most {a['max_iter']}"
    )


_DESCRIBE: dict[str, Callable[[Step], str]] = {
    "fix": _describe_iteration,
    "solve": _describe_iteration,
    "view": _describe_access,
    "gather": _describe_access,
    "scatter": _describe_access,
    "delta": _describe_delta,
    "conv": correlate.describe,
    "softmax": softmax.describe,
    "softmax_grad": softmax.describe,
    "layer_norm": layernorm.describe,
    "product_add": lambda s: plus.describe(s, _describe_call(_with(s, kind="contract", inputs=s.inputs[:2]))),
    "gate": lambda s: f"multiply({s.inputs[0]}, greater({s.inputs[1]}, 0) as {s.dtype})",
}



# ---- implicit layers: fix and solve as one step ----------------------------------------------


def _iterate_shape(p: Implicit, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """z's shape from the tensors its body reads: index names are the statement's, and each
    reference to z ties its index names to the left side's, axis by axis."""
    lhs = ref_index_names(p.out)
    z = p.out.name
    size: dict[str, int] = {}
    refs = refs_in(p.expr)
    for r in refs:
        shape = shapes.get(r.name)
        if r.name == z or shape is None:
            continue
        for axis, i in enumerate(r.indices):
            if isinstance(i, Affine) and i.plain is not None and axis < len(shape):
                size.setdefault(i.plain, shape[axis])
    changed = True
    while changed:
        changed = False
        for r in refs:
            if r.name != z:
                continue
            for own, n in zip(lhs, plain_names(r) or ()):
                if n in size and own not in size:
                    size[own], changed = size[n], True
                elif own in size and n not in size:
                    size[n], changed = size[own], True
    missing = [n for n in lhs if n not in size]
    if missing:
        raise IndexgradError(
            f"index '{missing[0]}' of '{z}' gets no size from the tensors {p.method}(...) reads", p.span
        )
    return tuple(size[n] for n in lhs)


def _diagonal(p: Implicit) -> tuple[int, ...]:
    """The axes of z along which g's entries depend only on z's entry at the same position (each
    reference to z in the body has the left side's name there): the Jacobian is block-diagonal."""
    lhs = ref_index_names(p.out)
    refs = [plain_names(r) for r in refs_in(p.expr.args[0]) if r.name == p.out.name]
    return tuple(a for a, n in enumerate(lhs) if all(names is not None and names[a] == n for names in refs))


def plan_implicit(planner: Any, p: Implicit) -> tuple[Any, dict[str, int]]:
    """The one Step that runs a fix or solve statement: its body as a nested Plan (and, for
    Newton, the plan of the body's tangent in z, from which the Jacobian is formed).

    The body's statements that do not read z (`x[b,d] U[d,h]` in a deep equilibrium layer, the
    seed and the derivative of f in its adjoint) form a `setup` plan, run once per call rather
    than once per iteration."""
    from .derive import derive_jvp, tan_name  # Newton's Jacobian: the body's tangent in z

    shapes, dtypes = planner.shapes, planner.dtypes
    z, r = p.out.name, p.result.name
    lhs = ref_index_names(p.out)
    zshape = _iterate_shape(p, shapes)
    outer = list(dict.fromkeys(x.name for x in prim_refs(p) if x is not p.start))
    dtype = _result_dtype([np.dtype(dtypes[n]) for n in outer] + [np.dtype(np.float64)] * (not outer))
    made = {q.out.name for q in p.body}
    nested = dict(backend=planner.backend, in_place=planner.in_place, iterations=planner.iterations)
    inputs = {z: zshape, **{n: shapes[n] for n in outer}}
    types = {z: dtype, **{n: dtypes[n] for n in outer}}
    every, kinds, sized = shapes_after(list(p.body), dict(inputs), dict(types), made)
    sizes = dict(zip(lhs, zshape))
    for known in sized:
        sizes.update(known)  # the body's index names are its statement's
    moving = {z}
    for q in p.body:
        if q.out.name == r or any(x.name in moving for x in prim_refs(q)):
            moving.add(q.out.name)
    inner = [q for q in p.body if q.out.name in moving]
    hoisted = [q for q in p.body if q.out.name not in moving]
    needed: set[str] = set()  # what the tangent in z reads of the body's values
    args: dict[str, Any] = {"iterate": z, "result": r, "start": None}
    if p.method == "solve":
        program = Program((), tuple(prim_statement(q) for q in p.body))
        tangent = derive_jvp(program, [z])
        direction, slope = tan_name(program, z), tan_name(program, r)
        if slope not in tangent.defined():
            raise IndexgradError(
                f"solve(...) does not depend on '{z}', so it has no root to find in '{z}'", p.span
            )
        tprims = lower(tangent)
        treads = {x.name for q in tprims for x in prim_refs(q)}
        needed = treads & (made | set(outer))  # the body's values, and inputs, the tangent reads
        tin = {z: zshape, direction: zshape, **{n: every[n] for n in outer if n in treads}}
        tin.update({n: every[n] for n in sorted(needed)})
        tnames = {q.out.name for q in tprims} - {slope}
        ttypes = {n: kinds[n] if n != direction else dtype for n in tin}
        tplan = make_plan(tprims, tin, ttypes, {slope}, mode="tangent", temporaries=tnames, **nested)
        args.update(tangent=tplan, direction=direction, slope=slope, diagonal=_diagonal(p))
    reads = {x.name for q in inner for x in prim_refs(q)} | needed
    setup = None
    if hoisted:
        keep = {q.out.name for q in hoisted} & reads
        mine = list(dict.fromkeys(x.name for q in hoisted for x in prim_refs(q) if x.name not in made))
        setup = make_plan(
            hoisted, {n: shapes[n] for n in mine}, {n: dtypes[n] for n in mine}, keep,
            mode="setup", temporaries=made, **nested,
        )  # fmt: skip
    body_in = {z: zshape, **{n: every[n] for n in every if n in reads and n not in moving}}
    body = make_plan(
        inner, body_in, {n: kinds[n] if n != z else dtype for n in body_in}, {r} | (needed & moving),
        mode=f"{p.method} body", temporaries=made, **nested,
    )  # fmt: skip
    args.update(body=body, setup=setup)
    step_inputs = [
        Operand(n, tuple(f"{n}{a}" for a in range(len(shapes[n]))), shapes[n], str(dtypes[n])) for n in outer
    ]
    if isinstance(p.start, Ref):
        names = ref_index_names(p.start)
        got = shapes[p.start.name]
        for n, extent in zip(names, got):
            if n not in sizes or sizes[n] != extent:
                want = f"size {sizes[n]}" if n in sizes else "no such index"
                raise IndexgradError(
                    f"the start '{p.start.name}' has size {extent} along '{n}', but '{z}' has {want} "
                    f"there ({z} has shape {zshape}); give a start of z's shape",
                    p.start.span if p.start.span.line else p.span,
                )
        args["start"] = (p.start.name, names)
        step_inputs.append(Operand(p.start.name, names, got, str(dtypes[p.start.name])))
    elif isinstance(p.start, Num):
        args["start"] = float(p.start.value)
    tol = planner.iterations.get("tol") or DEFAULT_TOL.get(str(dtype), 1e-10)
    max_iter = planner.iterations.get("max_iter") or DEFAULT_MAX_ITER[p.method]
    args.update(tol=float(tol), max_iter=int(max_iter))
    nbytes = math.prod(zshape) * dtype.itemsize
    scratch = body.peak_bytes + (setup.peak_bytes if setup is not None else 0)
    if p.method == "fix":
        args.update(m=ANDERSON_M, most=ANDERSON_MOST)
        scratch += 2 * ANDERSON_MOST * nbytes
    else:
        block = math.prod(d for a, d in enumerate(zshape) if a not in args["diagonal"])
        scratch += args["tangent"].peak_bytes + block * nbytes + 4 * nbytes
    args["scratch"] = scratch
    step = Step(
        p.method,
        "anderson" if p.method == "fix" else "newton",
        z,
        lhs,
        zshape,
        str(dtype),
        tuple(step_inputs),
        args,
        statement=p,
        span=p.span,
    )
    return step, sizes


__all__ = ["FUNCTIONS", "Operand", "Plan", "Step", "make_plan", "pair_layout", "plan_contraction"]
