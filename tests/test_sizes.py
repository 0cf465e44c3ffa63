"""Sizes from the arrays (SPEC 1.5, 1.6): what sizes each index, and errors that name the places."""

from __future__ import annotations

import re

import autograd.numpy as anp
import numpy as np
import pytest
from oracles import assert_grads, rng, vjp

import indexgrad as ig

ERR = "y[i,j] = A[i,j] x[i]\nz[k] = y[k,l] w[l]"


def _error(**arrays) -> ig.IndexgradError:
    with pytest.raises(ig.IndexgradError) as info:
        ig.compile(ERR).forward(**arrays)
    return info.value


def test_missing_array() -> None:
    e = _error(A=np.ones((3, 2)), w=np.ones(2))
    assert "'x'" in e.message and e.line == 1


def test_extra_array() -> None:
    e = _error(A=np.ones((3, 2)), x=np.ones(3), w=np.ones(2), v=np.ones(2))
    assert "'v'" in e.message


def test_mis_ranked_array() -> None:
    e = _error(A=np.ones((3, 2)), x=np.ones((3, 1)), w=np.ones(2))
    assert "'x'" in e.message and "1" in e.message and "2" in e.message


def test_mis_sized_array_names_index_and_both_sizes() -> None:
    e = _error(A=np.ones((3, 2)), x=np.ones(4), w=np.ones(2))
    assert "'i'" in e.message and "3" in e.message and "4" in e.message
    assert e.line == 1


def test_mis_sized_array_in_a_later_statement() -> None:
    e = _error(A=np.ones((3, 2)), x=np.ones(3), w=np.ones(5))
    assert "'l'" in e.message and "2" in e.message and "5" in e.message
    assert e.line == 2


@pytest.mark.parametrize(
    "text, arrays, message, column",
    [
        (
            "y[b,i] = x[b,j] W[j,i] + B[i]",
            {"x": (2, 3), "W": (3, 4), "B": (5,)},
            "index 'i' has size 4 from W[j,i] (axis 1) but size 5 from B[i] (axis 0)",
            26,
        ),
        (
            "loss = mean[b](-Y[b,c] log(P[b,c]))",
            {"Y": (2, 3), "P": (2, 4)},
            "index 'c' has size 3 from Y[b,c] (axis 1) but size 4 from P[b,c] (axis 1)",
            28,
        ),
        (
            "y[j] = w[k] x[j+k] + b[j]",
            {"w": (3,), "x": (10,), "b": (9,)},
            "x[j+k] reaches position 10 along axis 0, but 'x' has size 10 there",
            13,
        ),
    ],
)
def test_a_size_conflict_names_what_the_user_wrote(text: str, arrays: dict, message: str, column: int):
    with pytest.raises(ig.IndexgradError) as info:
        ig.compile(text).forward(**{n: np.ones(shape) for n, shape in arrays.items()})
    assert info.value.message.startswith(message)
    if "has size" in message and "from" in message:  # two arrays disagree: how to read the longer's start
        assert info.value.message.startswith(message + "; to read the first ")
    assert (info.value.line, info.value.column) == (1, column)


def test_a_size_from_the_statement_comes_before_the_valid_size() -> None:
    """SPEC 1.6: j gets the valid size only with no other source; b[j] is one, in a sum as in a product."""
    w, x, b = np.array([1.0, 2.0, 3.0]), np.arange(10.0), np.zeros(7)
    want = np.array([np.dot(w, x[j : j + 3]) for j in range(7)])
    for text in ["y[j] = w[k] x[j+k] + b[j]", "y[j] = w[k] x[j+k] (b[j] + 1)"]:
        np.testing.assert_allclose(ig.compile(text).forward(w=w, x=x, b=b)["y"], want)
    t = ig.compile("t[k] = w[k] + a[j] x[j+k]\nloss = sum[k](t[k]^2)")
    arrays = {"w": rng(1).standard_normal(2), "a": rng(2).standard_normal(3), "x": rng(3).standard_normal(7)}
    assert t.forward(**arrays)["t"].shape == (2,)
    assert ig.gradcheck(t, arrays).ok


