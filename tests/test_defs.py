"""Layer definitions (SPEC 10): uses inline to the statements one would write by hand, tied params
sum their uses' gradients, errors point into bodies and at uses, and the written form prints back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import indexgrad as ig
from indexgrad.cli import main
from indexgrad.printer import format_program

DEFS = """\
# a layer, and a layer of two outputs that uses it and shares V with whoever passes it
def dense(x[b,j]) -> y[b,i]:
    param W[j,i], B[i]
    y[b,i] = x[b,j] W[j,i] + B[i]

def mlp(x[b,j], V[i,k]) -> y[b,k], h[b,i]:
    a[b,i] = dense(x[b,j])
    h[b,i] = tanh(a[b,i])
    n[b,j] = x[b,j] - mean[d](x[b,d])   # d is this line's own: a use that names j 'd' renames it
    y[b,k] = h[b,i] V[i,k] + mean[j](n[b,j]^2)

param V[h,c]
input x[b,d], Y[b,c]
o1[b,c], g1[b,h] = mlp(x[b,d], V[h,c])
e[b,d] = dense(g1[b,h])
o2[b,c], g2[b,h] = mlp(e[b,d], V[h,c])
loss = mean[b](logsumexp[c](o1[b,c] + o2[b,c]) - sum[c](Y[b,c] o2[b,c])) + sum[b,h](g2[b,h]^2)
"""

# DEFS written out by hand: what each use stands for, in the names the uses give
BY_HAND = """\
param V[h,c]
input x[b,d], Y[b,c]
param o1.a.W[d,h], o1.a.B[h], e.W[h,d], e.B[d], o2.a.W[d,h], o2.a.B[h]
o1.a[b,h] = x[b,d] o1.a.W[d,h] + o1.a.B[h]
g1[b,h] = tanh(o1.a[b,h])
o1.n[b,d] = x[b,d] - mean[d2](x[b,d2])
o1[b,c] = g1[b,h] V[h,c] + mean[d](o1.n[b,d]^2)
e[b,d] = g1[b,h] e.W[h,d] + e.B[d]
o2.a[b,h] = e[b,d] o2.a.W[d,h] + o2.a.B[h]
g2[b,h] = tanh(o2.a[b,h])
o2.n[b,d] = e[b,d] - mean[d2](e[b,d2])
o2[b,c] = g2[b,h] V[h,c] + mean[d](o2.n[b,d]^2)
loss = mean[b](logsumexp[c](o1[b,c] + o2[b,c]) - sum[c](Y[b,c] o2[b,c])) + sum[b,h](g2[b,h]^2)
"""

SIZES = {"b": 3, "d": 4, "h": 5, "c": 2}


def arrays(program: ig.Program, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float64 arrays for every input, shaped by the names of its declaration."""
    rng = np.random.default_rng(seed)
    return {
        d.ref.name: rng.standard_normal(tuple(SIZES[i.plain] for i in d.ref.indices)) for d in program.decls
    }


def test_uses_inline_to_the_statements_written_by_hand() -> None:
    p, hand = ig.parse(DEFS), ig.parse(BY_HAND)
    assert p.statements == hand.statements
    assert sorted(map(str, p.decls)) == sorted(map(str, hand.decls))
    assert p.params() == ("V", "o1.a.W", "o1.a.B", "e.W", "e.B", "o2.a.W", "o2.a.B")


def test_values_and_gradients_equal_the_hand_written_program_bit_for_bit() -> None:
    p, hand = ig.parse(DEFS), ig.parse(BY_HAND)
    a = arrays(hand)
    m1, m2 = ig.compile(p), ig.compile(hand)
    v1, v2 = m1.forward(**a), m2.forward(**a)
    assert set(v1) == set(v2)
    for k in v2:
        assert np.array_equal(v1[k], v2[k]), k
    g1, g2 = m1.backward(v1, loss="loss"), m2.backward(v2, loss="loss")
    assert set(g1) == set(g2) == set(a)
    for k in g2:
        assert np.array_equal(g1[k], g2[k]), k
    t1 = m1.jvp(v1, tangents={"V": np.ones_like(a["V"])})
    t2 = m2.jvp(v2, tangents={"V": np.ones_like(a["V"])})
    assert np.array_equal(t1["loss"], t2["loss"])
    assert ig.gradcheck(m1, a, loss="loss")


