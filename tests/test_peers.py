"""Cases from other projects' test suites, written in the language: numpy's einsum tests (traces,
diagonals, indices repeated across operands, outer products, scalars, size-1 and size-0 axes),
opt_einsum's (paths over many operands, more indices than einsum has letters), Tullio.jl's
(shifted, strided and wrapped indices, max and min reductions, Kronecker products) and Tensor
Comprehensions' examples (tmm, tbmm, ttgt, 2-LUT). Forward values against numpy.einsum or torch,
gradients of every float input against torch autograd, as tests/test_zoo.py checks its layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_zoo import Layer, Tensors, case, check, check_jvp, few, normal, with_labels

import indexgrad as ig

# ---- einsum equations: (name, equation, shapes); the program is written from the equation ------

EINSUM = [
    ("trace", "ii->", [(4, 4)]),
    ("diagonal", "ii->i", [(4, 4)]),
    ("diagonal_of_three", "iii->i", [(3, 3, 3)]),
    ("partial_trace", "iij->j", [(3, 3, 2)]),
    ("diagonal_kept_apart", "iji->ij", [(3, 2, 3)]),
    ("diagonal_times_vector", "ii,i->i", [(4, 4), (4,)]),
    ("two_traces", "ii,jj->", [(3, 3), (2, 2)]),
    ("outer_of_diagonals", "ii,jj->ij", [(3, 3), (2, 2)]),
    ("diagonal_of_product", "ij,ji->i", [(3, 4), (4, 3)]),
    ("trace_of_product", "ij,ji->", [(3, 4), (4, 3)]),
    ("hadamard", "ij,ij->ij", [(3, 4), (3, 4)]),
    ("dot", "i,i->", [(5,), (5,)]),
    ("outer", "i,j->ij", [(3,), (4,)]),
    ("outer_of_three", "i,j,k->ijk", [(2,), (3,), (4,)]),
    ("transpose", "ij->ji", [(3, 4)]),
    ("sum_all", "ij->", [(3, 4)]),
    ("sum_axis", "ij->j", [(3, 4)]),
    ("matvec", "ij,j->i", [(3, 4), (4,)]),
    ("bilinear_form", "i,ij,j->", [(3,), (3, 4), (4,)]),
    ("three_of_one_index", "i,i,i->i", [(4,), (4,), (4,)]),
    ("chain_of_four", "ij,jk,kl,lm->im", [(2, 3), (3, 4), (4, 5), (5, 2)]),
    ("ring_of_six", "ab,bc,cd,de,ef,fa->af", [(2, 3), (3, 2), (2, 3), (3, 2), (2, 3), (3, 2)]),
    ("batch_matmul", "bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("diagonals_of_several", "aab,fa,df,ecc->bde", [(2, 2, 3), (4, 2), (3, 4), (2, 3, 3)]),
    ("crossed", "ijk,jil->kl", [(2, 3, 4), (3, 2, 5)]),
    ("opt_einsum_path_edge", "efc,dbc,acf,fd->abe", [(2, 3, 4), (3, 2, 4), (2, 4, 3), (3, 3)]),
    ("opt_einsum_four_to_four", "ea,fb,gc,hd,abcd->efgh", [(2, 3), (2, 2), (3, 2), (2, 3), (3, 2, 2, 3)]),
    ("opt_einsum_cycle", "abc,cfd,dbe,efa->", [(2, 3, 2), (2, 3, 2), (2, 3, 2), (2, 3, 2)]),
    ("opt_einsum_all_ones", "abc,cfd,dbe,efa->", [(1, 1, 1)] * 4),
    ("broadcast_into_three", "a,ab,abc->abc", [(2,), (2, 3), (2, 3, 4)]),
    ("opt_einsum_diagonal_path", "baa,dcf,af,cde->be", [(3, 2, 2), (2, 3, 2), (2, 2), (3, 2, 2)]),
    ("disconnected", "ab,cd->", [(2, 3), (3, 4)]),
    ("disconnected_kept", "ab,cd->ad", [(2, 3), (3, 4)]),
    ("scalar_operand", "a,->a", [(3,), ()]),
    ("scalar_alone", "->", [()]),
    ("dots_and_a_sum", "ab,ab,c->c", [(2, 3), (2, 3), (4,)]),
    ("size_one_axes", "abcd,cd->ab", [(1, 2, 1, 3), (1, 3)]),
    ("size_one_matmul", "ij,jk->ik", [(1, 1), (1, 3)]),
    ("size_zero_summed", "ij,j->i", [(3, 0), (0,)]),
    ("size_zero_kept", "ij,jk->ik", [(0, 3), (3, 2)]),
    ("size_zero_trace", "ii->", [(0, 0)]),
]


def program(equation: str) -> str:
    """`y[i,k] = t0[i,j] t1[j,k]` for "ij,jk->ik": operand n is tensor tn."""
    ins, out = equation.split("->")

    def ref(name: str, indices: str) -> str:
        return f"{name}[{','.join(indices)}]" if indices else name

    return f"{ref('y', out)} = " + " ".join(ref(f"t{n}", o) for n, o in enumerate(ins.split(",")))


def einsum_layer(name: str, equation: str, shapes: list[tuple[int, ...]]) -> Layer:
    def inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {f"t{n}": rng.standard_normal(s) for n, s in enumerate(shapes)}

    return Layer(
        name,
        program(equation),
        inputs,
        lambda a: torch.einsum(equation, *(a[f"t{n}"] for n in range(len(shapes)))),
    )


def chain(n: int) -> Layer:
    """A product of n 2x2 matrices: n + 1 index names, more than einsum's 52 letters for n > 51."""
    src = f"y[i0,i{n}] = " + " ".join(f"m{k}[i{k},i{k + 1}]" for k in range(n))

    def product(a: Tensors) -> torch.Tensor:
        out = a["m0"]
        for k in range(1, n):
            out = out @ a[f"m{k}"]
        return out

    return Layer(
        f"chain_of_{n}",
        src,
        lambda rng: {f"m{k}": 0.7 * rng.standard_normal((2, 2)) for k in range(n)},
        product,
    )


