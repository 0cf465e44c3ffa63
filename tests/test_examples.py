"""Every example with an oracle in tests/oracles.py, against HIPS autograd (SPEC §2, §3, §6).

Forward values, gradients (vector-Jacobian products for non-scalar outputs), gradcheck, float32,
round trips of the derived programs, forward mode against reverse mode, and Hessian-vector products.
"""

from __future__ import annotations

from functools import cache

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from oracles import ORACLES, assert_value_and_grad_agrees, grads, path

import indexgrad as ig

NAMES = sorted(ORACLES)
SCALAR = [
    n
    for n in NAMES
    if np.ndim(ORACLES[n].value(ORACLES[n].inputs(np.random.default_rng(0), np.float64))) == 0
]


@cache
def model(name: str) -> ig.Model:
    return ig.compile(ig.load(path(name)))


def arrays(name: str, dtype=np.float64, seed: int = 1) -> dict[str, np.ndarray]:
    return ORACLES[name].inputs(np.random.default_rng(seed), dtype)


def cotangent(name: str, a: dict[str, np.ndarray]) -> np.ndarray | None:
    """The oracle's seed for a non-scalar output (the same one `oracles.grads` draws)."""
    return ORACLES[name].seed(a, np.random.default_rng(0))


def backward(m: ig.Model, name: str, vals, seed: np.ndarray | None):
    if seed is None:
        return m.backward(vals, loss=ORACLES[name].output)
    return m.backward(vals, seed={ORACLES[name].output: seed})


def float_inputs(m: ig.Model, a: dict[str, np.ndarray]) -> list[str]:
    return [n for n in m.inputs if np.asarray(a[n]).dtype.kind == "f"]


@pytest.mark.parametrize("name", NAMES)
def test_forward_equals_oracle(name: str) -> None:
    m, a = model(name), arrays(name)
    vals = m.forward(**a)
    prog = ig.load(path(name))
    assert set(prog.defined()) <= set(vals)  # every defined tensor, temporaries besides
    out = ORACLES[name].output
    np.testing.assert_allclose(vals[out], ORACLES[name].value(a), rtol=1e-12, atol=1e-12)
    assert np.shape(vals[out]) == np.shape(ORACLES[name].value(a))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_equal_autograd(name: str) -> None:
    m, a = model(name), arrays(name)
    seed = cotangent(name, a)
    got = backward(m, name, m.forward(**a), seed)
    want = grads(name, a, seed)
    assert set(got) == set(float_inputs(m, a))
    for k in got:
        assert got[k].shape == a[k].shape, k
        assert got[k].dtype == np.float64, k
        np.testing.assert_allclose(got[k], want[k], rtol=1e-7, atol=1e-10, err_msg=f"{name}: {k}")


@pytest.mark.parametrize("name", NAMES)
def test_value_and_grad_is_forward_then_backward(name: str) -> None:
    assert_value_and_grad_agrees(model(name), name, arrays(name), np.asarray, oracle=True)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_passes(name: str) -> None:
    a = arrays(name)
    if name in SCALAR:
        report = ig.gradcheck(model(name), a, loss=ORACLES[name].output)
    else:
        # a non-scalar output: check the scalar <seed, output> with the seed as one more input
        prog = ig.load(path(name))
        out = prog.statements[-1].target
        idx = ",".join(str(i.plain) for i in out.indices)
        text = str(prog) + f"gc.loss = sum[{idx}]({out.name}[{idx}] gc.seed[{idx}])\n"
        a = dict(a, **{"gc.seed": cotangent(name, a)})
        report = ig.gradcheck(ig.compile(text), a, loss="gc.loss")
    assert report, str(report)
    assert set(report.errors) >= set(float_inputs(model(name), a)) - {"gc.seed"}