def test_a_param_passed_to_two_uses_gets_both_gradients() -> None:
    """V goes to both uses of mlp: its gradient is the sum of what each use would give an untied
    copy of its own, and agrees with finite differences."""
    tied = ig.parse(DEFS)
    text = DEFS.replace("param V[h,c]", "param V[h,c], V2[h,c]")
    untied = ig.parse(text.replace("mlp(e[b,d], V[h,c])", "mlp(e[b,d], V2[h,c])"))
    a = arrays(tied)
    m, m2 = ig.compile(tied), ig.compile(untied)
    g = m.backward(m.forward(**a), loss="loss")["V"]
    g2 = m2.backward(m2.forward(**a, V2=a["V"]), loss="loss")
    assert not np.allclose(g2["V"], 0) and not np.allclose(g2["V2"], 0)
    np.testing.assert_allclose(g, g2["V"] + g2["V2"], rtol=1e-12, atol=1e-14)
    report = ig.gradcheck(m, a, loss="loss", wrt=["V"])
    assert report and report.errors["V"] < 1e-7, str(report)


def test_params_declared_in_a_body_are_one_per_use() -> None:
    p = ig.parse(DEFS)
    a = arrays(p)
    g = ig.compile(p).backward(ig.compile(p).forward(**a), loss="loss")
    assert g["o1.a.W"].shape == (4, 5) and g["e.W"].shape == (5, 4)
    assert not np.allclose(g["o1.a.W"], g["o2.a.W"])


def test_the_lstm_example_shares_its_weights_over_the_steps() -> None:
    """examples/lstm.idx: one set of weights, read by all four uses (no per-use params), and the
    gradient of W is the sum over steps: with the steps' weights untied, their gradients add to it."""
    text = open(ig.__file__.replace("indexgrad/__init__.py", "examples/lstm.idx")).read()
    p = ig.parse(text)
    assert p.params() == ("W", "U", "B", "Wc", "Uc", "V")
    lines = text.splitlines()
    for k, line in enumerate(lines):
        if line.startswith("h") and "= lstm(" in line:  # use s (the line of h{s}) gets W{s}
            lines[k] = line.replace("W[j,g,i], U", f"W{line[1]}[j,g,i], U")
        elif line.startswith("param W[j,g,i]"):
            lines[k] = line.replace("W[j,g,i]", ", ".join(f"W{s}[j,g,i]" for s in range(1, 5)))
    untied = "\n".join(lines) + "\n"
    rng = np.random.default_rng(0)
    sizes = {"b": 2, "j": 3, "g": 3, "i": 4, "k": 4, "c": 5}
    a = {d.ref.name: rng.standard_normal([sizes[i.plain] for i in d.ref.indices]) for d in p.decls}
    m, mu = ig.compile(p), ig.compile(untied)
    g = m.backward(m.forward(**a), loss="loss")["W"]
    copies = {f"W{s}": a["W"] for s in range(1, 5)}
    gu = mu.backward(mu.forward(**{k: v for k, v in a.items() if k != "W"}, **copies), loss="loss")
    np.testing.assert_allclose(g, sum(gu[f"W{s}"] for s in range(1, 5)), rtol=1e-12, atol=1e-14)


