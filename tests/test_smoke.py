"""The command line: fmt round-trips every example, grad prints, check sizes and reports (that check
passes on every example is test_derive's test_indexgrad_check_passes_on_every_example)."""

from pathlib import Path

import pytest

import indexgrad as ig
from indexgrad.cli import main

EXAMPLES = sorted(Path(__file__).resolve().parent.parent.joinpath("examples").glob("*.idx"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_fmt_round_trips(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fmt", str(path)]) == 0
    text = capsys.readouterr().out
    assert ig.parse(text) == ig.load(path)


def test_check_of_a_vector_output_reports_the_programs_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A vector output is checked through <seed, output>; the seed is the check's own input and
    is neither checked nor reported."""
    f = tmp_path / "v.idx"
    f.write_text("y[b] = -size[b]^2 x[b] + (size[b] + c)\n")
    assert main(["check", str(f), "--dims", "b=3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == ["x", "c"]
    assert lines[-1] == "passed: 2 inputs checked against finite differences"


def test_affine_prints_the_seeds_statements(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["grad", str(EXAMPLES[0].parent / "affine.idx")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "B.grad[i] += y.grad[b,i]",
        "x.grad[b,j] += y.grad[b,i] W[j,i]",
        "W.grad[j,i] += y.grad[b,i] x[b,j]",
    ]


def test_user_error_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.idx"
    bad.write_text("y[i] = x[i] +\n")
    assert main(["grad", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}:1:14: error:")
    assert "Traceback" not in err


def test_the_path_dash_reads_standard_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`indexgrad grad -` reads the program from standard input, errors named `<stdin>`."""
    import io
    import sys

    text = "y[b,i] = x[b,j] W[j,i]\nloss = sum[b,i](y[b,i]^2)\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    assert main(["grad", "-"]) == 0
    assert "W.grad[j,i] += y.grad[b,i] x[b,j]" in capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"y[i] = x[i] +\n")))
    assert main(["fmt", "-"]) == 2
    assert capsys.readouterr().err.startswith("<stdin>:1:14: error:")


def test_fmt_of_many_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`indexgrad fmt examples/*.idx`: each file after a `# file:` line; a bad file is reported and
    skipped, and the exit status says so."""
    assert main(["fmt", *map(str, EXAMPLES)]) == 0
    sections = capsys.readouterr().out.split("# file: ")[1:]
    assert len(sections) == len(EXAMPLES)
    for path, section in zip(EXAMPLES, sections):
        head, _, text = section.partition("\n")
        assert head == str(path) and ig.parse(text) == ig.load(path)
    bad = tmp_path / "bad.idx"
    bad.write_text("y[i] = x[i] +\n")
    assert main(["fmt", str(bad), str(EXAMPLES[0])]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"{bad}:1:14: error:") and f"# file: {EXAMPLES[0]}" in out


def test_dims_size_the_other_indices_through_index_arithmetic(capsys: pytest.CaptureFixture[str]) -> None:
    """With i and k given, j in x[j+k] takes the "valid" extent 100 - 5 + 1 = 96 (b[j] too)."""
    from indexgrad.shapes import infer_shapes

    corr = ig.load(EXAMPLES[0].parent / "correlation.idx")
    assert infer_shapes(corr, {"i": 100, "k": 5}) == {"w": (5,), "b": (96,), "x": (100,)}
    strided = ig.load(EXAMPLES[0].parent / "strided_conv.idx")
    shapes = infer_shapes(strided, {"row": 9, "col": 7, "u": 3, "v": 3, "b": 2, "ch": 1, "o": 2})
    assert shapes["x"] == (2, 1, 9, 7)  # r = (9-3)//2+1 = 4 for s; r = 9-2*2 = 5 for d
    assert main(["check", str(EXAMPLES[0].parent / "correlation.idx"), "--dims", "i=100,k=5"]) == 0
    assert main(["check", str(EXAMPLES[0].parent / "strided_conv.idx"), "--dims", "row=9,col=7"]) == 0


def test_an_axis_read_at_fixed_positions_reaches_the_farthest(tmp_path: Path) -> None:
    """Time steps read as x[b,0,i] and x[b,1,i] need x's axis 1 to hold 2 (check's random inputs)."""
    from indexgrad.shapes import infer_shapes

    text = "h1[b,j] = tanh(x[b,0,i] U[i,j])\nh2[b,j] = tanh(x[b,1,i] U[i,j] + h1[b,k] W[k,j])\n"
    assert infer_shapes(ig.parse(text), {}) == {"x": (3, 2, 3), "U": (3, 3), "W": (3, 3)}
    f = tmp_path / "rnn.idx"
    f.write_text(text + "l = sum[b,j](h2[b,j]^2)\n")
    assert main(["check", str(f)]) == 0


def test_an_input_read_with_a_tensor_that_adds_define_is_as_long_as_their_writes(tmp_path: Path) -> None:
    """w in `y[s] w[s]` is as long as y, which the '+=' make as long as they reach (t + k - 1; 2|i|
    for two interleaved writes), not the default 3 (check refused its own random inputs)."""
    from indexgrad.shapes import infer_shapes

    full = "y[t+k] += x[t] v[k]\nloss = sum[s](y[s] w[s])\n"
    assert infer_shapes(ig.parse(full), {"t": 4, "k": 2}) == {"x": (4,), "v": (2,), "w": (5,)}
    both = "y[2*i] += x[i]\ny[2*i+1] += z[i]\nloss = sum[s](y[s] w[s])\n"
    assert infer_shapes(ig.parse(both), {"i": 4})["w"] == (8,)
    f = tmp_path / "interleave.idx"
    f.write_text(both)
    assert main(["check", str(f), "--dims", "i=4"]) == 0


@pytest.mark.parametrize(
    "text, dims",
    [
        ((EXAMPLES[0].parent / "cnn.idx").read_text(), "b=2,row=8,col=8"),  # r, c: the valid sizes
        ("param w[k]\ninput x[i]\ny[j] = w[k] x[j+k]\nz[j] = y[j] v[j]\nloss = sum[j](z[j])\n", "i=10"),
        (  # P read through labels and plainly
            "ell[b] = -log(P[b, y[b]])\nz[b,c] = P[b,c] + q[b,c]\n"
            "loss = sum[b](ell[b]) + sum[b,c](z[b,c]^2)\n",
            "",
        ),
    ],
)
def test_check_sizes_what_dims_leave_out_consistently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, dims: str
) -> None:
    f = tmp_path / "p.idx"
    f.write_text(text)
    assert main(["check", str(f), *(["--dims", dims] if dims else [])]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.splitlines()[-1].startswith("passed")


def test_check_refuses_random_inputs_over_the_memory_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "big.idx"
    f.write_text("y = sum[i,j](x[i,j])\n")
    assert main(["check", str(f), "--dims", "i=1000000,j=1000000"]) == 2
    err = capsys.readouterr().err
    want = f"{f}:1:14: error: the random inputs (the largest, 'x', of shape (1000000, 1000000)) would need"
    assert err.startswith(want), err
    assert "memory limit" in err and "^" in err
