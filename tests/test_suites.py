"""Other projects' test cases written in the language: numpy's and opt_einsum's einsum tests,
Tullio.jl's README and tests, and Tensor Comprehensions' kernels, each against an oracle written
with numpy (forward), HIPS autograd or symmetric finite differences (gradients), on the numpy
backend, and a few on torch and jax.

Where those projects index from 1, the programs index from 0; where the language has no such
thing (Tullio's product and `&` reductions, an index as a number, TC's redefinitions), the case
is written as a user of the language writes it, or is in REFUSED (or WARNED) with the advice the
error (or warning) gives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import autograd
import autograd.numpy as anp
import numpy as np
import pytest

import indexgrad as ig

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    """A program, its inputs, and the value of its last defined tensor as a function of them.
    `fd`: the oracle is not autograd's to differentiate (einsum with a repeated subscript, a
    label), so gradients are symmetric finite differences, exact for the multilinear ones."""

    name: str
    src: str
    inputs: Arrays
    value: Callable[..., np.ndarray]
    fd: bool = False
    labels: tuple[str, ...] = field(default=())


CASES: list[Case] = []
_rng = np.random.default_rng(2026)


def normal(*shape: int) -> np.ndarray:
    return _rng.standard_normal(shape)


def positive(*shape: int) -> np.ndarray:
    return _rng.uniform(0.5, 2.0, shape)


def case(name: str, src: str, inputs: Arrays, value: Callable[..., np.ndarray], fd: bool = False) -> None:
    """Add a case; its integer inputs named ind... are labels (the others are numbers)."""
    labels = tuple(k for k, v in inputs.items() if v.dtype.kind in "iu" and k.startswith("ind"))
    CASES.append(Case(name, src, inputs, value, fd, labels))


def table(shape: tuple[int, ...], entry: Callable[..., float]) -> np.ndarray:
    """An array built entry by entry: the direct loop a kernel's oracle is."""
    return anp.array([entry(*ix) for ix in np.ndindex(*shape)]).reshape(shape)


# ---- numpy's and opt_einsum's einsum tests ------------------------------------------------------
# (opt_einsum tests/test_contract.py's list, numpy's single-operand diagonals and traces)

EINSUM = """
a,->a ab,->ab ,ab,->ab ,,-> a,ab,abc->abc a,b,ab->ab
ea,fb,gc,hd,abcd->efgh ea,fb,abcd,gc,hd->efgh abcd,ea,fb,gc,hd->efgh
acdf,jbje,gihb,hfac,gfac,gifabc,hfac cd,bdhe,aidb,hgca,gc,hgibcd,hgac abhe,hidj,jgba,hiab,gab
bde,cdh,agdb,hica,ibd,hgicd,hiac chd,bde,agbc,hiad,hgc,hgi,hiad chd,bde,agbc,hiad,bdi,cgh,agdb
bdhe,acad,hiab,agac,hibd
ab,ab,c-> ab,ab,c->c ab,ab,cd,cd-> ab,ab,cd,cd->ac ab,ab,cd,cd->cd ab,ab,cd,cd,ef,ef->
ab,cd,ef->abcdef ab,cd,ef->acdf ab,cd,de->abcde ab,cd,de->be ab,bcd,cd->abcd ab,bcd,cd->abd
eb,cb,fb->cef dd,fb,be,cdb->cef bca,cdb,dbf,afc-> dcc,fce,ea,dbf->ab fdf,cdd,ccd,afe->ae abcd,ad
ed,fcd,ff,bcf->be baa,dcf,af,cde->be bd,db,eac->ace fff,fae,bef,def->abd efc,dbc,acf,fd->abe
ab,ab ab,ba abc,abc abc,bac abc,cba ab,bc ab,cb ba,bc ba,cb abcd,cd abcd,ab abcd,cdef
abcd,cdef->feba abcd,efdc aab,bc->ac ab,bcc->ac aab,bcc->ac baa,bcc->ac aab,ccb->ac
aab,fa,df,ecc->bde ecb,fef,bad,ed->ac bcf,bbb,fbf,fc-> bb,ff,be->e bcb,bb,fc,fff-> fbb,dfd,fc,fc->
afd,ba,cc,dc->bf adb,bc,fa,cfc->d bbd,bda,fc,db->acf dba,ead,cad->bce aef,fbc,dca->bde
ii ii->i iii->i iii iij->j iji->ij ij->ji ij-> i-> ij->i ij->j i,i i,j->ij ij,j->i ji,j->i
ijk,jil->kl ijk,jil->lk i,i,i->i i,i,i-> ij,ji-> ijk,kji->ijk bij,bjk->bik bij,bjk->kbi
ab,bc,cd,de,ef,fg->ag ij,jk,kl->li iijj->ij iijj-> bii->bi
""".split()
LETTER_SIZES = dict(zip("abcdefghijkl", [2, 3, 4, 2, 3, 2, 4, 3, 2, 3, 3, 4]))


def einsum_text(equation: str, names: list[str]) -> str:
    """`out[...] = t0[...] t1[...] ...`: the equation as a user of the language writes it (an
    implicit output is einsum's: the letters used once, in order)."""
    ins, _, out = equation.partition("->")
    if "->" not in equation:
        letters = ins.replace(",", "")
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))

    def ref(name: str, axes: str) -> str:
        return f"{name}[{','.join(axes)}]" if axes else name

    return f"{ref('out', out)} = " + " ".join(ref(n, s) for n, s in zip(names, ins.split(",")))


