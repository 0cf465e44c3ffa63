"""Contraction planning: index names to einsum symbols, opt_einsum paths found once per shape and cached."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
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
    pairwise.cache_clear()


@cache
def pairwise(
    a_names: tuple[str, ...],
    b_names: tuple[str, ...],
    out: tuple[str, ...],
    a_shape: tuple[int, ...],
    b_shape: tuple[int, ...],
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A two-operand contraction as one BLAS matmul (or a broadcast product), planned once.

    The result's axes are `out`; every name in `out` must appear in an operand. Cached per
    names and shapes (the functions returned keep no state).
    """
    matrix = _matrix_product(a_names, b_names, out)
    if matrix is not None:
        return matrix
    size = dict(zip(a_names, a_shape)) | dict(zip(b_names, b_shape))
    a_set, b_set, o_set = set(a_names), set(b_names), set(out)
    batch = [n for n in out if n in a_set and n in b_set]
    left = [n for n in out if n in a_set and n not in b_set]
    right = [n for n in out if n in b_set and n not in a_set]
    inner = [n for n in a_names if n in b_set and n not in o_set]
    a_only = tuple(k for k, n in enumerate(a_names) if n not in b_set and n not in o_set)
    b_only = tuple(k for k, n in enumerate(b_names) if n not in a_set and n not in o_set)
    a_rest = tuple(n for n in a_names if n in b_set or n in o_set)
    b_rest = tuple(n for n in b_names if n in a_set or n in o_set)

    def prep(x: np.ndarray, only: tuple[int, ...]) -> np.ndarray:
        return x.sum(axis=only) if only else x

    if not inner:  # no sum between the operands: a broadcast product
        a_perm = [a_rest.index(n) for n in out if n in a_set]
        b_perm = [b_rest.index(n) for n in out if n in b_set]
        a_shape2 = [size[n] if n in a_set else 1 for n in out]
        b_shape2 = [size[n] if n in b_set else 1 for n in out]

        def product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            a = prep(a, a_only).transpose(a_perm).reshape(a_shape2)
            b = prep(b, b_only).transpose(b_perm).reshape(b_shape2)
            return a * b

        return product

    if batch + right + left == list(out) and batch + left + right != list(out):
        # C = A B would come out transposed; compute it as (B^T A^T) so it is born in order
        swapped = pairwise(b_names, a_names, out, b_shape, a_shape)
        return lambda a, b: swapped(b, a)
    a_perm = [a_rest.index(n) for n in batch + left + inner]
    b_perm = [b_rest.index(n) for n in batch + inner + right]
    if batch and not left and not right:  # one dot product per batch entry
        rows = (math.prod(size[n] for n in batch), math.prod(size[n] for n in inner))
        a_rows = _mover(a_only, a_perm, tuple(size[n] for n in a_rest), rows)
        b_rows = _mover(b_only, b_perm, tuple(size[n] for n in b_rest), rows)
        return _moved(np.vecdot, a_rows, b_rows, tuple(size[n] for n in batch), None)
    nb = math.prod(size[n] for n in batch)
    nl = math.prod(size[n] for n in left)
    nr = math.prod(size[n] for n in right)
    nk = math.prod(size[n] for n in inner)
    mid = batch + left + right
    res_shape = [size[n] for n in mid]
    res_perm = [mid.index(n) for n in out]
    identity = res_perm == list(range(len(res_perm)))
    a3 = (nb, nl, nk) if batch else (nl, nk)
    b3 = (nb, nk, nr) if batch else (nk, nr)

    a_move = _mover(a_only, a_perm, tuple(size[n] for n in a_rest), a3)
    b_move = _mover(b_only, b_perm, tuple(size[n] for n in b_rest), b3)
    res_t = tuple(res_shape)
    if a_move is None and b_move is None and identity and res_t == a3[:-1] + b3[-1:]:
        return np.matmul
    return _moved(np.matmul, a_move, b_move, res_t, None if identity else res_perm)


def matrix_layout(
    a_names: tuple[str, ...], b_names: tuple[str, ...], out: tuple[str, ...]
) -> tuple[bool, bool, bool] | None:
    """For `out[l,r] = a b` of two matrices that share one summed index: (operands swapped, first
    transposed, second transposed) of the one np.matmul that computes it, the operand holding l
    first; None for any other contraction."""
    if not len(a_names) == len(b_names) == len(out) == 2 or len(set(out)) != 2:
        return None
    shared = set(a_names) & set(b_names)
    if len(shared) != 1 or len(set(a_names)) != 2 or len(set(b_names)) != 2:
        return None
    (k,) = shared
    left, right = out
    if k in out:
        return None
    if left in a_names and right in b_names:
        swap, x_names, y_names = False, a_names, b_names
    elif left in b_names and right in a_names:
        swap, x_names, y_names = True, b_names, a_names
    else:
        return None
    return swap, x_names == (k, left), y_names == (right, k)


def _matrix_product(
    a_names: tuple[str, ...], b_names: tuple[str, ...], out: tuple[str, ...]
) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    layout = matrix_layout(a_names, b_names, out)
    return None if layout is None else _MATMULS[layout]


# (operands swapped, first transposed, second transposed) -> the product
_MATMULS: dict[tuple[bool, bool, bool], Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    (False, False, False): np.matmul,
    (False, True, False): lambda a, b: np.matmul(a.T, b),
    (False, False, True): lambda a, b: np.matmul(a, b.T),
    (False, True, True): lambda a, b: np.matmul(a.T, b.T),
    (True, False, False): lambda a, b: np.matmul(b, a),
    (True, True, False): lambda a, b: np.matmul(b.T, a),
    (True, False, True): lambda a, b: np.matmul(b, a.T),
    (True, True, True): lambda a, b: np.matmul(b.T, a.T),
}


def _moved(
    product: Callable[[np.ndarray, np.ndarray], np.ndarray],
    a_move: Callable[[np.ndarray], np.ndarray] | None,
    b_move: Callable[[np.ndarray], np.ndarray] | None,
    res: tuple[int, ...],
    perm: list[int] | None,
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """`product` (np.matmul of matrices or batches of them; np.vecdot of rows, one dot product per
    batch entry, cheaper than a batch of 1x1 matrix products) of the operands as `a_move` and
    `b_move` lay them out, reshaped to `res` and, given `perm`, transposed into the output's order."""

    def run(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if a_move is not None:
            a = a_move(a)
        if b_move is not None:
            b = b_move(b)
        r = product(a, b).reshape(res)
        return r if perm is None else r.transpose(perm)

    return run


def _mover(
    only: tuple[int, ...], perm: list[int], rest_shape: tuple[int, ...], shape3: tuple[int, ...]
) -> Callable[[np.ndarray], np.ndarray] | None:
    """What turns an operand into its matrix (or batch of matrices), with no step that does nothing."""
    transpose = perm != sorted(perm)
    reshape = tuple(rest_shape[k] for k in perm) != shape3
    if not only and not transpose and not reshape:
        return None
    if not only and not transpose:
        return lambda x: x.reshape(shape3)
    if not only and not reshape:
        return (lambda x: x.T) if perm == [1, 0] else (lambda x: x.transpose(perm))
    if not only:
        return lambda x: x.transpose(perm).reshape(shape3)
    return lambda x: x.sum(axis=only).transpose(perm).reshape(shape3)
