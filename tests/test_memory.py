"""The memory guard: a statement whose result or largest intermediate would pass the limit is a
located IndexgradError naming the statement and the size, before anything is allocated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import indexgrad as ig

OUTER = "input x[i], z[j]\ny[i,j] = x[i] z[j]\nloss = sum[i,j](y[i,j]^2)\n"


@pytest.fixture
def limit():
    """Set a limit for one test and restore the default afterwards."""
    yield ig.set_memory_limit
    ig.set_memory_limit(None)


def test_a_result_over_the_limit_is_refused_at_its_statement(limit) -> None:
    limit(50_000)
    model = ig.compile(ig.parse(OUTER, "outer.idx"))
    with pytest.raises(ig.IndexgradError) as e:
        model.forward(x=np.ones(100), z=np.ones(100))  # y is 100 x 100 float64 = 80 KB
    err = e.value
    assert (err.filename, err.line, err.column) == ("outer.idx", 2, 1)
    assert "78.1 KiB" in err.message and "48.8 KiB" in err.message  # the need and the limit
    assert "'y'" in err.message and "memory limit" in err.message
    assert "set_memory_limit" in err.message  # it says how to raise the limit


def test_under_the_limit_runs_and_float32_halves_the_need(limit) -> None:
    limit(50_000)
    model = ig.compile(ig.parse(OUTER))
    vals = model.forward(x=np.ones(70, np.float32), z=np.ones(70, np.float32))  # 19.6 KB
    assert vals["y"].shape == (70, 70) and float(vals["loss"]) == 70 * 70


def test_backward_statements_are_guarded_too(limit) -> None:
    """The forward pass fits; the gradient of W (1000 x 1000) does not."""
    model = ig.compile(ig.parse("input x[j], W[j,i]\ny[i] = x[j] W[j,i]\nloss = sum[i](y[i])\n"))
    rng = np.random.default_rng(0)
    vals = model.forward(x=rng.standard_normal(1000), W=rng.standard_normal((1000, 3)))
    limit(20_000)
    vals = model.forward(x=rng.standard_normal(1000), W=rng.standard_normal((1000, 3)))  # 24 KB inputs
    with pytest.raises(ig.IndexgradError, match="memory limit"):
        model.backward(vals, loss="loss", wrt=["W"])  # W.grad is 1000 x 3 float64 = 24 KB
    assert model.backward(vals, loss="loss", wrt=["x"])["x"].shape == (1000,)  # 8 KB fits


def test_limit_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INDEXGRAD_MEMORY_LIMIT", "5e4")
    assert ig.memory_limit() == 50_000
    with pytest.raises(ig.IndexgradError, match="memory limit"):
        ig.compile(ig.parse(OUTER)).forward(x=np.ones(100), z=np.ones(100))
    monkeypatch.setenv("INDEXGRAD_MEMORY_LIMIT", "lots")
    with pytest.raises(ig.IndexgradError, match="INDEXGRAD_MEMORY_LIMIT must be a positive number of bytes"):
        ig.memory_limit()


def test_the_default_limit_is_most_of_the_available_memory() -> None:
    assert 64 << 20 < ig.memory_limit() < 1 << 50


def test_the_cli_reports_the_guard_as_a_user_error(tmp_path: Path) -> None:
    """A program asking for a 10^6 x 10^6 array: exit 2, the place, no traceback, no allocation."""
    path = tmp_path / "huge.idx"
    path.write_text(OUTER)
    done = subprocess.run(
        [sys.executable, "-m", "indexgrad", "check", str(path), "--dims", "i=1000000,j=1000000"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"{path}:2:1: error:") and "memory limit" in done.stderr
    assert "Traceback" not in done.stderr