def einsum_case(name: str, equation: str, names: list[str], sizes: dict[str, int]) -> None:
    arrays: Arrays = {}
    for n, axes in zip(names, equation.split("->")[0].split(",")):
        arrays.setdefault(n, normal(*(sizes[c] for c in axes)))
    value = lambda **a: np.einsum(equation, *(a[n] for n in names))  # noqa: E731
    case(name, einsum_text(equation, names), arrays, value, fd=True)


for eq in EINSUM:
    einsum_case(f"einsum {eq}", eq, [f"t{k}" for k in range(eq.count(",") + 1)], LETTER_SIZES)

# the same tensor in several places: every operand of one rank is one tensor x<rank>, all axes 3
for eq in [
    "ab,ba->ab",
    "ab,bc,ca->",
    "aab,bcc->ac",
    "i,i,i->i",
    "ab,bc,cd,da->",
    "ij,ji->",
    "abc,cab,bca->abc",
]:
    ops = eq.split("->")[0].split(",")
    einsum_case(f"same tensor {eq}", eq, [f"x{len(s)}" for s in ops], dict.fromkeys("abcdij", 3))

# sizes 0 and 1: empty sums are 0, empty results empty; size-1 axes contract and keep as any other
for eq, sizes in [
    ("ij,jk->ik", {"i": 2, "j": 0, "k": 3}),
    ("ij,jk->ik", {"i": 0, "j": 3, "k": 2}),
    ("ii->", {"i": 0}),
    ("ij->i", {"i": 3, "j": 0}),
    ("i,j->ij", {"i": 0, "j": 3}),
    ("i,i->", {"i": 0}),
    ("bii,bij->bj", {"b": 0, "i": 2, "j": 3}),
    ("ij,jk->ik", {"i": 1, "j": 3, "k": 1}),
    ("ij,jk->ik", {"i": 2, "j": 1, "k": 3}),
    ("ijk,kji->ijk", {"i": 1, "j": 1, "k": 1}),
    ("abc,cd->dba", {"a": 1, "b": 3, "c": 1, "d": 2}),
]:
    einsum_case(f"sizes {eq} {sizes}", eq, [f"t{k}" for k in range(eq.count(",") + 1)], sizes)

# random equations as opt_einsum's helpers draw them: repeated letters, sizes 0 to 3
_draw = np.random.default_rng(7)
for k in range(24):
    letters = list("abcdef"[: _draw.integers(1, 6)])
    sizes = {c: int(_draw.choice([0, 1, 2, 3], p=[0.1, 0.2, 0.35, 0.35])) for c in letters}
    ops = ["".join(_draw.choice(letters, _draw.integers(0, 4))) for _ in range(_draw.integers(1, 5))]
    kept = [c for c in sorted(set("".join(ops))) if _draw.random() < 0.4]
    eq = ",".join(ops) + "->" + "".join(_draw.permutation(kept))
    einsum_case(f"random {k} {eq} {sizes}", eq, [f"t{n}" for n in range(len(ops))], sizes)

# the tables: one case in a line or two
# fmt: off
E = anp.einsum
case("twice: dot", "y = x[i] x[i]", {"x": normal(4)}, lambda x: E("i,i", x, x))
case("twice: quadratic form", "y = x[i] A[i,j] x[j]", {"x": normal(4), "A": normal(4, 4)},
     lambda x, A: x @ A @ x)
case("thrice: cube", "y[i] = x[i] x[i] x[i]", {"x": normal(4)}, lambda x: x**3)
case("scalar times vector", "y[i] = s x[i]", {"s": np.array(2.5), "x": normal(3)}, lambda s, x: s * x)
case("scalar squared", "y = s s", {"s": np.array(1.5)}, lambda s: s * s)
case("sum of all", "y = sum[i,j,k](A[i,j,k])", {"A": normal(2, 3, 4)}, lambda A: anp.sum(A))
case("diagonal times matrix", "y[i,j] = A[i,i] B[i,j]", {"A": normal(3, 3), "B": normal(3, 4)},
     lambda A, B: anp.diag(A)[:, None] * B)
case("outer sum", "y[i,j] = a[i] + b[j]", {"a": normal(2), "b": normal(3)},
     lambda a, b: a[:, None] + b[None, :])
case("integer inputs", "y[i,k] = A[i,j] B[j,k]",
     {"A": _rng.integers(-3, 3, (2, 3)), "B": _rng.integers(-3, 3, (3, 2))},
     lambda A, B: (A @ B).astype(float))
case("integer times float", "y[i,k] = A[i,j] B[j,k]",
     {"A": _rng.integers(-3, 3, (2, 3)), "B": normal(3, 2)}, lambda A, B: A @ B)
case("float32 times float64", "y[i,k] = A[i,j] B[j,k]",
     {"A": normal(2, 3).astype(np.float32), "B": normal(3, 2)}, lambda A, B: A.astype(np.float64) @ B)
case("boolean mask", "y[i] = A[i,j] m[j]", {"A": normal(2, 3), "m": np.array([True, False, True])},
     lambda A, m: A @ m.astype(float))

# ---- Tullio.jl: README, test/parsing.jl, test/gradients.jl -------------------------------------

A21, A10 = normal(21), normal(10)
case("downsample", "B[i] = (A[2*i] + A[2*i+1]) / 2", {"A": A21}, lambda A: (A[0:20:2] + A[1:21:2]) / 2)
case("shifts, j given", "dim j=15\nM[i,j] = A[i+j]", {"A": A21},
     lambda A: anp.stack([A[i : i + 15] for i in range(7)]))
case("circular shift", "dim i=7, j=15\nM[i,j] = A[wrap(i+j)]", {"A": A10},
     lambda A: table((7, 15), lambda i, j: A[(i + j) % 10]))
