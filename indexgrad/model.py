"""The Python API's compiled model: forward, backward (gradients and VJPs), jvp, hvp and plan.

Each call finds its Plan in one cache keyed by (mode, what is seeded, wrt, the arrays' signature),
planning it on the first call of that signature, and runs it on the model's backend.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, NamedTuple

import numpy as np

from .backends import Backend, Executor, auto, get_backend
from .check import check, scoped, sized_like
from .derive import (
    Swaps,
    derivative_reads,
    derive_for,
    derive_jvp,
    derived_names,
    not_an_input,
    shape_source,
    tan_name,
    wrt_names,
)
from .errors import IndexgradError, NoArray
from .gcpause import gc_paused
from .lower import Contract, Elementwise, Prim, lower, prim_refs, prim_statement
from .nodes import Num, Program, Ref, refs_in_statement
from .plan import Plan, make_plan, shapes_after
from .rewrite import (
    absorb_scales,
    inline_broadcasts,
    read_steps_of_outputs,
    relu_outputs,
    reuse_forward,
    split_products,
    square_means,
)
from .syntax import as_program

Array = Any  # an array of the model's backend
Shape = tuple[int, ...]
Signature = tuple[tuple[str, ...], tuple[tuple[Shape, np.dtype], ...]]  # names; their shapes and dtypes
_SHAPE_DTYPE = operator.attrgetter("shape", "dtype")


class JointKey(NamedTuple):
    """What value_and_grad's joined run depends on: backward's or vjp's key (`mode`, `names`,
    `wrt`) on the inputs' signature, and the forward values it returns (None: the default)."""

    mode: str
    names: tuple[str, ...]
    wrt: tuple[str, ...] | None
    outputs: tuple[str, ...] | None
    signature: Signature


class PlanKey(NamedTuple):
    """What a plan depends on, beyond the program: the mode (forward, backward, vjp, jvp, hvp),
    the names it differentiates (the loss as given, the seeds, the directions), the gradients
    asked for, and the names, shapes and dtypes of the arrays the call is given."""

    mode: str
    names: tuple[str, ...]
    wrt: tuple[str, ...] | None
    signature: Signature


@dataclass
class Compiled:
    """A plan and its executor; for derivatives, the (input, derivative name) pairs returned, and
    the constant seeds every run is given (the 1 of a scalar loss)."""

    plan: Plan
    executor: Executor
    pairs: tuple[tuple[str, str], ...] = ()
    seeds: dict[str, Any] = field(default_factory=dict)
    casts: dict[str, np.dtype] = field(default_factory=dict)  # input -> the dtype of its gradient

    def __post_init__(self) -> None:
        self.fresh = frozenset(self.plan.fresh)


def _casts(plan: Plan, signature: Signature, pairs: tuple[tuple[str, str], ...]) -> dict[str, np.dtype]:
    """The float inputs whose derivative the plan computes in a wider dtype (a float32 x read
    beside a float64 W): their derivatives are returned in the input's own dtype, as torch's and
    jax's are."""
    given = {n: d for n, (_, d) in zip(*signature)}
    made = {s.out: s.dtype for s in plan.steps}
    return {
        n: given[n]
        for n, d in pairs
        if n in given and given[n].kind == "f" and d in made and np.dtype(made[d]) != given[n]
    }


@dataclass
class _Forward:
    """The forward program as run for one input signature: long products split along
    opt_einsum's path (so that gradients share partial products), the names forward() keeps,
    and the relu arguments u whose derivatives read step(y) instead (`u -> y`)."""

    program: Program
    prims: list[Prim]
    keep: set[str]
    relus: dict[str, str]
    swaps: Swaps  # the swapped statements that found `keep`, which derivations take up
    signature: Signature  # the inputs'
    # every name's shape and dtype: sized when first asked for, or read off the forward's plan
    sizes: tuple[dict[str, Shape], dict[str, np.dtype]] | None = None


def _python_number(v: Any) -> bool:
    """A Python int, float or bool (numpy's scalars carry a dtype of their own)."""
    return isinstance(v, (int, float)) and not isinstance(v, np.generic)


def not_numbers(dtype: Any) -> str:
    """Why an array of this dtype (not bool, integer or real float) cannot be computed with."""
    if dtype.kind == "V" and dtype.names is None:  # ml_dtypes' bfloat16, float8_*: real, not computed in
        return f"holds {dtype}, which is not computed in; convert it to float32"
    return f"must hold real numbers, not {dtype}"


