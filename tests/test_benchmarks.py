"""The benchmark harness's pieces at tiny sizes: every implementation's check, a worker's JSON, the figures.

Nothing here is timed against anything: speed lives in benchmarks/ (make bench).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import per_step  # noqa: E402
import run as bench_run  # noqa: E402
import worker  # noqa: E402
import workloads as W  # noqa: E402

EVERY = [*W.MAIN_KEYS, *W.OTHER_KEYS, W.PEAK_KEY]


@pytest.mark.parametrize("key", EVERY)
def test_indexgrad_passes_its_check_at_tiny_sizes(key):
    w = W.build(key, {"indexgrad"}, tiny=True)
    assert set(w.impls) == ({"numpy"} if key == W.PEAK_KEY else {"numpy", "indexgrad"})
    for name in w.impls:
        seconds, why = worker.first_call(w, name)
        assert seconds is not None and why is None
    assert w.flops > 0


@pytest.mark.parametrize("peer", ["torch", "jax"])
def test_the_transformer_peers_pass_their_checks(peer):
    """The newest workload's PyTorch and JAX steps (make bench checks every one before timing it)."""
    pytest.importorskip(peer)
    w = W.build("transformer", {peer}, tiny=True)
    seconds, _ = worker.first_call(w, peer)
    assert seconds is not None


def test_the_check_fails_on_a_wrong_gradient():
    w = W.build("mlp_small", {"indexgrad"}, tiny=True)
    right = w.impls["indexgrad"].step

    def wrong():
        loss, grads = right()
        return loss, {**grads, "B2": 1.01 * grads["B2"]}

    w.impls["indexgrad"].step = wrong
    with pytest.raises(AssertionError, match="gradient of B2"):
        worker.first_call(w, "indexgrad")


def test_transformer_hand_gradient_matches_finite_differences():
    """The hand-written transformer step, the reference for the others, in float64 against
    symmetric differences along a random direction."""
    from transformer import transformer_arrays, transformer_hand

    a = {k: v.astype(np.float64) for k, v in transformer_arrays(2, 3, 4, 2, 5).items()}
    order = ["x", "M", "T", "Q", "K", "V", "O", "W1", "B1", "W2", "B2", "G1", "S1", "G2", "S2"]
    _, grads = transformer_hand(*(a[k].copy() for k in order))
    rng = np.random.default_rng(0)
    for name in ("x", "Q", "O", "W1", "G1", "S2"):
        d = rng.standard_normal(a[name].shape)
        eps = 1e-6
        loss = {}
        for sign in (1, -1):
            b = {k: v.copy() for k, v in a.items()}
            b[name] = b[name] + sign * eps * d
            loss[sign] = transformer_hand(*(b[k] for k in order))[0]
        numeric = (loss[1] - loss[-1]) / (2 * eps)
        assert np.isclose(np.vdot(grads[name], d), numeric, rtol=1e-6, atol=1e-8), name


def spawn_worker(spec):
    p = subprocess.run(
        [sys.executable, str(BENCH / "worker.py"), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def two_calls(workload: str, impl: str) -> dict:
    """A worker's order: one implementation of a tiny workload, checked, then timed twice."""
    return {"kind": "block", "workload": workload, "impl": impl, "tiny": True,
            "seconds": 0, "min_reps": 2, "max_reps": 2, "warmup": 1, "warmup_s": 0}  # fmt: skip


def test_a_block_worker_prints_its_timings_as_json():
    got = spawn_worker(two_calls("mlp_small", "indexgrad"))
    assert got["workload"] == "mlp_small" and got["impl"] == "indexgrad"
    assert got["checked"] is True
    assert len(got["times_s"]) == 2 and all(t > 0 for t in got["times_s"])
    assert got["flops"] > 0 and "MLP" in got["title"]


# the worker's block in this process (its JSON on stdout is the test above's): in a process of its
# own, each would import torch or jax again, ~2 s
def test_the_auto_backend_is_checked_like_the_others():
    got = worker.block({**worker.DEFAULTS, **two_calls("conv_xwB", "indexgrad-auto")})
    assert got["checked"] is True and len(got["times_s"]) == 2


def test_a_backend_that_is_not_there_is_skipped_with_its_reason():
    got = worker.block({**worker.DEFAULTS, **two_calls("chain_square", "indexgrad-jax")})
    assert got.get("checked") is True or "jax" in got["skipped"]


def blocks(*medians_by_round):
    return {
        "blocks": [
            {"round": r, "median_s": m, "mean_s": m, "min_s": m / 2} for r, m in enumerate(medians_by_round)
        ]
    }


def test_the_figure_is_the_best_block_and_ratios_go_round_by_round():
    blocked = {
        "mlp_small": {"title": "t", "flops": 10**9, "impls": {
            "indexgrad": blocks(2.0, 1.1, 1.5),
            "numpy": blocks(1.2, 1.0, 1.4),
            "torch": blocks(3.0, 0.9, 1.0),
            "indexgrad-torch": {"skipped": "not available"},
        }},
        W.PEAK_KEY: {"title": "mm", "flops": 10**9,
                     "impls": {"numpy": blocks(0.5, 0.25), "torch": blocks(0.4, 0.5)}},
    }  # fmt: skip
    s = bench_run.summarize(blocked)["mlp_small"]
    # the machine's peak is numpy's 4 GFLOP/s; the MLP's 1 GFLOP took indexgrad 1.1 s
    assert s["figures"]["indexgrad"] == {
        "s": 1.1, "mean_s": 1.1, "lo_s": 1.1, "hi_s": 2.0, "rounds": 3, "floor_s": 0.55,
        "peak": pytest.approx(1 / 1.1 / 4),
    }  # fmt: skip
    vs = s["vs_peer"]
    assert (vs["top"], vs["bottom"]) == ("indexgrad", "torch")
    assert vs["ratio"] == pytest.approx(1.1 / 0.9) and vs["met"] is False
    # round by round: 2.0/1.2, 1.1/0.9, 1.5/1.0
    assert (vs["round_lo"], vs["round_hi"]) == (pytest.approx(1.1 / 0.9), pytest.approx(2.0 / 1.2))
    assert s["numpy_vs_hand"]["ratio"] == pytest.approx(1.1)
    assert s["skipped"] == {"indexgrad-torch": "not available"} and s["error"] == {}
    text = bench_run.report({"summary": bench_run.summarize(blocked), "impls": list(W.IMPLS),
                             "args": {"rounds": 3}})  # fmt: skip
    assert "≤ 1.00 NO" in text and "not available" in text and "| mlp_small | 23% " in text


def test_per_step_times_every_step_of_both_plans(capsys):
    assert per_step.main(["--only", "mlp_small", "--tiny", "--reps", "2"]) == 0
    out = capsys.readouterr().out
    assert "forward plan: 12 steps" in out and "backward plan:" in out
    assert "W1.grad[d,h] += " in out and "ratio indexgrad / hand numpy" in out
    assert per_step.main(["--only", "mlp_small", "--tiny", "--reps", "2", "--backend", "torch"]) == 0
    assert "ratio indexgrad / PyTorch eager" in capsys.readouterr().out
