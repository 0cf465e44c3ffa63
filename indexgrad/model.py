"""The Python API's compiled model: forward, backward (gradients and VJPs), jvp, hvp and gradcheck."""

from __future__ import annotations

import functools
import operator
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .check import check, sized_like
from .derive import derivative_reads, derive_for, derive_jvp, derived_names, tan_name, wrt_names
from .errors import IndexgradError
from .gcpause import gc_paused
from .lower import (
    Contract,
    Elementwise,
    Prim,
    absorb_scales,
    inline_broadcasts,
    lower,
    prim_statement,
    split_products,
)
from .nodes import Program, Ref, refs_in_statement
from .run import Executor, _signature, read_steps_of_outputs, relu_outputs
from .syntax import as_program

Array = np.ndarray
_SHAPE_DTYPE = operator.attrgetter("shape", "dtype")


def _python_number(v: Any) -> bool:
    """A Python int, float or bool (numpy's scalars carry a dtype of their own)."""
    return isinstance(v, (int, float)) and not isinstance(v, np.generic)


@dataclass
class Model:
    """A compiled program: its primitive statements and cached derived programs."""

    program: Program
    backend: str = "numpy"
    prims: list[Prim] = field(init=False)
    # plans and derived programs; a dict get or set is atomic, so threads share it without a
    # lock (two threads planning the same signature at once both build it, and one is kept)
    _cache: dict[Any, Any] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        start = time.perf_counter()
        if self.backend != "numpy":
            raise IndexgradError(f"unknown backend '{self.backend}'; available: numpy")
        with gc_paused():
            self._build()
        self.compile_seconds = time.perf_counter() - start

    def _build(self) -> None:
        self.prims = lower(self.program)
        self.inputs = [n for n in self.program.inputs() if n not in self.program.integer_inputs()]
        self.labels = list(self.program.integer_inputs())
        self._forward = self._forward_executor(self.prims, self.program)
        self._grad = derived_names(self.program, ".grad")
        self._tan = derived_names(self.program, ".tan")
        self._input_set = set(self.inputs) | set(self.labels)
        self._order = self.inputs + self.labels
        self._kinds = ["iu" if n in self.labels else "f" for n in self._order]
        self._ndarrays = (np.ndarray,) * len(self._order)
        self._shape_sources = {base for n in self.program.defined() if (base := sized_like(n)) is not None}

    def _keep(self, prims: list[Prim]) -> tuple[set[str], dict[str, str]]:
        """What forward() keeps: the program's own tensors and what any derivative reads.

        Also the relu arguments u (of `y = relu(u)`) that derivatives read only as step(u):
        they read step(y) instead (the same values), so u need not be kept. Returns the names
        to keep and those `u -> y`.
        """
        gates = relu_outputs(prims)
        if not gates:
            return set(self.program.defined()) | derivative_reads(prims), {}
        def gated(p: Prim) -> bool:
            return (
                isinstance(p, Elementwise)
                and p.func == "relu"
                and isinstance(p.args[0], Ref)
                and gates.get(p.args[0].name) == p.out.name
            )

        stand_in: list[Prim] = [
            Contract(p.out, p.op, 1.0, ((p.args[0], 1.0),), p.span) if gated(p) else p  # type: ignore[union-attr]
            for p in prims
        ]
        keep = set(self.program.defined()) | derivative_reads(stand_in)
        gates = {u: y for u, y in gates.items() if u not in keep}
        return keep | set(gates.values()), gates

    def _forward_executor(self, prims: list[Prim], program: Program) -> Executor:
        keep, gates = self._keep(prims)
        made_up = _made_up(prims, program)
        ex = Executor(absorb_scales(prims, keep), program.filename, program.source, keep, made_up)
        ex.relu_gates = gates  # type: ignore[attr-defined]
        return ex

    def _error(self, msg: str, name: str | None = None) -> IndexgradError:
        """A user error, placed at the first reference to `name` when there is one."""
        span = None
        if name is not None:
            for st in self.program.statements:
                for r in refs_in_statement(st):
                    if r.name == name and r.span.line:
                        span = r.span
                        break
                if span is not None:
                    break
        return IndexgradError(msg, span, self.program.filename, self.program.source)

    def _plain_inputs(self, arrays: Mapping[str, Any]) -> tuple[tuple[Array, ...], tuple[Any, ...]] | None:
        """The common case, checked cheaply: exactly the inputs, as numpy arrays (their dtypes are
        checked by `_right_kinds`). Returns their values in input order, and the values' shapes
        and dtypes; None sends the call to `_inputs`."""
        order = self._order
        if len(arrays) != len(order):
            return None
        try:
            values = tuple(map(arrays.__getitem__, order))
        except KeyError:
            return None
        if tuple(map(type, values)) != self._ndarrays:
            return None
        return values, tuple(map(_SHAPE_DTYPE, values))

    def _right_kinds(self, shapes: tuple[Any, ...]) -> bool:
        """Whether the inputs' dtypes are the right kinds: floats, and integer labels."""
        return all(dtype.kind in kinds for (_, dtype), kinds in zip(shapes, self._kinds))

    def _inputs(self, arrays: Mapping[str, Any], allow_extra: bool = False) -> dict[str, Array]:
        plain = self._plain_inputs(arrays)
        if plain is not None and self._right_kinds(plain[1]):
            return dict(zip(self._order, plain[0]))
        env = {}
        known = set(self.inputs) | set(self.labels)
        for name, value in arrays.items():
            if name not in known:
                if allow_extra or name in self._shape_sources:
                    env[name] = np.asarray(value)  # gives `name.grad` its shape
                    continue
                raise self._error(
                    f"'{name}' is not an input of the program; inputs: "
                    + ", ".join(self.inputs + self.labels)
                )
            try:
                a = np.asarray(value)
            except Exception as e:  # ragged lists and the like
                raise self._error(f"the value given for '{name}' is not an array: {e}", name) from None
            if name in self.labels:
                if a.dtype.kind not in "iu":
                    raise self._error(
                        f"'{name}' holds integer labels, but its array has dtype {a.dtype}", name
                    )
            elif a.dtype.kind in "biu":
                a = a.astype(np.float64)
            elif a.dtype.kind not in "f":
                raise self._error(f"'{name}' must hold real numbers, but has dtype {a.dtype}", name)
            env[name] = a
        weak = [n for n, v in arrays.items() if _python_number(v) and n in self.inputs]
        if weak:  # Python numbers take the arrays' float dtype, as in JAX and PyTorch: no upcast
            kinds = {a.dtype for n, a in env.items() if n not in weak and n in self.inputs}
            if len(kinds) == 1:
                (dtype,) = kinds
                for n in weak:
                    env[n] = env[n].astype(dtype)
        missing = [n for n in self.inputs + self.labels if n not in env]
        if missing:
            raise self._error(
                "no array was given for input " + ", ".join(f"'{m}'" for m in missing), missing[0]
            )
        ordered = {n: env[n] for n in self.inputs + self.labels}  # one signature per shapes
        ordered.update((n, a) for n, a in env.items() if n not in ordered)
        return ordered

    def forward(self, /, **arrays: Any) -> dict[str, Array]:
        """Every defined tensor (temporaries included), from arrays for every input.

        `check_finite=True` (unless the program has an input of that name) turns the first NaN or
        Inf into a located error."""
        check_finite = False
        if "check_finite" in arrays and "check_finite" not in self._input_set:
            check_finite = arrays.pop("check_finite")
            if not isinstance(check_finite, (bool, np.bool_)) and check_finite is not None:
                raise self._error(f"check_finite must be True or False, not {type(check_finite).__name__}")
            check_finite = bool(check_finite)
        plain = self._plain_inputs(arrays)
        if plain is not None and not check_finite:
            hit = self._cache.get(("plain", plain[1]))
            if hit is not None:  # inputs as a call before gave them: its planned kernels, at once
                return hit[0].run_planned(hit[1], dict(zip(self._order, plain[0])), set())
        env = self._inputs(arrays)
        key = _signature(env)
        ex = self._execution(env, key, len(env) == len(self._order))[1]
        if check_finite:  # the first NaN or Inf becomes a located error, not numpy's warnings
            with np.errstate(all="ignore"):
                return ex.run(env, check_finite=True, key=key)
        vals = ex.run(env, key=key)
        if plain is not None and self._right_kinds(plain[1]):  # env holds the arrays as given
            self._cache["plain", plain[1]] = (ex, ex.planned(key))
        return vals

    def plan(self, /, **arrays: Any) -> PlanReport:
        """How the forward and backward programs run on arrays of these shapes, and planning time."""
        env = self._inputs(arrays)
        start = time.perf_counter()
        program, ex = self._execution(env)
        vals = ex.run(dict(env))
        loss = self.program.statements[-1].target.name
        rows = _plan_rows(ex.prims, vals, "forward")
        if np.ndim(vals[loss]) == 0:
            _, derived_ex = self._derived(program, (loss,), None, ex.relu_gates)
            back = Executor(derived_ex.prims, self.program.filename, self.program.source)
            env2 = dict(vals)
            env2[self._grad[loss]] = np.ones_like(np.asarray(vals[loss]))
            rows += _plan_rows(back.prims, back.run(env2), "backward")
        return PlanReport(self.compile_seconds, time.perf_counter() - start, rows)

    def _execution(
        self, env: Mapping[str, Array], key: Any = None, inputs_only: bool = False
    ) -> tuple[Program, Executor]:
        """The program as run for these input shapes: long products split along opt_einsum's path.

        Splitting `y = x A B C` into pairwise steps lets the gradients share partial products,
        as a hand-written backward pass does.
        """
        if key is None:
            try:  # the inputs' signature, in the order forward() builds it
                key = tuple([(n, env[n].shape, env[n].dtype) for n in self._order])
            except AttributeError:
                key = _signature({n: np.asarray(env[n]) for n in self._order})
            inputs_only = True
        if not inputs_only:
            key = tuple(k for k in key if k[0] in self._input_set)
        hit = self._cache.get(("exec", key))
        if hit is None:
            with gc_paused():
                hit = self._plan_execution(env)
            self._cache[("exec", key)] = hit
        return hit

    def _plan_execution(self, env: Mapping[str, Array]) -> tuple[Program, Executor]:
        with np.errstate(all="ignore"):  # a look at the shapes; the real run warns if it must
            probe = self._forward.run({n: env[n] for n in self.inputs + self.labels})
        prims = split_products(self.prims, {n: np.shape(a) for n, a in probe.items()})
        if prims is self.prims:
            return self.program, self._forward
        program = check(
            Program(
                self.program.decls,
                tuple(prim_statement(p) for p in prims),
                filename=self.program.filename,
                source=self.program.source,
            )
        )
        return program, self._forward_executor(prims, program)

    def _derived(
        self,
        program: Program,
        losses: tuple[str, ...],
        wrt: tuple[str, ...] | None,
        gates: dict[str, str] | None = None,
    ) -> tuple[Program, Executor]:
        """The vector-Jacobian program and its executor, which drops every temporary once dead.

        `gates` are the forward's relu arguments that were not kept (read step(y) for step(u)).
        """
        key = ("vjp", id(program), losses, wrt)
        hit = self._cache.get(key)
        if hit is None:
            with gc_paused():
                hit = self._derive_executor(program, losses, wrt, gates)
            self._cache[key] = hit
        return hit

    def _derive_executor(
        self,
        program: Program,
        losses: tuple[str, ...],
        wrt: tuple[str, ...] | None,
        gates: dict[str, str] | None,
    ) -> tuple[Program, Executor]:
        known = self.prims if program is self.program else None
        # derive() and the tests validate derivations; here only the sums are attached
        d = derive_for(program, list(losses), list(wrt) if wrt is not None else None, known, validate=False)
        returned = {self._grad.get(n, n) for n in (wrt if wrt is not None else self.inputs)}
        seeded = {self._grad[n] for n in losses}  # given, so `+=` adds to them: never inlined
        prims = inline_broadcasts(read_steps_of_outputs(lower(d), gates or {}), returned | seeded)
        prims = absorb_scales(prims, returned | seeded)
        return d, Executor(prims, self.program.filename, self.program.source, returned, _made_up(prims, d))

    def backward(
        self,
        vals: Mapping[str, Array],
        loss: str | None = None,
        wrt: list[str] | None = None,
        seed: Mapping[str, Any] | None = None,
    ) -> dict[str, Array]:
        """Gradients of a scalar loss, or the vector-Jacobian product with `seed`, per input."""
        fast_key = None
        if seed is None and type(vals) is dict and (loss is None or type(loss) is str):
            plain = wrt is None or type(wrt) is str
            names = tuple(wrt) if type(wrt) in (list, tuple) else wrt if plain else ()
            sig = _signature(vals)
            if names != () and sig is not None:  # a call like an earlier one: one lookup
                fast_key = ("backward", loss, names, sig)
            try:
                hit = self._cache.get(fast_key) if fast_key is not None else None
            except TypeError:  # a name that is not a string: the checks below say what is wrong
                hit = fast_key = None
            if hit is not None:
                ex, kernels, gloss, one, pairs = hit
                env = dict(vals)
                env[gloss] = one
                owned: set[str] = set()
                return self._gradients(ex.run_planned(kernels, env, owned), owned, vals, (one,), pairs)
        if type(vals) is not dict and not isinstance(vals, Mapping):
            raise self._error(f"vals must be the dict forward() returned, not {type(vals).__name__}")
        if seed is not None and not isinstance(seed, Mapping):
            raise self._error(f"seed must be a dict from tensor names to arrays, not {type(seed).__name__}")
        if seed is not None and loss is not None:
            raise self._error("give either loss= or seed=, not both")
        if seed is None:
            loss, value = self._loss_value(vals, loss)
            if value.ndim != 0:
                raise self._error(
                    f"loss '{loss}' has shape {value.shape}, not a scalar; pass "
                    f"seed={{'{loss}': ...}} for a vector-Jacobian product"
                )
            seeds = {loss: _one(value.dtype)}
        else:
            seeds = {}
            for name, g in seed.items():
                if name not in vals or name in self._input_set:
                    raise self._error(
                        f"seed names '{name}', which is not a tensor the program defines; a seed is "
                        "the gradient of a defined tensor: " + ", ".join(self.program.defined())
                    )
                g = self._value(name, g, "seed for")
                want = np.shape(vals[name])
                if g.shape != want:
                    raise self._error(f"seed for '{name}' has shape {g.shape}, but '{name}' has shape {want}")
                like = np.asarray(vals[name]).dtype  # the seed takes the dtype of what it seeds
                seeds[name] = g.astype(like if like.kind == "f" else np.float64, copy=False)
        wrt = wrt_names(wrt)
        wrt_t = tuple(wrt) if wrt is not None else None
        self._require_inputs(vals)
        env = dict(vals)
        for name, g in seeds.items():
            env[self._grad.get(name)] = g
        key = _signature(env)  # names, shapes and dtypes of everything the derived program reads
        if key is None:  # some value is not an array: vals were not forward()'s own
            env = {n: self._value(n, v) for n, v in env.items()}
            key = _signature(env)
            fast_key = None
        run_key = ("vjp run", tuple(seeds), wrt_t, key)
        ex = self._cache.get(run_key)
        if ex is None:
            program, fex = self._execution(env)
            ex = self._derived(program, tuple(seeds), wrt_t, fex.relu_gates)[1]
            self._cache[run_key] = ex
        pairs = tuple((n, self._grad.get(n)) for n in (wrt if wrt is not None else self.inputs))
        owned = set()
        env = ex.run(env, key=key, owned=owned)
        if fast_key is not None:  # a later call with this signature takes the single lookup above
            ((gloss, one),) = ((self._grad[n], g) for n, g in seeds.items())
            self._cache[fast_key] = (ex, ex.planned(key), gloss, one, pairs)
        return self._gradients(env, owned, vals, seeds.values(), pairs)

    def _gradients(
        self,
        env: dict[str, Array],
        owned: set[str],
        vals: Mapping[str, Array],
        seeds: Any,
        pairs: tuple[tuple[str, str | None], ...],
    ) -> dict[str, Array]:
        """The gradients `pairs` names (input, gradient) from a run's env, each in a buffer of its own.

        A gradient this run did not allocate (`y = x` passes y.grad through) is copied when the
        caller holds its buffer (in vals or the seeds) or another returned gradient has it."""
        taken: set[int] | None = None
        out = {}
        for name, gname in pairs:
            g = env.get(gname)  # type: ignore[arg-type]
            if g is None:
                out[name] = np.zeros_like(vals[name])
                continue
            if gname not in owned or not g.flags.c_contiguous:  # not a buffer of this run's own
                g = np.asarray(g, order="C")
                if taken is None:
                    arrays = [*vals.values(), *seeds]
                    taken = {_owner(a) for a in arrays if isinstance(a, np.ndarray)}
                owner = _owner(g)
                if owner in taken:  # `y = x` passes y.grad through; `y = a + b` gives a and b one
                    g = g.copy()
                else:
                    taken.add(owner)
            out[name] = g
        return out

    def _loss_value(self, vals: Mapping[str, Any], loss: str | None) -> tuple[str, Array]:
        """The loss (the last defined tensor unless named) and its value among vals."""
        if loss is not None and not isinstance(loss, str):
            raise self._error(
                f"loss must be the name of a defined tensor, not {type(loss).__name__}"
                + ("; pass directions as v=..." if isinstance(loss, Mapping) else "")
            )
        loss = loss or (self.program.statements[-1].target.name if self.program.statements else None)
        if loss is None:
            raise self._error("the program defines nothing to differentiate")
        if loss not in vals:
            raise self._error(f"'{loss}' is not among the values; run forward() first")
        return loss, np.asarray(vals[loss])

    def _require_inputs(self, vals: Mapping[str, Any]) -> None:
        if not self._input_set <= vals.keys():
            missing = [n for n in self._order if n not in vals]
            raise self._error("vals lacks input " + ", ".join(missing) + "; pass what forward() returned")

    def _value(self, name: str, v: Any, what: str = "the value of") -> Array:
        """A value for `name` (in vals, a seed, a tangent) as an array of numbers, or a located error."""
        where = f"{what} '{name}'" + (" in vals" if what == "the value of" else "")
        try:
            a = np.asarray(v)
        except Exception as e:  # ragged lists and the like
            raise self._error(f"{where} is not an array: {e}", name) from None
        if a.dtype.kind not in "biuf":
            raise self._error(f"{where} must hold real numbers, not {a.dtype}", name)
        return a

    def jvp(self, vals: Mapping[str, Array], tangents: Mapping[str, Any]) -> dict[str, Array]:
        """Tangents of every defined tensor, given tangents of some inputs (forward mode)."""
        for n in tangents:
            if n not in self.inputs:
                raise self._error(f"tangent given for '{n}', which is not an input")
        gates = {u: y for u, y in relu_outputs(self.prims).items() if u not in vals and y in vals}
        key = ("jvp", tuple(tangents), tuple(sorted(gates)))
        hit = self._cache.get(key)
        if hit is None:
            d = derive_jvp(self.program, list(tangents))
            prims = read_steps_of_outputs(lower(d), gates)
            made_up = _made_up(prims, d)
            hit = (d, Executor(prims, self.program.filename, self.program.source, temporaries=made_up))
            self._cache[key] = hit
        _, ex = hit
        env = {n: v if type(v) is np.ndarray else self._value(n, v) for n, v in vals.items()}
        for n, t in tangents.items():
            t = self._value(n, t, "tangent for")
            if t.shape != np.shape(vals[n]):
                raise self._error(f"tangent for '{n}' has shape {t.shape}, not {np.shape(vals[n])}")
            env[self._tan.get(n)] = t
        env = ex.run(env)
        out = {}
        for n in self.program.defined():
            t = env.get(self._tan.get(n))
            out[n] = np.zeros_like(vals[n]) if t is None else t
        return out

    def hvp(
        self, vals: Mapping[str, Array], loss: str | None = None, v: Mapping[str, Any] | None = None
    ) -> dict[str, Array]:
        """Hessian-vector products by forward-over-reverse, returned like backward()."""
        v = dict(v or {})
        for n in v:
            if n not in self.inputs:
                raise self._error(
                    f"v names '{n}', which is not an input of the program; inputs: " + ", ".join(self.inputs)
                )
        self._require_inputs(vals)
        loss, value = self._loss_value(vals, loss)
        if value.ndim != 0:
            raise self._error(f"loss '{loss}' has shape {value.shape}, not a scalar")
        key = ("hvp", loss, tuple(v))
        hit = self._cache.get(key)
        if hit is None:
            back = derive_for(self.program, [loss], None, self.prims)
            both = Program(
                self.program.decls,
                tuple(prim_statement(p) for p in self.prims) + back.statements,
                filename=self.program.filename,
                source=self.program.source,
            )
            both = check(both)
            tan = derive_jvp(both, list(v))
            prims = lower(both) + lower(tan)
            made_up = _made_up(prims, self.program, back, tan)  # the forward's temporaries are both's
            hit = (both, tan, Executor(prims, both.filename, both.source, temporaries=made_up))
            self._cache[key] = hit
        both, tan, ex = hit
        env = {n: np.asarray(vals[n]) for n in self.inputs + self.labels}
        env[self._grad.get(loss)] = np.ones_like(np.asarray(vals[loss]))
        for n, t in v.items():
            env[tan_name(both, n)] = self._value(n, t, "v for")
        env = ex.run(env)
        out = {}
        for n in self.inputs:
            t = env.get(tan_name(both, self._grad.get(n)))
            out[n] = np.zeros_like(np.asarray(vals[n])) if t is None else t
        return out


