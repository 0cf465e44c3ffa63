"""backend="auto": the plan of each signature run by the backend its timing found fastest.

The backends here are stand-ins (numpy underneath, arrays boxed so that conversions show) that
advance a clock of the test's own by a fixed cost per run: the choice is checked, nothing is timed.
"""

from __future__ import annotations

import math
import sys
import types
from typing import Any

import numpy as np
import pytest
from oracles import rng

import indexgrad as ig
from indexgrad import backends
from indexgrad.backends import auto
from indexgrad.backends.numpy import NumpyBackend, NumpyExecutor
from indexgrad.cli import main

MLP = """\
param W[h,d], V[k,h]
input x[b,d]
u[b,h] = x[b,d] W[h,d]
z[b,h] = relu(u[b,h])
y[b,k] = z[b,h] V[k,h]
loss = 0.5 sum[b,k](y[b,k]^2)
"""


def arrays() -> dict[str, np.ndarray]:
    r = rng(3)
    return {"W": r.standard_normal((5, 4)), "V": r.standard_normal((2, 5)), "x": r.standard_normal((6, 4))}


NUMPY_RUN = NumpyExecutor.run  # the stand-ins' own, before the fixture makes numpy's runs cost


class Boxed:
    """A stand-in library's array: forward() must never hand one out."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class StandIn(NumpyBackend):
    """numpy behind boxed arrays, each run costing `cost` seconds of the test's clock; `refuse`
    makes planning fail as a backend that cannot run the program does."""

    array_types = (Boxed,)

    def __init__(self, name: str, cost: float, clock: Clock, refuse: str = "") -> None:
        self.name, self.cost, self.clock, self.refuse = name, cost, clock, refuse
        self.runs = 0

    def executor(self, plan: ig.Plan) -> Any:
        if self.refuse:
            raise ig.IndexgradError(self.refuse)
        inner, backend = NumpyExecutor(plan), self

        class Run:
            def __init__(self) -> None:
                self.plan = plan

            def run(self, env: dict[str, Any], check_finite: bool = False) -> dict[str, Any]:
                assert all(isinstance(v, Boxed) for v in env.values())
                backend.clock.now += backend.cost
                backend.runs += 1
                out = NUMPY_RUN(inner, {n: v.a for n, v in env.items()}, check_finite)
                return {n: Boxed(v) for n, v in out.items()}

        return Run()

    def asarray(self, value: Any, dtype: Any = None) -> Boxed:
        return Boxed(np.asarray(value, dtype))

    def to_numpy(self, a: Boxed) -> np.ndarray:
        return a.a


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> dict[str, StandIn]:
    """In place of the real libraries: `fast`, `slow` and `picky` (which refuses every program);
    numpy stays, each run costing 0.5 s."""
    clock = Clock()
    def run(self: NumpyExecutor, env: dict[str, Any], check_finite: bool = False) -> dict[str, Any]:
        clock.now += 0.5
        return NUMPY_RUN(self, env, check_finite)

    monkeypatch.setattr(NumpyExecutor, "run", run)
    made = {
        "slow": StandIn("slow", 1.0, clock),
        "fast": StandIn("fast", 2.0**-10, clock),
        "picky": StandIn("picky", 0.0, clock, refuse="the picky backend cannot run relu"),
    }
    known = {"numpy": backends._KNOWN["numpy"]}
    for name, backend in made.items():
        module = types.ModuleType(f"standin_{name}")
        module.make_backend = lambda b=backend: b  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, module.__name__, module)
        known[name] = (module.__name__, "numpy", "")
    known["absent"] = ("standin_absent", "no_such_package_anywhere", "pip install absent")
    monkeypatch.setattr(backends, "_KNOWN", known)
    monkeypatch.setattr(backends, "_LOADED", {})
    monkeypatch.setattr(auto, "clock", clock)
    return made


def test_auto_runs_each_signature_on_the_backend_timed_fastest(stand_ins: dict[str, StandIn]) -> None:
    model = ig.compile(MLP, backend="auto")
    plain = ig.compile(MLP)
    vals = model.forward(**arrays())
    expected = plain.forward(**arrays())
    assert all(type(v) is np.ndarray for v in vals.values())
    for n in expected:
        np.testing.assert_array_equal(vals[n], expected[n])
    grads = model.backward(vals)
    for n, g in plain.backward(expected).items():
        assert type(grads[n]) is np.ndarray
        np.testing.assert_array_equal(grads[n], g)
    plan = model.plan({n: a.shape for n, a in arrays().items()}, mode="backward")
    timed = [(n, t) for n, t, why in plan.auto if not why]
    assert timed == [("fast", 2.0**-10), ("numpy", 0.5), ("slow", 1.0)]
    left_out = {n: why for n, _, why in plan.auto if why}
    assert left_out["picky"] == "the picky backend cannot run relu"
    assert "no_such_package_anywhere" in left_out["absent"]
    assert plan.backend == "fast"
    line = str(plan).splitlines()[1]
    assert line.startswith("backend auto chose fast (per run: fast 0.977 ms, numpy 500 ms, slow 1e+03 ms)")


def test_value_and_grad_on_auto_runs_the_plans_chosen_for_forward_and_backward(
    stand_ins: dict[str, StandIn],
) -> None:
    model, plain = ig.compile(MLP, backend="auto"), ig.compile(MLP)
    values, grads = model.value_and_grad(arrays(), outputs="loss, y")
    expected = plain.forward(**arrays())
    for n in ("loss", "y"):
        np.testing.assert_array_equal(values[n], expected[n])
    for n, g in plain.backward(expected).items():
        assert type(grads[n]) is np.ndarray
        np.testing.assert_array_equal(grads[n], g)
    runs = stand_ins["fast"].runs
    model.value_and_grad(arrays(), outputs="loss, y")
    assert stand_ins["fast"].runs == runs + 2  # each plan on the backend its timing chose, no more timing


def test_auto_measures_once_per_signature(stand_ins: dict[str, StandIn]) -> None:
    model = ig.compile(MLP, backend="auto")
    for _ in range(3):
        model.forward(**arrays())
    fast, slow = stand_ins["fast"], stand_ins["slow"]
    assert slow.runs == 1 + auto.RUNS * auto.ROUNDS  # warm-up, then timed runs; never chosen afterwards
    after_choice = fast.runs
    model.forward(**arrays())
    assert fast.runs == after_choice + 1
    small = {n: a[:2] if n == "x" else a for n, a in arrays().items()}
    model.forward(**small)  # a new signature is measured anew
    assert slow.runs == 2 * (1 + auto.RUNS * auto.ROUNDS)


def test_each_block_runs_its_share_of_the_budget(
    stand_ins: dict[str, StandIn], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend's first runs after another's may find that one's threads still busy: a block of
    runs lasts BUDGET_S / ROUNDS, or RUNS runs when they take longer."""
    monkeypatch.setattr(auto, "known", lambda: ["slow", "fast"])  # numpy only at the model's edge
    fast, slow = stand_ins["fast"], stand_ins["slow"]
    ig.compile(MLP, backend="auto").forward(**arrays())
    per_block = math.ceil(auto.BUDGET_S / auto.ROUNDS / fast.cost)
    assert fast.runs == 1 + auto.ROUNDS * per_block + 1  # warm-up, blocks, the call itself
    assert slow.runs == 1 + auto.ROUNDS * auto.RUNS


