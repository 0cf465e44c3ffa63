"""Contraction planning: index names to einsum symbols, opt_einsum paths found once per shape and cached."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import opt_einsum as oe


def symbols(names: list[str]) -> dict[str, str]:
    """Einsum letters for index names (an executor detail, never shown to people)."""
    return {n: oe.get_symbol(k) for k, n in enumerate(names)}


@dataclass(frozen=True)
class ContractionPlan:
    """A planned contraction: its equation, the opt_einsum expression and path, and its cost."""

    equation: str
    expression: Callable[..., Any]
    path: list[tuple[int, ...]]
    flops: int
    naive_flops: int
    largest_intermediate: int


_CACHE: dict[tuple[Any, ...], ContractionPlan] = {}
_LOCK = threading.Lock()


def plan_contraction(
    operand_names: list[tuple[str, ...]],
    out_names: tuple[str, ...],
    shapes: list[tuple[int, ...]],
) -> ContractionPlan:
    """The cached plan for one contraction on operands with these index names and shapes."""
    key = (tuple(operand_names), out_names, tuple(shapes))
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    every: dict[str, None] = {}
    for names in operand_names:
        for n in names:
            every.setdefault(n, None)
    for n in out_names:
        every.setdefault(n, None)
    sym = symbols(list(every))
    eq = ",".join("".join(sym[n] for n in names) for names in operand_names)
    eq += "->" + "".join(sym[n] for n in out_names)
    if len(shapes) == 1:
        path: list[tuple[int, ...]] = [(0,)]
        flops = naive = int(np.prod(shapes[0], dtype=np.int64)) if shapes[0] else 1
        largest = flops
    else:
        path, info = oe.contract_path(eq, *shapes, shapes=True, optimize="auto")
        flops = int(info.opt_cost)
        naive = int(info.naive_cost)
        largest = int(info.largest_intermediate)
    expr = oe.contract_expression(eq, *shapes, optimize=path if len(shapes) > 1 else "auto")
    plan = ContractionPlan(eq, expr, list(path), flops, naive, largest)
    with _LOCK:
        _CACHE[key] = plan
    return plan


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
