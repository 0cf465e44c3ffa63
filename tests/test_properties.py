"""Property tests (hypothesis): random einsum-style statements against numpy.einsum, autograd and
finite differences; random multi-statement programs with functions against autograd, through the
printer and back; and the inner-product identity <g, J v> = <J^T g, v> for backward(seed=...)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from agree import assert_backends_agree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import indexgrad as ig
from indexgrad import positions as ig_positions

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def budget(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def close(got: float, want: float, rtol: float) -> bool:
    return abs(got - want) <= rtol * max(1.0, abs(got), abs(want))


# ---- random einsum-style statements ------------------------------------------------------------

ALPHABET = "ijkl"
NAMES = "abc"


@dataclass
class Einsum:
    sizes: dict[str, int]
    factors: list[str]  # subscripts per factor, e.g. "iij" (repeats are diagonals), "" a scalar
    out: str
    coef: float
    seed: int

    def text(self) -> str:
        refs = [n if not f else f"{n}[{','.join(f)}]" for n, f in zip(NAMES, self.factors)]
        target = "y" if not self.out else f"y[{','.join(self.out)}]"
        coef = "" if self.coef == 1 else f"{self.coef:g} "
        return f"{target} = {coef}{' '.join(refs)}"

    def spec(self) -> str:
        return ",".join(self.factors) + "->" + self.out

    def arrays(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        return {
            n: rng.standard_normal(tuple(self.sizes[c] for c in f))
            for n, f in zip(NAMES, self.factors)
        }

    def autograd_value(self, *arrays):
        """The same contraction with every repeated subscript split into fresh ones tied by
        identity matrices, because autograd's einsum gradient refuses repeated subscripts."""
        fresh = iter("mnopqrstuvwxyz")
        subs, operands = [], []
        for f, a in zip(self.factors, arrays):
            seen: set[str] = set()
            letters = []
            for c in f:
                if c in seen:
                    d = next(fresh)
                    subs.append(c + d)
                    operands.append(np.eye(self.sizes[c]))
                    c = d
                seen.add(c)
                letters.append(c)
            subs.append("".join(letters))
            operands.append(a)
        # operands interleave identity matrices and arrays; keep the order consistent
        return self.coef * anp.einsum(",".join(subs) + "->" + self.out, *operands)


@st.composite
def einsums(draw) -> Einsum:
    sizes = {c: draw(st.integers(1, 4)) for c in ALPHABET}
    nfac = draw(st.integers(1, 3))
    factors = ["".join(draw(st.lists(st.sampled_from(ALPHABET), max_size=3))) for _ in range(nfac)]
    used = sorted({c for f in factors for c in f})
    order = draw(st.permutations(used)) if used else []
    out = "".join(order[: draw(st.integers(0, len(used)))])
    coef = draw(st.sampled_from([1.0, 2.5, -0.5]))
    return Einsum(sizes, factors, out, coef, draw(st.integers(0, 2**16)))


# The oracles (numpy.einsum, autograd, finite differences) check the numpy backend; the torch
# backend is held to numpy's results by the *_agree_on_torch properties below (and make fuzz's
# test_fuzz_programs_agree_on_torch), so running the oracles on torch too proved nothing more.


@budget(150)
@given(case=einsums())
def test_einsum_statement_forward_backward(case: Einsum) -> None:
    model = ig.compile(case.text())
    arrays = case.arrays()
    vals = model.forward(**arrays)
    names = list(arrays)
    want = case.coef * np.einsum(case.spec(), *arrays.values())
    assert np.shape(vals["y"]) == want.shape
    np.testing.assert_allclose(vals["y"], want, rtol=1e-10, atol=1e-12)

    rng = np.random.default_rng(case.seed + 1)
    seed = rng.standard_normal(want.shape)
    got = model.backward(model.forward(**arrays), seed={"y": seed})
    assert set(got) == set(names)

    def scalar(*xs):
        return anp.sum(case.autograd_value(*xs) * seed)

    for pos, n in enumerate(names):
        assert got[n].shape == arrays[n].shape, n
        ref = autograd.grad(scalar, pos)(*arrays.values())
        np.testing.assert_allclose(got[n], ref, rtol=1e-10, atol=1e-12, err_msg=n)
        # and symmetric finite differences along a random direction
        d = rng.standard_normal(arrays[n].shape)
        eps = 1e-3  # <seed, y> is linear in each factor, so the difference is exact up to rounding

        def at(t, n=n, d=d):
            moved = dict(arrays, **{n: arrays[n] + t * d})
            return float(np.sum(seed * case.coef * np.einsum(case.spec(), *moved.values())))

        fd = (at(eps) - at(-eps)) / (2 * eps)
        assert close(float(np.sum(got[n] * d)), fd, 1e-8), (n, fd)


