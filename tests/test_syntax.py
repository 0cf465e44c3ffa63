"""The parser: bad programs fail at the right place with words a person uses; edge cases parse."""

from __future__ import annotations

from pathlib import Path

import pytest

import indexgrad as ig
from indexgrad.nodes import Affine, Call, Decl, Gather, Neg, Num, Power, Product, Reduce, Ref, Sum
from indexgrad.syntax import parse_syntax


def regression(reason: str, *case: object) -> object:
    """A case that once went wrong, its id saying how."""
    return pytest.param(*case, id=reason)


def error_of(source: str, filename: str = "t.idx") -> ig.IndexgradError:
    with pytest.raises(ig.IndexgradError) as info:
        ig.parse(source, filename=filename)
    return info.value


NEST = "y = " + "(" * 5000 + "x" + ")" * 5000 + "\n"
# 5,000 nested calls split over continuation lines, 100 per line: the 201st '(' opens line 3.
NEST_CONTINUED = "y = " + " \\\n".join(["exp(" * 100] * 50) + "x" + ")" * 5000 + "\n"
NEST_CR = "y = a\rz = " + "(" * 300 + "x" + ")" * 300 + "\r"

# (source, line, column, a piece of the message) for programs the parser must refuse.
SYNTAX_ERRORS = [
    # an unclosed '[' or '(' names the bracket and where it was opened
    ("y[i] = x[i\n", 1, 11, "expected ']' to close the index list opened at 1:9"),
    (
        "y = x[i",
        1,
        8,
        "expected ']' to close the index list opened at 1:6, got the end of the file",
    ),
    ("y[b, i] = x[b, j] W[j, i\n", 1, 25, "expected ']' to close the index list opened at 1:20"),
    ("y = x[i\n]\n", 1, 8, "expected ']' to close the index list opened at 1:6"),
    ("y = x[i)\n", 1, 8, "expected ']' to close the index list opened at 1:6, got ')'"),
    ("y = sum[k(x[k])\n", 1, 10, "expected ']' to close the index list opened at 1:8"),
    ("\ty[i] =\tx[i\n", 1, 12, "expected ']' to close the index list opened at 1:10"),
    ("y[i] = relu(x[i]\n", 1, 17, "expected ')' to close the parenthesis opened at 1:12"),
    ("y[i] = (x[i] + 1\n", 1, 17, "expected ')' to close the parenthesis opened at 1:8"),
    (
        "y = (x",
        1,
        7,
        "expected ')' to close the parenthesis opened at 1:5, got the end of the file",
    ),
    ("y = (x # not closed\n", 1, 20, "expected ')' to close the parenthesis opened at 1:5"),
    ("y = (x\nz = 1\n", 1, 7, "expected ')' to close the parenthesis opened at 1:5"),
    ("y = (x[i]]\n", 1, 10, "expected ')' to close the parenthesis opened at 1:5, got ']'"),
    (
        "y[i] = x[i]\r\nz[i] = (y[i]\r\n",
        2,
        13,
        "expected ')' to close the parenthesis opened at 2:8",
    ),
    ("y = a *\\\n (b\n", 2, 4, "expected ')' to close the parenthesis opened at 2:2"),
    (
        "loss = mean[b](sum[c](-Y[b,c] log(Q[b,c]))\n",
        1,
        43,
        "expected ')' to close the parenthesis opened at 1:15",
    ),
    regression(
        "an unclosed '[' on the left side is reported as a declaration with '='",
        "y[b,i = x[b,i]\n",
        1,
        7,
        "expected ']' to close the index list opened at 1:2",
    ),
    # closers with nothing to close
    ("y[i] = x[i] + 1)\n", 1, 16, "unmatched ')'"),
    ("y = x[i])\n", 1, 9, "unmatched ')'"),
    ("y = x\n\tz = y )\n", 2, 8, "unmatched ')'"),
    regression("an unmatched ']' is reported as a missing expression", "y = x]\n", 1, 6, "unmatched ']'"),
    regression(
        "an unmatched ']' is reported as a missing expression",
        "y[i] = x[i]]\n",
        1,
        12,
        "unmatched ']'",
    ),
    regression("a ')' opening a line is reported as a missing expression", ")\n", 1, 1, "unmatched ')'"),
    # stray characters and tokens
    ("y[i] = x[i] @ 2\n", 1, 13, "unexpected character '@'"),
    ("y[...,i] = x[...,i]\n", 1, 3, "'...' is not an index here: name every axis, as in x[b,t,i]"),
    ("y = x $ 2\n", 1, 7, "unexpected character '$'"),
    ("y[i] = x[i]\n\n\n   z = ? \n", 4, 8, "unexpected character '?'"),
    ("y = x\u00a0+ 1\n", 1, 6, "unexpected character '\\xa0' (U+00A0)"),
    ("y = x\u221a\n", 1, 6, "unexpected character '\u221a'"),
    ("y = x..grad\n", 1, 6, "unexpected character '.'"),
    ("y = 'a'\n", 1, 5, 'unexpected character "\'"'),
    ("y = 3 +* 2\n", 1, 8, "expected an expression, got '*'"),
    ("y == x\n", 1, 3, "expected '=' or '+=' after the tensor name, got '=='"),
    ("y += = x\n", 1, 6, "expected an expression, got '='"),
    ("y = [x]\n", 1, 5, "expected an expression, got '['"),
    ("= x\n", 1, 1, "got '='"),
    ("y[i] x[i]\n", 1, 6, "expected '=' or '+=' after the tensor name, got 'x'"),
    regression(
        "a second '=' on a line is reported as a declaration",
        "y[i] = x[i] = 2\n",
        1,
        13,
        "one '='",
    ),
    regression(
        "'[' after an index list on the right side is blamed on the left side",
        "y = x[i][j]\n",
        1,
        9,
        "unexpected '['",
    ),
    # a statement that stops too early
    ("y[i] = x[i] +\n", 1, 14, "expected an expression, got the end of the line"),
    ("y = x +", 1, 8, "expected an expression, got the end of the file"),
    ("y[i] = \n", 1, 8, "expected an expression, got the end of the line"),
    ("y = -\n", 1, 6, "expected an expression, got the end of the line"),
    ("y[i] = x[i]\r\nz[i] = y[i] +\r\n", 2, 14, "expected an expression, got the end of the line"),
    ("y[i] = a[i]\\\n + )\n", 2, 4, "expected an expression before ')'"),
    # empty slots
    ("y[i,] = x[i]\n", 1, 5, "expected an index before ']'"),
    ("y = exp()\n", 1, 9, "expected an expression before ')'"),
    ("y = relu(x,)\n", 1, 12, "expected an expression before ')'"),
    ("y = sum[1](x)\n", 1, 9, "expected an index (a name like i, or j+k), got '1'"),
    ("y = size[2]\n", 1, 10, "expected an index"),
    regression(
        "an empty reduction list asks for an expression",
        "y = sum[](x)\n",
        1,
        9,
        "expected an index",
    ),
    regression(
        "an empty first index slot is reported as an unclosed bracket",
        "y[i] = x[,i]\n",
        1,
        10,
        "expected an index before ','",
    ),
    # reductions
    ("y = sum[k] x[k]\n", 1, 12, "expected '(' after the reduction's index list, got 'x'"),
    ("y = sum[k]](x[k])\n", 1, 11, "expected '(' after the reduction's index list"),
    # exponents are numbers
    ("y = x^y\n", 1, 7, "the exponent after '^' must be a number, got 'y'"),
    ("y = x ** y\n", 1, 10, "the exponent after '^' must be a number, got 'y'"),
    ("y = x ^ (y)\n", 1, 10, "the exponent after '^' must be a number, got 'y'"),
    ("y = x^\n", 1, 7, "the exponent after '^' must be a number, got the end of the line"),
    regression(
        "an exponent written as a quotient (Tullio's cbrt as ^(1/3)) was an unclosed parenthesis",
        "r[i] = x[i,j]^(1/3)\n", 1, 17, "the exponent after '^' is one number, not a calculation",
    ),
    ("y = x^(-1.5 * 2)\n", 1, 13, "write its value"),
    regression("Tullio's x[2i] said only that a ']' was expected", "y[i] = x[2i]\n", 1, 11, "with '*': 2*i"),
    ("y[i] = x[i+3j] w[j]\n", 1, 13, "3*j, not 3j"),
    regression("a chained power asks for an expression", "y = x ^ 2 ^ 2\n", 1, 11, "parenthes"),
    regression("'2.5.3' lexes as 2.5 times .3", "y = x^2.5.3\n", 1, 10, "number"),
    regression("'1.2.3' lexes as 1.2 times .3", "y = 1.2.3\n", 1, 8, "number"),
    regression("'x.1' lexes as x times .1", "y = x.1\n", 1, 6, ".1"),
    # declarations only name tensors
    ("param W[i] = x[i]\n", 1, 12, "a declaration only names tensors"),
    ("input x[i] = 1\n", 1, 12, "a declaration only names tensors"),
    ("param W[i] B[i]\n", 1, 12, "got 'B'"),
    regression(
        "a trailing comma in a declaration asks for an index",
        "param W[i],\n",
        1,
        12,
        "expected a tensor name",
    ),
    # numbers
    ("y = 1e999\n", 1, 5, "number 1e999 is too large"),
    ("y = x^1e400\n", 1, 7, "number 1e400 is too large"),
    # SPEC 9: dim declarations, index arithmetic, boundary modes and comparisons
    ("dim u=2.5\n", 1, 8, "a dim declaration gives index names whole-number extents: dim u=2"),
    ("dim u\n", 1, 5, "a dim declaration gives index names whole-number extents"),
    ("dim u+=2\n", 1, 5, "a dim declaration gives index names whole-number extents"),
    ("dim u=2, v\n", 1, 11, "a dim declaration gives index names whole-number extents"),
    ("dim u=0\n", 1, 7, "the extent of 'u' must be at least 1, got 0"),
    ("y[i] = x[i*j]\n", 1, 10, "an index position is linear in its index names: multiply a name by a whole"),
    ("y[i] = x[i//0]\n", 1, 13, "'//' in an index position takes a positive whole number, got 0"),
    ("y[i] = x[i%0]\n", 1, 12, "'%' in an index position takes a positive whole number, got 0"),
    ("y[i] = x[i//j]\n", 1, 13, "'//' and '%' in an index position take a whole number, as in r//2"),
    ("y = a // b\n", 1, 8, "'//' divides index positions (x[r//2]); to divide values write a / b"),
    ("y = a % b\n", 1, 7, "'%' divides index positions (x[r%2]); to divide values write a / b"),
    ("y = a < b < c\n", 1, 11, "comparisons do not chain: write (a < b) (b < c)"),
    ("y[i] = x[pad(i)+1]\n", 1, 16, "a boundary mode holds the whole index position: write pad(i+1)"),
    ("y[i] = x[clamp(i) - 1]\n", 1, 19, "a boundary mode holds the whole index position"),
    # deep nesting is refused with a message, not a RecursionError
    (NEST, 1, 205, "nested more than"),
    ("y = x\nz = " + "(" * 300 + "x" + ")" * 300 + "\n", 2, 205, "nested more than"),
    regression("the depth guard counts lines by '\\n' only", NEST_CR, 2, 205, "nested more than"),
    regression(
        "the depth guard resets at a line continuation; 5,000 nested calls raise RecursionError",
        NEST_CONTINUED,
        3,
        4,
        "nested more than",
    ),
]


