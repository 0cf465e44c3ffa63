"""An .idx program inside PyTorch: a function of tensors, and an nn.Module, whose backward is derived.

`function(src, inputs=, outputs=)` is a plain function of tensors; `Module(src, outputs=, sizes=)`
holds the program's `param`s as nn.Parameters. Both run the program on the torch backend inside a
`torch.autograd.Function` whose backward runs the derived (vector-Jacobian) program for the inputs
that need gradients; its double backward runs the second-order derived program (the model's hvp of
Σ <output, seed>), so `gradgradcheck` holds too. `import indexgrad` does not import this module:
`indexgrad.torch` loads it on first use.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .backends.torch import device_option, dtype_option, torch_dtype
from .derive import wrt_names
from .errors import IndexgradError
from .model import Model
from .nodes import Program
from .syntax import as_program, parse
from .train import init_params

Tensor = torch.Tensor


class _Core:
    """A program as torch calls it: its Model on the torch backend, its inputs in call order, its
    outputs, and (made on first need) the program that adds Σ <output, seed> for double backward."""

    def __init__(
        self, program: Program, inputs: Sequence[str], outputs: Sequence[str], single: bool = False
    ) -> None:
        self.model = Model(program, "torch")
        self.program = program
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.single = single  # one output, returned as a tensor rather than a tuple
        self.floats = tuple(n not in self.model.labels for n in self.inputs)
        self._seeded: dict[tuple[str, ...], tuple[Model, dict[str, str], str]] = {}

    def error(self, message: str) -> IndexgradError:
        return IndexgradError(message, None, self.program.filename, self.program.source)

    def seeded(self, outputs: tuple[str, ...]) -> tuple[Model, dict[str, str], str]:
        """The program with `LOSS = Σ <o, o's seed>` over `outputs` added, the seeds' names and LOSS."""
        hit = self._seeded.get(outputs)
        if hit is None:
            taken = set(self.program.defined()) | set(self.program.inputs())
            fresh = _fresh_names(taken, [f"{o}.seed" for o in outputs] + ["vjp.loss"])
            seeds, loss = dict(zip(outputs, fresh)), fresh[-1]
            terms = []
            for o in outputs:
                rank = len(next(s.target for s in self.program.statements if s.target.name == o).indices)
                idx = ",".join(f"i{k}" for k in range(rank))
                terms.append(f"sum[{idx}]({o}[{idx}] {seeds[o]}[{idx}])" if rank else f"{o} {seeds[o]}")
            text = str(self.program) + f"\n{loss} = " + " + ".join(terms) + "\n"
            hit = self._seeded[outputs] = (Model(parse(text, self.program.filename), "torch"), seeds, loss)
        return hit