case("norm of columns", "N2[j] = sqrt(sum[i](M[i,j]^2))", {"M": normal(3, 4)},
     lambda M: anp.sqrt(anp.sum(M**2, 0)))
case("max over j", "X[i] = max[j](D[i,j])", {"D": normal(3, 4)}, lambda D: anp.max(D, 1))
case("readme: log of a ratio", "S[x] = P[x,y] log(Q[x,y] / R[y])",
     {"P": normal(3, 4), "Q": positive(3, 4), "R": positive(4)},
     lambda P, Q, R: anp.sum(P * anp.log(Q / R), 1))
case("readme: three factors", "A[i,j] += B[i,k,l] C[l,j] D[k,j]",
     {"B": normal(2, 3, 4), "C": normal(4, 5), "D": normal(3, 5)},
     lambda B, C, D: E("ikl,lj,kj->ij", B, C, D))
case("readme: 2-d correlation", "M[x,y,c] = N[x+i,y+j,c] K[i,j]",
     {"N": normal(6, 5, 2), "K": normal(3, 2)},
     lambda N, K: table((4, 4, 2), lambda x, y, c: anp.sum(N[x : x + 3, y : y + 2, c] * K)))
case("two contributions", "y[i,j] = 1 x[i] + 1000 x[j]", {"x": normal(3)},
     lambda x: x[:, None] + 1000 * x[None, :])
case("scalar output, two sums", "s = exp(x[i]) / x[j]", {"x": positive(5)},
     lambda x: anp.sum(anp.exp(x)) * anp.sum(1 / x))
case("sum of a matrix and a transpose", "z[i] = x[i,j] + y[j,i]", {"x": normal(2, 3), "y": normal(3, 2)},
     lambda x, y: anp.sum(x + y.T, 1))
case("log over a transpose", "z[i] = log(x[i,j]) / y[j,i]", {"x": positive(2, 3), "y": positive(3, 2)},
     lambda x, y: anp.sum(anp.log(x) / y.T, 1))
case("abs", "s = abs(1 + v[i]^2)", {"v": normal(5)}, lambda v: anp.sum(anp.abs(1 + v**2)))
case("abs2", "s = (1 + v[i]^2)^2", {"v": normal(5)}, lambda v: anp.sum((1 + v**2) ** 2))
case("gather", "y[i] = x[inds[i]]", {"x": normal(3), "inds": np.array([0, 1, 2, 0, 1])},
     lambda x, inds: x[inds])
case("gather plus", "y[i] = x[ind2[i]] + x[i]", {"x": normal(6), "ind2": _rng.integers(0, 3, 6)},
     lambda x, ind2: x[ind2] + x)
case("scatter", "dim n=5\ny[n] = 0 delta[n,n]\ny[inds[i]] += x[i]",
     {"x": normal(5), "inds": np.array([0, 1, 2, 0, 1])}, lambda x, inds: np.bincount(inds, x, 5), fd=True)
case("scatter through 2i+1", "E[2*i+1] += A[i]", {"A": normal(4)},
     lambda A: anp.stack([0.0, A[0], 0.0, A[1], 0.0, A[2], 0.0, A[3]]))
case(
    "wrapped 2-d correlation",
    "out[x,y,n] = mat[wrap(x+a),wrap(y+b),n] abs(kern[a,b])",
    {"mat": normal(5, 4, 2), "kern": normal(3, 3)},
    lambda mat, kern: table(
        (5, 4, 2),
        lambda x, y, n: sum(
            mat[(x + a) % 5, (y + b) % 4, n] * anp.abs(kern[a, b]) for a in range(3) for b in range(3)
        ),
    ),
)
case("mod", "dim i=5\ny[i] = x[wrap(i)]", {"x": normal(3)}, lambda x: x[np.arange(5) % 3])
case("clamp", "dim i=5\ny[i] = x[clamp(i)]", {"x": normal(3)}, lambda x: x[np.minimum(np.arange(5), 2)])
case("pad", "dim i=7\ny[i] = x[pad(i-2)]", {"x": normal(3)},
     lambda x: anp.concatenate([np.zeros(2), x, np.zeros(2)]))
case("pad both axes", "dim i=9, j=11\nH[i,j] = M[pad(i-2),pad(j-3)]", {"M": normal(5, 5)},
     lambda M: table((9, 11), lambda i, j: M[i - 2, j - 3] if 2 <= i < 7 and 3 <= j < 8 else 0.0))
case("min of a clamped read", "D[i] = min(A[i], B[clamp(i)])", {"A": normal(10), "B": normal(5)},
     lambda A, B: anp.minimum(A, B[np.minimum(np.arange(10), 4)]))
case("wrap of 2i+1", "dim i=6\nE[i] = A[wrap(2*i+1)]", {"A": normal(5)},
     lambda A: A[(2 * np.arange(6) + 1) % 5])
case("same-size circular correlation", "F[i] = A[wrap(i+k)] o[k]", {"A": A10, "o": normal(3)},
     lambda A, o: table((10,), lambda i: sum(A[(i + k) % 10] * o[k] for k in range(3))))
case("same-size clamped correlation", "F[i] = A[clamp(i+k)] o[k]", {"A": A10, "o": normal(7)},
     lambda A, o: table((10,), lambda i: sum(A[min(i + k, 9)] * o[k] for k in range(7))))
case("same-size padded correlation", "G[i] = A[pad(i+k)] o[k]", {"A": A10, "o": normal(3)},
     lambda A, o: table((10,), lambda i: sum(A[i + k] * o[k] for k in range(3) if i + k < 10)))