PEERS: list[Layer] = [einsum_layer(*e) for e in EINSUM] + [chain(60)]


def peer(*args, **kwargs) -> None:
    PEERS.append(Layer(*args, **kwargs))


# ---- Tullio.jl: index arithmetic and reductions ------------------------------------------------

peer("shift", "y[i] = x[i+1]", normal(x=(6,)), lambda a: a["x"][1:])
peer("stride", "y[i] = x[2*i+1]", normal(x=(7,)), lambda a: a["x"][1::2])
peer("pair_sums", "y[i] = x[2*i] + x[2*i+1]", normal(x=(8,)), lambda a: a["x"][0::2] + a["x"][1::2])
peer(
    "second_difference",
    "y[i] = x[i+2] - 2 x[i+1] + x[i]",
    normal(x=(6,)),
    lambda a: a["x"][2:] - 2 * a["x"][1:-1] + a["x"][:-2],
)
peer(
    "hankel",
    """
    dim i=3
    y[i,j] = x[i+j]
    """,
    normal(x=(6,)),
    lambda a: a["x"].unfold(0, 4, 1),
)
peer(
    "reversed",
    """
    dim i=5
    y[i] = x[4-i]
    """,
    normal(x=(5,)),
    lambda a: a["x"].flip(0),
)
peer(
    "antidiagonal",
    """
    dim i=4
    y[i] = x[i,3-i]
    """,
    normal(x=(4, 4)),
    lambda a: a["x"].flip(1).diagonal(),
)
peer("wrapped", "y[i] = x[wrap(i+1)]", normal(x=(5,)), lambda a: torch.roll(a["x"], -1))
peer(
    "mod",
    """
    dim i=5
    y[i] = x[(i+1)%5]
    """,
    normal(x=(5,)),
    lambda a: torch.roll(a["x"], -1),
)
peer("padded", "y[i] = x[pad(i-1)]", normal(x=(5,)), lambda a: F.pad(a["x"], (1, 0))[:-1])
peer(
    "clamped",
    "y[i] = x[clamp(i+1)]",
    normal(x=(5,)),
    lambda a: F.pad(a["x"][None], (0, 1), "replicate")[0, 1:],
)
peer("max_of_rows", "y[i] = max[j](x[i,j])", normal(x=(3, 4)), lambda a: a["x"].amax(1))
peer("min_of_rows", "y[i] = min[j](x[i,j])", normal(x=(3, 4)), lambda a: a["x"].amin(1))
peer("max_of_all", "y = max[i,j](x[i,j])", normal(x=(3, 4)), lambda a: a["x"].amax())
peer(
    "minus_row_max",
    "y[i,j] = x[i,j] - max[k](x[i,k])",
    normal(x=(3, 4)),
    lambda a: a["x"] - a["x"].amax(1, keepdim=True),
)
peer(
    "outer_max",
    "y[i,j] = max(a[i], b[j])",
    normal(a=(3,), b=(4,)),
    lambda a: torch.maximum(a["a"][:, None], a["b"][None, :]),
)
peer(
    "window_max",
    """
    dim a=3
    y[i] = max[a](x[i+a])
    """,
    normal(x=(8,)),
    lambda a: a["x"].unfold(0, 3, 1).amax(1),
)
peer(
    "kron_by_division",
    "y[p,q] = A[p//2,q//3] B[p%2,q%3]",
    normal(A=(2, 2), B=(2, 3)),
    lambda a: torch.kron(a["A"], a["B"]),
)
peer(
    "kron_by_scatter",
    "y[2*i+k,3*j+l] += A[i,j] B[k,l]",
    normal(A=(2, 2), B=(2, 3)),
    lambda a: torch.kron(a["A"], a["B"]),
)
peer(
    "full_convolution",
    "y[i+a] += x[i] k[a]",
    normal(x=(5,), k=(3,)),
    lambda a: F.conv_transpose1d(a["x"][None, None], a["k"][None, None])[0, 0],
)
peer("repeat_each", "y[i] = x[i//2]", normal(x=(4,)), lambda a: a["x"].repeat_interleave(2))