def test_grad_prints_each_uses_statements_under_a_comment(capsys, tmp_path) -> None:
    f = tmp_path / "d.idx"
    f.write_text(DEFS)
    assert main(["grad", str(f)]) == 0
    out = capsys.readouterr().out.splitlines()
    heads = [line for line in out if line.startswith("# in ") or line == "# outside definitions"]
    assert "# in o1[b,c], g1[b,h] = mlp(x[b,d], V[h,c])" in heads
    assert "# in e[b,d] = dense(g1[b,h])" in heads
    assert "# in o2[b,c], g2[b,h] = mlp(e[b,d], V[h,c])" in heads
    # the statements under a comment are the ones that use wrote (or their gradients)
    at = out.index("# in e[b,d] = dense(g1[b,h])", out.index("# gradients"))
    rest = out[at + 1 :]
    block = rest[: next((k for k, line in enumerate(rest) if line.startswith("#")), len(rest))]
    assert block and all(line.split("[")[0].startswith(("e.", "g1.grad")) for line in block), block
    assert len(block) == 3  # e.B.grad, g1.grad and e.W.grad
    assert not any("dense(" in line or "mlp(" in line for line in out if not line.startswith("#"))
    assert main(["grad", str(f), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {s.get("in") for s in data["gradients"]} >= {None, "e[b,d] = dense(g1[b,h])"}


def test_fmt_keeps_definitions_as_written(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    f = tmp_path / "d.idx"
    f.write_text(DEFS)
    assert main(["fmt", str(f)]) == 0
    out = capsys.readouterr().out
    assert out == DEFS.replace("mean[d](x[b,d])   #", "mean[d](x[b,d])  #")  # canonical: two spaces
    p = ig.parse(DEFS)
    assert ig.parse(str(p)) == p and ig.parse(out) == p
    assert str(p) == format_program(p) and "def dense(x[b,j]) -> y[b,i]:\n    param W[j,i], B[i]\n" in str(p)
    assert ig.parse(str(p)).written == p.written


@pytest.mark.parametrize(
    "source",
    [
        "def f(x[i]) -> y[i]:\n\ty[i] = x[i]\nz[i] = f(a[i])\n",  # a tab indents
        "def f(x[i]) -> y[i]:\n  # a comment first, a blank line\n\n        y[i] = x[i]\nz[i] = f(a[i])\n",
        "def f(x[i]) -> y[i]:\n  t[i] = x[i]; y[i] = 2 t[i]\nz[i] = f(a[i])",  # no final newline
        "def f(x[i]) -> y[i]:\n  y[i] = \\\nx[i]\nz[i] = f(a[i])\n",  # a continued line stays in the body
        "  def f(x[i]) -> y[i]:\n    y[i] = x[i]\n  z[i] = f(a[i])\n",  # an indented def
        "def f(x[i]) -> y[i]:\r\n  y[i] = x[i]\r\nz[i] = f(a[i])\r\n",
        "def f(x[i]) -> y[i]:\r  y[i] = x[i]\rz[i] = f(a[i])\r",
        "def f(x[i], s) -> y[i], t:\n  y[i] = s x[i]\n  t = sum[i](y[i])\nz[i], u = f(a[i], c)\n",
    ],
)
def test_bodies_parse_however_indented(source: str) -> None:
    p = ig.parse(source)
    assert ig.parse(str(p)) == p
    assert p.statements[-1].target.name in ("z", "u")
    assert all(s.span.via is not None for s in p.statements)


def test_indentation_outside_definitions_means_nothing() -> None:
    indented = ig.parse("  y[i] = x[i]\n      z[i] = y[i]\n")
    assert indented.statements == ig.parse("y[i] = x[i]\nz[i] = y[i]\n").statements
    assert ig.parse("def[i] = x[i]\n").defined() == ("def",)  # `def` can still name a tensor


# ---- errors: (source, line, column, words of the message, the uses it names) -------------------

BODY = "def f(x[b,j]) -> y[b,i]:\n    param W[j,i]\n    y[b,i] = {}\n\n"
OK = BODY.format("x[b,j] W[j,i]")  # lines 1-4; a use at line 5
TYPO = BODY.format("rleu(x[b,j] W[j,i])")
NESTED = TYPO + "def g(x[b,j]) -> y[b,i]:\n    y[b,i] = f(x[b,j])\n\n"  # f used at 6:5, g at 8:1
USE = "h[b,k] = f(u[b,d])\n"
H = "def f(x[i]) -> y[i]:\n"

ERRORS = [
    # inside a body: the place in the body, and each use it is inlined by
    (TYPO + USE, 3, 14, "unknown function 'rleu'", [(5, 1)]),
    (NESTED + USE.replace("f(", "g("), 3, 14, "unknown function", [(6, 5), (8, 1)]),
    (BODY.format("x[b,j] W[j,i,k]") + USE, 3, 21, "has 3 indices here but 2", [(5, 1)]),
    (BODY.format("x[b,j] W[j,i] + y[b,i]") + USE, 3, 30, "'h' is read on its own right side", [(5, 1)]),
    # a definition nothing uses is still checked, at its lines
    (TYPO, 3, 14, "unknown function 'rleu'", []),
    # at a use: how its names bind the definition's
    (OK + "h[b,d] = f(u[b,d])\n", 5, 1, "distinct indices 'j' and 'i'", []),
    (OK + "h[c,k] = f(u[b,d])\n", 5, 1, "index 'b' of 'f' is 'b' in u[b,d] but 'c'", []),
    (OK + "h[b,k] = f(u[b,d,e])\n", 5, 12, "which has 2 indices; here it has 3", []),
    (OK + "h[b,k] = f(u[b,d], v[b,d])\n", 5, 1, "takes 1 argument (x[b,j]), got 2", []),
    (OK + "h[b,k], z[b,k] = f(u[b,d])\n", 5, 1, "takes 1 output (y[b,i]), got 2", []),
    (OK + "h[b,k] = f(u[b,d,d])\n", 5, 12, "distinct plain index names", []),
    (OK + "h[b,k] = f(u[b,d] + 1)\n", 5, 12, "define it first", []),
    (OK + "h[b,k] += f(u[b,d])\n", 5, 1, "defines its outputs with '='", []),
    (OK + "h[b,k] = 2 f(u[b,d])\n", 5, 12, "its use stands alone", []),
    (OK + "h.W[d,k] = u[b,d]\n" + USE, 6, 1, "'h.W', which is already", []),
    (OK + USE + "f[b] = u[b,d]\n", 6, 1, "names a definition", []),
    (USE + OK, 1, 1, "'f' is defined below, at 2:1", []),
    ("h[b,k], z[b] = nothing(u[b,d])\n", 1, 1, "no definition named 'nothing'", []),
    ("h[b,k], z[b] = relu(u[b,d])\n", 1, 1, "only by a definition's use", []),
    # in a definition itself
    ("def relu(x[i]) -> y[i]:\n  y[i] = x[i]\n", 1, 1, "'relu' is a built-in function", []),
    ("def sum(x[i]) -> y[i]:\n  y[i] = x[i]\n", 1, 1, "'sum' is a built-in reduction", []),
    (H + "  y[i] = x[i]\n" + H + "  y[i] = x[i]\n", 3, 1, "already defined at 1:1", []),
    (H + "  y[i] = x[i] M[i]\n", 2, 15, "'M' is read in the body of 'f'", []),
    (H + "  input M[i]\n  y[i] = x[i] M[i]\n", 2, 9, "inputs of 'f' are its arguments", []),
    (H + "  dim u=2\n  y[i] = x[i]\n", 2, 7, "write dim u=2 above the definition", []),
    (H + "  x[i] = 2\n  y[i] = x[i]\n", 2, 3, "argument of 'f' and cannot be assigned", []),
    ("def f(x[i]) -> y[i], z[i]:\n  y[i] = x[i]\n", 1, 22, "the output 'z' of 'f' is not defined", []),
    ("def f() -> y:\n  y = 2\n", 1, 1, "takes at least one argument", []),
    ("def f(x[i,j]) -> y[i,j]:\n  y[j,i] = x[i,j]\n", 2, 3, "same order, not y[j,i]", []),
    ("def f(x[i,i]) -> y[i]:\n  y[i] = x[i,i]\n", 1, 7, "distinct plain index names", []),
    ("def f(x[i]) -> x[i]:\n  x[i] = 1\n", 1, 16, "'x' appears twice in the header", []),
    (H + "  param x[i]\n  y[i] = x[i]\n", 2, 9, "cannot be a param too", []),
    (H + "  grad[i] = x[i]\n  y[i] = grad[i]\n", 2, 3, "'grad' cannot name a tensor", []),
    (H + "  y[i] = f(x[i])\n", 2, 3, "'f' uses itself; recursion is not supported", []),
    ("def f(delta[i,j]) -> y[i]:\n  y[i] = delta[i,i]\n", 1, 7, "'delta' is a reserved name", []),
    ("def f(x[i]) -> exp[i]:\n  exp[i] = x[i]\n", 1, 16, "'exp' is a function name", []),
    # a header index `dim` sizes stands at a use for an index of that extent
    ("dim u=2\ndef f(x[b]) -> y[b,u]:\n  y[b,u] = x[b]\nz[b,k] = f(x[b])\n", 4, 1, "declare dim k=2", []),
    ("dim u=2, v=3\n" + H.replace("i", "u") + "  y[u] = x[u]\nz[v] = f(x[v])\n", 4, 1, "extent 3", []),
    # the shape of a definition
    (H + "y[i] = x[i]\n", 2, 1, "indented deeper than the def", []),
    (H, 1, 1, "the body of a definition goes on the lines below", []),
    ("def f(x[i]) -> y[i]: y[i] = x[i]\n", 1, 22, "body starts on the next line", []),
    ("def f(x[i]) y[i]:\n  y[i] = x[i]\n", 1, 13, "expected '->' and the outputs", []),
    ("def f(x[i]) -> y[i]\n  y[i] = x[i]\n", 1, 20, "expected ':' at the end of the def line", []),
    (H + "  def g(x[i]) -> y[i]:\n    y[i] = x[i]\n", 2, 3, "cannot be inside another", []),
]


@pytest.mark.parametrize("source, line, column, words, uses", ERRORS, ids=[f"{e[3]}-{e[1]}" for e in ERRORS])
def test_errors_point_into_the_body_and_at_each_use(
    source: str, line: int, column: int, words: str, uses: list[tuple[int, int]]
) -> None:
    with pytest.raises(ig.IndexgradError) as info:
        ig.parse(source, filename="d.idx")
    e = info.value
    assert (e.line, e.column) == (line, column), str(e)
    assert words in e.message, e.message
    assert [(u.line, u.column) for u in e.span.uses()] == uses  # type: ignore[union-attr]
    rendered = str(e).splitlines()
    lines = source.splitlines()
    assert rendered[0].startswith(f"d.idx:{line}:{column}: error: ") and rendered[1] == "  " + lines[line - 1]
    for use_line, use_column in uses:  # the message names each use, and a note shows its line
        assert f"in the definition used at {use_line}:{use_column}" in e.message
        note = rendered.index(f"d.idx:{use_line}:{use_column}: note: in this use of the definition")
        assert rendered[note + 1] == "  " + lines[use_line - 1]


def test_a_body_reads_the_identity_delta_without_an_argument() -> None:
    src = (
        "def diag(x[i]) -> D[i,j]:\n    D[i,j] = delta[i,j] x[i]\n\n"
        "def shift(x[i]) -> y[i]:\n    y[i] = delta[i,j+1] x[j]\n\n"
        "z[a,b] = diag(x[a])\ns[a] = shift(x[a])\nloss = sum[a,b](z[a,b] w[a,b]) + sum[a](s[a] v[a])\n"
    )
    r = np.random.default_rng(0)
    x, w, v = r.standard_normal(4), r.standard_normal((4, 4)), r.standard_normal(4)
    m = ig.compile(src)
    vals = m.forward(x=x, w=w, v=v)
    np.testing.assert_array_equal(vals["z"], np.diag(x))
    np.testing.assert_array_equal(vals["s"], np.r_[0.0, x[:-1]])
    np.testing.assert_allclose(m.backward(vals, loss="loss")["x"], np.diag(w) + np.r_[v[1:], 0.0], rtol=1e-12)


def test_the_cli_shows_the_body_line_and_the_use(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "d.idx"
    f.write_text(TYPO + USE)
    assert main(["grad", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{f}:3:14: error: unknown function 'rleu'")
    assert f"{f}:5:1: note: in this use of the definition\n  h[b,k] = f(u[b,d])\n  ^" in err
    assert "Traceback" not in err
    assert main(["grad", str(f), "--format", "json"]) == 2
    d = json.loads(capsys.readouterr().err)
    assert (d["line"], d["column"]) == (3, 14)
    assert "used at 5:1" in d["message"] and ":5:1: note" in d["rendered"]


def test_runtime_errors_in_an_inlined_statement_name_the_use() -> None:
    m = ig.compile(OK + USE)
    with pytest.raises(ig.IndexgradError) as info:
        m.forward(u=np.ones((2, 3)), **{"h.W": np.ones((4, 5))})
    assert "used at 5:1" in info.value.message, info.value.message


def test_the_language_references_example_means_what_it_says() -> None:
    """docs/language.md's example of a definition parses, and its uses declare the params it names."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "language.md").read_text()
    section = doc.split("## Definitions\n", 1)[1].split("\n- ", 1)[0]
    text = "".join(line[4:] + "\n" for line in section.splitlines() if line.startswith("    ") or not line)
    p = ig.parse(text)
    assert [format_program(ig.Program(decls=(d,))).strip() for d in p.decls if d.role == "param"] == [
        "param h1.W[d,h]", "param h1.B[h]", "param h2.W[h,k]", "param h2.B[k]"
    ]
    assert ig.parse(str(p)) == p


# ---- `dim` extents follow a renamed index ------------------------------------------------------

POOL = "dim u=2\ndef pool(x[b,s]) -> y[b,r]:\n    y[b,r] = max[u](x[b,2*r+u])\n\ninput x[b,s]\n"


def test_a_window_index_renamed_at_a_use_keeps_its_dim_extent() -> None:
    """The use names its own axis u, so the body's window u is renamed; it is still 2 wide (it
    was taken as the 'valid' extent, and z[b,1] was the max over four entries)."""
    uses = "z[b,u] = pool(x[b,t])\nh[b,r] = pool(x[b,s])\n"
    src = POOL + uses + "loss = sum[b,u](z[b,u]^2) + sum[b,r](h[b,r])\n"
    x = np.random.default_rng(0).standard_normal((3, 6))
    m = ig.compile(src)
    vals = m.forward(x=x)
    np.testing.assert_array_equal(vals["z"], x[:, :4].reshape(3, 2, 2).max(-1))  # u is 2: dim u=2
    np.testing.assert_array_equal(vals["h"], x.reshape(3, 3, 2).max(-1))
    windows = x.reshape(3, 3, 2)
    hit = windows == windows.max(-1, keepdims=True)
    z_grad = np.concatenate([2 * windows.max(-1)[:, :2], np.zeros((3, 1))], axis=1)
    x_grad = ((z_grad + 1)[..., None] * hit).reshape(3, 6)
    np.testing.assert_allclose(m.backward(vals, loss="loss")["x"], x_grad, rtol=1e-15)
    ig.gradcheck(m, {"x": x}, loss="loss")
    back = ig.derive(m.program, loss="loss")
    assert ig.parse(str(back)) == back  # it declares the renamed window: dim u=2, u2=2
    assert ig.parse(str(m.program)) == m.program


def test_a_params_index_renamed_at_a_use_keeps_its_dim_extent() -> None:
    body = "    param W[u]\n    y[b] = sum[u](W[u]) x[b]\n\n"
    src = "dim u=2\ndef f(x[b]) -> y[b]:\n" + body + "input x[u]\nz[u] = f(x[u])\n"
    m = ig.compile(src)
    x, w = np.array([1.0, 2.0]), np.array([3.0, 5.0])
    np.testing.assert_array_equal(m.forward(x=x, **{"z.W": w})["z"], x * 8.0)
    with pytest.raises(ig.IndexgradError, match="size 2 from dim"):
        m.forward(x=x, **{"z.W": np.ones(3)})  # the definition's W has u = 2 entries


def test_a_renamed_index_does_not_take_a_name_dim_sizes() -> None:
    """The use takes k, so the body's own k is renamed, but not to k2, which `dim` makes 3 long."""
    src = "dim k2=3\ndef f(x[b,j]) -> y[b]:\n    y[b] = sum[j](x[b,j]) + max[k](x[b,k])\n\nz[k] = f(a[k,m])\n"
    a = np.random.default_rng(1).standard_normal((2, 5))
    np.testing.assert_allclose(ig.compile(src).forward(a=a)["z"], a.sum(1) + a.max(1), rtol=1e-15)


def test_a_definition_nothing_uses_is_checked_with_the_programs_dim_extents() -> None:
    p = ig.parse(POOL + "y[b,s] = x[b,s]\n")  # no use of pool: its window u is still 2 wide
    assert [d.ref.name for d in p.decls if d.role == "dim"] == ["u"]
    with pytest.raises(ig.IndexgradError, match="'q' gets no size") as info:
        ig.parse(POOL.replace("max[u]", "max[q]").replace("+u", "+q") + "y[b,s] = x[b,s]\n")
    assert (info.value.line, info.value.column) == (3, 21)


# ---- random index names: whatever a use and a body call their indices, the values are the same -

NAMES = ["i", "j", "k", "m", "u", "v", "i2", "k2", "u2"]


@st.composite
def renamed_layers(draw) -> tuple[str, str, tuple[int, int], tuple[int, int]]:
    """A layer of three outputs (a tanh of a product, a max plus a double sum, a pool over windows
    of the index `dim` makes 2), used directly and through a layer that uses it, every index name
    drawn from one small set, so that uses take the bodies' own names (which are then renamed)."""
    window = draw(st.sampled_from(NAMES))
    rest = [n for n in NAMES if n != window]
    a, b, c, d, e, k, l_, r = draw(st.permutations(rest))[:8]
    g = draw(st.permutations(rest))
    u1, u2 = draw(st.permutations(NAMES)), draw(st.permutations(NAMES))
    size = {n: 2 if n == window else 4 for n in NAMES}  # a pool of 4 has 2 windows of 2
    x, w = (size[u1[0]], size[u1[1]]), (size[u1[1]], size[u1[2]])
    assume(x == (size[u2[0]], size[u2[1]]) and w == (size[u2[1]], size[u2[2]]))
    src = f"""\
dim {window}=2
def f(x[{a},{b}], w[{b},{c}]) -> y[{a},{c}], z[{a}], pz[{a},{r}]:
    param V[{c},{d}]
    t[{a},{c}] = tanh(x[{a},{b}] w[{b},{c}])
    y[{a},{c}] = t[{a},{c}] sum[{d}](V[{c},{d}]) + mean[{e}](t[{a},{e}])
    z[{a}] = max[{e}](x[{a},{e}]) + sum[{k},{l_}](x[{a},{k}] w[{k},{l_}])
    pz[{a},{r}] = max[{window}](x[{a},2*{r}+{window}])

def g(x[{g[0]},{g[1]}], w[{g[1]},{g[2]}]) -> y[{g[0]},{g[2]}]:
    p[{g[0]},{g[2]}], q[{g[0]}], pp[{g[0]},{g[3]}] = f(x[{g[0]},{g[1]}], w[{g[1]},{g[2]}])
    y[{g[0]},{g[2]}] = p[{g[0]},{g[2]}] q[{g[0]}] + sum[{g[3]}](pp[{g[0]},{g[3]}])

param W[{u1[1]},{u1[2]}]
o[{u1[0]},{u1[2]}], r[{u1[0]}], pr[{u1[0]},{u1[3]}] = f(X[{u1[0]},{u1[1]}], W[{u1[1]},{u1[2]}])
s[{u2[0]},{u2[2]}] = g(X[{u2[0]},{u2[1]}], W[{u2[1]},{u2[2]}])
"""
    loss = f"loss = sum[{u1[0]},{u1[2]}](o[{u1[0]},{u1[2]}] s[{u1[0]},{u1[2]}]) + sum[{u1[0]}](r[{u1[0]}])\n"
    return src + loss, window, x, w


def _layer(x: np.ndarray, w: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, ...]:
    t = np.tanh(x @ w)
    windows = (x.shape[1] - 2) // 2 + 1
    pool = x[:, : 2 * windows].reshape(len(x), windows, 2).max(-1)
    return t * v.sum(1) + t.mean(1, keepdims=True), x.max(1) + (x @ w).sum(1), pool


@settings(max_examples=30)
@given(renamed_layers())
def test_random_index_names_at_uses_and_in_bodies_give_the_same_values(case) -> None:
    src, window, x_shape, w_shape = case
    p = ig.parse(src)
    assert ig.parse(str(p)) == p
    back = ig.derive(p, loss="loss")
    assert ig.parse(str(back)) == back
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    v1, v2 = rng.standard_normal((w.shape[1], 3)), rng.standard_normal((w.shape[1], 3))
    arrays = {"X": x, "W": w, "o.V": v1, "s.p.V": v2}
    m = ig.compile(p)
    vals = m.forward(**arrays)
    for got, want in zip([vals["o"], vals["r"], vals["pr"]], _layer(x, w, v1)):
        np.testing.assert_allclose(got, want, rtol=1e-13)
    y, z, pool = _layer(x, w, v2)
    np.testing.assert_allclose(vals["s"], y * z[:, None] + pool.sum(1)[:, None], rtol=1e-13)
    ig.gradcheck(m, arrays, loss="loss")


def test_a_nested_bodys_own_index_is_not_renamed_by_the_outer_use() -> None:
    """f's max runs over its own v; in g, v is w's index, which the use calls k (2 long, by dim):
    f's v stays apart from it, so the max still runs over all 4 columns of X."""
    src = (
        "dim k=2\ndef f(x[i,j]) -> z[i]:\n    z[i] = max[v](x[i,v])\n\n"
        "def g(x[i,j], w[v]) -> y[i]:\n    z[i] = f(x[i,j])\n    y[i] = z[i] + sum[v](w[v])\n\n"
        "s[i] = g(X[i,j], W[k])\n"
    )
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((3, 4)), rng.standard_normal(2)
    np.testing.assert_allclose(ig.compile(src).forward(X=x, W=w)["s"], x.max(1) + w.sum(), rtol=1e-15)