case(
    "trace tr1", "T[k] = 22 x[i,i,k]", {"x": normal(3, 3, 4)}, lambda x: 22 * np.einsum("iik->k", x), fd=True
)
case("trace tr2", "T[k] = 22 x[i,i,k,j,j]", {"x": normal(3, 3, 4, 2, 2)},
     lambda x: 22 * np.einsum("iikjj->k", x), fd=True)
case("con4", "C[i,m] = x[i,kk,k] r312[k,m,kk]", {"x": normal(1, 2, 3), "r312": normal(3, 1, 2)},
     lambda x, r312: E("iak,kma->im", x, r312))
case("con5", "C[j,i,n,m] = 44 x[i,j,k] r312[k,m,n]", {"x": normal(1, 2, 3), "r312": normal(3, 1, 2)},
     lambda x, r312: 44 * E("ijk,kmn->jinm", x, r312))
case("con13", "K[i,j] = r3399[s,s,j,k] x[t,t,k,i]", {"x": normal(3, 3, 4, 4), "r3399": normal(3, 3, 4, 4)},
     lambda x, r3399: np.einsum("ssjk,ttki->ij", r3399, x), fd=True)
case("con14", "K[i,j] = r3399[a,b,j,k] x[b,c,k,i] r33[a,c]",
     {"x": normal(3, 3, 4, 4), "r3399": normal(3, 3, 4, 4), "r33": normal(3, 3)},
     lambda x, r3399, r33: E("abjk,bcki,ac->ij", r3399, x, r33))
case("sc2", "s = x[g,c] r3399[c,g,i,i]", {"x": normal(3, 3), "r3399": normal(3, 3, 4, 4)},
     lambda x, r3399: np.einsum("gc,cgii->", x, r3399), fd=True)
case("max of all", "z = max[i](x[i])", {"x": normal(5)}, lambda x: anp.max(x))
case("min over three", "y[j] = min[i,k,l](x[i,j,k,l])", {"x": normal(3, 4, 5, 2)},
     lambda x: anp.min(x, (0, 2, 3)))
case("max f6", "z[i] = max[j](x[i,j] + 0.01 y[j])", {"x": normal(4, 4), "y": normal(4)},
     lambda x, y: anp.max(x + 0.01 * y[None, :], 1))
case("max f7", "z[i] = max[j](x[i,j]^2 / sqrt(y[i]) + exp(y[j]))", {"x": normal(4, 4), "y": positive(4)},
     lambda x, y: anp.max(x**2 / anp.sqrt(y[:, None]) + anp.exp(y[None, :]), 1))
case("max f8", "z[i,l] = max[j,k](log(x[i,j,k,l]) / y[j]^1 / 3)",
     {"x": positive(3, 4, 5, 2), "y": positive(4)},
     lambda x, y: anp.max(anp.log(x) / y[None, :, None, None] / 3, (1, 2)))
case("finaliser tanh", "y[i,k] = tanh(mat[i,j] x[j,k])", {"mat": normal(3, 3), "x": normal(3, 4)},
     lambda mat, x: anp.tanh(mat @ x))
case("finaliser log", "lse[j] = log(sum[i](exp(mat[i,j])))", {"mat": normal(3, 4)},
     lambda mat: anp.log(anp.sum(anp.exp(mat), 0)))
case("finaliser cbrt", "r[i] = max[j](x[i,j]^3)^0.3333333333333333", {"x": positive(3, 4)},
     lambda x: anp.max(x**3, 1) ** (1 / 3))
case("finaliser of a symmetric part", "B2[j] = sqrt(sum[i]((B[i,j] + B[j,i])^2))", {"B": normal(3, 3)},
     lambda B: anp.sqrt(anp.sum((B + B.T) ** 2, 0)))
case("column by delta", "F[i] = D[i,j] delta[j,2]", {"D": normal(3, 5)}, lambda D: D[:, 2])
case("2i+1 and i: the range both allow", "B[i] = A[2*i+1] + A[i]", {"A": A10}, lambda A: A[1:10:2] + A[:5])
case(
    "i+0: the shorter range", "D[i] = A[i] + B[i+0]", {"A": normal(5), "B": normal(3)}, lambda A, B: A[:3] + B
)
for pos, shape, at in [
    ("i+j", (7, 4), lambda i, j: i + j),
    ("2*i+j", (4, 4), lambda i, j: 2 * i + j),
    ("i+2*j", (4, 4), lambda i, j: i + 2 * j),
    ("2*(i+j)", (2, 4), lambda i, j: 2 * (i + j)),
    ("i+3-j", (7, 4), lambda i, j: i + 3 - j),
]:
    case(
        f"axes of A[{pos}]",
        f"In[i,j] = A[{pos}] + 0 B[j]",
        {"A": A10, "B": normal(4)},
        lambda A, B, at=at, shape=shape: table(shape, lambda i, j: A[at(i, j)]),
    )
case("reversal", "dim i=10\nC[i] = A[9-i]", {"A": A10}, lambda A: A[::-1])
case("shift plus 100", "E[i] = A[i+5] + 100", {"A": A10}, lambda A: A[5:] + 100)
case("differences along i", "res = arr[i+1,k] - arr[i,k]", {"arr": normal(4, 3)},
     lambda arr: anp.sum(arr[1:] - arr[:-1]))
case("x[i] y[i+1], y longer", "f[i] = x[i] y[i+1]", {"x": normal(5), "y": normal(6)}, lambda x, y: x * y[1:])
case("x[i] y[i+1], same sizes", "f[i] = x[i] y[i+1]", {"x": normal(5), "y": normal(5)},
     lambda x, y: x[:4] * y[1:])