@pytest.mark.parametrize("name", NAMES)
def test_float32_stays_float32(name: str) -> None:
    m = model(name)
    a64, a32 = arrays(name, np.float64), arrays(name, np.float32)
    vals32, vals64 = m.forward(**a32), m.forward(**a64)
    upcast = {
        k: np.asarray(v).dtype
        for k, v in vals32.items()
        if k not in m.labels and np.asarray(v).dtype != np.float32
    }
    assert not upcast, f"float32 inputs gave {upcast}"
    seed64 = cotangent(name, a64)
    seed32 = None if seed64 is None else seed64.astype(np.float32)
    g32, g64 = backward(m, name, vals32, seed32), backward(m, name, vals64, seed64)
    for k in g64:
        assert g32[k].dtype == np.float32, (k, g32[k].dtype)
        scale = max(1.0, float(np.max(np.abs(g64[k]))))
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-3, atol=1e-4 * scale, err_msg=k)
    out = ORACLES[name].output
    np.testing.assert_allclose(vals32[out], vals64[out], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_derived_program_round_trips(name: str) -> None:
    prog = ig.load(path(name))
    assert ig.parse(str(prog)) == prog
    d = ig.derive(prog)
    assert d.statements
    again = ig.parse(str(d))
    assert again == d
    assert str(again) == str(d)
    t = ig.derive_jvp(prog)
    assert ig.parse(str(t)) == t


@pytest.mark.parametrize("name", NAMES)
def test_jvp_against_backward_inner_product(name: str) -> None:
    """<g, J v> (forward mode) = <J^T g, v> (reverse mode), v on every input at once."""
    m, a = model(name), arrays(name)
    rng = np.random.default_rng(7)
    vals = m.forward(**a)
    seed = cotangent(name, a)
    g = np.ones(()) if seed is None else seed
    out = ORACLES[name].output
    v = {k: rng.standard_normal(np.shape(a[k])) for k in float_inputs(m, a)}
    tans = m.jvp(vals, tangents=v)
    back = m.backward(vals, seed={out: g})
    lhs = float(np.sum(g * tans[out]))
    rhs = sum(float(np.sum(back[k] * v[k])) for k in v)
    assert np.isclose(lhs, rhs, rtol=1e-9, atol=1e-11), (lhs, rhs)


@pytest.mark.parametrize("name", NAMES)
def test_jvp_against_finite_differences(name: str) -> None:
    """Tangents of every defined tensor against symmetric differences of the forward pass."""
    m, a = model(name), arrays(name)
    rng = np.random.default_rng(8)
    v = {k: rng.standard_normal(np.shape(a[k])) for k in float_inputs(m, a)}
    tans = m.jvp(m.forward(**a), tangents=v)
    eps = 1e-6
    plus = m.forward(**{k: x + eps * v[k] if k in v else x for k, x in a.items()})
    minus = m.forward(**{k: x - eps * v[k] if k in v else x for k, x in a.items()})
    for n in ig.load(path(name)).defined():
        fd = (np.asarray(plus[n]) - np.asarray(minus[n])) / (2 * eps)
        scale = max(1.0, float(np.max(np.abs(fd), initial=0.0)))
        np.testing.assert_allclose(tans[n], fd, rtol=1e-5, atol=1e-6 * scale, err_msg=n)


@pytest.mark.parametrize("name", SCALAR)
def test_hvp_equals_autograd(name: str) -> None:
    """Model.hvp (forward over reverse) vs autograd.hessian_vector_product on the packed inputs."""
    m, a = model(name), arrays(name)
    keys = float_inputs(m, a)
    parts, lo = [], 0
    for k in keys:
        shape = np.shape(a[k])
        parts.append((k, shape, lo, lo + int(np.prod(shape))))
        lo = parts[-1][3]

    def f(flat):
        unpacked = {k: anp.reshape(flat[i:j], s) for k, s, i, j in parts}
        return ORACLES[name].value(dict(a, **unpacked))

    rng = np.random.default_rng(9)
    flat = np.concatenate([np.ravel(a[k]) for k in keys])
    vec = rng.standard_normal(flat.shape)
    want = autograd.hessian_vector_product(f)(flat, vec)
    v = {k: vec[i:j].reshape(s) for k, s, i, j in parts}
    got = m.hvp(m.forward(**a), loss=ORACLES[name].output, v=v)
    assert set(got) >= set(keys)
    for k, s, i, j in parts:
        assert np.shape(got[k]) == s, k
        np.testing.assert_allclose(got[k], want[i:j].reshape(s), rtol=1e-7, atol=1e-10, err_msg=k)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", NAMES)
def test_nothing_given_is_written_and_repeats_agree_bit_for_bit(name: str, dtype) -> None:
    """Buffers are reused in place only when a run allocated them: the caller's arrays and the
    forward values that backward, jvp and hvp read stay as they were, and every call repeats."""
    m, a = model(name), arrays(name, dtype)
    before = {n: np.array(v, copy=True) for n, v in a.items()}
    vals = m.forward(**a)
    kept = {n: np.array(v, copy=True) for n, v in vals.items()}
    seed = cotangent(name, a)
    seed_copy = None if seed is None else seed.copy()
    floats = float_inputs(m, a)
    tangents = {n: np.ones_like(a[n]) for n in floats}
    results = []
    for _ in range(2):
        out = [m.forward(**a), backward(m, name, vals, seed), m.jvp(vals, tangents=tangents)]
        if seed is None:
            out.append(m.hvp(vals, loss=ORACLES[name].output, v=tangents))
        results.append(out)
    for n, v in a.items():
        assert np.array_equal(v, before[n]), f"input {n} was written"
    for n, v in vals.items():
        assert np.array_equal(v, kept[n], equal_nan=True), f"forward value {n} was written"
    assert seed is None or np.array_equal(seed, seed_copy)
    for first, second in zip(*results):
        assert first.keys() == second.keys()
        for n in first:
            assert np.array_equal(first[n], second[n], equal_nan=True), n
            assert np.asarray(first[n]).dtype == np.asarray(second[n]).dtype


def test_gradients_are_new_arrays() -> None:
    """A gradient that equals a given array (`y = x` passes the seed through; ½Σy² gives y) is
    still an array of its own: updating it, or the params, in place changes nothing else."""
    m = ig.compile("input x[i]\ny[i] = x[i]\nloss = 0.5 sum[i](y[i]^2)\n")
    x = np.arange(3.0)
    vals = m.forward(x=x)
    g = m.backward(vals, loss="loss")["x"]
    np.testing.assert_array_equal(g, x)
    assert not any(np.may_share_memory(g, a) for a in vals.values())
    seed = np.ones(3)
    gs = m.backward(vals, seed={"y": seed})["x"]
    assert not np.may_share_memory(gs, seed) and np.array_equal(gs, seed)


@pytest.mark.parametrize(
    "text",
    [
        "y[i] = a[i] + b[i]\nloss = sum[i](y[i] y[i])\n",  # a.grad and b.grad are both y.grad
        "y[i] = a[i] + b[i] + c[i]\nloss = sum[i](y[i])\n",  # ... all three the seed, broadcast
        "y[i] = a[i] - b[i]\nz[i] = y[i] + b[i]\nloss = sum[i](z[i] z[i])\n",
    ],
)
def test_gradients_never_share_a_buffer(text: str) -> None:
    """Each returned gradient is an array of its own, so updating one in place (clipping,
    scaling) changes no other gradient and no given array."""
    m = ig.compile(text)
    given = {n: np.arange(3.0) + k for k, n in enumerate(m.inputs)}
    vals = m.forward(**given)
    grads = list(m.backward(vals, loss="loss").values())
    for k, g in enumerate(grads):
        assert not any(np.may_share_memory(g, a) for a in [*vals.values(), *grads[k + 1 :]])
