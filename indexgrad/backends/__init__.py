"""Array libraries that run Plans: a registry by name, each backend's module imported on first use."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from ..errors import IndexgradError
from ..plan import Plan, Step

Env = dict[str, Any]
Runner = Callable[[Env], None]
Builder = Callable[[Step], Runner]


class Executor(Protocol):
    """A Plan made runnable: `run(env)` adds what the steps define to env (and drops what they free)."""

    plan: Plan

    def run(self, env: Env, check_finite: bool = False) -> Env: ...


class Backend(Protocol):
    """What the Model needs of an array library."""

    name: str
    in_place: bool  # whether steps may write into the buffers of operands that die
    array_types: tuple[type, ...]  # what forward() takes as that library's arrays, unconverted

    def executor(self, plan: Plan) -> Executor: ...

    def chain(self, executors: Sequence[Executor], returns: tuple[str, ...]) -> Executor: ...

    def asarray(self, value: Any, dtype: Any = None) -> Any: ...

    def describe(self, a: Any) -> tuple[tuple[int, ...], np.dtype]: ...

    def to_numpy(self, a: Any) -> np.ndarray: ...

    def zeros_like(self, a: Any) -> Any: ...

    def contiguous(self, a: Any) -> Any: ...

    def copy(self, a: Any) -> Any: ...

    def one(self, dtype: np.dtype) -> Any: ...


class Chain:
    """Executors run one after another on one env (a forward plan, then the backward plan that
    reads what it keeps), as calling each in turn would: what a backend that does not join plans
    into one computation runs. The env it returns holds `returns` and more."""

    def __init__(self, executors: Sequence[Executor], returns: tuple[str, ...]) -> None:
        self.executors = tuple(executors)
        self.plan = self.executors[-1].plan

    def run(self, env: Env, check_finite: bool = False) -> Env:
        for e in self.executors:
            env = e.run(env, check_finite)
        return env


# name -> (module, the package it needs, how to install that package)
_KNOWN: dict[str, tuple[str, str, str]] = {
    "numpy": ("indexgrad.backends.numpy", "numpy", "pip install numpy"),
    "torch": ("indexgrad.backends.torch", "torch", "pip install torch"),
    "jax": ("indexgrad.backends.jax", "jax", "pip install jax"),
}
_LOADED: dict[str, Backend] = {}


def known() -> list[str]:
    """The names of the backends indexgrad has, installed or not."""
    return list(_KNOWN)


def require(name: str, what: str) -> None:
    """An error saying what to install when the package backend `name` needs is not installed
    (`what` says who needs it)."""
    _, package, install = _KNOWN[name]
    if importlib.util.find_spec(package) is None:
        raise IndexgradError(f"{what} needs the '{package}' package, which is not installed: {install}")


def get_backend(name: str, **options: Any) -> Backend:
    """The backend called `name` (options such as device= go to its constructor); a clear error
    names the known backends, or says what to install."""
    if not isinstance(name, str) or name not in _KNOWN:
        raise IndexgradError(f"unknown backend {name!r}; available: " + ", ".join(sorted(_KNOWN)))
    module = _KNOWN[name][0]
    require(name, f"the {name} backend")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise IndexgradError(
                f"the {name} backend is not available in this version of indexgrad"
            ) from None
        raise
    if options:
        taken = inspect.signature(mod.make_backend).parameters
        refused = [k for k in options if k not in taken]
        if refused:
            raise IndexgradError(
                f"the {name} backend takes no {' or '.join(refused)} option; "
                + (f"it takes: {', '.join(taken)}" if taken else "it takes none")
            )
        return mod.make_backend(**options)  # type: ignore[no-any-return]
    hit = _LOADED.get(name)
    if hit is None:
        hit = _LOADED[name] = mod.make_backend()
    return hit


def integers_fit(a: np.ndarray, into: np.dtype, library: str, remedy: str) -> None:
    """Refuse integers that `into`, the dtype a library would make of a's, cannot hold: the
    library would wrap them around without a word."""
    if a.dtype.kind not in "iu" or not a.size:
        return
    info = np.iinfo(into)
    low, high = int(a.min()), int(a.max())
    if low < info.min or high > info.max:
        bad = high if high > info.max else low
        raise IndexgradError(
            f"holds the integer {bad}, which {library} would wrap around in {into}; {remedy}"
        )


def float_option(dtype: Any, backend: str, allowed: Sequence[str]) -> np.dtype | None:
    """compile(..., dtype=) as a numpy dtype: None, or one of the float dtypes `allowed` names."""
    if dtype is None:
        return None
    try:
        d = np.dtype(dtype)
    except TypeError:
        d = None
    if d is None or d.name not in allowed:
        raise IndexgradError(
            f"dtype={dtype!r} is not a float dtype the {backend} backend computes in; use "
            + " or ".join(allowed)
        )
    return d


def model_dtype(value: Any, dtype: Any, model: np.dtype, convert: str) -> np.dtype | None:
    """The dtype to make `value` with, for a model computing every float in `model` (as the torch
    backend does): a float dtype asked for becomes the model's; a list or Python number holding
    floats takes it; an array holding floats of another dtype is an error (no silent rounding),
    saying how to `convert` it."""
    want = None if dtype is None else np.dtype(dtype)
    if want is not None:
        return model if want.kind == "f" else want
    have = getattr(value, "dtype", None)
    if have is None:  # a list or a Python number: floats take the model's dtype
        return model if np.asarray(value).dtype.kind == "f" else None
    if np.dtype(have).kind == "f" and np.dtype(have) != model:
        raise IndexgradError(
            f"holds {np.dtype(have)}, but the model computes in {model} (compile(..., dtype=...)); "
            f"convert it with {convert.format(model)}"
        )
    return None


def builder_for(table: Mapping[str, Builder], step: Step, backend: str) -> Builder:
    """The builder for a step's kind, or an error listing the kinds this backend builds."""
    b = table.get(step.kind)
    if b is None:
        raise IndexgradError(
            f"the {backend} backend has no builder for steps of kind '{step.kind}'; it builds: "
            + ", ".join(sorted(table))
        )
    return b