def _ids(cases: list) -> list[str]:
    out = []
    for c in cases:
        src = c.values[0] if hasattr(c, "values") else c[0]
        out.append(repr(src[:40]))
    return out


@pytest.mark.parametrize("source, line, column, message", SYNTAX_ERRORS, ids=_ids(SYNTAX_ERRORS))
def test_bad_syntax(source: str, line: int, column: int, message: str) -> None:
    try:
        ig.parse(source, filename="t.idx")
    except ig.IndexgradError as err:
        assert (err.line, err.column) == (line, column), err.message
        assert message in err.message
        assert err.filename == "t.idx"
        shown = str(err).splitlines()
        assert shown[0] == f"t.idx:{line}:{column}: error: {err.message}"
        assert shown[2].index("^") == 2 + column - 1
        return
    except RecursionError as e:
        raise AssertionError("RecursionError instead of an IndexgradError") from e
    raise AssertionError("parsed without an error")


def test_the_table_is_big_enough() -> None:
    assert len(SYNTAX_ERRORS) >= 40


# ---- the rendered error --------------------------------------------------------------------------

RENDERED = [
    ("y[i] = x[i\n", 1, 11),
    ("y = 1\nz[i] = y y[i] +\n", 2, 16),
    ("\ty[i] =\tx[i\n", 1, 12),
    ("y[i] = x[i]\r\nz[i] = y[i] $\r\n", 2, 13),
    ("y[i] = relu(x[i], x[i])\n", 1, 8),
    ("y = x +", 1, 8),
]