# ---- random multi-statement programs -----------------------------------------------------------

# elementwise templates on one vector: (idx text with {a} standing for `A[i]`, autograd function)
UNARY: list[tuple[str, Callable]] = [
    ("tanh({a})", anp.tanh),
    ("sigmoid({a})", lambda a: 1 / (1 + anp.exp(-a))),
    ("exp(0.5 {a})", lambda a: anp.exp(0.5 * a)),
    ("sin({a})", anp.sin),
    ("softplus({a})", lambda a: anp.logaddexp(0.0, a)),
    ("log(1 + {a}^2)", lambda a: anp.log(1 + a**2)),
    ("log(sigmoid({a}))", lambda a: -anp.logaddexp(0.0, -a)),
    ("sqrt(1 + {a}^2)", lambda a: anp.sqrt(1 + a**2)),
    ("{a}^2", lambda a: a**2),
    ("{a}^3 / 3", lambda a: a**3 / 3),
    ("{a} / (1 + {a}^2)", lambda a: a / (1 + a**2)),
    ("(1 + {a}^2)^-0.5", lambda a: (1 + a**2) ** -0.5),
]


@dataclass
class Prog:
    lines: list[str] = field(default_factory=list)
    steps: list[Callable] = field(default_factory=list)  # env -> None, in order
    kinds: dict[str, str] = field(default_factory=dict)  # name -> "n", "m" or "s"

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    def value(self, inputs: dict) -> dict:
        env = dict(inputs)
        for step in self.steps:
            step(env)
        return env


INPUT_KINDS = {"x": "n", "z": "m", "W": "nm", "s": "s"}
LETTER = {"n": "i", "m": "j"}


def _ref(name: str, kind: str) -> str:
    return name if kind == "s" else f"{name}[{LETTER[kind]}]"


