"""The derived program as code (indexgrad/codegen.py, SPEC 8): for every example (and a program of
every kind of index position) on numpy and torch, and for the few that make every call jax's
modules make on jax, the generated module, run in a fresh interpreter where indexgrad cannot be
imported, gives the model's values (float64, relative 1e-12); ruff passes on every module (all
three libraries, every program); the CLI prints them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from oracles import ITERATED_RTOL, assert_close_in_scale, rng
from test_implicit import DEQ, deq_arrays

import indexgrad as ig
from indexgrad.cli import main as cli_main
from indexgrad.codegen import LIBRARIES, to_python
from indexgrad.shapes import random_inputs

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.idx"))
# every kind of index position (SPEC 9) in one program: boundary modes, // and %, a label read
# through clamp, delta with arithmetic, a comparison and where
POSITIONS = """\
dim k=3, w=2
param K[k], E[n,d]
input x[i], ids[t]
a[i] = x[pad(i+k-1)] K[k] + x[clamp(i+k-1)] K[k] + x[wrap(i+k-1)] K[k]
u[j] = a[j//2] + a[(j+1)%2]
e[t,w,d] = E[ids[clamp(t+w)], d]
s[i,j] = delta[i,j+1] a[i] + where(a[i] > 0.5, a[i], 0.1 a[i]) x[j]
loss = sum[j](u[j]^2) + sum[t,w,d](e[t,w,d]^2) + sum[i,j](s[i,j]^2)
"""
# implicit layers beside the examples' (deq, circle, implicit_lsq): a vector output seeded, a solve
# with no block structure from a start tensor, a fix from a start broadcast along i
IMPLICIT = {
    "deq_layer": DEQ,
    "cubic": "z[i] = solve(A[i,j] z[j] + z[i]^3 - y[i], y[i])\nloss = sum[i](z[i])\n",
    "spread_start": "z[b,i] = fix(0.5 z[b,i] + x[b,i], s[b])\nloss = sum[b,i](z[b,i]^2)\n",
}
# tensor and index names that are Python keywords, builtins or the module's own names, in a
# program whose steps make no library call (the module's import is then only check_inputs')
HOSTILE_NAMES = """\
lambda[np,def] = class[np,def] + arrays[def]
import = sum[np,def](lambda[np,def]^2)
"""
# a strided, dilated, padded convolution: its bounds test is a chain of `&` too long for a line
PADDED_CONV = """\
param w[o,i,u,v]
y[b,o,r,c] = x[b,i,pad(2*r+2*u-1),pad(2*c+2*v-1)] w[o,i,u,v]
loss = sum[b,o,r,c](y[b,o,r,c]^2)
"""
PROGRAMS = {p.stem: p for p in EXAMPLES} | {"positions": POSITIONS, "hostile_names": HOSTILE_NAMES} | IMPLICIT
PROGRAMS["padded_conv"] = PADDED_CONV
ITERATES = {"deq", "circle", "implicit_lsq", *IMPLICIT}
LIBS = ["numpy", "torch", "jax"]
# jax compiles each module (up to 1.5 s a program, ~10 s for them all), and a module differs from
# its numpy twin only in the library's spelling of each step: numpy and torch run every program,
# jax the few that between them make every call the jax modules of all programs make (a test checks);
# make fuzz (its hypothesis profile) runs every program on jax too
JAX_FEW = ["positions", "correlation", "log_sin_max", "losses", "mlp", "lenet", "tanh_net"]
JAX_FEW += ["cubic", "spread_start", "hostile_names"]
LONG_RUN = settings().max_examples >= 1000
RUNS = {"numpy": list(PROGRAMS), "torch": list(PROGRAMS), "jax": list(PROGRAMS) if LONG_RUN else JAX_FEW}
CASES = [
    pytest.param(name, lib, marks=[pytest.mark.fuzz] if lib == "jax" and name not in JAX_FEW else [])
    for name in PROGRAMS
    for lib in LIBS
    if name in RUNS[lib]
]
# a jax call, a method call or an indexed update (x.at[...]) in a module
CALL = re.compile(r"\b(?:jnp|jax)(?:\.\w+)+|\.\w+(?=\()|\.at\[")


def arrays_for(name: str, prog: ig.Program, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Positive random inputs, where the programs' iterations have a fixed point or root (deq's A
    is W scaled to norm below 1 whatever W is)."""
    if name == "deq_layer":
        return deq_arrays(int(rng.integers(100)), b=3, i=3, k=3)
    arrays = random_inputs(prog, {}, rng, positive=True)
    if name == "circle":  # x^2 + z^2 = 1 has a root for |x| < 1
        arrays["x"] = arrays["x"] - 1
    if name == "cubic":  # A z + z^3 = y is monotone in z where A is diagonally dominant
        arrays["A"] = arrays["A"] + 4 * np.eye(len(arrays["A"]))
    return arrays


# Runs in a fresh interpreter per library: every example's two modules on the saved inputs.
RUNNER = """\
import importlib.util
import sys

sys.modules["indexgrad"] = None  # as if indexgrad were not installed: `import indexgrad` fails
try:
    import indexgrad  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("indexgrad is importable")
import numpy as np

lib, folder, *names = sys.argv[1:]
if lib == "torch":
    import torch

    to, back = torch.from_numpy, lambda t: t.numpy()
elif lib == "jax":
    import jax

    jax.config.update("jax_enable_x64", True)
    to, back = jax.numpy.asarray, np.asarray
else:
    to, back = (lambda a: a), np.asarray


def load(path):
    spec = importlib.util.spec_from_file_location(path.rsplit("/", 1)[-1][:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(grad, tan, inputs, seeds, tangents):
    vals = grad.forward(**inputs)
    grads = grad.backward(vals, **seeds) if seeds else grad.backward(vals)
    return vals, grads, tan.jvp(tan.forward(**inputs), **tangents)


for name in names:
    data = np.load(f"{folder}/{name}.npz")

    def group(prefix):
        return {k[len(prefix):]: to(data[k]) for k in data.files if k.startswith(prefix)}

    modules = load(f"{folder}/{name}_{lib}_grad.py"), load(f"{folder}/{name}_{lib}_jvp.py")
    call = run if lib != "jax" else jax.jit(run, static_argnums=(0, 1))  # one compilation, not one per call
    vals, grads, tans = call(*modules, group("in/"), group("seed/"), group("tan/"))
    out = {f"val/{k}": back(v) for k, v in vals.items()}
    out.update({f"grad/{k}": back(v) for k, v in grads.items()})
    out.update({f"tan/{k}": back(v) for k, v in tans.items()})
    np.savez(f"{folder}/{name}_{lib}_out.npz", **out)
"""


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict[str, dict[str, dict]]]:
    """Every example's modules and inputs written, each library's runner run once (in parallel) on
    its RUNS, and the model's values for the same inputs."""
    folder = tmp_path_factory.mktemp("codegen")
    want: dict[str, dict[str, dict]] = {}
    for k, (name, source) in enumerate(PROGRAMS.items()):
        prog = ig.load(source) if isinstance(source, Path) else ig.parse(source, filename=f"{name}.idx")
        model = ig.compile(prog)
        rng = np.random.default_rng(k)
        arrays = arrays_for(name, prog, rng)
        vals = model.forward(**arrays)
        loss = prog.defined()[-1]
        seeds = {} if np.ndim(vals[loss]) == 0 else {loss: rng.standard_normal(np.shape(vals[loss]))}
        grads = model.backward(vals, seed=seeds) if seeds else model.backward(vals, loss=loss)
        tangents = {n: rng.standard_normal(np.shape(arrays[n])) for n in model.inputs}
        tans = model.jvp(vals, tangents)
        want[name] = {"val": vals, "grad": grads, "tan": tans}
        saved = {f"in/{n}": a for n, a in arrays.items()}
        saved.update({f"seed/{n}": s for n, s in seeds.items()})
        saved.update({f"tan/{n}": t for n, t in tangents.items()})
        np.savez(folder / f"{name}.npz", **saved)
        for lib in LIBS:
            for mode in ("grad", "jvp"):
                (folder / f"{name}_{lib}_{mode}.py").write_text(to_python(model, lib, mode))
    (folder / "runner.py").write_text(RUNNER)
    runs = [
        subprocess.Popen(
            [sys.executable, "-I", str(folder / "runner.py"), lib, str(folder), *RUNS[lib]],
            cwd=folder,
            env={**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0"},  # values, not speed
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for lib in LIBS
    ]
    for lib, run in zip(LIBS, runs):
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, f"{lib}: {err[-3000:]}"
    return folder, want


@pytest.mark.parametrize("name, lib", CASES)
def test_generated_module_gives_the_models_values(generated, name: str, lib: str) -> None:
    folder, want = generated
    got = np.load(folder / f"{name}_{lib}_out.npz")
    for part, values in want[name].items():
        returned = {k.split("/", 1)[1]: got[k] for k in got.files if k.startswith(part + "/")}
        rtol = ITERATED_RTOL if name in ITERATES else 1e-12
        assert_close_in_scale(returned, values, f"{name} ({lib}) {part}", rtol)


def test_the_programs_run_on_jax_make_every_call_the_jax_modules_of_all_programs_make(generated) -> None:
    folder, _ = generated

    def calls(names: list[str]) -> set[str]:
        texts = [(folder / f"{n}_jax_{m}.py").read_text() for n in names for m in ("grad", "jvp")]
        return {c for text in texts for c in CALL.findall(text)}

    missing = calls(list(PROGRAMS)) - calls(RUNS["jax"])
    assert not missing, f"add a program that makes {sorted(missing)} to RUNS['jax']"


def test_generated_modules_are_ruff_clean_and_import_only_their_library(generated) -> None:
    folder, _ = generated
    modules = sorted(folder.glob("*_grad.py")) + sorted(folder.glob("*_jvp.py"))
    for m in modules:
        lib = m.stem.rsplit("_", 2)[1]
        imports = {line.split()[1] for line in m.read_text().splitlines() if line.startswith("import ")}
        assert imports <= {"numpy": {"numpy"}, "torch": {"torch"}, "jax": {"jax", "jax.numpy"}}[lib], m.name
        assert "indexgrad" not in m.read_text().split('"""', 2)[2], m.name
    ruff = Path(sys.executable).parent / "ruff"
    rules = ["--isolated", "--select", "E,F,W,I,UP,B", "--line-length", "100"]
    done = subprocess.run([str(ruff), "check", *rules, *map(str, modules)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


# ---- what a module reads like -------------------------------------------------------------------


def test_sigmoid_is_exact_in_both_tails_in_every_library() -> None:
    """Each library's spelling of sigmoid gives sigmoid(-40) = 4.2e-18 as the numpy backend does,
    not the 0 that 0.5 (1 + tanh(x/2)) rounds it to (1 / sigmoid would be inf)."""
    import jax
    import jax.numpy as jnp
    import torch

    x = np.array([-700.0, -40.0, -4.0, 0.0, 5.0, 40.0])
    want = np.exp(np.minimum(x, 0)) / (1 + np.exp(-np.abs(x)))
    arrays = {"numpy": x, "torch": torch.from_numpy(x), "jax": x}
    with jax.enable_x64(True):
        for name, lib in LIBRARIES.items():
            code = lib.functions["sigmoid"].format(ns=lib.ns, x="x")
            names = {"np": np, "torch": torch, "jax": jax, "jnp": jnp, "x": arrays[name]}
            got = np.asarray(eval(code, names))  # the template, as the generated module writes it
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=0, err_msg=name)


def test_the_mlp_module_reads_as_its_plan(capsys) -> None:
    """One line per step under its statement: the contraction as np.matmul with .T, the mean's
    1/64 as a division, the seed loss.grad = 1 folded in; forward checks the shapes first."""
    path = str(ROOT / "examples/mlp.idx")
    assert cli_main(["grad", path, "--format", "numpy", "--dims", "b=64,d=64,h=32,c=10"]) == 0
    text = capsys.readouterr().out
    assert text == to_python(ig.load(path), "numpy", dims=dict(b=64, d=64, h=32, c=10))
    assert "    # hidden.prod[b,h] = x[b,d] W1[d,h]\n    hidden_prod = np.matmul(x, W1)\n" in text
    assert (
        "    # W1.grad[d,h] += hidden.sum.grad[b,h] x[b,d]\n    W1_grad = np.matmul(x.T, hidden_sum_grad)\n"
        in text
    )
    assert "    z_grad = z_grad + z_grad_exp / 64\n" in text
    assert "def backward(vals, **seeds):" in text and '"x": (64, 64),' in text and "einsum" not in text


def test_generated_backward_takes_a_scalar_loss_seed_and_refuses_unknown_names(tmp_path) -> None:
    """SPEC 8: `backward(vals, **seeds)` for a scalar loss too (its seed defaults to 1 and scales
    every gradient); a seed or tangent for a name the function does not take is a TypeError
    naming the names it takes, not a silent 0."""
    import importlib.util

    program = ig.parse("h[b,o] = tanh(x[b,i] W[i,o])\nloss = sum[b,o](h[b,o]^2)\n")
    arrays = {"x": rng().standard_normal((3, 3)), "W": rng(1).standard_normal((3, 3))}
    modules = {}
    for mode in ("grad", "jvp"):
        path = tmp_path / f"m_{mode}.py"
        path.write_text(program.to_python("numpy", mode=mode))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        modules[mode] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[mode])
    grad, tan = modules["grad"], modules["jvp"]
    model = ig.compile(program)
    want = model.backward(model.forward(**arrays))
    vals = grad.forward(**arrays)
    for seed, scale in (({}, 1.0), ({"loss": 2.5}, 2.5)):
        got = grad.backward(vals, **seed)
        for n in arrays:
            np.testing.assert_allclose(got[n], scale * want[n], rtol=1e-12)
    with pytest.raises(TypeError, match="no seed or tangent is taken for los; give one for: loss"):
        grad.backward(vals, los=1.0)
    with pytest.raises(TypeError, match="taken for w; give one for: x, W"):
        tan.jvp(tan.forward(**arrays), w=arrays["W"])


def test_a_product_the_plan_runs_by_einsum_is_written_as_pairwise_calls_along_its_path() -> None:
    """The tangent of x A B / size[k] (not split, as other products are: size[k] of a summed k
    stays with the tensors that size k) is one einsum step in the plan, and two einsum calls in
    the code, (A B) first as opt_einsum orders it, index names as letters."""
    text = ig.parse("y[b,i] = x[b,j] A[j,k] B[k,i] / size[k]\n").to_python(
        "numpy", "jvp", dict(b=2, j=3, k=50, i=4), wrt=["x"]
    )
    assert (
        '    y_tan_1 = np.einsum("jk,ki->ij", A, B)\n'
        '    y_tan = np.einsum("bj,ij->bi", x_tan, y_tan_1) / 50\n'
        in text
    )
    namespace: dict = {}
    exec(compile(text, "generated", "exec"), namespace)
    rng = np.random.default_rng(0)
    x, A, B, t = (
        rng.standard_normal((2, 3)),
        rng.standard_normal((3, 50)),
        rng.standard_normal((50, 4)),
        rng.standard_normal((2, 3)),
    )
    tans = namespace["jvp"](namespace["forward"](x=x, A=A, B=B), x=t)
    np.testing.assert_allclose(tans["y"], t @ A @ B / 50, rtol=1e-12)


def test_a_vector_output_gets_a_seed_and_jvp_defaults_tangents_to_zero() -> None:
    namespace: dict = {}
    exec(
        compile(
            to_python(ig.load(ROOT / "examples/affine.idx"), "numpy", dims=dict(b=2, i=3, j=4)), "m", "exec"
        ),
        namespace,
    )
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((2, 4)), "W": rng.standard_normal((4, 3)), "B": rng.standard_normal(3)}
    g = rng.standard_normal((2, 3))
    grads = namespace["backward"](namespace["forward"](**arrays), y=g)
    np.testing.assert_allclose(grads["W"], arrays["x"].T @ g)
    with pytest.raises(
        ValueError, match=r"'x' has shape \(3, 4\), but this module was generated for \(2, 4\)"
    ):
        namespace["forward"](**{**arrays, "x": np.zeros((3, 4))})
    with pytest.raises(TypeError, match="not inputs of the program: z"):
        namespace["forward"](**arrays, z=1)
    jvp: dict = {}
    exec(
        compile(
            to_python(ig.load(ROOT / "examples/affine.idx"), "numpy", "jvp", dict(b=2, i=3, j=4)), "m", "exec"
        ),
        jvp,
    )
    tans = jvp["jvp"](jvp["forward"](**arrays), x=np.ones((2, 4)))
    np.testing.assert_allclose(tans["y"], np.ones((2, 4)) @ arrays["W"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["grad", "--dims", "b=3"], "--dims sizes generated code"),
        (["grad", "--format", "jax", "--order", "2"], "--order 2 prints as idx"),
        (["grad", "--format", "torch", "--dims", "q=3"], "q"),
        (["jvp", "--format", "numpy", "--wrt", "nope"], "nope"),
    ],
)
def test_code_flags_that_cannot_work_are_errors(capsys, argv: list[str], message: str) -> None:
    assert cli_main([argv[0], str(ROOT / "examples/mlp.idx"), *argv[1:]]) == 2
    assert message in capsys.readouterr().err