@pytest.mark.parametrize("source, line, column", RENDERED)
def test_rendered_error_has_head_source_line_and_caret(source: str, line: int, column: int) -> None:
    err = error_of(source, filename="dir/t.idx")
    text = str(err).splitlines()
    assert text[0] == f"dir/t.idx:{line}:{column}: error: {err.message}"
    shown = source.splitlines()[line - 1].replace("\t", " ")
    assert text[1] == "  " + shown
    assert text[2].index("^") == 2 + column - 1
    assert set(text[2][2 + column :]) <= {"~"}


def test_rendered_error_without_a_file_name_still_has_a_place() -> None:
    with pytest.raises(ig.IndexgradError) as info:
        ig.parse("y = x +\n")
    assert str(info.value).startswith("<string>:1:8: error: expected an expression")


# ---- files that are not UTF-8 --------------------------------------------------------------------

NOT_UTF8 = [
    (b"y = x\xff\n", 1, 6),
    (b"# ok\ny[i] = x[i] \xff z\n", 2, 13),
    (b"y = 1\r\nz = \xe2\x82 x\r\n", 2, 5),
    regression(
        "the column counts bytes, not characters, so the caret lands one place to the right",
        b"# ok\ny[i] = x[i] \xc3\xa9\xff z\n",
        2,
        14,
    ),
]


