"""Reader tools: LaTeX (by mathtext), graphs (DOT by Graphviz, Mermaid by shape), cost, lexer."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import opt_einsum as oe
import pytest

import indexgrad as ig
from indexgrad.cli import main
from indexgrad.derive import forward_statements
from indexgrad.latex import program_latex, statement_latex
from indexgrad.lower import lower, prim_refs
from indexgrad.nodes import Statement
from indexgrad.shapes import parse_dims
from indexgrad.tools import computation_graph, cost_report, graph_dot, graph_mermaid

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(ROOT.joinpath("examples").glob("*.idx"))
IDS = [p.stem for p in EXAMPLES]


def _stmt(text: str, n: int = -1) -> Statement:
    return ig.parse(text).statements[n]


# ---- LaTeX -----------------------------------------------------------------------------------

LATEX_CASES = [
    # (program, expected row of its last statement)
    ("y[b,i] = x[b,j] W[j,i]", r"y_{b,i} = \sum_{j} x_{b,j} W_{j,i}"),
    ("Z[b] = exp(L[b,c])", r"Z_{b} = \sum_{c} \exp\left(L_{b,c}\right)"),
    (
        "x.grad[b,j] += y.grad[b,i] W[j,i]",
        r"\bar{x}_{b,j} \;{+}{=}\; \sum_{i} \bar{y}_{b,i} W_{j,i}",
    ),
    ("y.tan[i] = x.tan[i]", r"\dot{y}_{i} = \dot{x}_{i}"),
    ("h[b,i] = relu(x[b,i])", r"h_{b,i} = \operatorname{relu}\left(x_{b,i}\right)"),
    ("y[j] = w[k] x[j+k]", r"y_{j} = \sum_{k} w_{k} x_{j+k}"),
    ("y[j] = w[k] x[2*j+k]", r"y_{j} = \sum_{k} w_{k} x_{2j+k}"),
    (
        "hidden.grad[b] += g[b] / size[b]",
        r"\overline{\mathit{hidden}}_{b} \;{+}{=}\; \frac{g_{b}}{|b|}",
    ),
    ("l[b] = -log(P[b, y[b]])", r"l_{b} = -\log\left(P_{b,y_{b}}\right)"),
    ("s = sum[k](x[k]^2)", r"s = \sum_{k} x_{k}^{2}"),
    ("m[b] = mean[c](x[b,c])", r"m_{b} = \operatorname{mean}_{c} \left(x_{b,c}\right)"),
    ("r = sqrt(abs(u))", r"r = \sqrt{\left|u\right|}"),
    ("z = max(a, b) - min(a, b)", r"z = \max\left(a, b\right) - \min\left(a, b\right)"),
    ("q[b] = -g[b,c]", r"q_{b} = -\sum_{c} g_{b,c}"),
    (
        "W1.grad.tan[d] = alpha x_y[d]",
        r"\dot{\overline{\mathit{W1}}}_{d} = \alpha \mathit{x\_y}_{d}",
    ),
]


@pytest.mark.parametrize("text,expected", LATEX_CASES, ids=[c[0] for c in LATEX_CASES])
def test_statement_latex_conventions(text: str, expected: str) -> None:
    assert statement_latex(_stmt(text)) == expected


def test_sums_are_attached_to_unchecked_lowered_statements() -> None:
    # forward_statements are built without the checker; their implied sums still print
    p = ig.load(ROOT / "examples" / "mlp.idx")
    rows = [statement_latex(s) for s in forward_statements(p)]
    assert r"\mathit{loss.sum2}_{b} = \sum_{c} Y_{b,c} z_{b,c}" in rows


def test_program_latex_is_one_aligned_row_per_statement() -> None:
    p = ig.load(ROOT / "examples" / "mlp.idx")
    d = ig.derive(p)
    fwd = forward_statements(p)
    text = program_latex(fwd, d.statements)
    lines = text.splitlines()
    assert lines[0] == r"\begin{aligned}" and lines[-1] == r"\end{aligned}"
    rows = [x for x in lines[1:-1] if not x.startswith("%")]
    assert len(rows) == len(fwd) + len(d.statements)
    assert all(r.count("&") == 1 for r in rows)
    assert all(r.endswith(r" \\") for r in rows[:-1]) and not rows[-1].endswith("\\\\")


def test_program_repr_latex() -> None:
    p = ig.load(ROOT / "examples" / "affine.idx")
    if not hasattr(p, "_repr_latex_"):
        pytest.skip("Program._repr_latex_ is not added yet")
    out = p._repr_latex_()
    assert out == "$$" + program_latex([], p.statements) + "$$"


def _features(tex: str) -> set[str]:
    """The LaTeX constructs a row uses: commands, operators, and a few nestings."""
    out = set(re.findall(r"\\operatorname\{\w+\}|\\[A-Za-z]+|\\[;,|]|[-+=/|^_]", tex))
    for name, pattern in [
        ("nested subscript", r"_\{[^}]*_\{"),
        ("subscript then power", r"\}\^\{"),
        ("power of a group", r"\\right\)\^"),
        ("fraction in a fraction", r"\\frac\{[^}]*\\frac"),
    ]:
        if re.search(pattern, tex):
            out.add(name)
    return out


def _rows_to_render() -> list[str]:
    """Every row of every example as written, plus each derived row that uses a new construct.

    mathtext takes ~50 ms a row, too slow for all ~400 derived rows on every run; the derived
    rows are compositions of the same constructs, so a row whose constructs were all rendered
    already adds nothing.
    """
    rows: dict[str, None] = {}
    seen: set[str] = set()
    for path in EXAMPLES:
        p = ig.load(path)
        for s in p.statements:
            rows.setdefault(statement_latex(s), None)
        derived = [*forward_statements(p), *ig.derive(p).statements, *ig.derive_jvp(p).statements]
        for s in derived:
            tex = statement_latex(s)
            new = _features(tex) - seen
            if new:
                seen |= new
                rows.setdefault(tex, None)
    return list(rows)


def test_latex_of_every_example_renders_with_mathtext() -> None:
    mathtext = pytest.importorskip("matplotlib.mathtext")
    # parsed, laid out and rasterized as math_to_image does, without its figure and PNG (~3x dearer)
    parser = mathtext.MathTextParser("agg")
    for tex in _rows_to_render():
        try:
            parser.parse(f"${tex}$", dpi=72)
        except Exception as e:  # pragma: no cover - the message is the point
            pytest.fail(f"mathtext cannot render {tex!r}: {e}")


@pytest.mark.parametrize("command", ["fmt", "grad", "jvp"])
@pytest.mark.parametrize("path", EXAMPLES, ids=IDS)
def test_latex_format_from_the_cli(
    path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, str(path), "--format", "latex"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("\\begin{aligned}\n") and out.endswith("\\end{aligned}\n")


# ---- JSON ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["fmt", "grad", "jvp"])
def test_json_outputs_parse(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    for path in EXAMPLES:
        assert main([command, str(path), "--format", "json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert isinstance(data, dict)
        for stmts in data.values():
            assert all({"text", "target", "op", "line"} <= set(s) for s in stmts)


def test_cost_json_parses_for_every_example(capsys: pytest.CaptureFixture[str]) -> None:
    for path in EXAMPLES:
        assert main(["cost", str(path), "--format", "json"]) == 0, path
        data = json.loads(capsys.readouterr().out)
        assert set(data) == {"file", "sizes", "statements", "totals"}
        assert len(data["statements"]) == len(ig.load(path).statements)
        t = data["totals"]
        assert t["forward_flops"] == sum(s["forward_flops"] for s in data["statements"]) > 0
        assert t["backward_flops"] == sum(s["backward_flops"] for s in data["statements"])


def test_user_errors_come_out_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", str(EXAMPLES[0]), "--dims", "b=x", "--format", "json"]) == 2
    diag = json.loads(capsys.readouterr().err)
    assert diag["severity"] == "error" and "whole number" in diag["message"]
    bad = tmp_path / "bad.idx"
    bad.write_text("y[i] = x[i\n")
    assert main(["grad", str(bad), "--format", "json"]) == 2
    diag = json.loads(capsys.readouterr().err)
    assert (diag["line"], diag["column"]) == (1, 11)
    want = [f"{bad}:1:11: error: {diag['message']}", "  y[i] = x[i", " " * 12 + "^"]
    assert diag["rendered"].splitlines() == want


# ---- cost ------------------------------------------------------------------------------------


def _contractions(report: dict) -> list[dict]:
    return [c for s in report["statements"] for c in s["primitives"] if c["kind"] == "contraction"]


def _opt_einsum_info(c: dict, optimize: object = "auto") -> oe.contract.PathInfo:
    names = {
        n: oe.get_symbol(k)
        for k, n in enumerate(
            dict.fromkeys([n for o in c["operands"] for n in o["indices"]] + c["output"]["indices"])
        )
    }
    eq = ",".join("".join(names[n] for n in o["indices"]) for o in c["operands"])
    eq += "->" + "".join(names[n] for n in c["output"]["indices"])
    shapes = [tuple(o["shape"]) for o in c["operands"]]
    return oe.contract_path(eq, *shapes, shapes=True, optimize=optimize)[1]


COST_CASES = [
    ("mlp.idx", "b=64,d=64,h=32,c=10"),
    ("affine.idx", "b=8,i=5,j=7"),
    ("correlation.idx", "i=30,k=4,j=27"),
    ("conv2d.idx", "b=2,ch=3,o=4,row=9,col=9,u=3,v=3,r=7,c=7"),
    ("cnn.idx", "b=4,row=8,col=8,o=8,u=3,v=3,r=6,c=6,k=10"),
    ("edf_mlp.idx", "b=16,d=20,h=12,c=5"),
    ("softmax_xent.idx", "i=6,j=9"),
]


@pytest.mark.parametrize("name,dims", COST_CASES, ids=[c[0] for c in COST_CASES])
def test_cost_figures_are_opt_einsums_own(name: str, dims: str) -> None:
    report = cost_report(ig.load(ROOT / "examples" / name), parse_dims(dims))
    cs = [c for c in _contractions(report) if c["operands"]]
    assert cs
    for c in cs:
        info = _opt_einsum_info(c)
        assert c["flops"] == info.opt_cost, c["statement"]
        assert c["naive_flops"] == info.naive_cost, c["statement"]
        assert c["largest_intermediate"] == info.largest_intermediate, c["statement"]


def test_cost_of_a_chain_shows_the_path_and_left_to_right(tmp_path: Path) -> None:
    f = tmp_path / "chain.idx"
    f.write_text("y[a,d] = A[a,b] B[b,c] C[c,d]\n")
    report = cost_report(ig.load(f), {"a": 100, "b": 100, "c": 100, "d": 2})
    (c,) = [c for c in _contractions(report) if c["pass"] == "forward"]
    info = _opt_einsum_info(c)
    ltr = _opt_einsum_info(c, [(0, 1), (0, 1)])
    assert c["path"] == [list(s) for s in info.path]
    assert c["order"] == "(A (B C))"  # B C first: d=2 keeps its result small
    assert c["flops"] == info.opt_cost < ltr.opt_cost == c["left_to_right_flops"]
    assert report["statements"][0]["forward_flops"] == info.opt_cost


def test_cost_sizes_follow_dims() -> None:
    report = cost_report(ig.load(ROOT / "examples" / "mlp.idx"), {"b": 5, "d": 7, "h": 11, "c": 3})
    assert report["sizes"] == {"b": 5, "c": 3, "d": 7, "h": 11}
    (fwd,) = [c for c in _contractions(report) if c["statement"].startswith("hidden.prod")]
    assert fwd["flops"] == 2 * 5 * 7 * 11  # a matrix product: a multiply and an add per term


def test_backward_costs_a_small_multiple_of_forward(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", str(ROOT / "examples" / "mlp.idx"), "--dims", "b=64,d=64,h=128,c=10"]) == 0
    out = capsys.readouterr().out
    total = [line for line in out.splitlines() if line.startswith("total")][0]
    ratio = float(total.split()[-1])
    assert 1.0 < ratio < 3.0


# ---- graphs ----------------------------------------------------------------------------------


def _tensors(p: ig.Program, grad: bool) -> set[str]:
    prims = lower(p) + (lower(ig.derive(p)) if grad else [])
    names = set(p.inputs())
    for q in prims:
        names.add(q.out.name)
        names.update(r.name for r in prim_refs(q))
        names.update(
            i.ref.name for r in [q.out, *prim_refs(q)] for i in r.indices if hasattr(i, "ref")
        )
    return names


MERMAID_NODE = re.compile(
    r'^  (t_\w+)(\[\[|\[/|\(\[|\{\{|\[|\(|>)"([^"]*)"(\]\]|/\]|\]\)|\}\}|\]|\))$'
)
MERMAID_EDGE = re.compile(r'^  (t_\w+) (-->|-\.->)\|"([^"]*)"\| (t_\w+)$')


@pytest.mark.parametrize("grad", [False, True], ids=["forward", "grad"])
@pytest.mark.parametrize("path", EXAMPLES, ids=IDS)
def test_mermaid_structure(path: Path, grad: bool) -> None:
    p = ig.load(path)
    text = graph_mermaid(computation_graph(p, grad))
    lines = text.splitlines()
    assert lines[0] in ("flowchart LR", "graph LR")
    nodes = {}
    edges = []
    for line in lines[1:]:
        if m := MERMAID_NODE.match(line):
            assert m.group(1) not in nodes, line
            nodes[m.group(1)] = m.group(3)
        elif m := MERMAID_EDGE.match(line):
            edges.append((m.group(1), m.group(2), m.group(4)))
        else:
            assert re.match(r"^  (classDef \w+ \S+|class [\w,]+ \w+)$", line), line
    shown = {label.split("[")[0] for label in nodes.values()}
    assert shown == _tensors(p, grad)  # one node line per tensor
    assert edges and all(a in nodes and b in nodes for a, _, b in edges)
    assert any(arrow == "-.->" for _, arrow, _ in edges) == grad


def test_graph_distinguishes_inputs_params_and_defined() -> None:
    g = computation_graph(ig.load(ROOT / "examples" / "mlp.idx"), grad=True)
    kinds = {n.name: n.kind for n in g.nodes.values()}
    assert kinds["x"] == "input" and kinds["W1"] == "param" and kinds["hidden"] == "defined"
    assert kinds["hidden.sum"] == "temporary" and kinds["W1.grad"] == "gradient"
    assert kinds["loss.grad"] == "seed"
    assert g.nodes["W1"].text == "W1[d,h]"
    labels = {(e.source, e.target): e.label for e in g.edges}
    assert labels[("x", "hidden.prod")] == "× Σd"
    assert labels[("hidden.sum", "hidden")] == "relu"
    assert labels[("z", "loss.logsumexp")] == "logsumexp[c]"


def test_graph_marks_index_arithmetic_and_labels() -> None:
    g = computation_graph(ig.load(ROOT / "examples" / "correlation.idx"), grad=True)
    labels = {(e.source, e.target): e.label for e in g.edges}
    assert labels[("x", "y.prod")] == "× Σk [j+k]"
    assert g.nodes["x.grad"].text == "x.grad[i]"
    g = computation_graph(ig.load(ROOT / "examples" / "logloss.idx"))
    assert g.nodes["y"].kind == "label"
    assert any(e.source == "y" and e.label == "label" for e in g.edges)


DOT = shutil.which("dot")


@pytest.mark.skipif(DOT is None, reason="Graphviz's dot is not installed")
@pytest.mark.parametrize("path", EXAMPLES, ids=IDS)
def test_dot_renders_with_graphviz(path: Path) -> None:
    for grad in (False, True):
        text = graph_dot(computation_graph(ig.load(path), grad))
        done = subprocess.run([DOT, "-Tsvg"], input=text.encode(), capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        assert b"<svg" in done.stdout
        assert b"error" not in done.stderr.lower(), done.stderr.decode()


def test_dot_has_one_node_statement_per_tensor() -> None:
    p = ig.load(ROOT / "examples" / "mlp.idx")
    text = graph_dot(computation_graph(p, grad=True))
    nodes = re.findall(r'^  "([\w.]+)" \[label=', text, re.M)
    edges = re.findall(r'^  "([\w.]+)" -> "([\w.]+)"', text, re.M)
    assert sorted(nodes) == sorted(_tensors(p, True))
    assert all(a in nodes and b in nodes for a, b in edges)


@pytest.mark.skipif(DOT is None, reason="Graphviz's dot is not installed")
def test_render_writes_an_svg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "g.svg"
    assert main(["graph", str(EXAMPLES[0]), "--grad", "--render", str(out)]) == 0
    assert out.read_text().lstrip().startswith("<?xml") and "<svg" in out.read_text()


def test_render_without_graphviz_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["graph", str(EXAMPLES[0]), "--render", str(tmp_path / "g.svg")]) == 2
    err = capsys.readouterr().err
    assert "apt-get install graphviz" in err and "pip install graphviz" in err
    assert not (tmp_path / "g.svg").exists()


def test_render_refuses_unknown_suffix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", str(EXAMPLES[0]), "--render", str(tmp_path / "g.gif")]) == 2
    assert ".svg" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["dot", "mermaid"])
def test_graph_command_prints(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", str(EXAMPLES[0]), "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digraph" if fmt == "dot" else "flowchart")


# ---- the lexer -------------------------------------------------------------------------------


def test_lexer_tokenises_every_example_and_derived_program_without_errors() -> None:
    pytest.importorskip("pygments")
    from pygments.token import Error, Name

    from indexgrad.lexer import IdxLexer

    lexer = IdxLexer()
    for path in EXAMPLES:
        p = ig.load(path)
        for text in (path.read_text(), str(ig.derive(p)), str(ig.derive_jvp(p))):
            tokens = list(lexer.get_tokens(text))
            assert not [t for t in tokens if t[0] in Error], path
            assert "".join(v for _, v in tokens) == text + ("" if text.endswith("\n") else "\n")
    tokens = list(lexer.get_tokens("x.grad[j+k] += y.grad[j] w[k]\n"))
    assert (Name.Attribute, ".grad") in tokens
    assert [t for t in lexer.get_tokens("y = x @ 2\n") if t[0] in Error]  # bad text is flagged


def test_lexer_is_registered_when_installed() -> None:
    pytest.importorskip("pygments")
    from importlib.metadata import entry_points

    from pygments.lexers import get_lexer_by_name, get_lexer_for_filename

    if not any(e.name == "idx" for e in entry_points(group="pygments.lexers")):
        pytest.skip("the pygments.lexers entry point is not installed")
    assert type(get_lexer_by_name("idx")).__name__ == "IdxLexer"
    assert type(get_lexer_for_filename("mlp.idx")).__name__ == "IdxLexer"


def test_render_png_draws_the_equations(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from indexgrad.latex import render_png

    p = ig.load(ROOT / "examples" / "mlp.idx")
    out = tmp_path / "grad.png"
    render_png(ig.derive(p, loss="loss", wrt=list(p.params())).statements, str(out))
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert (ROOT / "docs" / "mlp_grad.png").read_bytes()[:8] == data[:8]  # the README's image
