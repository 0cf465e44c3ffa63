"""indexgrad for JAX users (`ig.jax`, loaded on first use): a program as a function of a dict of
jax arrays whose reverse-mode derivative is the derived program (`jax.custom_vjp`), so that it
composes with `jax.jit`, `jax.grad`, `jax.value_and_grad` and `jax.vmap` like any jax function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .backends.jax import float_dtype
from .derive import wrt_names
from .errors import IndexgradError
from .model import Model, not_numbers
from .model import compile as compile_model
from .nodes import Program
from .syntax import as_program

Arrays = Mapping[str, Any]


def function(
    program: str | Program | Model, outputs: str | Sequence[str] | None = None
) -> Callable[..., Any]:
    """`f(arrays) -> output` (a tuple for several outputs) for .idx text, a path, a Program or a
    Model of the jax backend: its forward is the program's forward plan, its VJP the derived
    program's plan, each traced into the computation around it (one XLA computation under jit).

    `arrays` holds every input by name (labels as integer arrays). Labels get no gradient (jax's
    float0 zeros); integer arrays given for float inputs become floats first, as in the Model."""
    if isinstance(program, Model):
        model = program
    else:
        model = compile_model(as_program(program, "ig.jax.function"), backend="jax")
    if model.backend != "jax":
        raise IndexgradError(f"ig.jax.function needs a model of the jax backend, not {model.backend!r}")
    names = _outputs(model, outputs)
    single = isinstance(outputs, str) or outputs is None
    labels = set(model.labels)
    order = model.inputs + model.labels

    def pick(vals: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(vals[n] for n in names)

    @jax.custom_vjp
    def run(arrays: dict[str, Any]) -> tuple[Any, ...]:
        return pick(model.forward(**arrays))

    def run_fwd(arrays: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        vals = model.forward(**arrays)
        return pick(vals), vals

    def run_bwd(vals: dict[str, Any], cotangents: tuple[Any, ...]) -> tuple[dict[str, Any]]:
        if len(names) == 1 and np.ndim(vals[names[0]]) == 0:  # the plan Model.backward runs, scaled
            grads = {n: g * cotangents[0] for n, g in model.backward(vals, loss=names[0]).items()}
        else:
            grads = model.backward(vals, seed=dict(zip(names, cotangents)))
        zero = {n: np.zeros(np.shape(vals[n]), jax.dtypes.float0) for n in labels}
        return ({n: grads[n] if n not in labels else zero[n] for n in order},)

    run.defvjp(run_fwd, run_bwd)

    def f(arrays: Arrays) -> Any:
        if not isinstance(arrays, Mapping):
            raise IndexgradError(
                f"the function takes one dict from input names to arrays, not {type(arrays).__name__}"
            )
        out = run({n: _float(model, n, v) if n not in labels else v for n, v in arrays.items()})
        return out[0] if single else out

    f.model = model  # type: ignore[attr-defined]
    f.__doc__ = f"{model.program.filename}: {', '.join(names)} from " + ", ".join(model._order)
    return f


def _float(model: Model, name: str, v: Any) -> Any:
    """An input as a float array: integers and booleans become jax's default float, as in the Model
    (outside the custom VJP, so that jax sees a conversion it does not differentiate). What jax
    cannot take as an argument at all (strings, objects, None) is the Model's error for it here."""
    native = isinstance(v, (jax.Array, np.ndarray))
    try:
        a = v if native else np.asarray(v)
    except Exception as e:  # a tensor of another library that does not give up its values as it is
        raise model._error(f"the value given for '{name}' is not an array: {e}", name) from None
    kind = np.dtype(a.dtype).kind
    if kind in "biu":
        return jnp.asarray(a, float_dtype(np.float64))
    if kind not in "fc":  # complex: the Model says it must be real
        raise model._error(f"the value given for '{name}' {not_numbers(np.dtype(a.dtype))}", name)
    # another library's array (a torch tensor) as numpy's, which jax takes; Python numbers and
    # lists stay as they are, for jax to give them its default float
    return v if native or not hasattr(v, "dtype") else a


def _outputs(model: Model, outputs: str | Sequence[str] | None) -> tuple[str, ...]:
    defined = model.program.defined()
    if not defined:
        raise IndexgradError("the program defines nothing to return", filename=model.program.filename)
    if outputs is None:
        return (defined[-1],)
    names = (outputs,) if isinstance(outputs, str) else tuple(wrt_names(outputs, "outputs") or ())
    for n in names:
        if not isinstance(n, str) or n not in defined:
            raise IndexgradError(
                f"outputs names {n!r}, which the program does not define; it defines: " + ", ".join(defined),
                filename=model.program.filename,
            )
    if not names:
        raise IndexgradError("outputs names no tensor; name one the program defines")
    return names


__all__ = ["function"]