@pytest.mark.parametrize("raw, line, column", NOT_UTF8)
def test_non_utf8_file(tmp_path: Path, raw: bytes, line: int, column: int) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(raw)
    with pytest.raises(ig.IndexgradError) as info:
        ig.load(path)
    err = info.value
    assert (err.line, err.column) == (line, column)
    assert "UTF-8" in err.message
    assert err.filename == str(path)
    text = str(err).splitlines()
    assert text[0].startswith(f"{path}:{line}:{column}: error:")
    assert text[1][2 + column - 1] == "\ufffd"  # the caret's column holds the replaced byte
    assert text[2].index("^") == 2 + column - 1


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ig.IndexgradError) as info:
        ig.load(tmp_path / "nope.idx")
    assert "nope.idx" in info.value.message


def test_parse_wants_text() -> None:
    with pytest.raises(ig.IndexgradError):
        ig.parse(b"y = x\n")  # type: ignore[arg-type]


# ---- valid edge cases ----------------------------------------------------------------------------

FORTY = "y[i] = " + " ".join(f"x{n}[i]" for n in range(40)) + "\n"
PLUS_3000 = "y = " + " + ".join(f"x{n}" for n in range(3000)) + "\n"
NEG_3000 = "y = " + "-" * 3000 + "x\n"

# (source, the same program written plainly); both must parse and be equal.
SAME = [
    ("y[i] = x[i]\r\nz[i] = y[i]\r\n", "y[i] = x[i]\nz[i] = y[i]\n"),
    ("y[i] = x[i]\rz[i] = y[i]\r", "y[i] = x[i]\nz[i] = y[i]\n"),
    ("\ty[i]\t=\tx[i]\t\n", "y[i] = x[i]\n"),
    ("y[i] = x[i]; z[i] = y[i];\n", "y[i] = x[i]\nz[i] = y[i]\n"),
    ("y[i] = x[i] ; ; z = 1\n", "y[i] = x[i]\nz = 1\n"),
    ("\n\n# c\n   \ny = x  # trailing\n\n# end", "y = x\n"),
    ("y = x", "y = x\n"),
    ("loss[] = x[]\n", "loss = x\n"),
    ("y = e**2\n", "y = e^2\n"),
    ("y = x ^ +2\n", "y = x^2\n"),
    ("y = x^(-2)\n", "y = x^-2\n"),
    ("y[i] = a[i] \\\n + b[i]\n", "y[i] = a[i] + b[i]\n"),
    ("y[i] = a[i] \\  \r\n + b[i]\n", "y[i] = a[i] + b[i]\n"),
    ("y[b, i] = x[b, j]  W[j, i]\n", "y[b,i] = x[b,j] W[j,i]\n"),
    ("y[i] = x[i] * w[i]\n", "y[i] = x[i] w[i]\n"),
    ("y = ((a))\n", "y = a\n"),
    ("y = 2 (x)\n", "y = 2 x\n"),
    ("y = 2x\n", "y = 2 x\n"),
    ("y = .5 + 3. + 1e-3\n", "y = 0.5 + 3 + 0.001\n"),
    ("y[i] = x[k+j] w[k] z[i,j]\n", "y[i] = x[j+k] w[k] z[i,j]\n"),
    ("param W[j,i]\nparam B[i]\n", "param W[j,i], B[i]\n"),
    ("", ""),
    ("# only a comment\n", ""),
]


