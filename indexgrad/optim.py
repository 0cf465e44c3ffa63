"""Optimisers that update parameter arrays in place from gradients: SGD with momentum, and Adam."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from .errors import IndexgradError, lookup

Array = np.ndarray


class Optimizer(Protocol):
    def step(self, params: dict[str, Array], grads: Mapping[str, Array]) -> None: ...


class Stateful(Protocol):
    """An optimizer whose state a checkpoint can hold: named arrays out, the same arrays back in.

    A key "slot.P" holds an array shaped like param P (SGD's "velocity.W1", Adam's "m.W1");
    a key without a dot is anything else (Adam's step count "t").
    """

    def get_state(self) -> dict[str, Array]: ...

    def set_state(self, state: Mapping[str, Array]) -> None: ...


class SGD:
    """Stochastic gradient descent; with momentum mu, v = mu v + g and p -= lr v (as in PyTorch)."""

    def __init__(self, lr: float = 0.01, momentum: float = 0.0) -> None:
        self.lr = lr
        self.momentum = momentum
        self.velocity: dict[str, Array] = {}

    def step(self, params: dict[str, Array], grads: Mapping[str, Array]) -> None:
        """Update every param that has a gradient, in place."""
        for name, g in grads.items():
            p = params[name]
            if self.momentum:
                v = self.velocity.setdefault(name, np.zeros_like(p))
                v *= self.momentum
                v += g
                g = v
            p -= self.lr * g

    def get_state(self) -> dict[str, Array]:
        """The velocities as "velocity.P" (none until the first step, or without momentum)."""
        return {f"velocity.{name}": v for name, v in self.velocity.items()}

    def set_state(self, state: Mapping[str, Array]) -> None:
        """Restore what get_state returned (copies, so the caller's arrays are not updated)."""
        velocity = {}
        for key, value in state.items():
            slot, _, name = key.partition(".")
            if slot != "velocity" or not name:
                raise IndexgradError(f"unexpected SGD state entry '{key}'")
            velocity[name] = np.array(value)
        self.velocity = velocity


class Adam:
    """Adam (Kingma & Ba, 2015, Algorithm 1): moment estimates with bias correction."""

    def __init__(
        self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8
    ) -> None:
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.t = 0
        self.m: dict[str, Array] = {}
        self.v: dict[str, Array] = {}

    def step(self, params: dict[str, Array], grads: Mapping[str, Array]) -> None:
        """One timestep t: m, v updated from g, then p -= lr m̂ / (sqrt(v̂) + eps), in place."""
        self.t += 1
        correct1 = 1.0 - self.beta1**self.t
        correct2 = 1.0 - self.beta2**self.t
        for name, g in grads.items():
            p = params[name]
            m = self.m.setdefault(name, np.zeros_like(p))
            v = self.v.setdefault(name, np.zeros_like(p))
            m *= self.beta1
            m += (1.0 - self.beta1) * g
            v *= self.beta2
            v += (1.0 - self.beta2) * (g * g)
            p -= self.lr * (m / correct1) / (np.sqrt(v / correct2) + self.eps)

    def get_state(self) -> dict[str, Array]:
        """The step count as "t" and the moment estimates as "m.P" and "v.P"."""
        state = {"t": np.array(self.t, dtype=np.int64)}
        state.update((f"m.{name}", m) for name, m in self.m.items())
        state.update((f"v.{name}", v) for name, v in self.v.items())
        return state

    def set_state(self, state: Mapping[str, Array]) -> None:
        """Restore what get_state returned (copies, so the caller's arrays are not updated)."""
        t = np.asarray(state.get("t", -1))
        if t.shape != () or t.dtype.kind not in "iu" or int(t) < 0:
            raise IndexgradError("Adam state needs a non-negative integer step count 't'")
        moments: dict[str, dict[str, Array]] = {"m": {}, "v": {}}
        for key, value in state.items():
            if key == "t":
                continue
            slot, _, name = key.partition(".")
            if slot not in moments or not name:
                raise IndexgradError(f"unexpected Adam state entry '{key}'")
            moments[slot][name] = np.array(value)
        if set(moments["m"]) != set(moments["v"]):
            raise IndexgradError("Adam state has first and second moments for different params")
        self.t, self.m, self.v = int(t), moments["m"], moments["v"]


OPTIMIZERS: dict[str, type] = {"sgd": SGD, "adam": Adam}


def make_optimizer(optimizer: str | Optimizer, lr: float | None = None) -> Optimizer:
    """An optimizer by name from OPTIMIZERS (lr=None keeps its default), or the object given."""
    if not isinstance(optimizer, str):
        if lr is not None:
            raise IndexgradError("lr is set on the optimizer object; do not pass lr= with it")
        return optimizer
    cls = lookup(OPTIMIZERS, optimizer, "optimizer")
    return cls() if lr is None else cls(lr)
