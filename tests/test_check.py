"""The checker: program errors at the right place, and SPEC 1.4's scoping rule made explicit."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import indexgrad as ig
from indexgrad.nodes import Call, Neg, Power, Product, Reduce, Ref, Sum, children


def regression(reason: str, *case: object) -> object:
    """A case that once went wrong, its id saying how."""
    return pytest.param(*case, id=reason)


# (source, line, column, a piece of the message) for programs that parse but must be refused.
CHECK_ERRORS = [
    # left-side indices are distinct plain names
    ("y[i,i] = x[i]\n", 1, 5, "index 'i' appears twice on the left side"),
    ("y[b,i,b] = x[b,i]\n", 1, 7, "index 'b' appears twice on the left side"),
    ("y[2*i] = x[i]\n", 1, 3, "the left side of '=' takes plain index names"),
    ("y[i+1] = x[i]\n", 1, 3, "the left side of '=' takes plain index names"),
    ("y[b, l[b]] = x[b]\n", 1, 6, "the left side of '=' takes plain index names"),
    # ... and sized by the right side
    ("y[i] = 1\n", 1, 3, "index 'i' of 'y' gets no size: it does not appear on the right side"),
    ("y[i] = x[j]\n", 1, 3, "index 'i' of 'y' gets no size"),
    ("y[i,j] = x[i] w[k]\n", 1, 5, "index 'j' of 'y' gets no size"),
    ("y[i] += x[j]\n", 1, 3, "index 'i' of 'y' gets no size"),
    ("y[i] = x[3]\n", 1, 3, "index 'i' of 'y' gets no size"),
    ("y[i] = sum[j](x[j])\n", 1, 3, "index 'i' of 'y' gets no size"),
    # one '=' per tensor
    ("y[i] = x[i]\ny[i] = x[i]\n", 2, 1, "'y' is already defined at 1:1; use '+=' to add to it"),
    ("y = 1\nz = y\ny = 2\n", 3, 1, "'y' is already defined at 1:1"),
    ("y[i] += x[i]\ny[i] = x[i]\n", 2, 1, "'y' is already defined at 1:1"),
    # definition before use
    ("y[i] = z[i]\nz[i] = x[i]\n", 1, 8, "'z' is read here before its definition at 2:1"),
    ("a = b + 1\nb = 2\n", 1, 5, "'b' is read here before its definition at 2:1"),
    ("y = y + 1\n", 1, 5, "'y' is read on its own right side; a tensor defined through itself"),
    # '+=' only before the first read
    ("y[i] = x[i]\nz[i] = y[i]\ny[i] += x[i]\n", 3, 1, "'y' is assigned after it was read at 2:8"),
    ("g = 1\nh = 2 g\ng += 1\n", 3, 1, "'g' is assigned after it was read at 2:7"),
    # functions
    ("y[i] = foo(x[i])\n", 1, 8, "unknown function 'foo'; known functions: abs, cos,"),
    ("y = Relu(x)\n", 1, 5, "unknown function 'Relu'"),
    ("y[i] = relu(x[i], x[i])\n", 1, 8, "relu takes 1 argument, got 2"),
    ("y[i] = max(x[i])\n", 1, 8, "max takes 2 arguments, got 1"),
    ("y = min(a, b, c)\n", 1, 5, "min takes 2 arguments, got 3"),
    ("y = relu(a, b)\n", 1, 5, "relu takes 1 argument, got 2"),
    ("y = max(a)\n", 1, 5, "max takes 2 arguments, got 1"),
    regression("no hint that a name before '(' is a call", "y = a (b + c)\n", 1, 5, "a * ("),
    regression("no hint that reductions are written sum[k](...)", "y = sum(x[k])\n", 1, 5, "sum[k]("),
    regression("no hint that size is written size[k]", "y = size(k)\n", 1, 5, "size[k]"),
    # reductions
    ("y[i] = sum[k](x[i])\n", 1, 8, "sum[k] reduces over 'k', which its body does not use"),
    ("y = max[k](x)\n", 1, 5, "max[k] reduces over 'k', which its body does not use"),
    ("y = sum[k](2)\n", 1, 5, "sum[k] reduces over 'k', which its body does not use"),
    ("y[i] = sum[i](x[i])\n", 1, 8, "sum[i] reduces over 'i', which is on the left side"),
    ("y[b] = mean[b,c](x[b,c])\n", 1, 8, "mean[b] reduces over 'b', which is on the left side"),
    ("y[j] = x[j] sum[j](x[j])\n", 1, 13, "sum[j] reduces over 'j', which is on the left side"),
    ("y[i] = sum[k,k](x[i,k])\n", 1, 8, "sum[...] lists an index twice"),
    regression(
        "an index reduced twice is reported as unused by the outer reduction",
        "y = sum[k](sum[k](x[k]))\n",
        1,
        5,
        "already reduced",
    ),
    # one rank per tensor
    ("y[i] = x[i]\nz[i,j] = x[i,j]\n", 2, 10, "'x' has 2 indices here but 1 at 1:8"),
    ("y = x[i] x[i,j]\n", 1, 10, "'x' has 2 indices here but 1 at 1:5"),
    ("y[i] = x[i]\nz = y\n", 2, 5, "'y' has 0 indices here but 1 at 1:1"),
    ("param W[i,j]\ny[i] = W[i]\n", 2, 8, "'W' has 1 index here but 2 at 1:7"),
    ("y[i] = x[i]\ny[i,j] += x[i] x[j]\n", 2, 1, "'y' has 2 indices here but 1 at 1:1"),
    # declared names are not assigned
    ("param W[i]\nW[i] = x[i]\n", 2, 1, "'W' is declared param at 1:7 and cannot be assigned"),
    ("input x[i]\nx[i] = z[i]\n", 2, 1, "'x' is declared input at 1:7 and cannot be assigned"),
    ("param W\nW += 1\n", 2, 1, "'W' is declared param at 1:7 and cannot be assigned"),
    ("y[i] = x[i]\nparam y[i]\n", 1, 1, "'y' is declared param at 2:7 and cannot be assigned"),
    ("param W[i]\ninput W[i]\n", 2, 7, "'W' is declared input here but param at 1:7"),
    ("param W[i+1]\n", 1, 9, "a declaration lists plain index names"),
    # function and reduction names do not name tensors
    ("relu[i] = x[i]\n", 1, 1, "'relu' is a function name and cannot name a tensor"),
    ("y[i] = relu[i] + 1\n", 1, 8, "'relu' is a function name and cannot name a tensor"),
    ("y = exp\n", 1, 5, "'exp' is a function name and cannot name a tensor"),
    ("param tanh[i]\n", 1, 7, "'tanh' is a function name and cannot name a tensor"),
    ("sum = x\n", 1, 1, "'sum' is a reduction name and cannot name a tensor"),
    regression("suggests calling a reduction as sum(...)", "sum = x\n", 1, 1, "sum[k](...)"),
    regression("suggests calling a reduction as mean(...)", "y = mean + 1\n", 1, 5, "mean[k](...)"),
    regression("suggests calling size as size(...)", "y = size\n", 1, 5, "size[k]"),
    # integer labels are inputs
    (
        "y[b] = P[b, l[b]]\nl[b] = x[b]\n",
        1,
        13,
        "'l' is used as integer labels, so it must be an input",
    ),
    (
        "l[b] = x[b]\ny[b] = P[b, l[b]]\n",
        2,
        13,
        "'l' is used as integer labels, so it must be an input",
    ),
    ("param l[b]\ny[b] = P[b, l[b]]\n", 2, 13, "'l' holds integer labels and cannot be a param"),
    ("y[b] = P[b, l[m[b]]]\n", 1, 15, "not by other labels"),
    # SPEC 9: boundary modes, positions below 0, reserved names
    ("y[i] = x[foo(i)]\n", 1, 10, "'foo(...)' is no boundary mode; an index position reads through pad(...)"),
    ("y[i] = x[i-1]\n", 1, 10, "x[i-1] reads below position 0, for index names count from 0; shift the"),
    ("y[i] = x[(i-2)//2]\n", 1, 10, "reads below position 0"),
    ("y[i] = x[i+1] - x[i-1]\n", 1, 19, "or read through pad(i-1), clamp(i-1) or wrap(i-1)"),
    ("pad = x\n", 1, 1, "'pad' is a reserved name and cannot name a tensor; pad(...) is a boundary mode"),
    ("y[i] = wrap[i]\n", 1, 8, "'wrap' is a reserved name"),
    ("y = pad(x)\n", 1, 5, "'pad' is not called like this; pad(...) is a boundary mode of an index position"),
    ("y[i] = clamp(x[i], -1, 1)\n", 1, 8, "; to clamp values write max(-1, min(1, x[i]))"),
    ("y = solve(x)\n", 1, 5, "solve takes 2 arguments: solve(g, start)"),
    ("where = x\n", 1, 1, "'where' is a function name and cannot name a tensor"),
    ("y[i] = where(x[i], 1)\n", 1, 8, "where takes 3 arguments, got 2"),
    # delta is the identity
    ("delta[i,j] = x[i,j]\n", 1, 1, "'delta' is a reserved name and cannot name a tensor; delta[i,j] is the"),
    ("param delta[i]\n", 1, 7, "'delta' is the identity, delta[i,j], and needs no declaration"),
    ("y[i] = delta[i] x[i]\n", 1, 8, "delta takes two indices, delta[i,j], got 1"),
    ("y[i,j] = delta[i,pad(j)] x[i,j]\n", 1, 18, "labels and boundary modes do not stand in it"),
    # a one-hot product is a gather
    ("y[b,d] = delta[c,ids[b]] W[c,d]\n", 1, 18, "index the tensor by them instead: W[ids[b], ...] rather"),
    ("y[i,j] = delta[i,j]\n", 1, 10, "index 'i' gets no size: delta[i,j] compares indices but does not size"),
    # dim
    ("dim u=2\ndim u=3\ny[u] = x[u]\n", 2, 5, "'u' is declared dim u=3 here but u=2 at 1:5"),
    ("dim u.v=2\n", 1, 5, "a dim declaration"),
    # every index sized at compile time, with what to write instead
    ("y[b,r] = max[u](x[b,2*r+u])\n", 1, 17, "index 'u' gets no size: in x[b,2*r+u], index arithmetic sizes"),
    ("y[b,r] = max[u](x[b,2*r+u])\n", 1, 17, "declare its extent with `dim u=...`"),
    ("y[r] = x[r % 2]\n", 1, 8, "index 'r' gets no size: in x[r%2], 'r' is inside '//' or '%'"),
    ("y[i] = x[3-2*i]\n", 1, 8, "in x[-2*i+3], a position gives its index a size only where 'i' has"),
    ("y[r] = x[pad(r//2)]\n", 1, 8, "in x[pad(r//2)], pad(...) gives its axis's extent"),
    ("e[b,t,d] = E[ids[b,t+w], d]\n", 1, 14, "index 'w' gets no size: in ids[b,t+w]"),
    ("y[i] = 1\n", 1, 3, "or declare its extent with `dim i=...`"),
    ("y[t] = sum[s](x[s] (s <= t))\n", 1, 3, "a bare 't' there reads a scalar tensor named t"),
    ("y[b, l[b]] += x[b]\n", 1, 6, "defines 'y', whose extent along a position written through labels"),
    ("y[pad(i)] += x[i]\n", 1, 3, "defines 'y', whose extent along a position written through pad"),
    ("y[b,t,d] = E[ids[b,pad(t)],d]\n", 1, 20, "pad(...) reads 0 outside the labels; write clamp"),
    # size[k] stands wherever a number can, next to what sizes k
    ("y = sum[k](x[k]) / sqrt(size[k])\n", 1, 25, "outside sum[k](...), the reduction that binds 'k'"),
    ("y = sum[a,r](E[a,r]) / (size[a] size[r])\n", 1, 25, "inside: sum[a,r](... / size[a]), or mean[a,r]"),
    ("y[b] = q[b] / (z + size[b])\n", 1, 20, "size[b] must stand next to something indexed by 'b'"),
    # size[k] names an index of the statement
    ("y[i] = x[i] size[k]\n", 1, 13, "size[k] names an index this statement does not use"),
    ("y = size[k]\n", 1, 5, "size[k] names an index this statement does not use"),
    ("y = size[k] x[k] size[j]\n", 1, 18, "size[j] names an index this statement does not use"),
]


def _ids(cases: list) -> list[str]:
    return [repr((c.values if hasattr(c, "values") else c)[0][:40]) for c in cases]


@pytest.mark.parametrize("source, line, column, message", CHECK_ERRORS, ids=_ids(CHECK_ERRORS))
def test_bad_program(source: str, line: int, column: int, message: str) -> None:
    try:
        ig.parse(source, filename="t.idx")
    except ig.IndexgradError as err:
        assert (err.line, err.column) == (line, column), err.message
        assert message in err.message
        head = f"t.idx:{line}:{column}: error: "
        assert str(err).startswith(head)
        assert str(err).splitlines()[2].index("^") == 2 + column - 1
        return
    raise AssertionError("checked without an error")


def test_the_cli_refuses_each_bad_program_before_printing_a_gradient(tmp_path: Path, capsys) -> None:
    """`indexgrad grad` on each program of the table: exit status 2, nothing on stdout (no gradient
    program for a file that cannot run), the error at FILE:LINE:COL with its caret."""
    from indexgrad.cli import main

    f = tmp_path / "t.idx"
    for case in CHECK_ERRORS:
        source, line, column, message = case.values if hasattr(case, "values") else case
        f.write_text(source)
        assert main(["grad", str(f)]) == 2, source
        out, err = capsys.readouterr()
        assert out == "", source
        assert err.startswith(f"{f}:{line}:{column}: error: ") and message in err, (source, err)
        assert err.splitlines()[2].index("^") == 2 + column - 1, source


def test_the_table_is_big_enough() -> None:
    assert len(CHECK_ERRORS) >= 40


GOOD = [
    "y[i,j] = x[i] z[j]\ny[i,j] += w[j,i]\n",
    "y[i] += x[i]\ny[i] += x[i]\nz = y[i]\n",
    "x.grad[i] += 1\n",  # a derived name takes its shape from x
    "P.grad[b, l[b]] += x[b]\n",  # a scatter-add writes through labels into P.grad, shaped like P
    "y[b] = P[b, l[b]] Q[l[b]]\n",
    "y[i] = A[i,i]\n",
    "y[k] = sum[j](x[j]) x[k]\n",
    "param W\nx.grad = W\ny = 1\nparam V\n",
    "y[i] = x[i]\nz[i] = y[i]\nw[i] = y[i] z[i]\n",
    "x = 1\ny[b] = P[b, x]\n",  # index names and tensor names live apart
    "y[b] = -size[b]^2 x[b]\n",  # a negated power of size[b] still stands next to x[b]
    "z = sum[k](x[k]^2 / size[k])\n",  # and size[k] next to a power of x[k]
    "z = sum[k](-x[k]^2 size[k])\n",
]


@pytest.mark.parametrize("source", GOOD)
def test_good_programs(source: str) -> None:
    ig.parse(source)


def test_size_inside_the_reduction_over_it() -> None:
    ig.parse("y = sum[k](x[k] / size[k])\n")


def test_inputs_defined_and_labels() -> None:
    p = ig.parse("param W[d,c]\ny[b,c] = x[b,d] W[d,c]\nell[b] = -log(y[b, l[b]])\n")
    assert p.defined() == ("y", "ell")
    assert set(p.inputs()) == {"W", "x", "l"}
    assert p.integer_inputs() == ("l",)
    assert p.params() == ("W",)


# ---- the scoping rule (SPEC 1.4) -----------------------------------------------------------------


def statement(source: str):  # type: ignore[no-untyped-def]
    p = ig.parse(source)
    assert len(p.statements) == 1
    return p.statements[0]


def products(e) -> list[Product]:  # type: ignore[no-untyped-def]
    """Every Product inside e, outermost first."""
    out = [e] if isinstance(e, Product) else []
    for c in children(e):
        out.extend(products(c))
    return out


def test_sum_joining_two_factors_belongs_to_the_product_inside_the_call() -> None:
    s = statement("h[b,i] = relu(x[b,j] W[j,i] + B[i])\n")
    assert s.summed == ()
    assert isinstance(s.expr, Call) and s.expr.func == "relu"
    inner = s.expr.args[0]
    assert isinstance(inner, Sum)
    product = inner.terms[0]
    assert isinstance(product, Product)
    assert [f.name for f in product.factors] == ["x", "W"]
    assert product.summed == ("j",)


def test_index_in_one_factor_is_summed_over_the_whole_right_side() -> None:
    s = statement("Z[b] = exp(L[b,c])\n")
    assert s.summed == ("c",)
    assert products(s.expr) == []


def test_squared_error_sums_the_batch_at_statement_level() -> None:
    s = statement("loss = (yhat[b] - y[b])^2\n")
    assert s.summed == ("b",)
    assert isinstance(s.expr, Power) and isinstance(s.expr.base, Sum)


def test_matrix_product_sums_in_the_product() -> None:
    s = statement("y[b,i] = x[b,j] W[j,i]\n")
    assert s.summed == ()
    assert isinstance(s.expr, Product)
    assert s.expr.summed == ("j",)


def test_index_across_a_sum_is_summed_at_statement_level() -> None:
    s = statement("z[b] = x[b,k] y[k] + w[k]\n")
    assert s.summed == ("k",)
    assert [p.summed for p in products(s.expr)] == [()]


def test_explicit_reduction_owns_its_index() -> None:
    s = statement("y[b] = sum[k](x[b,k] w[k] + 1)\n")
    assert s.summed == ()
    assert isinstance(s.expr, Reduce) and s.expr.indices == ("k",)
    assert [p.summed for p in products(s.expr)] == [()]


def test_contraction_inside_a_reduction_body() -> None:
    s = statement("y[b] = mean[c](x[b,j] W[j,c])\n")
    assert s.summed == ()
    assert isinstance(s.expr, Reduce)
    assert s.expr.body.summed == ("j",)


def test_reduction_and_contraction_side_by_side() -> None:
    s = statement("y[k] = sum[j](x[j]) x[k] w[i] v[i]\n")
    assert s.summed == ()
    assert s.expr.summed == ("i",)
    assert s.expr.factors[0].indices == ("j",)


def test_an_index_inside_and_outside_a_reduction_is_summed_where_all_its_occurrences_meet() -> None:
    """c joins m and t inside sum[e](...) and also z outside it: the product holding all three
    owns its sum (einsum's "cb,ce,bc->b"), not the product in the reduction's body as well."""
    src = "y[b] = sum[e](m[c,b] t[c,e]) z[b,c]\n"
    s = statement(src)
    assert s.expr.summed == ("c",)
    assert s.expr.factors[0].body.summed == ()
    rng = np.random.default_rng(0)
    m, t, z = rng.standard_normal((3, 2)), rng.standard_normal((3, 4)), rng.standard_normal((2, 3))
    got = ig.compile(src).forward(m=m, t=t, z=z)["y"]
    np.testing.assert_allclose(got, np.einsum("cb,ce,bc->b", m, t, z), rtol=1e-12)
    # across a sum: the whole right side owns c, each term summed over it once
    got = ig.compile("y[b] = sum[e](m[c,b] t[c,e]) + z[b,c]").forward(m=m, t=t, z=z)["y"]
    np.testing.assert_allclose(got, np.einsum("cb,ce->b", m, t) + z.sum(1), rtol=1e-12)


def test_innermost_product_holding_every_occurrence_owns_the_sum() -> None:
    s = statement("y[b] = x[b] (u[b,j] v[j] + 1) w[i]\n")
    assert s.summed == ("i",)  # i sits in one factor only
    outer, inner = products(s.expr)
    assert outer.summed == ()
    assert inner.summed == ("j",)


def test_tanh_net_sums_d_inside_tanh_and_h_outside() -> None:
    s = statement("yhat[b] = w2[h] tanh(W1[d,h] x[b,d])\n")
    assert s.expr.summed == ("h",)
    call = s.expr.factors[1]
    assert isinstance(call, Call)
    assert call.args[0].summed == ("d",)


def test_diagonal_alone_is_summed_at_statement_level() -> None:
    assert statement("y = A[i,i]\n").summed == ("i",)
    assert statement("y[i] = A[i,i]\n").summed == ()


def test_negated_factor_still_joins_the_product() -> None:
    s = statement("y[i] = -x[i,j] w[j]\n")
    assert s.summed == ()
    assert isinstance(s.expr, Product)
    assert isinstance(s.expr.factors[0], Neg)
    assert s.expr.summed == ("j",)


def test_division_joins_factors() -> None:
    s = statement("y[i] = x[i,j] / w[j]\n")
    assert s.expr.summed == ("j",)
    assert s.expr.divide == (False, True)


# ---- the warning of SPEC 1.4 ---------------------------------------------------------------------

WARNED = [
    ("y[b] = x[b,k] + 1\n", "k", 17),
    ("y[b] = 2 x[b,k] - 3\n", "k", 19),
    ("y[b] = -x[b,k] + c\n", "k", 18),
    ("z[b] = x[b,k] y[k] + w[j] + 1\n", "j", 8),
]


@pytest.mark.parametrize("source, index, column", WARNED)
def test_warning_for_a_term_added_once_per_value(source: str, index: str, column: int) -> None:
    with pytest.warns(ig.IndexgradWarning, match=f"<string>:1:{column}: '{index}' is summed") as said:
        p = ig.parse(source)
    assert said[0].filename == __file__  # attributed to the caller's line, not indexgrad's
    with pytest.warns(ig.IndexgradWarning, match=rf"sum\[{index}\]\("):
        ig.compile(source)
    mentions = [w for w in p.warnings if f"'{index}'" in w.message]
    assert mentions, p.warnings
    w = mentions[0]
    assert f"sum[{index}](" in w.message
    assert (w.span.line, w.span.column) == (1, column)  # at the term added once per value


INSIDE_CALLS = [
    ("lse[b] = log(exp(x[b,k]))\n", "k", 10, "log(sum[k](…))"),
    ("Z[b] = exp(L[b,c])\n", "c", 8, "exp(sum[c](…))"),
    ("y = softplus(-z[b]) + tanh(v[b])\n", "b", 5, "softplus(sum[b](…))"),
    ("y[b] = exp(q[b]) + log(x[b,k])\n", "k", 20, "log(sum[k](…))"),
]


@pytest.mark.parametrize("source, index, column, shows", INSIDE_CALLS)
def test_warning_for_an_index_summed_outside_the_only_call_holding_it(
    source: str, index: str, column: int, shows: str
) -> None:
    """SPEC 9: `log(exp(x[b,k]))` sums log(exp(.)) over k; the warning names k and shows where a
    sum inside the call goes."""
    with pytest.warns(ig.IndexgradWarning, match=f"<string>:1:{column}: '{index}' occurs only inside"):
        p = ig.parse(source)
    (w,) = [w for w in p.warnings if f"'{index}' occurs only inside" in w.message]
    assert shows in w.message and f"sum[{index}](" in w.message
    assert (w.span.line, w.span.column) == (1, column)


BARE_INDEX_NAMES = [
    ("y[n,m] = eq(n, m) x[n,m]\n", "n", 13),
    ("y[i] = x[i] + i\n", "i", 15),
    ("y[b] = sum[k](x[b,k] k)\n", "k", 22),
]


@pytest.mark.parametrize("source, name, column", BARE_INDEX_NAMES)
def test_warning_for_a_bare_index_name(source: str, name: str, column: int) -> None:
    """`eq(n, m)` with n and m index names reads two scalar tensors n and m: the warning says so
    and points to delta[n,...] and size[n]."""
    with pytest.warns(ig.IndexgradWarning, match=f"<string>:1:{column}: '{name}' is an index name"):
        p = ig.parse(source)
    (w,) = [w for w in p.warnings if f"'{name}' is an index name" in w.message]
    assert f"delta[{name},...]" in w.message and f"size[{name}]" in w.message
    assert f"input {name}" in w.message


@pytest.mark.parametrize(
    "source, name, column, write",
    [
        ("y[t,s] = where(M[t,s] > 0, a[t,s], -inf)\n", "inf", 37, "-1e30 as a mask's -infinity"),
        ("y[i] = sqrt(2 / pi) x[i]\n", "pi", 17, "3.141592653589793"),
    ],
)
def test_warning_for_a_constants_name(source: str, name: str, column: int, write: str) -> None:
    """`-inf` in a mask (as torch code writes it) reads a scalar input called inf."""
    with pytest.warns(ig.IndexgradWarning, match=f"<string>:1:{column}: '{name}' reads a scalar input") as w:
        ig.parse(source)
    assert write in str(w[0].message)


@pytest.mark.parametrize("name, write", [("prod", "exp(sum[k](log(x[k])))"), ("any", "max[k](x[k] > 0)")])
def test_warning_for_a_reduction_the_language_does_not_have(name: str, write: str) -> None:
    """Tullio's product reduction written as `prod[i](x[i])` is Σ_i prod[i] x[i], a tensor named
    prod times a group: the warning says so and how the language writes the product."""
    with pytest.warns(ig.IndexgradWarning, match=rf"1:5: '{name}\[...\]' reads an input tensor") as w:
        ig.parse(f"s = {name}[i](x[i])\n")
    assert write in str(w[0].message)


NOT_WARNED = [
    "input n\ny[n] = x[n] n\n",  # declared: the scalar is meant
    "input pi\ny[i] = x[i] pi\n",
    "input prod[i]\ny[i] = prod[i] x[i]\n",
    "inf = max[i](x[i])\ny[i] = x[i] - inf\n",
    "y[i] = x[i] + j\n",
    "y[b] = sum[k](exp(x[b,k] + 1))\n",
    "y[b] = sum[k](x[b,k]) + 1\n",
    "y[b] = sum[k](x[b,k] + 1)\n",
    "y[b,i] = x[b,j] W[j,i] + B[i]\n",
    "Z[b] = sum[c](exp(L[b,c]))\n",
    "lse[b] = log(sum[k](exp(x[b,k])))\n",
    "loss = (yhat[b] - y[b])^2\n",
    "z[b] = x[b,k] y[k] + w[k]\n",
]


@pytest.mark.parametrize("source", NOT_WARNED)
def test_no_warning(source: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ig.parse(source).warnings == ()


def test_examples_parse_without_warnings() -> None:
    root = Path(__file__).resolve().parent.parent / "examples"
    for path in sorted(root.glob("*.idx")):
        assert ig.load(path).warnings == (), path.name


def test_scalar_target_has_no_brackets() -> None:
    s = statement("loss[] = mean[b](x[b])\n")
    assert s.target == Ref("loss")