# ---- Tensor Comprehensions' examples ---------------------------------------------------------

peer("tmm", "y[m,n] = A[m,k] B[n,k]", normal(A=(3, 4), B=(5, 4)), lambda a: a["A"] @ a["B"].T)
peer(
    "tbmm",
    "y[b,n,m] = A[b,n,k] B[b,m,k]",
    normal(A=(2, 3, 4), B=(2, 5, 4)),
    lambda a: a["A"] @ a["B"].mT,
)
peer(
    "ttgt",
    "y[a,b,c,d] = L[a,e,b,f] R[d,f,c,e]",
    normal(L=(2, 3, 2, 4), R=(3, 4, 2, 3)),
    lambda a: torch.einsum("aebf,dfce->abcd", a["L"], a["R"]),
)
peer(
    "two_lookup_tables",
    """
    param L1[e,d], L2[e,d]
    y[b,d] = sum[l](L1[I1[b,l],d]) + sum[l](L2[I2[b,l],d])
    """,
    with_labels(normal(L1=(6, 3), L2=(5, 3)), I1=(6, (2, 4)), I2=(5, (2, 3))),
    lambda a: a["L1"][a["I1"]].sum(1) + a["L2"][a["I2"]].sum(1),
)

CASES = {entry.name: entry for entry in PEERS}


@pytest.mark.parametrize("name", sorted(CASES))
def test_numpy(name: str) -> None:
    check(CASES[name], "numpy", lambda v: v)


@pytest.mark.parametrize("name, equation, shapes", EINSUM)
def test_forward_is_numpys_einsum(name: str, equation: str, shapes: list) -> None:
    arrays = case(CASES[name])[0]
    got = ig.compile(program(equation)).forward(**arrays)["y"]
    np.testing.assert_allclose(got, np.einsum(equation, *arrays.values()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", few(sorted(CASES), ("diagonals_of_several", "kron_by_scatter", "hankel")))
def test_jvp_is_torchs_vjp_transposed(name: str) -> None:
    check_jvp(CASES[name])


def test_torch_backend() -> None:
    for entry in PEERS:
        check(entry, "torch", torch.as_tensor)


# a few whose steps differ most on jax: diagonals, more than 52 index names, empty axes, // and %
JAX_CASES = ("diagonals_of_several", "chain_of_60", "size_zero_summed", "kron_by_division", "kron_by_scatter")


def test_jax_backend() -> None:
    jax = pytest.importorskip("jax")
    with jax.enable_x64(True):
        for name in JAX_CASES:
            check(CASES[name], "jax", jax.numpy.asarray)