def _shares(a: Tensor, b: Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _fresh_names(taken: set[str], names: list[str]) -> list[str]:
    out = []
    for n in names:
        k, name = 0, n
        while name in taken:
            k += 1
            name = f"{n}{k}"
        taken.add(name)
        out.append(name)
    return out


class _Apply(torch.autograd.Function):
    """forward runs the program; backward runs its derived vector-Jacobian program."""

    @staticmethod
    def forward(ctx: Any, core: _Core, *xs: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        vals = core.model.forward(**dict(zip(core.inputs, xs)))
        outs = []
        for o in core.outputs:
            t = vals[o]
            if any(_shares(t, u) for u in (*xs, *outs)) or 0 in t.stride():
                t = t.clone(memory_format=torch.contiguous_format)  # a tensor of its own
            outs.append(t)
        names = [n for n in vals if n not in core.inputs]
        ctx.core, ctx.names = core, names
        ctx.save_for_backward(*xs, *(vals[n] for n in names))  # torch then sees any later in-place change
        ctx.set_materialize_grads(False)
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *gs: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        core: _Core = ctx.core
        saved = ctx.saved_tensors
        n = len(core.inputs)
        xs = saved[:n]
        vals = dict(zip(core.inputs, xs)) | dict(zip(ctx.names, saved[n:]))
        need = ctx.needs_input_grad[1:]
        wrt = tuple(name for name, k in zip(core.inputs, need) if k)
        seeded = tuple(o for o, g in zip(core.outputs, gs) if g is not None)
        if not wrt or not seeded:
            return (None,) * (n + 1)
        seeds = [g for g in gs if g is not None]
        grads = dict(zip(wrt, _Grad.apply(core, vals, wrt, seeded, *xs, *seeds)))
        return (None, *(grads.get(name) for name in core.inputs))


class _Grad(torch.autograd.Function):
    """The vector-Jacobian product as a function of the inputs and seeds, so that it too has a
    derivative: the Hessian-vector product of Σ <output, seed>, by the second-order program."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, core: _Core, vals: dict[str, Tensor], wrt: tuple[str, ...], seeded: tuple[str, ...],
        *xs_seeds: Tensor,
    ) -> tuple[Tensor, ...]:  # fmt: skip
        seeds = dict(zip(seeded, xs_seeds[len(core.inputs) :]))
        grads = core.model.backward(vals, seed=seeds, wrt=list(wrt))
        ctx.core, ctx.wrt, ctx.seeded = core, wrt, seeded
        ctx.save_for_backward(*xs_seeds)
        return tuple(grads[name] for name in wrt)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *gbars: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        core: _Core = ctx.core
        saved = ctx.saved_tensors
        n = len(core.inputs)
        xs, seeds = saved[:n], saved[n:]
        model, names, loss = core.seeded(ctx.seeded)
        arrays = dict(zip(core.inputs, xs)) | {names[o]: g for o, g in zip(ctx.seeded, seeds)}
        v = {name: g for name, g in zip(ctx.wrt, gbars) if g is not None}
        if not v:
            return (None,) * (4 + len(saved))
        hv = model.hvp(model.forward(**arrays), loss=loss, v=v)
        need = ctx.needs_input_grad[4:]
        out = [hv[name] if k and f else None for name, k, f in zip(core.inputs, need, core.floats)]
        out += [hv[names[o]] if k else None for o, k in zip(ctx.seeded, need[n:])]
        return (None, None, None, None, *out)


def _call(core: _Core, given: Mapping[str, Tensor], dtype: torch.dtype | None = None) -> Any:
    """The program's outputs on the given tensors (every input by name), through _Apply."""
    xs = []
    for name, is_float in zip(core.inputs, core.floats):
        t = given[name]
        if not isinstance(t, Tensor):
            raise core.error(f"'{name}' must be a torch tensor, not {type(t).__name__}")
        if is_float and t.is_floating_point():
            if dtype is None:
                dtype = t.dtype
            elif t.dtype != dtype:
                raise core.error(
                    f"'{name}' is {t.dtype} but the other inputs (or the parameters) are {dtype}: "
                    f"convert it with .to({dtype})"
                )
        xs.append(t)
    # integers and booleans read as numbers take the float dtype of the rest, as in torch's own
    # arithmetic (int64 x times float32 W is float32), not float64
    dtype = dtype or torch.get_default_dtype()
    xs = [t.to(dtype) if f and not t.is_floating_point() else t for t, f in zip(xs, core.floats)]
    outs = _Apply.apply(core, *xs)
    return outs[0] if len(outs) == 1 and core.single else outs


def _outputs(program: Program, outputs: str | Sequence[str] | None) -> tuple[tuple[str, ...], bool]:
    """The output names, and whether one tensor (not a tuple) is returned."""
    if outputs is None:
        if not program.statements:
            raise IndexgradError("the program defines nothing to return", filename=program.filename)
        return (program.statements[-1].target.name,), True
    single = isinstance(outputs, str)
    names = (outputs,) if single else tuple(wrt_names(outputs, "outputs") or ())
    for o in names:
        if o not in program.defined():
            raise IndexgradError(
                f"output '{o}' is not a tensor the program defines; it defines: "
                + ", ".join(program.defined()),
                filename=program.filename,
            )
    return names, single


def _bind(core: _Core, names: Sequence[str], args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict:
    """Positional arguments in the order of `names`, then keywords; each input exactly once."""
    if len(args) > len(names):
        raise core.error(f"{len(args)} positional tensors given, but the inputs are: {', '.join(names)}")
    given = dict(zip(names, args))
    for k, v in kwargs.items():
        if k not in names:
            raise core.error(f"'{k}' is not an input; the inputs are: {', '.join(names)}")
        if k in given:
            raise core.error(f"'{k}' is given twice (by position and by name)")
        given[k] = v
    missing = [n for n in names if n not in given]
    if missing:
        raise core.error("no tensor was given for input " + ", ".join(f"'{m}'" for m in missing))
    return given


def function(
    src: str | Path | Program, inputs: Sequence[str] | None = None, outputs: str | Sequence[str] | None = None
) -> Any:
    """The program as a function of tensors, differentiable by torch (twice): f(*tensors, **named)
    returns the output (one name) or a tuple of outputs. Positional tensors follow `inputs` (by
    default the program's inputs in declaration order)."""
    program = as_program(src, "ig.torch.function")
    order = list(program.inputs())
    names = list(order if inputs is None else inputs)
    if sorted(names) != sorted(order):
        raise IndexgradError(
            f"inputs= must name each input of the program once: {', '.join(order)}", filename=program.filename
        )
    outs, single = _outputs(program, outputs)
    core = _Core(program, names, outs, single)

    def call(*args: Tensor, **kwargs: Tensor) -> Any:
        return _call(core, _bind(core, names, args, kwargs))

    call.__doc__ = f"{program.filename}: ({', '.join(names)}) -> {', '.join(outs)}"
    return call


class Module(nn.Module):
    """The program as a torch layer: its `param`s are nn.Parameters, initialised as
    `indexgrad train` does (weights by `init` with the program's fan-in and fan-out, biases 0),
    drawn from a seed taken from torch's generator (so torch.manual_seed reproduces them) unless
    `seed` is given. `sizes` gives the params' index sizes. forward(*inputs, **inputs) takes the
    other inputs positionally in declaration order or by name."""

    def __init__(
        self,
        src: str | Path | Program,
        outputs: str | Sequence[str] | None = None,
        sizes: Mapping[str, int] | None = None,
        init: str = "he",
        seed: int | None = None,
        dtype: torch.dtype | None = None,
        device: Any = None,
    ) -> None:
        super().__init__()
        program = as_program(src, "ig.torch.Module")
        model = Model(program, "torch")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        values = init_params(model, {} if sizes is None else sizes, init=init, seed=seed, dtype=np.float64)
        dtype = torch.get_default_dtype() if dtype is None else torch_dtype(dtype_option(dtype))
        device = device_option(device)
        self._names = list(values)
        self._params = _getter(self._names)
        for name, a in values.items():
            _register(self, name, nn.Parameter(torch.as_tensor(a, dtype=dtype, device=device)), program)
        params = set(values)
        self.input_names = [n for n in program.inputs() if n not in params]
        outs, single = _outputs(program, outputs)
        self._core = _Core(program, [*self.input_names, *self._names], outs, single)

    def forward(self, *args: Tensor, **kwargs: Tensor) -> Any:
        given = _bind(self._core, self.input_names, args, kwargs)
        params = [self._params(self)] if len(self._names) == 1 else list(self._params(self))
        given.update(zip(self._names, params))
        return _call(self._core, given, params[0].dtype if params else None)

    def extra_repr(self) -> str:
        outs = ", ".join(self._core.outputs)
        return f"{self._core.program.filename}: ({', '.join(self.input_names)}) -> {outs}"


def _getter(names: list[str]) -> Any:
    """The module's parameters (a tuple, or the one) by their .idx names: `h1.W` too."""
    return operator.attrgetter(*names) if names else _no_params


def _no_params(module: nn.Module) -> tuple[()]:
    return ()


def _register(module: nn.Module, name: str, p: nn.Parameter, program: Program) -> None:
    """Register a param under its .idx name: `h1.W` is parameter W of a child module h1, so that
    state_dict's keys are the program's names."""
    *path, leaf = name.split(".")
    owner = module
    for part in path:
        child = owner._modules.get(part)
        if child is None:
            if part in owner._parameters:
                raise IndexgradError(
                    f"param '{name}' cannot sit beside a param named '{part}' in a torch Module",
                    filename=program.filename,
                )
            child = nn.Module()
            owner.add_module(part, child)
        owner = child
    if leaf in owner._modules:
        raise IndexgradError(
            f"param '{name}' cannot sit beside params named '{name}.…' in a torch Module",
            filename=program.filename,
        )
    owner.register_parameter(leaf, p)


__all__ = ["Module", "function"]