case("labels by arithmetic", "K[i,j] = A[inds[i+j]] o[j]",
     {"A": normal(5), "inds": _rng.integers(0, 5, 6), "o": normal(3)},
     lambda A, inds, o: table((4, 3), lambda i, j: A[inds[i + j]] * o[j]))
case("sum over a label", "s = b[inds[i]]", {"b": normal(4), "inds": np.array([1, 3, 3])},
     lambda b, inds: anp.sum(b[inds]))

# ---- Tensor Comprehensions: the paper's kernels and tc/library, tc/benchmarks ---------------------


def conv(x, w, stride: int = 1, dilation: int = 1):
    """A valid 2-d correlation of x[n,c,h,w] with w[o,c,kh,kw], one kernel offset at a time."""
    oh = (x.shape[2] - dilation * (w.shape[2] - 1) - 1) // stride + 1
    ow = (x.shape[3] - dilation * (w.shape[3] - 1) - 1) // stride + 1
    out = 0.0
    for u, v in np.ndindex(*w.shape[2:]):
        rows = slice(u * dilation, u * dilation + stride * (oh - 1) + 1, stride)
        cols = slice(v * dilation, v * dilation + stride * (ow - 1) + 1, stride)
        out = out + E("nchw,oc->nohw", x[:, :, rows, cols], w[:, :, u, v])
    return out


def pool(x, k: int, stride: int, reduce: Callable) -> np.ndarray:
    oh, ow = (x.shape[2] - k) // stride + 1, (x.shape[3] - k) // stride + 1
    rows = [
        anp.stack(
            [reduce(x[:, :, i * stride : i * stride + k, j * stride : j * stride + k]) for j in range(ow)], -1
        )
        for i in range(oh)
    ]
    return anp.stack(rows, -2)


def relu(z):
    return anp.maximum(z, 0.0)


def bias(b):
    return b[None, :, None, None]


case("TMM", "C[m,n] = A[m,k] B[n,k]", {"A": normal(3, 4), "B": normal(5, 4)}, lambda A, B: A @ B.T)
case("batch matmul", "Z[b,n,k] = X[b,n,m] Y[b,m,k]", {"X": normal(2, 3, 4), "Y": normal(2, 4, 5)},
     lambda X, Y: X @ Y)
case("TBMM", "Z[b,n,k] = X[b,n,m] Y[b,k,m]", {"X": normal(2, 3, 4), "Y": normal(2, 5, 4)},
     lambda X, Y: E("bnm,bkm->bnk", X, Y))
case("GBMM", "Z[b,g,n,k] = X[b,g,n,m] Y[g,m,k]", {"X": normal(2, 3, 2, 4), "Y": normal(3, 4, 5)},
     lambda X, Y: E("bgnm,gmk->bgnk", X, Y))
case("matmul chain", "D[i,l] = A[i,j] B[j,k] C[k,l]",
     {"A": normal(2, 3), "B": normal(3, 4), "C": normal(4, 5)}, lambda A, B, C: A @ B @ C)
KRU = {"X": normal(2, 3, 4, 2), "W0": normal(2, 3), "W1": normal(3, 4), "W2": normal(4, 2)}
case(
    "KRU3, three steps",
    """
XW2[m,n0,n1,d2] = X[m,n0,n1,n2] W2[d2,n2]
XW2W1[m,n0,d1,d2] = XW2[m,n0,n1,d2] W1[d1,n1]
Y[m,d0,d1,d2] = XW2W1[m,n0,d1,d2] W0[d0,n0]
""",
    KRU,
    lambda X, W0, W1, W2: E("mabc,xa,yb,zc->mxyz", X, W0, W1, W2),
)
case("KRU3, one statement", "Y[m,d0,d1,d2] = X[m,n0,n1,n2] W0[d0,n0] W1[d1,n1] W2[d2,n2]", KRU,
     lambda X, W0, W1, W2: E("mabc,xa,yb,zc->mxyz", X, W0, W1, W2))
case("Khatri-Rao", "K[i,j,r] = A[i,r] B[j,r]", {"A": normal(3, 2), "B": normal(4, 2)},
     lambda A, B: E("ir,jr->ijr", A, B))
MLP = {
    "O1": normal(3, 4),
    "W2": normal(5, 4),
    "B2": normal(5),
    "W3": normal(3, 5),
    "B3": normal(3),
    "W4": normal(2, 3),
    "B4": normal(2),
}
case(
    "MLP3",
    """
O2[b,o] = relu(O1[b,n] W2[o,n] + B2[o])
O3[b,p] = relu(O2[b,o] W3[p,o] + B3[p])
O4[b,q] = relu(O3[b,p] W4[q,p] + B4[q])
""",
    MLP,
    lambda O1, W2, B2, W3, B3, W4, B4: relu(relu(relu(O1 @ W2.T + B2) @ W3.T + B3) @ W4.T + B4),
)
case(
    "MLP, TC's statements",
    """
O2[b,o] = O1[b,n] W2[o,n]
O2[b,o] += B2[o]
H2[b,o] = max(O2[b,o], 0)
O3[b,p] = H2[b,o] W3[p,o]
O3[b,p] += B3[p]
H3[b,p] = max(O3[b,p], 0)
""",
    {k: MLP[k] for k in ("O1", "W2", "B2", "W3", "B3")},
    lambda O1, W2, B2, W3, B3: relu(relu(O1 @ W2.T + B2) @ W3.T + B3),
)
case(
    "2LUT",
    "O1[b,d] = LUT1[ind1[b,l], d]\nO2[b,d] = LUT2[ind2[b,l], d]\nO[b,d] = O1[b,d] O2[b,d]",
    {
        "LUT1": normal(6, 3),
        "ind1": _rng.integers(0, 6, (2, 4)),
        "LUT2": normal(5, 3),
        "ind2": _rng.integers(0, 5, (2, 2)),
    },
    lambda LUT1, ind1, LUT2, ind2: anp.sum(LUT1[ind1], 1) * anp.sum(LUT2[ind2], 1),
)
case("convolution", "O[n,m,h,w] = In[n,c,h+kh,w+kw] W1[m,c,kh,kw] + B[m]",
     {"In": normal(2, 3, 6, 5), "W1": normal(4, 3, 3, 2), "B": normal(4)},
     lambda In, W1, B: conv(In, W1) + bias(B))