def test_an_unknown_library_is_an_error_listing_the_known() -> None:
    with pytest.raises(ig.IndexgradError, match="available: numpy, torch, jax"):
        ig.parse("y = x^2").to_python("tensorflow")


def test_an_implicit_layer_is_its_body_as_a_function_and_one_solver_helper() -> None:
    """deq's fix: the statement as a comment, the setup x U once, f as a function of z, the plan's
    settings in the call; the helper printed once for the forward fix and the adjoint's; a fix
    that does not converge raises, naming its tensor."""
    model = ig.compile(ROOT / "examples/deq.idx", tol=1e-10, max_iter=80)
    text = to_python(model, "numpy", dims=dict(b=4, d=5, h=3, c=2, g=3))
    assert (
        "    # z[b,h] = fix(tanh(z[b,g] A[g,h] + x[b,d] U[d,h] + B[h]))\n"
        "    # z.f.prod2[b,h] = x[b,d] U[d,h]\n    z_f_prod2 = np.matmul(x, U)\n\n    def f_z(z):\n"
    ) in text
    assert "        return z_f\n\n    z = fixed_point(f_z, np.zeros((4, 3), dtype=np.float64), " in text
    assert 'tol=1e-10, max_iter=80, m=5, name="z")\n' in text
    assert text.count("def fixed_point(") == 1 and "fixed_point(\n        f_z_adj," in text
    namespace: dict = {}
    exec(compile(text.replace("max_iter=80", "max_iter=2"), "generated", "exec"), namespace)
    rng = np.random.default_rng(0)
    arrays = {n: rng.standard_normal(shape) for n, shape in namespace["SHAPES"].items()}
    with pytest.raises(ArithmeticError, match=r"no fixed point for 'z': the residual .* after 2 evaluations"):
        namespace["forward"](**arrays)