@st.composite
def programs(draw, reducers=("sum", "mean", "logsumexp")) -> tuple[Prog, dict[str, np.ndarray]]:
    """A random program over x[n], z[m], W[n,m] and a scalar s, ending in a scalar loss."""
    n, m = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    arrays = {
        "x": rng.standard_normal(n),
        "z": rng.standard_normal(m),
        "W": rng.standard_normal((n, m)) / 2,
        "s": rng.standard_normal(()),
    }
    p = Prog()
    pool = {"x": "n", "z": "m", "s": "s"}
    for k in range(draw(st.integers(1, 5))):
        name = f"t{k}"
        scalars = sorted(v for v, kd in pool.items() if kd == "s")
        forms = ["unary", "binary", "matvec", "reduce"] + (["scale"] if scalars else [])
        form = draw(st.sampled_from(forms))
        vecs = sorted(v for v, kd in pool.items() if kd != "s")
        a = draw(st.sampled_from(vecs))
        ka = pool[a]
        ia = _ref(a, ka)
        if form == "unary":
            text, fn = draw(st.sampled_from(UNARY))
            rhs, kind = text.format(a=ia), ka
            step = lambda env, name=name, a=a, fn=fn: env.__setitem__(name, fn(env[a]))  # noqa: E731
        elif form == "binary":
            b = draw(st.sampled_from(sorted(v for v, kd in pool.items() if kd == ka)))
            op = draw(st.sampled_from(["*", "+", "-"]))
            ib = _ref(b, ka)
            rhs = {"*": f"{ia} {ib}", "+": f"{ia} + {ib}", "-": f"{ia} - 0.5 {ib}"}[op]
            fns = {"*": lambda u, v: u * v, "+": lambda u, v: u + v, "-": lambda u, v: u - 0.5 * v}
            kind = ka
            step = lambda env, name=name, a=a, b=b, f=fns[op]: env.__setitem__(  # noqa: E731
                name, f(env[a], env[b])
            )
        elif form == "matvec":
            text, fn = draw(st.sampled_from(UNARY[:4] + [("{a}", lambda u: u)]))
            spec, kind = ("ij,i->j", "m") if ka == "n" else ("ij,j->i", "n")
            rhs = text.format(a=f"W[i,j] {ia}")  # the sum over the shared index stays inside
            step = lambda env, name=name, a=a, fn=fn, spec=spec: env.__setitem__(  # noqa: E731
                name, fn(anp.einsum(spec, env["W"], env[a]))
            )
        elif form == "reduce":
            red = draw(st.sampled_from(reducers))
            li = LETTER[ka]
            rhs, kind = f"{red}[{li}]({ia} {ia})", "s"
            fns = {
                "sum": anp.sum,
                "mean": anp.mean,
                "logsumexp": lambda u: anp.log(anp.sum(anp.exp(u))),
            }
            step = lambda env, name=name, a=a, f=fns[red]: env.__setitem__(  # noqa: E731
                name, f(env[a] * env[a])
            )
        else:  # a vector times a scalar
            c = draw(st.sampled_from(scalars))
            rhs, kind = f"{ia} {c}", ka
            step = lambda env, name=name, a=a, c=c: env.__setitem__(  # noqa: E731
                name, env[a] * env[c]
            )
        target = _ref(name, kind)
        p.lines.append(f"{target} = {rhs}")
        p.steps.append(step)
        p.kinds[name] = kind
        pool[name] = kind
    # the loss reads the last tensor and the one before it
    chosen = list(p.kinds)[-2:]
    terms, fns = [], []
    for name in chosen:
        kind = p.kinds[name]
        if kind == "s":
            terms.append(name)
            fns.append(lambda env, name=name: env[name])
        else:
            li = LETTER[kind]
            terms.append(f"0.5 sum[{li}]({name}[{li}]^2)")
            fns.append(lambda env, name=name: 0.5 * anp.sum(env[name] ** 2))
    p.lines.append("loss = " + " + ".join(terms))
    p.steps.append(lambda env: env.__setitem__("loss", sum(f(env) for f in fns)))
    p.kinds["loss"] = "s"
    used = {k: v for k, v in arrays.items() if any(_mentions(line, k) for line in p.lines)}
    return p, used


def _mentions(line: str, name: str) -> bool:
    import re

    return re.search(rf"(?<![\w.]){name}(?![\w.])", line.split("=", 1)[1]) is not None


@pytest.mark.filterwarnings("ignore:Output seems independent of input")
@budget(100)
@given(case=programs())
def test_random_programs_gradients_equal_autograd(case) -> None:
    p, arrays = case
    model = ig.compile(p.text())
    vals = model.forward(**arrays)
    assert close(float(vals["loss"]), float(p.value(arrays)["loss"]), 1e-10)
    got = model.backward(vals, loss="loss")
    keys = sorted(arrays)

    def loss(*xs):
        return p.value(dict(zip(keys, xs)))["loss"]

    for pos, k in enumerate(keys):
        want = autograd.grad(loss, pos)(*(arrays[q] for q in keys))
        np.testing.assert_allclose(got[k], want, rtol=1e-8, atol=1e-10, err_msg=k)