case("strided convolution", "O[n,m,h,w] = In[n,c,2*h+kh,2*w+kw] W1[m,c,kh,kw]",
     {"In": normal(2, 3, 7, 6), "W1": normal(4, 3, 3, 2)}, lambda In, W1: conv(In, W1, stride=2))
case("dilated convolution", "O[n,m,h,w] = In[n,c,h+2*kh,w+2*kw] W1[m,c,kh,kw]",
     {"In": normal(2, 3, 7, 6), "W1": normal(4, 3, 3, 2)}, lambda In, W1: conv(In, W1, dilation=2))
case("group convolution", "O[n,g,f,h,w] = In[n,g,c,h+kh,w+kw] W1[g,f,c,kh,kw] + B[g,f]",
     {"In": normal(2, 2, 3, 5, 5), "W1": normal(2, 4, 3, 3, 3), "B": normal(2, 4)},
     lambda In, W1, B: anp.stack([conv(In[:, g], W1[g]) for g in range(2)], 1) + B[None, :, :, None, None])
case(
    "2-layer convolution",
    """
H[n,m,h,w] = relu(In[n,c,h+kh,w+kw] W1[m,c,kh,kw] + B1[m])
O[n,p,h,w] = H[n,m,h+kh,w+kw] W2[p,m,kh,kw] + B2[p]
""",
    {
        "In": normal(2, 2, 6, 6),
        "W1": normal(3, 2, 3, 3),
        "B1": normal(3),
        "W2": normal(2, 3, 2, 2),
        "B2": normal(2),
    },
    lambda In, W1, B1, W2, B2: conv(relu(conv(In, W1) + bias(B1)), W2) + bias(B2),
)
case("wavenet's dilated 1-d", "y[b,c,t] = x[b,d,t+2*k] w[c,d,k]",
     {"x": normal(2, 3, 9), "w": normal(4, 3, 2)},
     lambda x, w: conv(x[:, :, None, :], w[:, :, None, :], dilation=2)[:, :, 0, :])
case(
    "input gradient by hand",
    "dI[n,c,h+kh,w+kw] += dO[n,m,h,w] W1[m,c,kh,kw]",
    {"dO": normal(2, 3, 4, 3), "W1": normal(3, 2, 2, 3)},
    lambda dO, W1: sum(
        anp.pad(E("nmhw,mc->nchw", dO, W1[:, :, u, v]), ((0, 0), (0, 0), (u, 1 - u), (v, 2 - v)), "constant")
        for u in range(2)
        for v in range(3)
    ),
)
case(
    "weight gradient by hand",
    "dW[m,c,kh,kw] = dO[n,m,h,w] In[n,c,h+kh,w+kw]",
    {"dO": normal(2, 3, 4, 3), "In": normal(2, 2, 5, 5)},
    lambda dO, In: anp.stack(
        [
            anp.stack([E("nmhw,nchw->mc", dO, In[:, :, u : u + 4, v : v + 3]) for v in range(3)], -1)
            for u in range(2)
        ],
        -2,
    ),
)
case("copy", "O[i,j] = In[i,j]", {"In": normal(3, 4)}, lambda In: In)
case("transpose", "O[k,i,j] = In[i,j,k]", {"In": normal(2, 3, 4)}, lambda In: anp.transpose(In, (2, 0, 1)))
case("max pooling", "dim u=2, v=2\nout[b,c,h,w] = max[u,v](x[b,c,2*h+u,2*w+v])", {"x": normal(2, 3, 6, 5)},
     lambda x: pool(x, 2, 2, lambda p: anp.max(p, (2, 3))))
case("max pooling 3x3, stride 1", "dim u=3, v=3\nout[b,c,h,w] = max[u,v](x[b,c,h+u,w+v])",
     {"x": normal(1, 2, 5, 5)}, lambda x: pool(x, 3, 1, lambda p: anp.max(p, (2, 3))))
case("average pooling", "dim u=2, v=2\nout[b,c,h,w] = mean[u,v](x[b,c,2*h+u,2*w+v])",
     {"x": normal(2, 3, 6, 5)}, lambda x: pool(x, 2, 2, lambda p: anp.mean(p, (2, 3))))
case("moments", "mu[n] = mean[k](In[n,k])\nvar[n] = mean[k](In[n,k]^2) - mu[n]^2", {"In": normal(3, 5)},
     lambda In: anp.mean(In**2, 1) - anp.mean(In, 1) ** 2)


def group_norm(In, gamma, beta):
    centred = In - anp.mean(In, (2, 3, 4), keepdims=True)
    var = anp.mean(centred**2, (2, 3, 4), keepdims=True)
    return gamma[None, :, :, None, None] * centred / anp.sqrt(var + 1e-5) + beta[None, :, :, None, None]