def test_a_solve_module_passes_newton_g_and_its_derivative_in_z() -> None:
    """g and its tangent in z are functions; what the tangent reads of g's values comes back with
    g's value; a singular Jacobian raises, naming the tensor; the jax module prints while loops."""
    text = to_python(ig.parse("z[b] = solve(z[b]^2 - x[b], 0)\n"), "numpy", dims=dict(b=2))
    assert "        return z_g, (z,)\n" in text and "        (z,) = saved\n" in text
    namespace: dict = {}
    exec(compile(text, "generated", "exec"), namespace)
    with pytest.raises(ArithmeticError, match="no root for 'z': its Jacobian is singular after 0 steps"):
        namespace["forward"](x=np.ones(2))
    start = text.replace("np.zeros((2,), dtype=np.float64)", "np.ones(2)")
    exec(compile(start, "generated", "exec"), namespace)
    np.testing.assert_allclose(namespace["forward"](x=np.array([4.0, 9.0]))["z"], [2, 3], rtol=1e-12)
    text = to_python(ig.load(ROOT / "examples/implicit_lsq.idx"), "jax", dims=dict(b=2, i=4, k=3))
    assert "    def g_z(z):\n" in text and "    def dg_z(saved, z_tan):\n" in text
    assert "jax.lax.while_loop(" in text and text.count("def newton(") == 1
    assert "    z, _, _, _ = newton(\n        g_z,\n        dg_z,\n" in text