@budget(80)
@given(programs())
def test_random_programs_derived_program_round_trips(case) -> None:
    """The derived program prints, parses back to the same program, and, compiled on its own
    from the forward values, gives the same gradients as Model.backward."""
    p, arrays = case
    prog = ig.parse(p.text())
    model = ig.compile(prog)
    vals = model.forward(**arrays)
    got = model.backward(vals, loss="loss")
    keys = sorted(arrays)
    d = ig.derive(prog, loss="loss")
    again = ig.parse(str(d))
    assert again == d
    assert str(again) == str(d)
    back = ig.compile(again)
    feed = {n: (np.ones(()) if n == "loss.grad" else vals[n]) for n in back.inputs}
    out = back.forward(**feed)
    for k in keys:
        g = out.get(f"{k}.grad")
        g = np.zeros_like(arrays[k]) if g is None else g
        np.testing.assert_allclose(g, got[k], rtol=1e-12, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("text", ["loss = mean[i](x[i])", "loss = mean[i](x[i] x[i])"])
def test_derived_program_of_a_mean_runs_on_its_own(text: str) -> None:
    prog = ig.parse(text)
    model = ig.compile(prog)
    x = np.array([1.0, 2.0, 4.0])
    vals = model.forward(x=x)
    back = ig.compile(ig.parse(str(ig.derive(prog, loss="loss"))))
    feed = {n: (np.ones(()) if n == "loss.grad" else vals[n]) for n in back.inputs}
    out = back.forward(**feed)
    np.testing.assert_allclose(out["x.grad"], model.backward(vals, loss="loss")["x"])


@budget(80)
@given(programs(), st.integers(0, 2**16))
def test_vjp_inner_product_identity(case, seed: int) -> None:
    """<g, J v> by symmetric finite differences equals <J^T g, v> by backward(seed=...)."""
    p, arrays = case
    model = ig.compile(p.text())
    vals = model.forward(**arrays)
    rng = np.random.default_rng(seed)
    # cotangents on the loss and on up to two more tensors, vectors or scalars
    names = list(p.kinds)[-2:] + ["loss"]
    seeds = {n: rng.standard_normal(np.shape(vals[n])) for n in names}
    vjp = model.backward(vals, seed=seeds)
    v = {k: rng.standard_normal(np.shape(a)) for k, a in arrays.items()}
    eps = 1e-6
    plus = model.forward(**{k: a + eps * v[k] for k, a in arrays.items()})
    minus = model.forward(**{k: a - eps * v[k] for k, a in arrays.items()})
    lhs = sum(float(np.sum(g * (plus[n] - minus[n]))) / (2 * eps) for n, g in seeds.items())
    rhs = sum(float(np.sum(vjp[k] * v[k])) for k in arrays)
    assert close(lhs, rhs, 1e-6), (lhs, rhs)
    # forward mode gives the same number without differences
    tans = model.jvp(vals, tangents=v)
    jv = sum(float(np.sum(g * tans[n])) for n, g in seeds.items())
    assert close(jv, rhs, 1e-9), (jv, rhs)


def _tangent_reads_within_kept(text: str) -> None:
    from indexgrad.derive import derivative_reads, tangent
    from indexgrad.lower import lower, prim_refs
    from indexgrad.nodes import refs_in_statement

    prims = lower(ig.parse(text))
    every = {q.out.name for q in prims} | {r.name for q in prims for r in prim_refs(q)}
    tans = {n: n + ".tan" for n in every}
    kept = derivative_reads(prims)
    for q in prims:
        for t in tangent(q, every, tans):
            read = {r.name for r in refs_in_statement(t)} & every
            assert read <= kept, (q, read - kept)


@budget(60)
@given(programs())
def test_tangents_read_only_what_gradients_read(case) -> None:
    """Forward values are kept by what the swapped statements read: every tangent must read
    only those, or jvp would miss a value forward() dropped."""
    _tangent_reads_within_kept(case[0].text())


@pytest.mark.parametrize(
    "text",
    [
        "y[b] = max[i](x[b,i] W[i])\nz[b] = min[i](x[b,i])\nloss = sum[b](y[b] z[b])",
        "y[b] = mean[i](x[b,i]^3)\nloss = logsumexp[b](y[b]) + sum[b](sigmoid(y[b]) tanh(y[b]))",
        "y[b,i] = x[b,i] / (1 + abs(x[b,i]))\nloss = sum[b,i](max(y[b,i], 0.5) exp(y[b,i]))",
    ],
)
def test_tangents_of_reductions_and_functions_read_only_kept_values(text: str) -> None:
    _tangent_reads_within_kept(text)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.idx")), ids=lambda p: p.name)
def test_tangents_of_the_examples_read_only_kept_values(path) -> None:
    _tangent_reads_within_kept(path.read_text())


def _scoped_equals_checked(text: str) -> None:
    from indexgrad.derive import derive_for

    prog = ig.parse(text)
    checked = derive_for(prog, [], None)
    assert derive_for(prog, [], None, validate=False).statements == checked.statements


@budget(60)
@given(programs())
def test_models_derivation_equals_the_checked_one(case) -> None:
    """Model.backward attaches sums to its derived program without the whole check; what it
    runs must be exactly what derive() (which checks) prints."""
    _scoped_equals_checked(case[0].text())


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.idx")), ids=lambda p: p.name)
def test_models_derivation_of_the_examples_equals_the_checked_one(path) -> None:
    _scoped_equals_checked(path.read_text())


def _gradients_without_inlining(text: str, arrays: dict) -> tuple[dict, dict]:
    """Model.backward's gradients, and those of the same derived program run as a program of its
    own (its forward pass: every broadcast temporary made, no `inline_broadcasts`)."""
    model = ig.compile(text)
    vals = model.forward(**arrays)
    got = model.backward(vals, loss="loss")
    d = ig.compile(ig.derive(ig.parse(text), loss="loss"))
    given = dict(vals, **{"loss.grad": np.ones_like(np.asarray(vals["loss"]))})
    env = d.forward(**{n: a for n, a in given.items() if n in d.inputs + d.labels or n in d._shape_sources})
    want = {n: env.get(f"{n}.grad", np.zeros_like(np.asarray(a))) for n, a in arrays.items()}
    return got, want


@budget(80)
@given(programs())
def test_inlined_broadcasts_give_the_gradients_of_the_derived_program(case) -> None:
    p, arrays = case
    got, want = _gradients_without_inlining(p.text(), arrays)
    for k in arrays:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.parametrize(
    "text, arrays",
    [
        # the mean's gradient feeds a product and, through a negation, another one
        ("loss = mean[b](x[b,c] W[c] - sum[c](Y[b,c] x[b,c]))", {"b": 5, "c": 3}),
        # summed in the reader over an index only the broadcast carries: not inlined
        ("loss = sum[i,j](A[i,j]) + sum[i](x[i] + c)", {"i": 4, "j": 2}),
        # read under another index name, and with a size of its own index
        ("t[b] = mean[c](x[b,c])\nloss = mean[b](t[b] / size[b])", {"b": 3, "c": 2}),
    ],
)
def test_inlined_broadcasts_on_chosen_programs(text: str, arrays: dict) -> None:
    rng = np.random.default_rng(1)
    prog = ig.parse(text)
    model = ig.compile(prog)
    shapes = {"x": ("b", "c"), "W": ("c",), "Y": ("b", "c"), "A": ("i", "j"), "c": ()}
    if "x[i]" in text:
        shapes["x"] = ("i",)
    given_arrays = {n: rng.standard_normal(tuple(arrays[k] for k in shapes[n])) for n in model.inputs}
    got, want = _gradients_without_inlining(text, given_arrays)
    for k in given_arrays:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-14, err_msg=k)