@functools.cache
def _one(dtype: np.dtype) -> Array:
    """The seed 1 of a scalar loss of this dtype: one read-only array, shared by every call."""
    one = np.array(1, dtype)
    one.setflags(write=False)
    return one


def _made_up(prims: list[Prim], *programs: Program) -> set[str]:
    """The names lowering gave the programs' temporaries."""
    return {p.out.name for p in prims}.difference(*(q.defined() for q in programs))


def _owner(a: Array) -> int:
    """The identity of the buffer an array (or the array it views) owns."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return id(a if a.base is None else a.base)


def compile(program: str | Program, backend: str = "numpy") -> Model:  # noqa: A001
    """A Model for .idx text, a path to an .idx file, or a parsed Program."""
    return Model(as_program(program), backend)


@dataclass
class PlanReport:
    """Per contraction: its statement, einsum equation, opt_einsum path and FLOPs."""

    compile_seconds: float
    planning_seconds: float
    rows: list[dict[str, Any]]

    def __str__(self) -> str:
        lines = [
            f"compiled in {self.compile_seconds * 1e3:.1f} ms; "
            f"planned for these shapes in {self.planning_seconds * 1e3:.1f} ms"
        ]
        for r in self.rows:
            lines.append(
                f"{r['pass']:8s} {r['statement']}\n{'':9s}{r['equation']}  path {r['path']}  "
                f"{r['flops']:,} flops (naive {r['naive_flops']:,})"
            )
        return "\n".join(lines)


def _plan_rows(prims: list[Prim], vals: Mapping[str, Array], which: str) -> list[dict[str, Any]]:
    from .lower import Contract, prim_statement
    from .nodes import Ref, ref_index_names
    from .plan import plan_contraction
    from .printer import format_statement

    rows = []
    for p in prims:
        if not isinstance(p, Contract):
            continue
        refs = [f for f, _ in p.factors if isinstance(f, Ref)]
        if not refs or not all(f.name in vals for f in refs):
            continue
        names = [ref_index_names(r) for r in refs]
        present = {n for nm in names for n in nm}
        kept = tuple(n for n in ref_index_names(p.out) if n in present)
        shapes = [tuple(np.shape(vals[r.name])) for r in refs]
        if any(len(s) != len(nm) for s, nm in zip(shapes, names)):
            continue  # reads through index arithmetic or labels: no einsum of its own
        plan = plan_contraction(names, kept, shapes)
        rows.append(
            {
                "pass": which,
                "statement": format_statement(prim_statement(p)),
                "equation": plan.equation,
                "path": plan.path,
                "flops": plan.flops,
                "naive_flops": plan.naive_flops,
                "largest_intermediate": plan.largest_intermediate,
            }
        )
    return rows