@pytest.mark.parametrize(
    "text, arrays, message",
    [
        (
            "y[j] = tanh(x[j+k]) w[k]\nloss = sum[j](y[j] t[j])",
            {"x": 7, "w": 3, "t": 2},
            "index 'j' has size 5 from y[j] (axis 0) but size 2 from t[j] (axis 0)",
        ),
        ("y[j] = x[j+k] / size[k]\nz[j] = y[j] t[j]", None, "index 'k' gets no size: in x[j+k]"),
        ("y[j,k] = x[j+k]\nz = sum[j,k](y[j,k] y[j,k])", None, "index 'j' gets no size: in x[j+k]"),
    ],
)
def test_a_later_statement_never_sizes_an_earlier_one(text: str, arrays: dict | None, message: str) -> None:
    """Index names are local to a statement: a valid size stays valid, or it is an error; an index
    that its own statement cannot size is refused when the program is compiled (SPEC 9)."""
    with pytest.raises(ig.IndexgradError) as info:
        m = ig.compile(text)
        assert arrays is not None, "compiled a statement with an unsized index"
        m.forward(**{n: np.ones(size) for n, size in arrays.items()})
    assert info.value.message.startswith(message)
    assert "dim" in info.value.message or arrays


def test_a_definition_leaves_an_index_to_a_later_plain_read() -> None:
    """The one reach across statements: `t[j,k] = x[j+k]` leaves k unsized, `z[j] = t[j,k] w[k]`
    reads t with k, which w sizes; then j gets the valid extent (docs/language.md, Sizes)."""
    m = ig.compile("t[j,k] = tanh(x[j+k])\nz[j] = t[j,k] w[k]\nloss = sum[j](z[j]^2)\n")
    x, w = np.random.default_rng(1).standard_normal(7), np.random.default_rng(2).standard_normal(3)
    vals = m.forward(x=x, w=w)
    want = np.array([np.tanh(x[j : j + 3]) @ w for j in range(5)])
    np.testing.assert_allclose(vals["z"], want, rtol=1e-12)
    assert ig.gradcheck(m, {"x": x, "w": w})


def _correlate(f, step: int = 1):
    """y[j] = sum_k f(x[j + step k]) w[k], for w of size 3 and x of size 10, by slicing."""
    n = 10 - 2 * step
    return lambda x, w: anp.stack([anp.dot(f(x[j : j + 2 * step + 1 : step]), w) for j in range(n)])


SHIFTED_IN_A_CALL = [
    ("y[j] = tanh(x[j+k]) w[k]", _correlate(anp.tanh)),
    ("y[j] = (x[j+k] + 1) w[k]", _correlate(lambda v: v + 1)),
    ("y[j] = sum[k](exp(x[j+k]) w[k])", _correlate(anp.exp)),
    ("y[j] = tanh(x[j+2*k]) w[k]", _correlate(anp.tanh, 2)),
]


@pytest.mark.parametrize("text, fun", SHIFTED_IN_A_CALL)
def test_a_shifted_read_inside_a_function_gets_the_valid_size(text: str, fun) -> None:
    arrays = {"x": rng(1).standard_normal(10), "w": rng(2).standard_normal(3)}
    model = ig.compile(text)
    y = model.forward(**arrays)["y"]
    np.testing.assert_allclose(y, fun(**arrays), rtol=1e-12)
    seed = rng(3).standard_normal(y.shape)
    assert_grads(vjp(model, arrays, "y", seed), fun, arrays, seed)


def test_a_huge_stride_over_a_size_one_index_reads_and_scatters() -> None:
    model = ig.compile("y[j] = w[k] x[100000000000000000000*j + k]\nloss = sum[j](y[j]^2)")
    x, w = np.arange(1.0, 4.0), np.array([1.0, 2.0])
    vals = model.forward(x=x, w=w)
    assert vals["y"].tolist() == [5.0]
    grads = model.backward(vals)
    assert grads["x"].tolist() == [10.0, 20.0, 0.0] and grads["w"].tolist() == [10.0, 20.0]


@pytest.mark.parametrize(
    "text, message",
    [  # these escaped as an OverflowError, a ValueError of numpy.arange, and a KeyError
        ("y[r] = x[r//1000000000000000000000]", "would need .* TiB, over the memory limit"),
        ("y[r] = x[(r+1000000000000000000000)//1000000000000000000001]", "over the memory limit"),
        ("y[r] = x[r//2 + r]", r"in x\[r\+r//2\], 'r' is both a term and inside '//' or '%'.*`dim r=\.\.\.`"),
        ("y[r] = x[2*(r//1000000000000000000000) + r]", "'r' is both a term and inside"),
    ],
)
def test_huge_divisors_and_a_name_also_inside_a_part_are_located_errors(text: str, message: str) -> None:
    with pytest.raises(ig.IndexgradError, match=message) as e:
        ig.compile(text).forward(x=np.arange(3.0))
    assert e.value.line == 1 and e.value.column == 8