# ---- random programs written with a definition -------------------------------------------------

ARG_REFS = {"x": "x[i]", "z": "z[j]", "W": "W[i,j]", "s": "s"}
INDENTS = ["  ", "    ", "\t", "        ", " \t "]
USE_NAMES = ["a", "b", "i", "j", "k", "n"]  # may take the body's own names (i, j) the other way round


@dataclass
class Defined:
    """A random program of `programs()` made a definition's body, and a program that uses it."""

    text: str  # the program with the definition
    flat: str  # the same program written out: the body's statements, then the loss
    arrays: dict[str, np.ndarray]  # for `text`
    flat_arrays: dict[str, np.ndarray]  # the same arrays under the flat program's names


@st.composite
def defined_programs(draw) -> Defined:
    p, arrays = draw(programs())
    body, out = p.lines[:-1], list(p.kinds)[-2]  # the last tensor before the loss
    kind = p.kinds[out]
    used = [n for n in ARG_REFS if n in arrays]
    params = [n for n in used if n != "s" and draw(st.booleans())]  # declared in the body instead
    args = [n for n in used if n not in params] or []
    if not args:  # a definition takes one argument at least: pass a param back
        args, params = params[:1], params[1:]
    out_ref = _ref(out, kind)
    indent = draw(st.sampled_from(INDENTS))
    lines = [f"def layer({', '.join(ARG_REFS[n] for n in args)}) -> {out_ref}:"]
    if params:
        lines.append(indent + "param " + ", ".join(ARG_REFS[n] for n in params))
    for line in body:
        if draw(st.integers(0, 4)) == 0:
            lines.append(draw(st.sampled_from(["", "# a note", indent + "# a note", indent * 2 + "# x"])))
        lines.append(indent + line + draw(st.sampled_from(["", "", "  # why"])))
    lines.append(draw(st.sampled_from(["", "# after the body"])))
    i, j = draw(st.permutations(USE_NAMES).map(lambda names: names[:2]))
    at = {"n": f"[{i}]", "m": f"[{j}]", "nm": f"[{i},{j}]", "s": ""}
    given = {"x": "X", "z": "Z", "W": "V", "s": "c"}
    uses = [f"{given[n]}{at[INPUT_KINDS[n]]}" for n in args]
    lines.append(f"o{at[kind]} = layer({', '.join(uses)})")
    loss = "loss = o" if kind == "s" else f"loss = 0.5 sum[{at[kind][1:-1]}](o{at[kind]}^2)"
    lines.append(loss)
    flat_loss = f"loss = {out}" if kind == "s" else f"loss = 0.5 sum[{LETTER[kind]}]({out_ref}^2)"
    defined_arrays = {given[n] if n in args else f"o.{n}": arrays[n] for n in used}
    flat_arrays = {n: arrays[n] for n in used}
    return Defined("\n".join(lines) + "\n", "\n".join([*body, flat_loss]) + "\n", defined_arrays, flat_arrays)