@dataclass
class Model:
    """A compiled program: its primitive statements and, per signature, its plans."""

    program: Program
    backend: str = "numpy"
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    iterations: dict[str, Any] = field(default_factory=dict, repr=False)  # fix/solve: tol, max_iter
    prims: list[Prim] = field(init=False, repr=False)
    # plans; a dict get or set is atomic, so threads share it without a lock (two threads
    # planning the same signature at once both build it, and one is kept)
    _plans: dict[PlanKey, Compiled] = field(init=False, default_factory=dict, repr=False)
    _forwards: dict[Signature, _Forward] = field(init=False, default_factory=dict, repr=False)
    _second: dict[tuple[str, tuple[str, ...], Signature], tuple[Program, Program, Program]] = field(
        init=False, default_factory=dict, repr=False
    )
    _joints: dict[JointKey, tuple[Compiled, tuple[str, ...]]] = field(
        init=False, default_factory=dict, repr=False
    )  # value_and_grad: forward and backward joined, and the forward values it returns

    def __getstate__(self) -> dict[str, Any]:
        """What copy.deepcopy and pickle keep: the compiled program, without its plans (they hold
        kernels and per-thread state that do not copy; the copy plans again on first use)."""
        return {**self.__dict__, "_plans": {}, "_forwards": {}, "_joints": {}}

    def __post_init__(self) -> None:
        start = time.perf_counter()
        if self.backend == "auto" and self.options:
            raise IndexgradError(
                "backend='auto' chooses among the backends on the CPU with their defaults; for "
                f"{' or '.join(self.options)}, name the backend (backend='torch')"
            )
        # "auto": numpy arrays in and out, each plan run by the installed backend fastest for it
        name = "numpy" if self.backend == "auto" else self.backend
        self.engine: Backend = get_backend(name, **self.options)
        self._auto_choice = "numpy"  # the backend "auto" prefers: numpy, then what it chose last
        self._builders = {
            "forward": self._build_forward,
            "backward": self._build_backward,
            "vjp": self._build_vjp,
            "jvp": self._build_jvp,
            "hvp": self._build_hvp,
        }
        with gc_paused():
            self.prims = lower(self.program)
        labels = set(self.program.integer_inputs())
        self.inputs = [n for n in self.program.inputs() if n not in labels]
        self.labels = list(self.program.integer_inputs())
        self._grad = derived_names(self.program, ".grad")
        self._tan = derived_names(self.program, ".tan")
        self._order = self.inputs + self.labels
        self._order_t = tuple(self._order)
        self._input_set = set(self._order)
        self._types = frozenset(self.engine.array_types)
        self._shape_sources = {b for n in self.program.defined() if (b := sized_like(n)) is not None}
        self.numpy_layouts = True  # code generation plans without the numpy backend's own layouts
        self.compile_seconds = time.perf_counter() - start

    # ---- errors and arguments

    def _error(self, msg: str, name: str | None = None) -> IndexgradError:
        """A user error, placed at the first reference to `name` when there is one."""
        span = None
        if name is not None:
            span = next(
                (
                    r.span
                    for st in self.program.statements
                    for r in refs_in_statement(st)
                    if r.name == name and r.span.line
                ),
                None,
            )
        return IndexgradError(msg, span, self.program.filename, self.program.source)

    def _plain_inputs(self, arrays: Mapping[str, Any]) -> tuple[tuple[Array, ...], Signature] | None:
        """The common case, checked cheaply: exactly the inputs, as the backend's arrays. Returns
        their values in input order and their signature (whose dtypes a plan found by it has
        checked); None sends the call to `_inputs`."""
        if len(arrays) != len(self._order):
            return None
        try:
            values = tuple(map(arrays.__getitem__, self._order))
        except KeyError:
            return None
        if not self._types.issuperset(map(type, values)):
            return None
        try:
            return values, (self._order_t, tuple(map(self.engine.describe, values)))
        except IndexgradError:  # a dtype no plan is for: `_inputs` says where
            return None

    def _value(self, name: str, v: Any, what: str = "the value of") -> Array:
        """A value for `name` (in vals, a seed, a tangent) as an array of numbers, or a located error."""
        where = f"{what} '{name}'" + (" in vals" if what == "the value of" else "")
        try:
            a = self.engine.asarray(v)
            dtype = self.engine.describe(a)[1]
        except IndexgradError as e:  # the backend's word on it (a device, a dtype)
            raise self._error(f"{where} {e.message}", name) from None
        except Exception as e:  # ragged lists and the like
            raise self._error(f"{where} is not an array: {e}", name) from None
        if dtype.kind not in "biuf":
            raise self._error(f"{where} {not_numbers(dtype)}", name)
        return a

    def _shape(self, name: str, shape: tuple[Any, ...]) -> Shape:
        """A shape given to plan() for `name`: whole numbers of at least 0, as numpy's own shapes."""
        if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise self._error(
                f"the shape given for '{name}' must be a tuple of whole numbers of at least 0, not {shape!r}",
                name,
            )
        return tuple(int(d) for d in shape)

    def _input(self, name: str, value: Any) -> Array:
        """The array given for input `name` as it is computed with: labels stay integers, other
        integers and booleans become float64."""
        a = self._value(name, value, "the value given for")
        dtype = self.engine.describe(a)[1]
        if name in self.labels:
            if dtype.kind not in "iu":
                raise self._error(f"'{name}' holds integer labels, but its array has dtype {dtype}", name)
        elif dtype.kind in "biu":
            a = self.engine.asarray(a, np.float64)
        return a

    def _inputs(self, arrays: Mapping[str, Any], allow_extra: bool = False) -> dict[str, Array]:
        """The inputs as the backend's arrays: floats (integers become float64, Python numbers take
        the arrays' float dtype) and integer labels, in input order; extra names are refused
        unless they give a gradient its shape."""
        env: dict[str, Array] = {}
        for name, value in arrays.items():
            if name not in self._input_set:
                if allow_extra or name in self._shape_sources:
                    env[name] = self.engine.asarray(value)  # gives `name.grad` its shape
                    continue
                raise self._error(
                    f"'{name}' is not an input of the program; inputs: " + ", ".join(self._order)
                )
            env[name] = self._input(name, value)
        weak = [n for n, v in arrays.items() if _python_number(v) and n in self.inputs]
        if weak:  # Python numbers take the arrays' float dtype, as in JAX and PyTorch: no upcast
            kinds = {self.engine.describe(a)[1] for n, a in env.items() if n not in weak and n in self.inputs}
            if len(kinds) == 1:
                (dtype,) = kinds
                for n in weak:
                    env[n] = self.engine.asarray(env[n], dtype)
        missing = [n for n in self._order if n not in env]
        if missing:
            raise self._error(
                "no array was given for input " + ", ".join(f"'{m}'" for m in missing), missing[0]
            )
        ordered = {n: env[n] for n in self._order}  # one signature per shapes
        ordered.update((n, a) for n, a in env.items() if n not in ordered)
        return ordered

    def _signature(self, env: Mapping[str, Array]) -> Signature:
        """The names in env, and their arrays' shapes and dtypes."""
        return tuple(env), tuple(map(self.engine.describe, env.values()))

    # ---- the forward program for a signature

    def _forward(self, signature: Signature) -> _Forward:
        """The forward program for inputs of this signature (inputs in input order, then any
        arrays that give gradients their shapes)."""
        names, described = signature
        pick = [k for k, n in enumerate(names) if n in self._input_set or n in self._shape_sources]
        key = (tuple(names[k] for k in pick), tuple(described[k] for k in pick))
        hit = self._forwards.get(key)
        if hit is None:
            with gc_paused():
                hit = self._plan_forward(key)
            self._forwards[key] = hit
        return hit

    def _plan_forward(self, signature: Signature) -> _Forward:
        every = cache(lambda: self._shapes_after(self.prims, self.program, signature)[0])  # on first need
        prims = square_means(split_products(self.prims, every), set(self.program.defined()))
        program = self.program
        if prims is not self.prims:  # each rewrite returns its argument itself when it changes nothing
            program = check(
                Program(
                    self.program.decls,
                    tuple(prim_statement(p) for p in prims),
                    filename=self.program.filename,
                    source=self.program.source,
                )
            )
        swaps: Swaps = {}
        keep, relus = self._keep(prims, swaps)
        absorbed = absorb_scales(prims, keep)
        fw = _Forward(program, absorbed, keep, relus, swaps, signature)
        if prims is not self.prims:  # the shapes of the temporaries the rewrites made
            fw.sizes = self._shapes_after(absorbed, program, signature)
        return fw

    def _shapes_after(
        self, prims: list[Prim], program: Program, signature: Signature
    ) -> tuple[dict[str, Shape], dict[str, np.dtype]]:
        """The shape and dtype of every name once prims run on inputs of this signature (a size
        error located at what the user wrote)."""
        shapes, dtypes = _shapes_dtypes(signature)
        try:
            every, kinds, _ = shapes_after(prims, shapes, dtypes, _made_up(prims, program))
        except IndexgradError as e:
            raise e.located(self.program.filename, self.program.source) from None
        return every, kinds

    def _sizes(self, fw: _Forward) -> tuple[dict[str, Shape], dict[str, np.dtype]]:
        """fw's shapes and dtypes: sized here when its forward plan has not given them, as the
        program's statements before any rewrite (whose size errors are the ones a user reads)."""
        if fw.sizes is None:
            every, kinds = self._shapes_after(self.prims, self.program, fw.signature)
            made = {p.out.name for p in fw.prims}  # a scale absorbed drops its product's temporary
            gone = {p.out.name for p in self.prims} - made
            fw.sizes = (
                {n: s for n, s in every.items() if n not in gone},
                {n: d for n, d in kinds.items() if n not in gone},
            )
        return fw.sizes

    def _keep(self, prims: list[Prim], swaps: Swaps) -> tuple[set[str], dict[str, str]]:
        """What forward() keeps: the program's own tensors and what any derivative reads (the
        statements swapped to find that are left in `swaps`).

        Also the relu arguments u (of `y = relu(u)`) that derivatives read only as step(u): they
        read step(y) instead (the same values), so u need not be kept. Returns the names to keep
        and those `u -> y`."""
        relus = relu_outputs(prims)
        defined = set(self.program.defined())  # the user's tensors, not the rewrites' temporaries
        if not relus:
            return self._reused_away(defined | derivative_reads(prims, swaps), prims, swaps), {}
        stand_in: list[Prim] = [
            Contract(p.out, p.op, 1.0, ((p.args[0], 1.0),), p.span) if _relu_of(p, relus) else p
            for p in prims
        ]
        keep = self._reused_away(defined | derivative_reads(stand_in, swaps), prims, swaps)
        relus = {u: y for u, y in relus.items() if u not in keep}
        return keep | set(relus.values()), relus

    def _reused_away(self, keep: set[str], prims: list[Prim], swaps: Swaps) -> set[str]:
        """keep without the rewrites' temporaries that derivatives read only where they recompute a
        value the forward keeps (reuse_forward reads that instead): the logsumexp of a softmax, read
        as exp(a - logsumexp(a)), which is p."""
        temporaries = keep - set(self.program.defined()) - self._input_set
        if not temporaries:
            return keep
        reading = tuple(
            st
            for _, made in swaps.values()
            for st in made
            if {r.name for r in refs_in_statement(st)} & temporaries
        )
        program = Program(
            self.program.decls, reading, filename=self.program.filename, source=self.program.source
        )
        try:
            derived = lower(scoped(program))
        except IndexgradError:  # a statement that does not lower on its own (a size only the rest gives)
            return keep
        read = {r.name for p in reuse_forward(derived, prims, keep | self._input_set) for r in prim_refs(p)}
        shaped = {n for _, made in swaps.values() for st in made for n in shape_source(st)}
        return keep - (temporaries - read - shaped)

    def _compile(self, key: PlanKey) -> Compiled:
        """The compiled plan for key, built by the builder of its mode on the first call."""
        hit = self._plans.get(key)
        if hit is None:
            with gc_paused():
                try:
                    hit = self._builders[key.mode](key)
                except NoArray as e:
                    if key.mode == "forward" or e.name not in self.program.defined():
                        raise
                    raise self._error(  # backward(arrays) for backward(forward(**arrays))
                        f"vals holds no value for '{e.name}', which the program defines and the "
                        "derivative reads: pass the dict forward() returned"
                    ) from None
            if key.mode in ("backward", "vjp", "hvp"):
                hit.casts = _casts(hit.plan, key.signature, hit.pairs)
            self._plans[key] = hit
        return hit

    def _runnable(
        self,
        prims: list[Prim],
        env_sig: Signature,
        keep: set[str],
        mode: str,
        *programs: Program,
        constants: set[str] = frozenset(),  # type: ignore[assignment]
        forward: list[Prim] | None = None,
    ) -> tuple[Plan, Executor]:
        """The plan for prims on arrays of env_sig, and what runs it; `constants` are seeds that
        are always 1; `forward`, the primitives that made the forward values prims read. Under
        backend="auto", planned and timed on every installed backend."""
        shapes, dtypes = _shapes_dtypes(env_sig)

        def build(engine: Backend) -> tuple[Plan, Executor]:
            plan = make_plan(
                prims,
                shapes,
                dtypes,
                keep,
                mode=mode,
                temporaries=_made_up(prims, self.program, *programs),
                backend=engine.name,
                in_place=engine.in_place,
                constants=dict.fromkeys(constants, 1.0),
                iterations=self.iterations,
                numpy_layouts=self.numpy_layouts,
                forward=forward,
                filename=self.program.filename,
                source=self.program.source,
            )
            return plan, engine.executor(plan)

        if self.backend != "auto":
            return build(self.engine)
        plan, executor = auto.choose(*auto.candidates(), build, prefer=self._auto_choice)
        self._auto_choice = plan.backend  # a loop stays on one library unless another is clearly faster
        return plan, executor

    # ---- one builder per mode: a key (mode, names, wrt, signature of the arrays given) -> Compiled

    def _build_forward(self, key: PlanKey) -> Compiled:
        fw = self._forward(key.signature)
        keep = fw.keep | self._input_set
        try:
            plan, executor = self._runnable(fw.prims, key.signature, keep, "forward", fw.program)
        except IndexgradError:
            self._sizes(fw)  # a size error as the statements the user wrote meet it, before any other
            raise
        if fw.sizes is None:  # the plan sized every name
            shapes, dtypes = _shapes_dtypes(key.signature)
            shapes.update((s.out, s.shape) for s in plan.steps)
            dtypes.update((s.out, np.dtype(s.dtype)) for s in plan.steps)
            fw.sizes = shapes, dtypes
        return Compiled(plan, executor)

    def _build_backward(self, key: PlanKey) -> Compiled:
        """Gradients of a scalar loss (names: the loss as given, "" for the default): its seed is the
        constant 1, given to every run and folded into the plan."""
        fw = self._forward(key.signature)
        loss = key.names[0] or self.program.statements[-1].target.name
        seed = self._grad[loss]
        dtype = self._sizes(fw)[1][loss]
        one = self.engine.one(dtype)
        sig = _extended(key.signature, (seed, (), dtype))
        runnable, pairs = self._vjp_plan(fw, sig, [loss], key.wrt, {seed})
        return Compiled(*runnable, pairs, {seed: one})

    def _build_vjp(self, key: PlanKey) -> Compiled:
        """A vector-Jacobian product: the seeds (names) are arrays among those given."""
        fw = self._forward(key.signature)
        self._sizes(fw)  # a size error of the forward statements comes first
        runnable, pairs = self._vjp_plan(fw, key.signature, list(key.names), key.wrt, set())
        return Compiled(*runnable, pairs)

    def _vjp_plan(
        self, fw: _Forward, sig: Signature, seeds: list[str], wrt: tuple[str, ...] | None, constants: set[str]
    ) -> tuple[tuple[Plan, Executor], tuple[tuple[str, str], ...]]:
        wrt_list = list(wrt) if wrt is not None else None
        d = derive_for(fw.program, seeds, wrt_list, fw.prims, validate=False, swaps=fw.swaps)
        names = list(wrt) if wrt is not None else self.inputs
        returned = {self._grad[n] for n in names}
        seeded = {self._grad[n] for n in seeds}  # given, so `+=` adds to them: never inlined
        prims = read_steps_of_outputs(lower(d), fw.relus)
        prims = reuse_forward(prims, fw.prims, fw.keep | self._input_set)
        prims = absorb_scales(inline_broadcasts(prims, returned | seeded), returned | seeded)
        runnable = self._runnable(
            prims, sig, returned, "backward", fw.program, d, constants=constants, forward=fw.prims
        )
        return runnable, tuple((n, self._grad[n]) for n in names)

    def _build_jvp(self, key: PlanKey) -> Compiled:
        """Tangents (names: the inputs given tangents) of every defined tensor."""
        fw = self._forward(key.signature)
        d = derive_jvp(fw.program, list(key.names))
        given = set(key.signature[0])
        relus = {u: y for u, y in relu_outputs(fw.prims).items() if u not in given and y in given}
        prims = reuse_forward(read_steps_of_outputs(lower(d), relus), fw.prims, given)
        pairs = tuple((n, self._tan[n]) for n in self.program.defined())
        return Compiled(*self._runnable(prims, key.signature, {t for _, t in pairs}, "jvp", d), pairs)

    def _build_hvp(self, key: PlanKey) -> Compiled:
        """Hessian-vector products (names: the loss, then the inputs given directions)."""
        loss, v = key.names[0], key.names[1:]
        both, back, tan = self._second_order(loss, v, self._forward(key.signature))
        pairs = tuple((n, tan_name(both, self._grad[n])) for n in self.inputs)
        # the forward's temporaries are both's: their sizes come from the rest of their statement
        returned = {t for _, t in pairs}
        runnable = self._runnable(lower(both) + lower(tan), key.signature, returned, "hvp", back, tan)
        return Compiled(*runnable, pairs)

    # ---- forward

    def forward(self, /, *unnamed: Any, **arrays: Any) -> dict[str, Array]:
        """Every defined tensor (temporaries a derivative reads included), and the inputs, from
        arrays for every input. `check_finite=True` (unless the program has an input of that
        name) turns the first NaN or Inf into a located error."""
        if unnamed:
            raise self._error(
                "forward() takes the arrays by name: forward(x=..., W=...), or forward(**d) for a dict "
                f"d of them; the program's inputs: {', '.join(self.inputs)}"
            )
        check_finite = False
        if "check_finite" in arrays and "check_finite" not in self._input_set:
            check_finite = arrays.pop("check_finite")
            if not isinstance(check_finite, (bool, np.bool_)) and check_finite is not None:
                raise self._error(f"check_finite must be True or False, not {type(check_finite).__name__}")
            check_finite = bool(check_finite)
        plain = self._plain_inputs(arrays)
        if plain is not None:
            hit = self._plans.get(PlanKey("forward", (), None, plain[1]))
            if hit is not None:
                return hit.executor.run(dict(zip(self._order, plain[0])), check_finite)
        env = self._inputs(arrays)  # in input order, then arrays that give gradients their shapes
        compiled = self._compile(PlanKey("forward", (), None, self._signature(env)))
        return compiled.executor.run(env, check_finite)

    # ---- backward

    def backward(
        self,
        vals: Mapping[str, Array],
        loss: str | None = None,
        wrt: list[str] | str | None = None,
        seed: Mapping[str, Any] | None = None,
    ) -> dict[str, Array]:
        """Gradients of a scalar loss, or the vector-Jacobian product with `seed`, per input."""
        if seed is None and type(vals) is dict and (loss is None or type(loss) is str):
            try:  # a call like an earlier one: one lookup
                hit = self._plans.get(
                    PlanKey("backward", (loss or "",), _names_key(wrt), self._signature(vals))
                )
            except (AttributeError, TypeError, IndexgradError):  # not arrays, names that are not strings
                hit = None
            if hit is not None:
                env = dict(vals)
                env.update(hit.seeds)
                return self._gradients(hit, hit.executor.run(env), vals)
        if not isinstance(vals, Mapping):
            raise self._error(f"vals must be the dict forward() returned, not {type(vals).__name__}")
        self._check_seed(seed, loss)
        wrt_t = _names_key(self._wrt(wrt))
        self._require_inputs(vals)
        env = {n: self._value(n, v) for n, v in vals.items()}
        if seed is None:
            name, value = self._loss_value(env, loss)
            self._check_scalar(name, self.engine.describe(value)[0])
            compiled = self._compile(PlanKey("backward", (loss or "",), wrt_t, self._signature(env)))
            env.update(compiled.seeds)
        else:
            seeds = self._seeds({n: self.engine.describe(env[n]) for n in seed if n in env}, seed)
            env.update((self._grad[n], g) for n, g in seeds.items())
            compiled = self._compile(PlanKey("vjp", tuple(seeds), wrt_t, self._signature(env)))
        return self._gradients(compiled, compiled.executor.run(env), vals)

    def _check_seed(self, seed: Any, loss: str | None) -> None:
        """seed= is a dict, and not given beside loss=."""
        if seed is not None and not isinstance(seed, Mapping):
            raise self._error(f"seed must be a dict from tensor names to arrays, not {type(seed).__name__}")
        if seed is not None and loss is not None:
            raise self._error("give either loss= or seed=, not both")

    def _check_scalar(self, name: str, shape: tuple[int, ...]) -> None:
        """A loss is a scalar; any other tensor is differentiated by a seed."""
        if shape != ():
            raise self._error(
                f"loss '{name}' has shape {shape}, not a scalar; pass seed={{'{name}': ...}} for a "
                "vector-Jacobian product"
            )

    # ---- forward and backward together

    def value_and_grad(
        self,
        arrays: Mapping[str, Any],
        loss: str | None = None,
        wrt: list[str] | str | None = None,
        seed: Mapping[str, Any] | None = None,
        outputs: list[str] | str | None = None,
    ) -> tuple[dict[str, Array], dict[str, Array]]:
        """forward(**arrays), then backward(vals, loss=, wrt=, seed=), as one call: returns the
        forward values `outputs` names (by default the loss, or the tensors seeded) and the
        gradients. It runs the plans forward and backward would; the jax backend traces both into
        one jitted computation, which keeps only what it returns."""
        if seed is None and type(arrays) is dict and (loss is None or type(loss) is str):
            plain = self._plain_inputs(arrays)
            if plain is not None:  # a call like an earlier one: one lookup
                try:
                    key = JointKey("backward", (loss or "",), _names_key(wrt), _names_key(outputs), plain[1])
                    hit = self._joints.get(key)
                except (TypeError, IndexgradError):  # names that are not strings
                    hit = None
                if hit is not None:
                    return self._run_joint(hit, dict(zip(self._order, plain[0])))
        if not isinstance(arrays, Mapping):
            raise self._error(
                f"value_and_grad() takes a dict of the input arrays, not {type(arrays).__name__}; "
                "the program's inputs: " + ", ".join(self.inputs)
            )
        self._check_seed(seed, loss)
        wrt_t = _names_key(self._wrt(wrt))
        outputs_t = self._outputs(outputs)
        env = self._inputs(arrays)
        inputs = self._signature(env)
        fw, vals = self._values(inputs)
        described = dict(zip(*vals))
        if seed is None:
            name = self._loss_value(described, loss)[0]
            self._check_scalar(name, self._sizes(fw)[0][name])
            key = JointKey("backward", (loss or "",), wrt_t, outputs_t, inputs)
            step, seeds, default = PlanKey("backward", (loss or "",), wrt_t, vals), {}, (name,)
        else:
            seeds = {self._grad[n]: g for n, g in self._seeds(described, seed).items()}
            key = JointKey("vjp", tuple(seed), wrt_t, outputs_t, inputs)
            given = _extended(vals, *((g, *self.engine.describe(a)) for g, a in seeds.items()))
            step, default = PlanKey("vjp", tuple(seed), wrt_t, given), tuple(seed)
        hit = self._joints.get(key)
        if hit is None:
            first = self._compile(PlanKey("forward", (), None, inputs))
            then = self._compile(step)
            returned = outputs_t or default
            gradients = tuple(g for _, g in then.pairs)
            executor = self.engine.chain((first.executor, then.executor), returned + gradients)
            hit = self._joints[key] = (replace(then, executor=executor), returned)
        env.update(seeds)
        return self._run_joint(hit, env)

    def _run_joint(
        self, hit: tuple[Compiled, tuple[str, ...]], env: dict[str, Array]
    ) -> tuple[dict[str, Array], dict[str, Array]]:
        """Forward and backward joined, on env (the inputs, and any seeds given): the values it
        returns and the gradients."""
        compiled, returned = hit
        env.update(compiled.seeds)
        out = compiled.executor.run(env)
        return {n: out[n] for n in returned}, self._gradients(compiled, out, env)

    def _values(self, inputs: Signature) -> tuple[_Forward, Signature]:
        """The forward program for inputs of this signature, and the signature of the values
        forward() returns for them (what backward is then given)."""
        fw = self._forward(inputs)
        returned = self._compile(PlanKey("forward", (), None, inputs)).plan.outputs  # in forward()'s order
        shapes, dtypes = self._sizes(fw)
        return fw, (returned, tuple((shapes[n], dtypes[n]) for n in returned))

    def _outputs(self, outputs: Any) -> tuple[str, ...] | None:
        """The defined tensors value_and_grad is to return, or None for its default."""
        try:
            names = _names_key(outputs, "outputs")
        except IndexgradError as e:
            raise self._error(e.message) from None
        defined = self.program.defined()
        for n in names or ():
            if n not in defined:
                raise self._error(
                    f"outputs names '{n}', which is not a tensor the program defines; it defines: "
                    + ", ".join(defined)
                )
        return names

    def _wrt(self, wrt: Any) -> list[str] | None:
        try:
            names = wrt_names(wrt)
        except IndexgradError as e:
            raise self._error(e.message) from None
        if names is None:
            return None
        known = set(self.inputs)  # (a list's `in` made this quadratic in the number of inputs)
        for w in names:
            if w not in known:
                raise self._error(not_an_input("wrt", w, self.inputs))
        return names

    def _seeds(
        self, described: Mapping[str, tuple[Shape, np.dtype]], seed: Mapping[str, Any]
    ) -> dict[str, Array]:
        """The seeds as arrays of the shapes and dtypes (of the values they seed) `described` gives."""
        if not seed:
            raise self._error(
                "seed is empty: give the gradient of at least one defined tensor "
                f"(seed={{'{self.program.defined()[-1]}': ...}}), or loss= for a scalar loss"
            )
        seeds = {}
        for name, g in seed.items():
            if name not in described and name in self.program.defined():
                raise self._error(
                    f"vals holds no value for '{name}', which the seed is the gradient of: pass the "
                    "dict forward() returned"
                )
            if name not in described or name in self._input_set:
                raise self._error(
                    f"seed names '{name}', which is not a tensor the program defines; a seed is "
                    "the gradient of a defined tensor: " + ", ".join(self.program.defined())
                )
            g = self._value(name, g, "seed for")
            want, like = described[name]
            got = self.engine.describe(g)[0]
            if got != want:
                raise self._error(f"seed for '{name}' has shape {got}, but '{name}' has shape {want}")
            seeds[name] = self.engine.asarray(g, like if like.kind == "f" else np.float64)  # what it seeds
        return seeds

    def _gradients(
        self, compiled: Compiled, env: dict[str, Array], vals: Mapping[str, Array]
    ) -> dict[str, Array]:
        """The gradients the plan's pairs name, each in a buffer of its own: a gradient in a buffer
        the plan did not make for it alone (`y = x` passes y.grad through) is copied."""
        fresh = compiled.fresh
        out = {}
        for name, gname in compiled.pairs:
            g = env.get(gname)
            if g is None:
                out[name] = self.engine.zeros_like(vals[name])
            else:
                out[name] = self.engine.contiguous(g) if gname in fresh else self.engine.copy(g)
        for name, dtype in compiled.casts.items():
            out[name] = self.engine.asarray(out[name], dtype)
        return out

    def _loss_name(self, loss: Any) -> str:
        """The loss: the tensor named, which the program must define; the last defined one if None."""
        if loss is not None and not isinstance(loss, str):
            raise self._error(
                f"loss must be the name of a defined tensor, not {type(loss).__name__}"
                + ("; pass directions as v=..." if isinstance(loss, Mapping) else "")
            )
        loss = loss or (self.program.statements[-1].target.name if self.program.statements else None)
        if loss is None:
            raise self._error("the program defines nothing to differentiate")
        if loss not in self.program.defined():
            raise self._error(
                f"loss '{loss}' is not defined by the program; defined tensors: "
                + ", ".join(self.program.defined())
            )
        return loss

    def _loss_value(self, vals: Mapping[str, Any], loss: Any) -> tuple[str, Array]:
        """The loss (the last defined tensor unless named) and its value among vals."""
        loss = self._loss_name(loss)
        if loss not in vals:
            raise self._error(f"'{loss}' is not among the values; run forward() first")
        return loss, vals[loss]

    def _require_inputs(self, vals: Mapping[str, Any]) -> None:
        if not self._input_set <= vals.keys():
            missing = [n for n in self._order if n not in vals]
            raise self._error("vals lacks input " + ", ".join(missing) + "; pass what forward() returned")

    def _directions(self, given: Any, what: str) -> dict[str, Any]:
        if not isinstance(given, Mapping):
            raise self._error(f"{what} must be a dict from input names to arrays, not {type(given).__name__}")
        known = set(self.inputs)
        for n in given:
            if n not in known:
                raise self._error(not_an_input(what, n, self.inputs))
        return dict(given)

    # ---- forward mode and second order

    def jvp(self, vals: Mapping[str, Array], tangents: Mapping[str, Any]) -> dict[str, Array]:
        """Tangents of every defined tensor, given tangents of some inputs (forward mode)."""
        if not isinstance(vals, Mapping):
            raise self._error(f"vals must be the dict forward() returned, not {type(vals).__name__}")
        tangents = self._directions(tangents, "tangents")
        self._require_inputs(vals)
        env = {n: self._value(n, v) for n, v in vals.items()}
        env.update(self._along(env, tangents, self._tan, "tangent for"))
        compiled = self._compile(PlanKey("jvp", tuple(tangents), None, self._signature(env)))
        return self._gradients(compiled, compiled.executor.run(env), vals)

    def hvp(
        self, vals: Mapping[str, Array], loss: str | None = None, v: Mapping[str, Any] | None = None
    ) -> dict[str, Array]:
        """Hessian-vector products by forward-over-reverse, returned like backward()."""
        if not isinstance(vals, Mapping):
            raise self._error(f"vals must be the dict forward() returned, not {type(vals).__name__}")
        v = self._directions(v if v is not None else {}, "v")
        self._require_inputs(vals)
        loss, value = self._loss_value(vals, loss)
        shape, dtype = self.engine.describe(self._value(loss, value))
        if shape != ():
            raise self._error(f"loss '{loss}' has shape {shape}, not a scalar")
        env = {n: self._value(n, vals[n]) for n in self._order}
        env[self._grad[loss]] = self.engine.one(dtype if dtype.kind == "f" else np.dtype(np.float64))
        both = self._second_order(loss, tuple(v), self._forward(self._signature(env)))[0]
        env.update(self._along(env, v, {n: tan_name(both, n) for n in v}, "v for"))
        compiled = self._compile(PlanKey("hvp", (loss, *v), None, self._signature(env)))
        return self._gradients(compiled, compiled.executor.run(env), vals)

    def _along(
        self, env: dict[str, Array], given: dict[str, Any], names: dict[str, str], what: str
    ) -> dict[str, Array]:
        """Directions for inputs (tangents, v) under their derived names, in their inputs' dtypes."""
        out = {}
        for n, t in given.items():
            t = self._value(n, t, what)
            want, like = self.engine.describe(env[n])
            got = self.engine.describe(t)[0]
            if got != want:
                raise self._error(f"{what} '{n}' has shape {got}, not {want}")
            out[names[n]] = self.engine.asarray(t, like)
        return out

    def _second_order(self, loss: str, v: tuple[str, ...], fw: _Forward) -> tuple[Program, Program, Program]:
        """The forward (as fw runs it: long products split, so that the tangents of the gradients
        share partial products as the gradients do) and gradient statements as one program, the
        gradient program alone, and the tangent program of the first along v."""
        hit = self._second.get((loss, v, fw.signature))
        if hit is None:
            prims = lower(fw.program)
            back = derive_for(fw.program, [loss], None, prims)
            both = check(
                Program(
                    self.program.decls,
                    tuple(prim_statement(p) for p in prims) + back.statements,
                    filename=self.program.filename,
                    source=self.program.source,
                )
            )
            hit = self._second[loss, v, fw.signature] = (both, back, derive_jvp(both, list(v)))
        return hit

    # ---- plans as data

    def plan(
        self,
        vals_or_shapes: Mapping[str, Any],
        mode: str = "forward",
        loss: str | None = None,
        wrt: list[str] | str | None = None,
    ) -> Plan:
        """The Plan a call of `mode` (forward, backward, jvp or hvp) runs on inputs like these:
        arrays, or shapes (tuples; float64 then, labels int64). backward of a loss that is not a
        scalar is the vector-Jacobian product, its seed `LOSS.grad` given; hvp is of a scalar
        loss; jvp and hvp take directions for `wrt` (all inputs by default)."""
        if mode not in ("forward", "backward", "jvp", "hvp"):
            raise self._error(f"mode must be forward, backward, jvp or hvp, not {mode!r}")
        if not isinstance(vals_or_shapes, Mapping):
            raise self._error(f"plan() takes a dict of arrays or shapes, not {type(vals_or_shapes).__name__}")
        described = []
        for n in self._order:
            if n not in vals_or_shapes:
                raise self._error(f"no array or shape was given for input '{n}'", n)
            x = vals_or_shapes[n]
            if isinstance(x, tuple):
                described.append((self._shape(n, x), np.dtype(np.int64 if n in self.labels else np.float64)))
            else:  # converted as forward() converts it
                described.append(self.engine.describe(self._input(n, x)))
        inputs: Signature = (self._order_t, tuple(described))
        if mode == "forward":
            return self._compile(PlanKey("forward", (), None, inputs)).plan
        fw, vals = self._values(inputs)
        shapes, dtypes = self._sizes(fw)
        wrt_t = _names_key(self._wrt(wrt))
        names = wrt_t if wrt_t is not None else tuple(self.inputs)
        if mode == "jvp":
            extra = [(self._tan[n], shapes[n], dtypes[n]) for n in names]
            return self._compile(PlanKey("jvp", names, None, _extended(vals, *extra))).plan
        loss_name = self._loss_name(loss)
        if mode == "hvp" and shapes[loss_name] != ():
            raise self._error(f"loss '{loss_name}' is not a scalar; plan a hvp pass of a scalar loss")
        if mode == "backward" and shapes[loss_name] != ():  # as backward(seed={loss: ...}) runs
            seeded = _extended(vals, (self._grad[loss_name], shapes[loss_name], dtypes[loss_name]))
            return self._compile(PlanKey("vjp", (loss_name,), wrt_t, seeded)).plan
        if mode == "backward":
            return self._compile(PlanKey("backward", (loss or "",), wrt_t, vals)).plan
        both = self._second_order(loss_name, names, fw)[0]
        extra = [(self._grad[loss_name], (), dtypes[loss_name])]
        extra += [(tan_name(both, n), shapes[n], dtypes[n]) for n in names]
        return self._compile(PlanKey("hvp", (loss_name, *names), None, _extended(inputs, *extra))).plan


