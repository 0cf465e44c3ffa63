"""The torch backend against the numpy backend on one program: forward, backward, jvp and hvp.

`assert_backends_agree` runs a program on both and compares every value each returns: float64
within a relative 1e-12 (per entry, or of the array's largest finite entry, at least 1), the same
dtypes, the same NaNs and infinities; where numpy refuses with an IndexgradError, torch must too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

import indexgrad as ig

RTOL = 1e-12
torch.set_num_threads(1)  # the tests' tensors are small; threads would only contend


def assert_close(got: Any, want: Any, what: str) -> None:
    got = got.numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, numpy's {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, numpy's {want.dtype}"
    if want.dtype.kind not in "fc":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    finite = np.abs(want[np.isfinite(want)])
    scale = float(finite.max()) if finite.size else 0.0
    # absolute: relative to the array's largest entry, or 1 (a sum that cancels to ~1e-16 differs
    # between summation orders in its every bit)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * max(scale, 1.0), err_msg=what)


def tensors(arrays: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()}


def assert_backends_agree(
    program: ig.Program | str,
    arrays: Mapping[str, np.ndarray],
    *,
    seed: Mapping[str, np.ndarray] | None = None,
    rng: np.random.Generator | None = None,
) -> str:
    """Run the program on numpy and on torch; every result must agree. Returns how far it got
    ("forward" when the arrays are refused, or the output was not finite, else "hvp" / "jvp")."""
    rng = rng or np.random.default_rng(0)
    mn, mt = ig.compile(program), ig.compile(program, backend="torch")
    vn, vt = both(lambda: mn.forward(**arrays), lambda: mt.forward(**tensors(arrays)))
    if vn is None:
        return "refused"
    assert set(vt) == set(vn)
    for k in vn:
        assert_close(vt[k], vn[k], f"forward {k}")
    defined = mn.program.defined()
    if not defined:
        return "forward"
    out = defined[-1]
    value = np.asarray(vn[out])
    if not np.all(np.isfinite(value)):
        return "forward"
    if seed is None:
        seed = {out: rng.standard_normal(value.shape)}
    gn, gt = both(lambda: mn.backward(vn, seed=seed), lambda: mt.backward(vt, seed=tensors(seed)))
    tan = {n: rng.standard_normal(np.shape(arrays[n])) for n in mn.inputs}
    jn, jt = both(lambda: mn.jvp(vn, tan), lambda: mt.jvp(vt, tensors(tan)))
    for what, n_, t_ in (("backward", gn, gt), ("jvp", jn, jt)):
        if n_ is not None:
            assert set(t_) == set(n_)
            for k in n_:
                assert_close(t_[k], n_[k], f"{what} {k}")
    if value.ndim:
        return "jvp"
    hn, ht = both(lambda: mn.hvp(vn, loss=out, v=tan), lambda: mt.hvp(vt, loss=out, v=tensors(tan)))
    for k in hn or {}:
        assert_close(ht[k], hn[k], f"hvp {k}")
    return "hvp"


def both(on_numpy: Callable[[], Any], on_torch: Callable[[], Any]) -> tuple[Any, Any]:
    """Both calls' results, or (None, None) when both raise the same IndexgradError."""
    try:
        want = on_numpy()
    except ig.IndexgradError as e:
        try:
            on_torch()
        except ig.IndexgradError as f:
            assert f.message == e.message, (f.message, e.message)
            return None, None
        raise AssertionError(f"numpy refuses ({e.message}), torch does not") from None
    return want, on_torch()