@pytest.mark.parametrize("source, plain", SAME, ids=[repr(s[:30]) for s, _ in SAME])
def test_equivalent_spellings(source: str, plain: str) -> None:
    assert ig.parse(source) == ig.parse(plain)


VALID = [
    "y[i] = x[i]\n",
    FORTY,
    PLUS_3000,
    "y = x" + " x" * 3000 + "\n",
    "y = x" + " / x" * 3000 + "\n",
    "y = x" + " - x" * 3000 + "\n",
    "y = " + "(" * 150 + "x" + ")" * 150 + "\n",
    "y = " + "exp(" * 150 + "x" + ")" * 150 + "\n",
    "y = " + "-" * 100 + "x\n",
    "x.grad[b,j] += y.grad[b,i] W[j,i]\n",
    "W.grad.tan[i] = W.grad[i] x.tan[i]\n",
    "y[j] = x[2*j+k] w[k]\n",
    "y[j] = x[j+2*k] w[k]\n",
    "y[j] = x[j*2+k] w[k]\n",
    "y[j] = w[k] x[j+k] + b[j]\n",
    "y[b,o,r,c] = x[b,ch,r+u,c+v] w[o,ch,u,v]\n",
    "y[i] = x[i+2] + x[i+1]\n",
    "y[i] = x[pad(i-1)] + x[clamp(i+1)] + x[wrap(i-2)]\n",
    "ell[b] = -log(P[b, y[b]])\n",
    "param W[j,i], B[i]\ninput x[b,j]\ny[b,i] = x[b,j] W[j,i] + B[i]\n",
    "input = param + 1\n",
    "input[i] = param[i]\n",
    "y = input * param\n",
    "y = x input\n",
    "param = 2\ny = param x\n",
    "y = sum[b,c](x[b,c]) + mean[k](z[k]) + max[k](z[k]) + min[k](z[k]) + logsumexp[k](z[k])\n",
    "y = max(a, b) min(a, b) relu(a) sigmoid(a) tanh(a) exp(a) log(a) sqrt(a)\n",
    "y = sin(a) cos(a) abs(a) softplus(a) step(a) sign(a)\n",
    "y[i] = x[i] / size[i]\n",
    "y = x / -2\n",
    "y = x - - - 2\n",
    "y = -x^2 + (-x)^2\n",
    "y = x^1e20 + x^0.001 + 1e300 + 5e-324\n",
    "y[i] = A[i,i]\n",
    "y[i] = x[i]\n\n\n\nz[i] = y[i]",
]


@pytest.mark.parametrize("source", VALID, ids=[repr(s[:40]) for s in VALID])
def test_valid_programs_parse(source: str) -> None:
    p = ig.parse(source)
    assert p.statements


@pytest.mark.parametrize(
    "source",
    [
        regression("3,000 unary minus signs raise RecursionError", NEG_3000),
        regression(
            "brackets inside a comment count toward the nesting limit",
            "# " + "(" * 300 + "\ny = x\n",
        ),
    ],
)
def test_valid_programs_parse_regressions(source: str) -> None:
    try:
        p = ig.parse(source)
    except (ig.IndexgradError, RecursionError) as e:
        raise AssertionError(f"refused: {e!r}"[:200]) from e
    assert p.statements


# ---- what the tree holds -------------------------------------------------------------------------


def only_expr(source: str):  # type: ignore[no-untyped-def]
    return ig.parse(source).statements[0].expr


def test_forty_factor_product_is_one_product() -> None:
    e = only_expr(FORTY)
    assert isinstance(e, Product)
    assert len(e.factors) == 40
    assert [f.name for f in e.factors] == [f"x{n}" for n in range(40)]


def test_long_sum_is_one_flat_sum() -> None:
    e = only_expr(PLUS_3000)
    assert isinstance(e, Sum)
    assert len(e.terms) == 3000
    assert set(e.signs) == {1}


def test_dotted_names_are_names() -> None:
    s = ig.parse("x.grad[b,j] += y.grad[b,i] W[j,i]\n").statements[0]
    assert s.op == "+="
    assert s.target.name == "x.grad"
    assert [f.name for f in s.expr.factors] == ["y.grad", "W"]


def test_scalar_brackets_are_optional() -> None:
    s = ig.parse("loss[] = x[] y\n").statements[0]
    assert s.target == Ref("loss")
    assert s.expr.factors == (Ref("x"), Ref("y"))


def test_both_power_spellings_give_a_power() -> None:
    assert only_expr("y = e**2\n") == only_expr("y = e^2\n") == Power(Ref("e"), 2.0)
    assert only_expr("y = e ** -0.5\n") == Power(Ref("e"), -0.5)