def test_a_huge_divisor_that_reads_in_range() -> None:
    """r//10**21 is 0 for every r that `dim` allows: a read of x[5] through clamp, then x[2]."""
    model = ig.compile("dim r=2\ny[r] = x[clamp(r//1000000000000000000000 + 5)] w[r]")
    vals = model.forward(x=np.arange(3.0), w=np.array([1.0, 2.0]))
    assert vals["y"].tolist() == [2.0, 4.0]
    assert model.backward(vals, seed={"y": np.ones(2)})["x"].tolist() == [0.0, 0.0, 3.0]


@pytest.mark.parametrize(
    "text, fun",
    [
        ("z[b] = x[b] + (size[b] + c)", lambda x, c: x + (x.shape[0] + c)),
        ("z[b] = x[b] - (size[b] - 2 c)", lambda x, c: x - (x.shape[0] - 2 * c)),
        ("z[b] = c x[b] - (c + -(size[b] + 1))", lambda x, c: c * x - (c - (x.shape[0] + 1))),
        ("z[b] = x[b]^2 + (size[b] + c)^2", None),  # a squared group is a factor: refused
    ],
)
def test_size_of_the_statement_index_inside_parenthesised_terms(text: str, fun) -> None:
    """size[b] as a term of a parenthesised sum with no tensor indexed by b is the statement's
    b (the group's terms join the statement's), not a temporary's, which has no b."""
    if fun is None:
        with pytest.raises(ig.IndexgradError, match="size"):
            ig.compile(text)
        return
    m = ig.compile(text)
    a = {"x": rng().standard_normal(5), "c": np.array(0.7)}
    gz = rng(1).standard_normal(5)
    np.testing.assert_allclose(m.forward(**a)["z"], fun(**a), rtol=1e-12)
    assert_grads(vjp(m, a, "z", gz), fun, a, seed=gz)


@pytest.mark.parametrize(
    "text, fun",
    [
        ("dim k=3\nz[b] = x[b] / sqrt(size[k])", lambda x: x / np.sqrt(3)),
        ("dim k=3\nz[b] = x[b] + size[k]", lambda x: x + 3),
        ("dim a=5, r=3\nz = sum[a,r](E[a,r]) / (size[a] size[r])", None),
    ],
)
def test_size_of_an_index_dim_sizes_stands_in_any_statement(text: str, fun) -> None:
    """SPEC 9: `dim k=3` gives k its extent in the whole program, so size[k] is that number in a
    statement that does not use k, and outside a reduction that binds k (the mean, here)."""
    m = ig.compile(text)
    if fun is None:
        E = rng().standard_normal((5, 3))
        np.testing.assert_allclose(m.forward(E=E)["z"], E.mean(), rtol=1e-12)
        np.testing.assert_allclose(m.backward(m.forward(E=E))["E"], np.full((5, 3), 1 / 15), rtol=1e-12)
        return
    a = {"x": rng().standard_normal(5)}
    gz = rng(1).standard_normal(5)
    np.testing.assert_allclose(m.forward(**a)["z"], fun(**a), rtol=1e-12)
    assert_grads(vjp(m, a, "z", gz), fun, a, seed=gz)


def test_sixty_one_indices_in_one_statement() -> None:
    n = 60
    r = rng(2)
    mats = {f"a{k}": r.uniform(0.5, 1.0, (2, 2)) for k in range(n)}
    rhs = " ".join(f"a{k}[i{k},i{k + 1}]" for k in range(n))
    m = ig.compile(f"y[i0,i{n}] = {rhs}")
    vals = m.forward(**mats)
    chain = np.linalg.multi_dot([mats[f"a{k}"] for k in range(n)])
    np.testing.assert_allclose(vals["y"], chain, rtol=1e-10)
    seed = r.standard_normal((2, 2))
    got = m.backward(vals, seed={"y": seed})
    left = np.linalg.multi_dot([mats[f"a{k}"] for k in range(30)])
    right = np.linalg.multi_dot([mats[f"a{k}"] for k in range(31, n)])
    np.testing.assert_allclose(got["a30"], left.T @ seed @ right.T, rtol=1e-10)
    np.testing.assert_allclose(
        got["a0"], seed @ np.linalg.multi_dot([mats[f"a{k}"] for k in range(1, n)]).T, rtol=1e-10
    )