@budget(60)
@given(defined_programs())
def test_programs_with_a_definition_print_back_as_written(case: Defined) -> None:
    from indexgrad.printer import format_program

    prog = ig.parse(case.text)
    assert prog.defs() and ig.parse(str(prog)) == prog
    assert str(ig.parse(str(prog))) == str(prog)
    kept = format_program(prog, comments=True)
    assert ig.parse(kept) == prog and format_program(ig.parse(kept), comments=True) == kept
    assert kept.count("#") == case.text.count("#")
    # what runs is a program of ordinary statements, which prints and parses to the same
    plain = ig.Program(prog.decls, prog.statements)
    assert ig.parse(str(plain)).statements == prog.statements


@budget(60)
@given(defined_programs())
def test_programs_with_a_definition_equal_the_program_written_out(case: Defined) -> None:
    model, flat = ig.compile(case.text), ig.compile(case.flat)
    vals, flat_vals = model.forward(**case.arrays), flat.forward(**case.flat_arrays)
    assert close(float(vals["loss"]), float(flat_vals["loss"]), 1e-12)
    grads, flat_grads = model.backward(vals, loss="loss"), flat.backward(flat_vals, loss="loss")
    names = dict(zip(case.arrays, case.flat_arrays))  # the same arrays, in the same order
    for mine, theirs in names.items():
        np.testing.assert_allclose(grads[mine], flat_grads[theirs], rtol=1e-12, atol=1e-14, err_msg=mine)


# ---- random index positions (SPEC 9): boundary modes, // and %, against loops in numpy ----------


@dataclass
class Position:
    """`y[i,k] = x[POS] s[i,k]` with POS = a*i + c*k + d, maybe `// m` or `% m` of that, maybe
    through a boundary mode; sizes chosen so that a position without a mode stays in range."""

    a: int
    c: int
    d: int
    op: str  # "", "//" or "%"
    m: int
    mode: str  # "", "pad", "clamp" or "wrap"
    sizes: tuple[int, int]
    n: int
    seed: int

    def inner(self) -> str:
        terms = [f"{self.a}*i" if self.a else "", f"{self.c}*k" if self.c else "", str(self.d)]
        return "+".join(t for t in terms if t).replace("+-", "-")

    def text(self) -> str:
        pos = self.inner() if not self.op else f"({self.inner()}){self.op}{self.m}"
        if self.mode:
            pos = f"{self.mode}({pos})"
        return f"y[i,k] = x[{pos}] s[i,k]\n"

    def values(self) -> np.ndarray:
        i, k = np.meshgrid(np.arange(self.sizes[0]), np.arange(self.sizes[1]), indexing="ij")
        v = self.a * i + self.c * k + self.d
        return v // self.m if self.op == "//" else v % self.m if self.op == "%" else v

    def read(self, x: np.ndarray, s: np.ndarray) -> np.ndarray:
        """The loop the statement means, one (i, k) at a time."""
        y = np.zeros(self.sizes)
        for (i, k), p in np.ndenumerate(self.values()):
            if self.mode == "clamp":
                p = min(max(p, 0), self.n - 1)
            elif self.mode == "wrap":
                p = p % self.n
            elif self.mode == "pad" and not 0 <= p < self.n:
                continue
            y[i, k] = x[p] * s[i, k]
        return y


