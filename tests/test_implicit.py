"""Implicit layers (SPEC 11): fix and solve against closed forms, their derivatives, the plan, and errors.

The examples deq, circle and implicit_lsq also run in tests/test_examples.py against HIPS autograd
through the unrolled, converged iteration (tests/oracles.py): values, gradients, jvp, hvp, float32.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import indexgrad as ig
from indexgrad.cli import main
from indexgrad.iterate import anderson

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

DEQ = """\
param W[i,j], U[i,k], B[i]
input x[b,k]
z[b,i] = fix(tanh(W[i,j] z[b,j] + U[i,k] x[b,k] + B[i]))
"""


def deq_arrays(seed: int = 0, b: int = 5, i: int = 4, k: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W": 0.3 * rng.standard_normal((i, i)),
        "U": rng.standard_normal((i, k)),
        "B": rng.standard_normal(i),
        "x": rng.standard_normal((b, k)),
    }


def test_the_adjoint_of_the_deep_equilibrium_layer_is_the_linear_fix_of_the_spec() -> None:
    back = ig.derive(ig.parse(DEQ))
    text = str(back)
    assert "z.adj[b,j] = fix(z.grad[b,j] + z.adj[b,i] (1 - z[b,i]^2) W[i,j])\n" in text
    assert "W.grad[i,j] += z.f.sum.grad[b,i] z[b,j]\n" in text
    assert ig.parse(text) == back  # the printout is the program


def test_the_tutorial_prints_the_adjoint_of_the_deep_equilibrium_layer() -> None:
    """docs/tutorial.md shows `indexgrad grad examples/deq.idx` (its output is re-run by
    tests/test_tutorial.py); the adjoint there is the linear fix."""
    text = (EXAMPLES.parent / "docs" / "tutorial.md").read_text()
    assert "z.adj[b,g] = fix(z.grad[b,g] + z.adj[b,h] (1 - z[b,h]^2) A[g,h])\n" in text


def test_fix_finds_the_fixed_point_and_its_gradients_match_the_implicit_function_theorem() -> None:
    a = deq_arrays()
    m = ig.compile(DEQ)
    vals = m.forward(**a)
    z = vals["z"]
    np.testing.assert_allclose(z, np.tanh(z @ a["W"].T + a["x"] @ a["U"].T + a["B"]), rtol=0, atol=1e-12)
    # dz = D (W dz + U dx) with D = diag(1 - z^2), per example: dz/dx = (I - D W)^-1 D U
    seed = np.random.default_rng(1).standard_normal(z.shape)
    got = m.backward(vals, seed={"z": seed})["x"]
    for b in range(z.shape[0]):
        D = np.diag(1 - z[b] ** 2)
        J = np.linalg.solve(np.eye(len(D)) - D @ a["W"], D @ a["U"])
        np.testing.assert_allclose(got[b], J.T @ seed[b], rtol=1e-10)
    report = ig.gradcheck(ig.compile(DEQ + "loss = sum[b,i](z[b,i] s[b,i])\n"), {**a, "s": seed})
    assert report, str(report)


def test_circle_gradient_and_tangent_are_minus_x_over_z() -> None:
    x = np.array([0.3, -0.6, 0.0, 0.9])
    upper = ig.compile(EXAMPLES / "circle.idx")
    vals = upper.forward(x=x)
    np.testing.assert_allclose(vals["z"], np.sqrt(1 - x**2), rtol=1e-12)
    np.testing.assert_allclose(upper.backward(vals)["x"], -x / vals["z"], rtol=1e-12)
    m = ig.compile("z[b] = solve(x[b]^2 + z[b]^2 - 1, z0[b])\nloss = sum[b](z[b])")
    z0 = np.array([1.0, 0.2, -2.0, -0.1])  # the root on z0's half of the circle
    vals = m.forward(x=x, z0=z0)
    np.testing.assert_allclose(vals["z"], np.sign(z0) * np.sqrt(1 - x**2), rtol=1e-12)
    np.testing.assert_allclose(m.backward(vals, wrt="x")["x"], -x / vals["z"], rtol=1e-12)
    np.testing.assert_allclose(m.jvp(vals, {"x": np.ones(4)})["z"], -x / vals["z"], rtol=1e-12)
    assert not np.any(m.backward(vals)["z0"])  # the root does not depend on where Newton starts


def test_least_squares_layer_against_the_normal_equations() -> None:
    m = ig.compile(EXAMPLES / "implicit_lsq.idx")
    rng = np.random.default_rng(3)
    A, x, t, lam = rng.standard_normal((7, 3)), rng.standard_normal((4, 7)), rng.standard_normal((4, 3)), 0.7
    vals = m.forward(A=A, x=x, t=t, lam=lam)
    M = A.T @ A + lam * np.eye(3)
    z = np.linalg.solve(M, A.T @ x.T).T
    np.testing.assert_allclose(vals["z"], z, rtol=1e-12)
    g = m.backward(vals)
    zbar = 2 * (z - t)
    np.testing.assert_allclose(g["x"], (A @ np.linalg.solve(M, zbar.T)).T, rtol=1e-10)
    # d loss / d lam = -<zbar, M^-1 z>
    np.testing.assert_allclose(g["lam"], -np.sum(zbar * np.linalg.solve(M, z.T).T), rtol=1e-10)


def test_a_full_jacobian_solve_and_a_broadcast_start() -> None:
    """z[i] is coupled through every entry (no block structure); the start x[b] is broadcast along i."""
    rng = np.random.default_rng(5)
    A, y = rng.standard_normal((4, 4)) + 4 * np.eye(4), rng.standard_normal(4)
    m = ig.compile("z[i] = solve(A[i,j] z[j] + z[i]^3 - y[i], y[i])\nloss = sum[i](z[i])")
    vals = m.forward(A=A, y=y)
    z = vals["z"]
    np.testing.assert_allclose(A @ z + z**3, y, atol=1e-12)
    J = A + np.diag(3 * z**2)
    np.testing.assert_allclose(m.backward(vals)["y"], np.linalg.solve(J.T, np.ones(4)), rtol=1e-10)
    fixed = ig.compile("z[b,i] = fix(0.5 z[b,i] + x[b,i], s[b])")
    x, s = rng.standard_normal((3, 2)), rng.standard_normal(3)
    np.testing.assert_allclose(fixed.forward(x=x, s=s)["z"], 2 * x, rtol=1e-10)


def test_the_plan_shows_the_iteration_as_one_step_with_its_body() -> None:
    m = ig.compile(DEQ)
    plan = m.plan({"W": (4, 4), "U": (4, 3), "B": (4,), "x": (5, 3)})
    (step,) = [s for s in plan.steps if s.out == "z"]
    assert (step.kind, step.call) == ("fix", "anderson")
    body = step.args["body"]
    assert isinstance(body, type(plan)) and body.outputs == ("z.f",)
    assert any(s.call == "tanh" for s in body.steps)
    assert "anderson(m=5) of z.f = f(z)" in str(plan)
    assert json.loads(plan.to_json())["steps"][0]["args"]["body"]["outputs"] == ["z.f"]
    solve = ig.compile(EXAMPLES / "circle.idx").plan({"x": (3,), "z0": (3,)}).steps[0]
    assert (solve.kind, solve.call, solve.args["diagonal"]) == ("solve", "newton", (0,))
    assert solve.args["tangent"].outputs == (solve.args["slope"],)


def test_tolerance_and_iteration_limit_are_settings() -> None:
    a = deq_arrays()
    loose = ig.compile(DEQ, tol=1e-3).forward(**a)["z"]
    tight = ig.compile(DEQ).forward(**a)["z"]
    assert 0 < np.max(np.abs(loose - tight)) < 1e-2
    with pytest.raises(ig.IndexgradError, match=r"after 3 iterations") as e:
        ig.compile(DEQ, max_iter=3).forward(**a)
    assert e.value.span is not None and e.value.span.line == 3
    for bad in [{"tol": 0.0}, {"tol": float("nan")}, {"max_iter": 0}, {"max_iter": 2.5}]:
        with pytest.raises(ig.IndexgradError, match="tol|max_iter"):
            ig.compile(DEQ, **bad)


BAD = [
    ("z[b] = x[b] + z[b]\n", r"read on its own right side.*fix\(f\).*solve\(g, start\)", 1, 15),
    ("y[b] = 2 fix(x[b] + y[b])\n", "must be the whole right side", 1, 10),
    ("z[b] = x[b]\nz[b] += fix(z[b])\n", "defines its tensor", 2, 1),
    ("z[b] = solve(x[b] - z[b])\n", "solve takes 2 arguments", 1, 8),
    ("z[b] = fix(x[b], z[b], x[b])\n", "fix takes 1 or 2 arguments", 1, 8),
    ("z[b] = fix(0.5 z[b] + x[b], z[b])\n", "cannot read 'z'", 1, 29),
    ("z[b] = fix(0.5 z[b] + x[b])\ny[b] = fix(0.5 y[b] + z[b], 2 z[b] + y[b])\n", "cannot read 'y'", 2, 38),
    ("z[i] = fix(0.5 z[i] + A[i,j] z[j] + x[i], s[i,j])\n", "uses only the left side", 1, 43),
    ("z[i,j] = fix(0.5 z[i,i] + x[i,j])\n", "distinct plain index names", 1, 18),
    ("z[i] = fix(0.5 z[i])\n", "gets its size only from 'z' itself", 1, 3),
    ("z[b,i] = fix(0.5 z[b,j] + x[b])\n", "'i' of 'z' gets no size: it does not appear in fix", 1, 5),
    ("z[b] = fix(z[b] + x[b])\ny[b] = z[b]\nz.f[b] = y[b]\n", None, 0, 0),  # fresh names avoid z.f
]


@pytest.mark.parametrize("source, message, line, column", BAD)
def test_bad_programs_are_located_errors(source: str, message: str | None, line: int, column: int) -> None:
    if message is None:
        assert ig.derive(ig.parse(source)).statements
        return
    with pytest.raises(ig.IndexgradError, match=message) as e:
        ig.parse(source, filename="bad.idx")
    assert (e.value.span.line, e.value.span.column) == (line, column), str(e.value)
    assert "bad.idx" in str(e.value) and "^" in str(e.value)


def test_a_start_of_the_wrong_shape_is_an_error_at_the_start() -> None:
    m = ig.compile("z[b] = fix(0.5 z[b] + x[b], s[b])\n")
    with pytest.raises(ig.IndexgradError, match=r"start 's' has size 4 along 'b', but 'z' has size 3") as e:
        m.forward(x=np.ones(3), s=np.ones(4))
    assert (e.value.span.line, e.value.span.column) == (1, 29)


@pytest.mark.parametrize(
    "source, arrays, message",
    [
        ("z[b] = fix(z[b]^2 + x[b])\n", {"x": np.ones(3)}, r"fix\(...\) found no fixed point for 'z': the"),
        ("z[b] = solve(z[b]^2 + x[b], s[b])\n", {"x": np.ones(2), "s": np.ones(2)}, "found no root"),
        ("z[b] = solve(z[b]^2 - x[b], 0)\n", {"x": np.ones(2)}, "singular"),
    ],
)
def test_no_fixed_point_or_root_is_a_runtime_error_naming_the_statement(
    source: str, arrays: dict, message: str, tmp_path: Path, capsys
) -> None:
    with pytest.raises(ig.IndexgradError, match=message) as e:
        ig.compile(source).forward(**arrays)
    assert e.value.span.line == 1
    assert "iterations" in str(e.value) and "tolerance" in str(e.value)
    src, npz = tmp_path / "p.idx", tmp_path / "in.npz"
    src.write_text(source)
    np.savez(npz, **arrays)
    assert main(["run", str(src), "--inputs", str(npz)]) == 2  # a user error: the program or its inputs
    err = capsys.readouterr().err
    assert "p.idx:1:1: error:" in err and "Traceback" not in err


def test_cli_flags_reach_the_iteration(tmp_path: Path, capsys) -> None:
    src, npz = tmp_path / "p.idx", tmp_path / "in.npz"
    src.write_text("z[b] = fix(0.9 z[b] + x[b])\n")
    np.savez(npz, x=np.ones(3))
    assert main(["run", str(src), "--inputs", str(npz), "--max-iter", "2"]) == 2
    assert "after 2 iterations" in capsys.readouterr().err
    assert main(["run", str(src), "--inputs", str(npz), "--tol", "1e-8"]) == 0
    assert main(["plan", str(src), "--dims", "b=3", "--tol", "1e-6"]) == 0
    assert "tol 1e-06" in capsys.readouterr().out


def test_anderson_beats_plain_iteration_and_falls_back_when_extrapolation_fails() -> None:
    rng = np.random.default_rng(2)
    Q, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    M = Q @ np.diag(np.linspace(0, 0.99, 30)) @ Q.T  # plain iteration needs 0.99^k < 1e-12: 2750 steps
    c = rng.standard_normal(30)
    z, res, used = anderson(lambda v: M @ v + c, np.zeros(30), 1e-12, 500, 5)
    assert z is not None and used < 400, (res, used)
    want = np.linalg.solve(np.eye(30) - M, c)
    np.testing.assert_allclose(z, want, rtol=0, atol=1e-10 * np.max(np.abs(want)))
    z, res, used = anderson(lambda v: 2 * v + 1, np.zeros(3), 1e-12, 50, 5)  # unstable, yet found
    np.testing.assert_allclose(z, -1, rtol=1e-12)
    with np.errstate(over="ignore", invalid="ignore"):  # it runs off to infinity
        z, res, used = anderson(lambda v: v**2 + 1, np.zeros(3), 1e-12, 50, 5)  # no real fixed point
    assert z is None and used == 50 and res > 0.1


def test_the_iteration_holds_its_history_only() -> None:
    """Memory of a fix does not grow with its iterations: a rotation never converges, and 40 or
    400 iterations allocate the same (the last m iterates and values)."""
    n = 20000
    angle = np.linspace(0.1, 3.0, n // 2)
    cos, sin = np.cos(angle), np.sin(angle)

    def rotate(v: np.ndarray) -> np.ndarray:
        a, b = v[: n // 2], v[n // 2 :]
        return np.concatenate([cos * a - sin * b, sin * a + cos * b])

    peaks = []
    for iterations in (40, 400):
        tracemalloc.start()
        anderson(rotate, np.ones(n), 1e-12, iterations, 5)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.05 * peaks[0], peaks


def test_derived_programs_derive_again_and_run_alone() -> None:
    """The adjoint of a fix is a program: its own derivatives (a fix of a fix) are taken by the
    same rules, and the Hessian-vector product agrees with differences of gradients."""
    a = deq_arrays(b=3)
    text = DEQ + "loss = sum[b,i](z[b,i]^2)\n"
    m = ig.compile(text)
    vals = m.forward(**a)
    v = {k: np.random.default_rng(4).standard_normal(np.shape(x)) for k, x in a.items()}
    hv = m.hvp(vals, loss="loss", v=v)
    eps = 1e-6
    plus = m.backward(m.forward(**{k: a[k] + eps * v[k] for k in a}))
    minus = m.backward(m.forward(**{k: a[k] - eps * v[k] for k in a}))
    for k in a:
        np.testing.assert_allclose(hv[k], (plus[k] - minus[k]) / (2 * eps), rtol=1e-5, atol=1e-7, err_msg=k)
    back = ig.derive(ig.parse(text))
    assert "z.adj.tan" in str(ig.derive_jvp(back)) or "fix(" in str(ig.derive_jvp(back))
    jvp = ig.derive_jvp(ig.parse(text))
    assert "z.tan[b,i] = fix(" in str(jvp) and ig.parse(str(jvp)) == jvp


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 4),
    scale=st.floats(0.05, 0.9),
    method=st.sampled_from(["fix", "solve"]),
    start=st.sampled_from(["", ", 0", ", s[i]", ", 2"]),
    seed=st.integers(0, 2**16),
)
def test_random_linear_layers_against_a_direct_solve(
    n: int, scale: float, method: str, start: str, seed: int
) -> None:
    """z = c A z + x (a fix) and c A z + x - z = 0 (a solve) are (I - c A) z = x: values, the
    gradient of <t, z> in every input, and the printed derivatives, which read back as printed."""
    if method == "solve" and not start:
        start = ", 0"
    body = "c A[i,j] z[j] + x[i]" + (" - z[i]" if method == "solve" else "")
    text = f"z[i] = {method}({body}{start})\nloss = sum[i](t[i] z[i])\n"
    prog = ig.parse(text)
    for derived in (ig.derive(prog), ig.derive_jvp(prog)):
        assert ig.parse(str(derived)) == derived
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n))
    A /= max(1.0, np.linalg.norm(A, 2))
    a = {
        "A": A,
        "c": scale,
        "x": rng.standard_normal(n),
        "t": rng.standard_normal(n),
        "s": rng.standard_normal(n),
    }
    a = {k: v for k, v in a.items() if k in prog.inputs()}
    m = ig.compile(prog)
    vals = m.forward(**a)
    M = np.eye(n) - scale * A
    z = np.linalg.solve(M, a["x"])
    np.testing.assert_allclose(vals["z"], z, rtol=1e-9, atol=1e-11)
    g = m.backward(vals)
    u = np.linalg.solve(M.T, a["t"])  # d<t,z>/dx
    np.testing.assert_allclose(g["x"], u, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(g["A"], scale * np.outer(u, z), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(g["c"], u @ A @ z, rtol=1e-8, atol=1e-10)


def test_a_fix_inside_a_definition_is_inlined_per_use() -> None:
    text = """\