def test_sixty_index_names_in_one_program() -> None:
    lines = [f"t{k}[i{k}] = x[i{k}] + {k}" for k in range(60)]
    lines.append("loss = " + " + ".join(f"sum[j{k}](t{k}[j{k}])" for k in range(60)))
    m = ig.compile("\n".join(lines))
    vals = m.forward(x=np.arange(3.0))
    assert float(vals["loss"]) == 60 * 3.0 + 3 * sum(range(60))
    np.testing.assert_array_equal(m.backward(vals, loss="loss")["x"], [60.0] * 3)


def test_a_label_read_through_arithmetic_past_its_end_is_an_error_at_the_read() -> None:
    """lab[b+j] with b and j of size 2 reads lab[2]: refused like x[b+j] is, not an IndexError."""
    m = ig.compile("h += B[b,j] E[lab[b+j]]\nz += h E[lab[b]]\n")
    with pytest.raises(ig.IndexgradError, match=r"1:15: .*lab\[b\+j\] reaches position 2 .* size 2"):
        m.forward(B=np.ones((2, 2)), E=np.ones(3), lab=np.array([0, 1]))
    within = ig.compile("h += B[b,j] E[lab[b+j]]\n")
    B, E, lab = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([10.0, 20.0, 30.0]), np.array([2, 0, 1])
    want = sum(B[b, j] * E[lab[b + j]] for b in range(2) for j in range(2))
    assert within.forward(B=B, E=E, lab=lab)["h"] == want


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "y[i] = x[i]\ny[i+1] += z[i]",
            r"y\[i\+1\] reaches position 3 along axis 0, but 'y' has size 3 there",
        ),
        (
            "y[i] = x[i]\ny[2*i] += z[i]",
            r"y\[2\*i\] reaches position 4 along axis 0, but 'y' has size 3 there",
        ),
        (
            "y[i] += x[i]\ny[2*i] += z[i]",
            r"y\[2\*i\] reaches position 4 along axis 0, but 'y' has size 3 there \(the '\+=' into 'y' make "
            r"it as long as the farthest writes, but a plain index in the first fixes its axis: write that "
            r"one shifted by 0, as i\+0\)",
        ),
    ],
)
def test_a_shifted_write_past_the_end_is_an_error_not_a_dropped_term(text: str, message: str) -> None:
    """A one-name shift shortens the range of what a statement reads (`x[r+1] - x[r]`), never of
    what a '+=' writes: `y[2*i] += z[i]` with z longer than y's even positions used to add only
    the first ones of z."""
    x, z = np.arange(3.0), 10 * np.arange(1.0, 4.0)
    with pytest.raises(ig.IndexgradError) as info:
        ig.compile(text).forward(x=x, z=z)
    assert re.fullmatch(message, info.value.message), info.value.message
    assert (info.value.line, info.value.column) == (2, 1)


@pytest.mark.parametrize("order", [0, 1])
def test_several_adds_define_a_tensor_as_long_as_the_farthest_writes(order: int) -> None:
    """`y[2*i] += x[i]` then `y[2*i+1] += z[i]` interleave x and z whichever comes first: the
    first no longer fixes y's extent at 5, which made the second an error."""
    x, z = np.arange(3.0), 10 * np.arange(1.0, 4.0)
    adds = ["y[2*i] += x[i]", "y[2*i+1] += z[i]"][:: 1 - 2 * order]
    m = ig.compile("\n".join(adds) + "\nloss = sum[j](y[j] w[j])")
    w = rng().standard_normal(6)
    np.testing.assert_array_equal(m.forward(x=x, z=z, w=w)["y"], [0, 10, 1, 20, 2, 30])
    assert ig.gradcheck(m, {"x": x, "z": z, "w": w})
    y = ig.compile("y[i] = x[i]\ny[i+1] += z[i]").forward(x=np.arange(4.0), z=z)["y"]
    np.testing.assert_array_equal(y, [0, 11, 22, 33])
    y = ig.compile("y[i+0] += x[i]\ny[2*i] += z[i]").forward(x=x, z=z)["y"]
    np.testing.assert_array_equal(y, [10, 1, 22, 0, 30])