@st.composite
def positions(draw) -> Position:
    sizes = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    a, c, d = draw(st.integers(-2, 3)), draw(st.integers(-2, 2)), draw(st.integers(-3, 3))
    op = draw(st.sampled_from(["", "", "//", "%"]))
    m = draw(st.integers(1, 3))
    mode = draw(st.sampled_from(["", "pad", "clamp", "wrap"]))
    case = Position(a, c, d, op, m, mode, sizes, 1, draw(st.integers(0, 2**16)))
    v = case.values()
    if not mode:  # in range: shift the constant so the smallest value is 0, then x reaches the largest
        low = int(v.min())
        if low < 0 and not op:
            case.d -= low
        elif low < 0:
            case.d += case.m * (-low)
        v = case.values()
        case.n = int(v.max()) + 1 + draw(st.integers(0, 2))
    else:
        case.n = draw(st.integers(1, 5))
    return case


@budget(120)
@given(positions())
def test_index_positions_read_and_scatter_as_loops_do(case: Position) -> None:
    rng = np.random.default_rng(case.seed)
    x, s = rng.standard_normal(case.n), rng.standard_normal(case.sizes)
    prog = ig.parse(case.text())
    m = ig.compile(prog)
    vals = m.forward(x=x, s=s)
    np.testing.assert_allclose(vals["y"], case.read(x, s), rtol=1e-12, atol=1e-14, err_msg=case.text())
    g = rng.standard_normal(case.sizes)
    got = m.backward(vals, seed={"y": g})
    # the gradient is linear in x: column e of the read's matrix is the read of the unit vector
    eye = np.eye(case.n)
    want_x = np.array([np.sum(g * case.read(eye[e], s)) for e in range(case.n)])
    np.testing.assert_allclose(got["x"], want_x, rtol=1e-10, atol=1e-12, err_msg=case.text())
    np.testing.assert_allclose(got["s"], case.read(x, np.ones(case.sizes)) * g, rtol=1e-12, atol=1e-14)
    assert ig.parse(str(prog)) == prog
    # a plan step carries the position as data, through JSON (Plan.to_json) and back
    (at,) = prog.statements[0].expr.factors[0].indices
    back = ig_positions.from_data(json.loads(json.dumps(ig_positions.as_data(at))))
    size = {"i": case.sizes[0], "k": case.sizes[1]}
    assert back.mode == at.mode
    want = ig_positions.values(at, ("i", "k"), size)
    np.testing.assert_array_equal(ig_positions.values(back, ("i", "k"), size), want)


@budget(60)
@given(positions())
def test_index_positions_agree_on_torch(case: Position) -> None:
    """Reads and scatters through boundary modes, // and % on the torch backend: numpy's values."""
    rng = np.random.default_rng(case.seed)
    arrays = {"x": rng.standard_normal(case.n), "s": rng.standard_normal(case.sizes)}
    assert assert_backends_agree(case.text(), arrays, rng=rng) == "jvp"


@budget(60)
@given(programs(), st.integers(0, 2**16))
def test_random_programs_agree_on_torch(case, seed: int) -> None:
    """The torch backend gives the numpy backend's values, gradients (vector-Jacobian products),
    tangents and Hessian-vector products, within 1e-12."""
    p, arrays = case
    assert assert_backends_agree(p.text(), arrays, rng=np.random.default_rng(seed)) == "hvp"


@budget(60)
@given(einsums())
def test_einsum_statements_agree_on_torch(case: Einsum) -> None:
    assert_backends_agree(case.text(), case.arrays())