# costs in powers of two, so that the test's clock adds them exactly
WITHIN, BEYOND = 0.875, 0.75  # shares of the preferred backend's time, either side of the margin
assert BEYOND < auto.MARGIN < WITHIN


def test_auto_leaves_numpy_only_for_a_backend_clearly_faster(stand_ins: dict[str, StandIn]) -> None:
    stand_ins["fast"].cost = 0.5 * WITHIN  # faster than numpy's 0.5 s, but within the margin
    model = ig.compile(MLP, backend="auto")
    model.forward(**arrays())
    plan = model.plan({n: a.shape for n, a in arrays().items()})
    assert plan.backend == "numpy"
    assert [(n, t) for n, t, why in plan.auto if not why][:2] == [("numpy", 0.5), ("fast", 0.5 * WITHIN)]
    line = str(plan).splitlines()[1]
    assert line.startswith("backend auto chose numpy (per run: numpy 500 ms, fast 438 ms")


def test_a_models_later_plans_prefer_the_backend_its_last_plan_chose(stand_ins: dict[str, StandIn]) -> None:
    model = ig.compile(MLP, backend="auto")
    vals = model.forward(**arrays())  # fast: far ahead of numpy
    stand_ins["fast"].cost, stand_ins["slow"].cost = 0.5, 0.5 * WITHIN  # slow fastest, within the margin
    grads = model.backward(vals)
    plan = model.plan({n: a.shape for n, a in arrays().items()}, mode="backward")
    assert plan.backend == "fast" and plan.auto[1][0] == "slow"
    for n, g in ig.compile(MLP).backward(vals).items():
        np.testing.assert_array_equal(grads[n], g)
    stand_ins["slow"].cost = 0.5 * BEYOND  # a new signature, and slow clearly ahead
    small = {n: a[:2] if n == "x" else a for n, a in arrays().items()}
    model.backward(model.forward(**small))
    assert model.plan({n: a.shape for n, a in small.items()}, mode="backward").backend == "slow"


def test_one_backend_that_runs_the_program_is_taken_untimed(
    stand_ins: dict[str, StandIn], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stand_ins["slow"], "refuse", "slow refuses too")
    monkeypatch.setattr(auto, "known", lambda: ["slow", "fast"])  # numpy only at the model's edge
    model = ig.compile(MLP, backend="auto")
    model.forward(**arrays())
    plan = model.plan({n: a.shape for n, a in arrays().items()})
    assert plan.auto[0] == ("fast", None, "")
    assert stand_ins["fast"].runs == 1  # the call itself


def test_when_every_backend_refuses_the_first_refusal_is_the_error(
    stand_ins: dict[str, StandIn], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auto, "known", lambda: ["slow", "fast"])  # numpy only at the model's edge
    for name in ("slow", "fast"):
        monkeypatch.setattr(stand_ins[name], "refuse", f"{name} refuses")
    with pytest.raises(ig.IndexgradError, match="slow refuses"):
        ig.compile(MLP, backend="auto").forward(**arrays())


def test_auto_with_numpy_alone_gives_numpys_results() -> None:
    model, plain = ig.compile(MLP, backend="auto"), ig.compile(MLP)
    vals, expected = model.forward(**arrays()), plain.forward(**arrays())
    for n, g in plain.backward(expected).items():
        np.testing.assert_array_equal(model.backward(vals)[n], g)
    plan = model.plan({n: a.shape for n, a in arrays().items()}, mode="backward")
    assert plan.auto[0][0] == plan.backend
    assert "backend auto chose" in str(plan)
    assert plan.to_json().count('"backend"') == 1 + len(plan.auto)


def test_auto_takes_no_device_or_dtype() -> None:
    with pytest.raises(ig.IndexgradError, match="name the backend"):
        ig.compile(MLP, backend="auto", device="cpu")


def test_indexgrad_plan_prints_autos_choice(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "mlp.idx"
    f.write_text(MLP)
    assert main(["plan", str(f), "--dims", "b=6,d=4,h=5,k=2", "--grad", "--backend", "auto"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("backend auto chose ")