def equilibrium(x[b,d]) -> z[b,h]:
    param U[d,h], W[g,h]
    z[b,h] = fix(tanh(0.3 z[b,g] W[g,h] + x[b,d] U[d,h]))

input x[b,d]
h1[b,h] = equilibrium(x[b,d])
h2[b,k] = equilibrium(h1[b,h])
loss = sum[b,k](h2[b,k]^2)
"""
    back = str(ig.derive(ig.parse(text)))
    assert "h2.adj[b,g] = fix(h2.grad[b,g] + 0.3 h2.adj[b,k] (1 - h2[b,k]^2) h2.W[g,k])" in back
    rng = np.random.default_rng(6)
    a = {
        "x": rng.standard_normal((3, 4)),
        "h1.U": rng.standard_normal((4, 3)),
        "h1.W": rng.standard_normal((3, 3)),
    }
    a |= {"h2.U": rng.standard_normal((3, 2)), "h2.W": rng.standard_normal((2, 2))}
    report = ig.gradcheck(ig.compile(text), a)
    assert report, str(report)


def test_newton_backtracks_per_block() -> None:
    """Plain Newton on z^3 - 2z + 2 from 0 cycles 0, 1, 0, ...; the line search, one step length per
    entry of b (each its own problem), reaches the real root, as the far starts reach theirs."""
    m = ig.compile("z[b] = solve(z[b]^3 - 2 z[b] + x[b], z0[b])")
    x, z0 = np.array([2.0, 0.0, -3.0, 2.0]), np.array([0.0, 1.0, 10.0, -1e3])
    z = m.forward(x=x, z0=z0)["z"]
    np.testing.assert_allclose(z**3 - 2 * z + x, 0, atol=1e-12)
    np.testing.assert_allclose(z[[0, 3]], np.real(np.roots([1, 0, -2, 2])[0]), rtol=1e-12)


def test_the_deep_equilibrium_layer_learns_the_digits() -> None:
    """A short run of examples/train_deq.py's training (5 epochs of 20): over 90% of the held-out
    digits already, each step a forward fixed point and an adjoint fixed point."""
    from indexgrad.digits import load_digits_data
    from indexgrad.train import accuracy, fit, infer_sizes, init_params

    model = ig.compile(EXAMPLES / "deq.idx", tol=1e-6)
    train, test = load_digits_data(seed=0)
    params = init_params(model, {**infer_sizes(model, train), "h": 32, "g": 32}, init="glorot", seed=0)
    history = fit(
        model, params, train, epochs=5, batch=64, lr=3e-3, seed=0, valid=test, metric=accuracy("logits", "Y")
    )
    assert history.valid_metric[-1] > 0.9, history.valid_metric
