"""gradcheck: derived gradients against symmetric finite differences along random directions."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .derive import defined_loss
from .errors import IndexgradError
from .model import Model, compile
from .nodes import Program
from .shapes import random_inputs
from .syntax import parse
from .tools import check_dims, check_ranks


@dataclass
class GradcheckReport:
    """Per input: the largest relative error between derived and finite-difference gradients."""

    errors: dict[str, float]
    tolerance: float

    @property
    def ok(self) -> bool:
        return all(e <= self.tolerance for e in self.errors.values())

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        rows = [f"{n}: relative error {e:.2e}" for n, e in self.errors.items()]
        return "\n".join(rows + [("ok" if self.ok else "FAILED") + f" (tolerance {self.tolerance:g})"])


def gradcheck(
    model: Model | Program | str,
    arrays: Mapping[str, Any],
    loss: str | None = None,
    eps: float = 1e-6,
    tolerance: float = 1e-5,
    directions: int = 3,
    seed: int = 0,
    wrt: list[str] | None = None,
) -> GradcheckReport:
    """Compare backward() with symmetric finite differences in float64 along random directions.

    Each input (each of `wrt`, when given) is checked on its own along `directions` random
    directions; more than `JOINT_AFTER` of them are checked along random directions in all at
    once (as JAX's check_grads does), reported under one key, so the cost stays a few forward
    passes. `model` may also be a program (text, path or Program), compiled here.

    The step follows the values' scale: `eps` times the larger of 1 and the root mean square of
    the inputs moved. Finite differences are taken with that step h and with 2h; their
    difference estimates how far the one with h is off (its truncation error, and the rounding
    of a loss such as sum(x + 1e6), whose last bits change the difference), and so does the
    rounding of the loss itself (see `_differences`). The error reported for an input is the
    largest, over its directions, of |finite difference - derived| beyond that estimate,
    relative to the larger of 1 and their size; when the estimate is larger than the derivative
    itself (near a pole), the step shrinks by 4 (up to three times) and the check is repeated.
    """
    if not isinstance(model, Model):
        model = compile(model)
    _check_args(arrays, eps, tolerance, directions, seed)
    given = model.forward(**arrays)  # the arrays, names and dtypes checked as forward checks them
    arr = {
        n: np.asarray(model.engine.to_numpy(given[n]), dtype=np.float64 if n not in model.labels else None)
        for n in arrays  # float inputs and labels, as numpy arrays (any backend takes them)
    }
    del given  # the values of that first run: only what follows is held while checking
    vals = model.forward(**arr)
    loss, _ = model._loss_value(vals, loss)  # the model's own checks of loss= and wrt=
    wrt = model._wrt(wrt)
    shape = np.shape(model.engine.to_numpy(vals[loss]))
    if shape != ():
        raise IndexgradError(
            f"gradcheck needs a scalar loss, but '{loss}' has shape {shape}; "
            "reduce it to one number (sum[...](...)) or name a scalar with loss="
        )
    names = list(model.inputs) if wrt is None else list(wrt)
    grads = model.backward(vals, loss=loss, wrt=names)
    del vals
    rng = np.random.default_rng(seed)
    groups = [[n] for n in names]
    if len(groups) > JOINT_AFTER:
        groups = [names]

    def value(moved: Mapping[str, np.ndarray]) -> float:
        return float(model.forward(**{**arr, **moved})[loss])

    errors: dict[str, float] = {}
    for group in groups:
        worst = 0.0
        count = max(1, sum(arr[n].size for n in group))
        size = max(1.0, math.sqrt(sum(float(np.sum(arr[n] ** 2)) for n in group) / count))  # rms
        for _ in range(directions):
            d = {n: rng.standard_normal(np.shape(arr[n])) for n in group}
            derived = float(sum(np.sum(model.engine.to_numpy(grads[n]) * d[n]) for n in group))
            h = eps * size
            for _attempt in range(4):
                fd, uncertain = _differences(value, arr, d, h)
                if uncertain <= max(1.0, abs(derived)) or _attempt == 3:
                    break
                h /= 4  # near a pole or a kink: a smaller step, as long as it helps
            excess = max(0.0, abs(fd - derived) - uncertain)
            worst = max(worst, excess / max(1.0, abs(fd), abs(derived)))
        key = group[0] if len(group) == 1 else f"all {len(group)} inputs together"
        errors[key] = worst
    return GradcheckReport(errors, tolerance)


def _differences(
    value: Callable[[Mapping[str, np.ndarray]], float],
    arr: Mapping[str, np.ndarray],
    d: Mapping[str, np.ndarray],
    h: float,
) -> tuple[float, float]:
    """The symmetric difference quotient along d with step h, and an estimate of how far off it
    may be: twice its distance to the quotient with step 2h (whose truncation error is 4 times
    as large, so the one with h is off by about a third of that distance), plus the rounding of
    the four values of the loss, 16 units in their last place each, divided by the step."""
    f = {k: value({n: arr[n] + k * h * d[n] for n in d}) for k in (-2, -1, 1, 2)}  # one moved copy at a time
    fd1 = (f[1] - f[-1]) / (2 * h)
    fd2 = (f[2] - f[-2]) / (4 * h)
    rounding = 16 * np.finfo(np.float64).eps * max(abs(v) for v in f.values()) / h
    if not (math.isfinite(fd1) and math.isfinite(fd2)):
        return fd1, math.inf
    return fd1, 2 * abs(fd1 - fd2) + rounding


def _check_args(arrays: Any, eps: Any, tolerance: Any, directions: Any, seed: Any) -> None:
    """Refuse gradcheck's own arguments that could only crash or pass vacuously."""

    def number(x: Any) -> bool:
        return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)

    if not isinstance(arrays, Mapping):
        raise IndexgradError(
            f"gradcheck takes the arrays as a mapping of names to arrays, got {type(arrays).__name__}"
        )
    if not (number(eps) and 0 < eps < math.inf):
        raise IndexgradError(f"gradcheck needs a positive step eps, got {eps!r}")
    if not (number(tolerance) and 0 < tolerance < math.inf):
        raise IndexgradError(f"gradcheck needs a positive tolerance, got {tolerance!r}")
    def count(x: Any) -> bool:
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    if not (count(directions) and directions >= 1):
        raise IndexgradError(
            f"gradcheck needs directions >= 1 (how many random directions to check), got {directions!r}"
        )
    if not (count(seed) and seed >= 0):
        raise IndexgradError(f"gradcheck needs a non-negative integer seed, got {seed!r}")