def test_affine_index_positions() -> None:
    stride = ig.parse("y[j] = x[2*j+k] w[k]\n").statements[0].expr.factors[0]
    assert stride.indices == (Affine(((2, "j"), (1, "k"))),)
    dilate = ig.parse("y[j] = x[j+2*k] w[k]\n").statements[0].expr.factors[0]
    assert dilate.indices == (Affine(((1, "j"), (2, "k"))),)
    shifted = parse_syntax("y[i] = x[i-1]\n").statements[0].expr  # checked, x[i-1] reads x[-1]
    assert shifted.indices == (Affine(((1, "i"),), -1),)


def test_gather_position() -> None:
    e = only_expr("ell[b] = -log(P[b, y[b]])\n")
    assert isinstance(e, Neg) and isinstance(e.arg, Call)
    p = e.arg.args[0]
    assert p.name == "P"
    assert p.indices[1] == Gather(Ref("y", (Affine(((1, "b"),)),)))


def test_declarations() -> None:
    p = ig.parse("param W[j,i], B[i]\ninput x[b,j]\ny[b,i] = x[b,j] W[j,i] + B[i]\n")
    assert [(d.role, d.ref.name, len(d.ref.indices)) for d in p.decls] == [
        ("param", "W", 2),
        ("param", "B", 1),
        ("input", "x", 2),
    ]
    assert all(isinstance(d, Decl) for d in p.decls)
    assert p.params() == ("W", "B")


def test_input_and_param_as_tensor_names() -> None:
    p = ig.parse("input[i] = param[i]\nz = input[i] param[i]\n")
    assert p.decls == ()
    assert [s.target.name for s in p.statements] == ["input", "z"]
    assert p.inputs() == ("param",)


def test_reduction_node() -> None:
    e = only_expr("y = sum[b,c](x[b,c])\n")
    assert isinstance(e, Reduce)
    assert (e.op, e.indices) == ("sum", ("b", "c"))


def test_numbers() -> None:
    e = only_expr("y = 1e-3 x + .5\n")
    assert e.terms[0].factors[0] == Num(0.001)
    assert e.terms[1] == Num(0.5)


def test_unary_minus_binds_tighter_than_juxtaposition_but_looser_than_power() -> None:
    assert only_expr("y = -a b\n") == Product((Neg(Ref("a")), Ref("b")), (False, False))
    assert only_expr("y = -a^2\n") == Neg(Power(Ref("a"), 2.0))


def test_parentheses_keep_chains_apart() -> None:
    e = only_expr("y = (a b) c\n")
    assert isinstance(e, Product) and len(e.factors) == 2
    assert isinstance(e.factors[0], Product)
    e = only_expr("y = a - (b - c)\n")
    assert isinstance(e, Sum) and e.signs == (1, -1)
    assert e.terms[1] == Sum((Ref("b"), Ref("c")), (1, -1))


def test_nodes_carry_spans() -> None:
    s = ig.parse("# head\n  y[b,i] = x[b,j]   W[j,i]\n").statements[0]
    assert (s.span.line, s.span.column) == (2, 3)
    x, w = s.expr.factors
    assert (x.span.line, x.span.column) == (2, 12)
    assert (w.span.line, w.span.column) == (2, 21)
    assert (s.target.indices[1].span.line, s.target.indices[1].span.column) == (2, 7)


def test_spans_cover_closing_brackets() -> None:
    s = ig.parse("y = x[b,j] relu(z)\n").statements[0]
    x, call = s.expr.factors
    assert (x.span.column, x.span.end_column) == (5, 11)
    assert (call.span.column, call.span.end_column) == (12, 19)
    with pytest.raises(ig.IndexgradError) as info:
        ig.parse("y = x[i]\nz = x[i,j]\n")
    assert str(info.value).splitlines()[2] == "      ^~~~~~"


def test_a_byte_order_mark_is_not_part_of_the_program(tmp_path: Path) -> None:
    path = tmp_path / "bom.idx"
    path.write_bytes(b"\xef\xbb\xbfy[i] = x[i] w[i]\n")
    assert str(ig.load(path)) == str(ig.parse("y[i] = x[i] w[i]\n"))
    path.write_bytes(b"\xef\xbb\xbfy[i] = x[i\n")
    with pytest.raises(ig.IndexgradError) as info:
        ig.load(path)
    assert (info.value.line, info.value.column) == (1, 11)  # columns as if the mark were absent
