"""gradcheck: derived gradients against symmetric finite differences along random directions."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .derive import defined_loss, wrt_names
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
    once (as JAX's check_grads does), reported under one key, so the cost stays a few forward passes.
    `model` may also be a program (text, path or Program), compiled here.
    """
    if not isinstance(model, Model):
        model = compile(model)
    wrt = wrt_names(wrt)
    if not eps > 0 or not math.isfinite(eps):
        raise IndexgradError(f"gradcheck needs a positive step eps, got {eps}")
    arr = {
        n: (np.asarray(a, dtype=np.float64) if n not in model.labels else np.asarray(a))
        for n, a in arrays.items()
    }
    vals = model.forward(**arr)
    loss = loss or model.program.statements[-1].target.name
    names = list(model.inputs) if wrt is None else list(wrt)
    grads = model.backward(vals, loss=loss, wrt=names)
    rng = np.random.default_rng(seed)
    groups = [[n] for n in names]
    if len(groups) > JOINT_AFTER:
        groups = [names]
    errors: dict[str, float] = {}
    for group in groups:
        worst = 0.0
        for _ in range(directions):
            d = {n: rng.standard_normal(np.shape(arr[n])) for n in group}
            plus = dict(arr, **{n: arr[n] + eps * d[n] for n in group})
            minus = dict(arr, **{n: arr[n] - eps * d[n] for n in group})
            fd = (float(model.forward(**plus)[loss]) - float(model.forward(**minus)[loss])) / (2 * eps)
            an = float(sum(np.sum(model.engine.to_numpy(grads[n]) * d[n]) for n in group))
            err = abs(fd - an) / max(1.0, abs(fd), abs(an))
            worst = max(worst, err)
        key = group[0] if len(group) == 1 else f"all {len(group)} inputs together"
        errors[key] = worst
    return GradcheckReport(errors, tolerance)


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
    if value.ndim != 0:
        # a vector output: check the scalar <seed, output> instead
        g = rng.standard_normal(value.shape)
        idx = ",".join(f"i{k}" for k in range(value.ndim))
        text = str(program) + f"check.dot = {loss}[{idx}] check.seed[{idx}]\n"
        arrays["check.seed"] = g
        model = Model(parse(text, program.filename), backend, iterations=iterations or {})
        loss = "check.dot"
    wrt = [n for n in model.inputs if n != "check.seed"]  # the seed is the check's, not the program's
    return gradcheck(model, arrays, loss=loss, tolerance=tolerance, wrt=wrt), len(wrt)