JOINT_AFTER = 64


def check_program(
    program: Program,
    dims: dict[str, int],
    loss: str | None = None,
    seed: int = 0,
    tolerance: float = 1e-5,
    backend: str = "numpy",
    iterations: dict[str, Any] | None = None,
) -> tuple[GradcheckReport, int]:
    """`indexgrad check`: gradcheck on random inputs sized by `dims`, run on `backend`; the report
    and how many inputs it checked. A loss that is not scalar is checked through <seed, loss> for
    a random seed."""
    check_ranks(program)
    check_dims(program, dims)
    loss = defined_loss(program, loss)
    model = Model(program, backend, iterations=iterations or {})
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for attempt in range(20):
        arrays = random_inputs(program, dims, rng, positive=attempt > 0)
        with np.errstate(all="ignore"):
            vals = model.forward(**arrays)
        value = model.engine.to_numpy(vals[loss])
        if np.all(np.isfinite(value)):
            break
    else:
        raise IndexgradError(f"could not find random inputs for which '{loss}' is finite")
    del vals  # gradcheck runs the program again: not held while it checks
    wrt = list(model.inputs)
    if value.ndim != 0:
        # a vector output: check the scalar <seed, output> instead, in names the program leaves free
        taken = {*program.inputs(), *program.defined()}
        seed_name, dot = _fresh("check.seed", taken), _fresh("check.dot", taken)
        idx = ",".join(f"i{k}" for k in range(value.ndim))
        text = str(program) + f"{dot} = {loss}[{idx}] {seed_name}[{idx}]\n"
        arrays[seed_name] = rng.standard_normal(value.shape)
        model = Model(parse(text, program.filename), backend, iterations=iterations or {})
        loss = dot
    return gradcheck(model, arrays, loss=loss, tolerance=tolerance, wrt=wrt), len(wrt)


def _fresh(name: str, taken: set[str]) -> str:
    """`name`, or `name2`, `name3`, ...: the first the program does not use."""
    out, k = name, 2
    while out in taken:
        out, k = f"{name}{k}", k + 1
    return out