def _extended(sig: Signature, *extra: tuple[str, Shape, np.dtype]) -> Signature:
    """sig with more arrays after its own."""
    return (sig[0] + tuple(n for n, _, _ in extra), sig[1] + tuple((s, d) for _, s, d in extra))


def _shapes_dtypes(signature: Signature) -> tuple[dict[str, Shape], dict[str, np.dtype]]:
    names, described = signature
    return dict(zip(names, (s for s, _ in described))), dict(zip(names, (d for _, d in described)))


def _relu_of(p: Prim, relus: dict[str, str]) -> bool:
    """p is `y = relu(u)` with u -> y among relus."""
    if not (isinstance(p, Elementwise) and p.func == "relu" and isinstance(p.args[0], Ref)):
        return False
    return relus.get(p.args[0].name) == p.out.name


def _names_key(names: Any, what: str = "wrt") -> tuple[str, ...] | None:
    """wrt (or outputs) as part of a key: None, or the names (one string may list several)."""
    listed = wrt_names(names, what)
    return None if listed is None else tuple(listed)


def _made_up(prims: list[Prim], *programs: Program) -> set[str]:
    """The names lowering gave the programs' temporaries."""
    return {p.out.name for p in prims}.difference(*(q.defined() for q in programs))


def compile(  # noqa: A001
    program: str | Program,
    backend: str = "numpy",
    device: Any = None,
    dtype: Any = None,
    tol: float | None = None,
    max_iter: int | None = None,
) -> Model:
    """A Model for .idx text, a path to an .idx file, or a parsed Program, on an array library
    ("auto": numpy arrays in and out, each call's plan run by the installed library fastest for it).
    `tol` and `max_iter` are the tolerance and iteration limit of fix and solve (SPEC 11)."""
    from .iterate import iteration_settings

    options = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    return Model(as_program(program), backend, options, iteration_settings(tol, max_iter))


__all__ = ["Compiled", "Model", "Num", "PlanKey", "Ref", "compile"]