case(
    "group normalization",
    """
mu[n,g] = mean[d,h,w](In[n,g,d,h,w])
var[n,g] = mean[d,h,w]((In[n,g,d,h,w] - mu[n,g])^2)
O[n,g,d,h,w] = gamma[g,d] (In[n,g,d,h,w] - mu[n,g]) (var[n,g] + 0.00001)^-0.5 + beta[g,d]
""",
    {"In": normal(2, 2, 3, 2, 2), "gamma": normal(2, 3), "beta": normal(2, 3)},
    group_norm,
)
case("tensordot", "O[n,c1,c3,h,w] = I0[n,c1,c2,h,w] I1[n,c2,c3,h,w]",
     {"I0": normal(2, 3, 4, 2, 2), "I1": normal(2, 4, 2, 2, 2)},
     lambda I0, I1: E("nabhw,nbchw->nachw", I0, I1))
case(
    "block-diagonal, then a permutation",
    "O1[b,k,j] = In[b,k,i] W[k,i,j]\nO[b,n] = O1[b,ind[n],ind2[n]]",
    {
        "In": normal(2, 3, 4),
        "W": normal(3, 4, 4),
        "ind": _rng.integers(0, 3, 5),
        "ind2": _rng.integers(0, 4, 5),
    },
    lambda In, W, ind, ind2: E("bki,kij->bkj", In, W)[:, ind, ind2],
)
case(
    "softmax",
    "m[n] = max[d](In[n,d])\ne[n,d] = exp(In[n,d] - m[n])\nO[n,d] = e[n,d] / sum[k](e[n,k])",
    {"In": normal(3, 4)},
    lambda In: (
        anp.exp(In - anp.max(In, 1, keepdims=True))
        / anp.sum(anp.exp(In - anp.max(In, 1, keepdims=True)), 1, keepdims=True)
    ),
)
case("min distance", "O[n] = min[m](sum[k]((a[n,k] - b[m,k])^2))", {"a": normal(3, 2), "b": normal(4, 2)},
     lambda a, b: anp.min(anp.sum((a[:, None] - b[None]) ** 2, 2), 1))
# fmt: on

BY_NAME = {c.name: c for c in CASES}
assert len(BY_NAME) == len(CASES), "case names are unique"


# ---- the checks ---------------------------------------------------------------------------------


def floats(c: Case) -> list[str]:
    return [k for k, v in c.inputs.items() if k not in c.labels and v.dtype.kind == "f"]


def rtol(c: Case) -> float:
    """float64 to 1e-9; a float32 input's gradient comes back in float32."""
    return 1e-5 if any(v.dtype == np.float32 for v in c.inputs.values()) else 1e-9


def symmetric_difference(
    f: Callable[[np.ndarray], float], x: np.ndarray, v: np.ndarray, h: float = 1e-4
) -> float:
    """(f(x + hv) - f(x - hv)) / 2h: the derivative along v, exact up to rounding for f of degree 2
    at most in x, and within h² for the cubes (an operand used three times)."""
    return (f(x + h * v) - f(x - h * v)) / (2 * h)


def assert_grads(c: Case, seed: np.ndarray, grads: Arrays, rng: np.random.Generator) -> None:
    """Each float input's gradient of ⟨seed, value⟩: whole, against autograd's; or along three
    random directions, against symmetric differences."""
    for k in floats(c):
        x = c.inputs[k].astype(np.float64)

        def along(v, k=k):
            return anp.sum(c.value(**{**c.inputs, k: v}) * seed)

        if not c.fd:
            want = autograd.grad(along)(x)
            np.testing.assert_allclose(grads[k], want, rtol=rtol(c), atol=rtol(c), err_msg=f"d/d{k}")
            continue
        for _ in range(3):
            v = rng.standard_normal(x.shape)
            want = symmetric_difference(along, x, v)
            assert float(np.sum(grads[k] * v)) == pytest.approx(want, rel=1e-7, abs=1e-7), f"d/d{k}"


@pytest.mark.filterwarnings("ignore:Output seems independent of input")  # autograd, of `0 B[j]`
@pytest.mark.parametrize("name", list(BY_NAME))
def test_numpy(name: str) -> None:
    """Forward against the oracle; the vector-Jacobian product against autograd or finite
    differences; the tangent against the gradient by inner product."""
    c = BY_NAME[name]
    model = ig.compile(c.src)
    out = model.program.defined()[-1]
    vals = model.forward(**c.inputs)
    want = np.asarray(c.value(**c.inputs), dtype=np.float64)
    got = np.asarray(vals[out])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    rng = np.random.default_rng(0)
    seed = rng.standard_normal(want.shape)
    grads = model.backward(vals, seed={out: seed})
    assert_grads(c, seed, grads, rng)
    tangents = {k: rng.standard_normal(c.inputs[k].shape) for k in floats(c)}
    if tangents:
        dot = float(np.sum(np.asarray(model.jvp(vals, tangents)[out]) * seed))
        back = sum(float(np.sum(grads[k] * t)) for k, t in tangents.items())
        assert dot == pytest.approx(back, rel=rtol(c), abs=rtol(c))


def backend_agrees(name: str, backend: str, convert: Callable[[np.ndarray], object]) -> None:
    c = BY_NAME[name]
    want_model = ig.compile(c.src)
    model = ig.compile(c.src, backend=backend)
    out = model.program.defined()[-1]
    want = want_model.forward(**c.inputs)
    vals = model.forward(**{k: convert(v) for k, v in c.inputs.items()})
    np.testing.assert_allclose(
        np.asarray(vals[out]), want[out], rtol=1e-10, atol=1e-10, err_msg=f"{name} forward"
    )
    seed = np.random.default_rng(0).standard_normal(np.shape(want[out]))
    want_grads = want_model.backward(want, seed={out: seed})
    grads = model.backward(vals, seed={out: convert(seed)})
    for k in floats(c):
        np.testing.assert_allclose(
            np.asarray(grads[k]), want_grads[k], rtol=1e-10, atol=1e-10, err_msg=f"{name} d/d{k}"
        )


# one of each family, where the steps differ most between libraries: a diagonal, a sum over 0
# entries, labels, scatters, boundary modes, pooling, a gradient added to its own transpose
SPOT = [
    "einsum acdf,jbje,gihb,hfac,gfac,gifabc,hfac", "einsum iijj->ij", "same tensor abc,cab,bca->abc",
    "sizes ij,jk->ik {'i': 2, 'j': 0, 'k': 3}", "scatter", "scatter through 2i+1", "wrapped 2-d correlation",
    "labels by arithmetic", "finaliser of a symmetric part", "group convolution", "max pooling",
]  # fmt: skip
JAX_SPOT = ["einsum iijj->ij", "scatter through 2i+1"]


def test_torch_backend() -> None:
    torch = pytest.importorskip("torch")
    for name in SPOT:
        backend_agrees(name, "torch", torch.as_tensor)


def test_jax_backend() -> None:
    jax = pytest.importorskip("jax")
    with jax.enable_x64(True):
        for name in JAX_SPOT:
            backend_agrees(name, "jax", jax.numpy.asarray)


# ---- what those suites write that the language does not have: refused, with what to write ------

REFUSED = [
    # einsum broadcasts a size-1 axis; here one index has one size
    ("y[i,j] = A[i,j] b[j]", {"A": (2, 3), "b": (1,)}, "index it by j+0"),
    ("y[i] = x[...,i]", {}, "there is no ellipsis"),
    ("y[i,i] = x[i]", {}, "appears twice on the left side"),  # einsum's 'i->ii' is refused too
    ("y[i] = x[i-1]", {}, "shift the other reads instead"),  # index names count from 0
    ("y[i] = x[2i]", {}, "2*i"),  # Tullio's juxtaposed multiple
    ("y[i] = x[i*j] w[j]", {}, "not by another name"),
    ("y[i] = x[mod(i+1)]", {}, "wrap(...)"),  # Tullio's mod is wrap
    ("r[i] = x[i]^(1/3)", {}, "write its value"),
    ("s = abs2(x[i])", {}, "x[i]^2"),
    ("y[i] = fmax(x[i], 0)", {}, "max(x[i], 0)"),  # TC's fmax
    ("y[i] = ifelse(x[i] > 0, x[i], 0)", {}, "where("),
    ("y[i] = x[i]\ny[i] = 2 x[i]", {}, "is already defined"),  # TC's O = fmax(O, 0) redefines
    ("y[b,o] = B[o]", {}, "gets no size"),  # TC's O(b,o) = B(o) before O(b,o) += ...
    ("y[inds[i]] = x[i]", {}, "plain index names"),  # Tullio's y[inds[i]] := x[i]
    ("C[m,n] +=! A[m,k] B[n,k]", {}, "unexpected character '!'"),  # TC's reduction marker
]


@pytest.mark.parametrize("text, shapes, advice", REFUSED)
def test_refused_with_advice(text: str, shapes: dict, advice: str) -> None:
    with pytest.raises(ig.IndexgradError) as e:
        model = ig.compile(text)
        model.forward(**{k: np.ones(s) for k, s in shapes.items()})
    assert advice in e.value.message
    assert e.value.line is not None and e.value.column is not None


# valid programs that mean something else than the other notation: warned, with what to write
WARNED = [
    ("s = prod[i](x[i])", "exp(sum[k](log(x[k])))"),  # Tullio's (*) reduction
    ("t = all[i](x[i] > 0)", "min[k](x[k] > 0)"),  # Tullio's (&)
    ("y[i,j] = A[i] A[j] (i <= j)", "delta[i,...]"),  # Tullio's index as a number
    ("lse[b] = log(exp(x[b,k]))", "log(sum[k](…))"),  # Tullio's finaliser log <| exp(x[b,k])
]


@pytest.mark.parametrize("text, advice", WARNED)
def test_warned_with_advice(text: str, advice: str) -> None:
    with pytest.warns(ig.IndexgradWarning) as w:
        ig.compile(text)
    assert any(advice in str(m.message) for m in w)


# Hessian-vector products of Σ sin(value), against symmetric differences of the gradient
HVP = [
    "einsum iijj->ij", "same tensor ab,bc,ca->", "axes of A[i+3-j]", "finaliser of a symmetric part",
    "wrapped 2-d correlation", "max pooling", "group normalization", "labels by arithmetic",
]  # fmt: skip


@pytest.mark.parametrize("name", HVP)
def test_hvp(name: str) -> None:
    """A second derivative through diagonals, a factor times 0, wraps, pooling and labels."""
    c = BY_NAME[name]
    rank = np.ndim(c.value(**c.inputs))
    idx = ",".join(f"q{k}" for k in range(rank))
    out = ig.compile(c.src).program.defined()[-1]
    total = f"sum[{idx}](sin({out}[{idx}]))" if rank else f"sin({out})"
    model = ig.compile(f"{c.src}\nloss_ = {total}")
    rng = np.random.default_rng(0)
    v = {k: rng.standard_normal(c.inputs[k].shape) for k in floats(c)}
    hv = model.hvp(model.forward(**c.inputs), "loss_", v)
    h = 1e-6
    up, down = ({**c.inputs, **{k: c.inputs[k] + s * h * d for k, d in v.items()}} for s in (1, -1))
    gu, gd = (model.backward(model.forward(**a), loss="loss_") for a in (up, down))
    for k in v:
        want = (gu[k] - gd[k]) / (2 * h)
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(hv[k], want, rtol=1e-5, atol=1e-5 * scale, err_msg=f"d/d{k}")
