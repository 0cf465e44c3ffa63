"""A hostile or careless user (issue 25): long programs, huge or odd archives, interrupted and
piped commands, odd names, tails of sigmoid, badly scaled checks and escape sequences; each test
names the item of the issue it guards."""

from __future__ import annotations

import contextlib
import io
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import indexgrad as ig
from indexgrad import nodes
from indexgrad.cli import main as cli_main
from indexgrad.nodes import Call, Num, Product, Span, Sum, refs_in
from indexgrad.printer import format_program

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = str(Path(ig.__file__).resolve().parent)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(argv)
    return code, out.getvalue(), err.getvalue()


# ---- 1: parse, fmt and derive in time linear in the program's size -----------------------------


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of the terms and factors put into every Sum and Product node made while it is active."""
    count = {"terms": 0, "factors": 0}
    for cls, field in ((nodes.Sum, "terms"), (nodes.Product, "factors")):
        init = cls.__init__

        def counted(self, *args, _init=init, _field=field, **kwargs) -> None:  # type: ignore[no-untyped-def]
            _init(self, *args, **kwargs)
            count[_field] += len(getattr(self, _field))

        monkeypatch.setattr(cls, "__init__", counted)
    return count


def test_1_a_long_sum_is_read_in_one_pass(built: dict[str, int]) -> None:
    """Each further term of a chain used to copy the chain so far: n^2/2 terms for n."""
    n = 3000
    p = ig.parse("loss = " + " + ".join(f"x{k}" for k in range(n)) + " - y\n")
    assert len(p.statements[0].expr.terms) == n + 1
    assert built["terms"] <= 3 * n


def test_1_a_long_product_is_read_in_one_pass(built: dict[str, int]) -> None:
    n = 3000
    p = ig.parse("loss = " + " ".join(f"x{k}" for k in range(n)) + " / y\n")
    assert p.statements[0].expr.divide[-1] and len(p.statements[0].expr.factors) == n + 1
    assert built["factors"] <= 3 * n


def test_1_parentheses_still_group_a_chain() -> None:
    p = ig.parse("loss = a - (b - c) + d * (e f) g - -h\n")
    assert str(p) == "loss = a - (b - c) + d * (e f) g - -h\n"
    assert [type(t).__name__ for t in p.statements[0].expr.terms] == ["Ref", "Sum", "Product", "Neg"]


def test_1_the_derivative_of_a_long_product_has_linear_size() -> None:
    """The swap rule alone gives each of n factors a product of the n - 1 others: n^2 factors.
    A long product is contracted in runs, so the derived program has O(n) of them."""
    n = 2000
    p = ig.parse("loss = " + " ".join(f"x{k}" for k in range(n)) + "\n")
    back = ig.derive(p)
    factors = sum(len(refs_in(s.expr)) for s in back.statements)
    assert len(back.statements) >= n and factors <= 40 * n


def test_1_a_long_chain_of_matrices_is_right_forward_and_backward() -> None:
    """A 24-factor matrix chain (contracted in runs) against numpy and HIPS autograd."""
    import autograd
    import autograd.numpy as anp

    k = 24
    text = "loss = " + " ".join(f"A{m}[i{m},i{m + 1}]" for m in range(k)) + "\n"
    rng = np.random.default_rng(1)
    arrays = {f"A{m}": rng.standard_normal((2 + m % 3, 2 + (m + 1) % 3)) / 2 for m in range(k)}
    model = ig.compile(text)
    vals = model.forward(**arrays)

    def oracle(mats):  # type: ignore[no-untyped-def]
        out = mats[0]
        for m in mats[1:]:
            out = anp.dot(out, m)
        return anp.sum(out)

    mats = [arrays[f"A{m}"] for m in range(k)]
    np.testing.assert_allclose(float(vals["loss"]), oracle(mats), rtol=1e-10)
    grads = model.backward(vals, loss="loss")
    want = autograd.grad(oracle)(mats)
    for m in range(k):
        np.testing.assert_allclose(grads[f"A{m}"], want[m], rtol=1e-9, atol=1e-12)


def lines_run(fn: Callable[[], object]) -> int:
    """How many lines of indexgrad's own code fn runs: a measure of work that a busy machine
    does not disturb, and that sees loops a profile of calls would not."""
    count = 0

    def local(frame, event, arg):  # type: ignore[no-untyped-def]
        nonlocal count
        count += event == "line"
        return local

    def calls(frame, event, arg):  # type: ignore[no-untyped-def]
        return local if frame.f_code.co_filename.startswith(PACKAGE) else None

    sys.settrace(calls)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def grows_linearly(work: Callable[[int], Callable[[], object]], n: int = 300) -> float:
    """The ratio of the lines run for 4n and for n: about 4 for linear work, 16 for quadratic."""
    small, large = work(n), work(4 * n)
    return lines_run(large) / lines_run(small)


def test_1_derive_names_many_temporaries_and_shapes_in_linear_time() -> None:
    """Each `loss.mean` temporary searched the names from `loss.mean2` up, and each input whose
    gradient broadcasts (`x.grad[i] += loss.grad / size[i]`) scanned the whole program."""

    def work(n: int) -> Callable[[], object]:
        p = ig.parse("loss = " + " + ".join(f"mean[i](x{k}[i])" for k in range(n)) + "\n")
        return lambda: ig.derive(p)

    assert grows_linearly(work) < 5


def test_1_derive_of_a_long_product_in_linear_time() -> None:
    def work(n: int) -> Callable[[], object]:
        p = ig.parse("loss = " + " ".join(f"x{k}" for k in range(n)) + "\n")
        return lambda: ig.derive(p)

    assert grows_linearly(work, 100) < 5


def test_1_fmt_places_many_comments_in_linear_time() -> None:
    """Each comment scanned every statement, and each placed one shifted a list."""
    s = ig.parse("y = x + 1\n").statements[0]

    def commented(n: int) -> nodes.Program:  # built, not parsed: only the printer is measured
        stmts = tuple(replace(s, span=Span(2 * k + 2, 1, 2 * k + 2, 10)) for k in range(n))
        source = "".join(f"# before {k}\ny = x + 1  # {k}\n" for k in range(n))
        return nodes.Program((), stmts, "many.idx", source)

    def work(n: int) -> Callable[[], object]:
        p = commented(n)
        return lambda: format_program(p, comments=True)

    assert grows_linearly(work) < 5
    lines = format_program(commented(3), comments=True).splitlines()
    assert lines[2:4] == ["# before 1", "y = x + 1  # 1"]


# ---- 14: sigmoid exact in both tails ----------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, xs, rtol",
    [
        (np.float32, [-20.0, -50.0, -87.0, 0.5, 30.0], 1e-6),
        (np.float64, [-40.0, -300.0, -700.0, 0.5, 40.0], 1e-14),
    ],
    ids=["float32", "float64"],
)
def test_14_sigmoid_keeps_its_negative_tail(dtype, xs: list[float], rtol: float) -> None:
    model = ig.compile("y[i] = sigmoid(x[i])\nloss = sum[i](-log(y[i]))")
    x = np.array(xs, dtype)
    vals = model.forward(x=x)
    exact = np.array([math.exp(v) / (1 + math.exp(v)) if v < 0 else 1 / (1 + math.exp(-v)) for v in xs])
    assert vals["y"].dtype == dtype
    np.testing.assert_allclose(vals["y"], exact, rtol=rtol)
    want = sum(-math.log(e) for e in exact)  # -log(sigmoid(-20)) is 20, not inf
    np.testing.assert_allclose(float(vals["loss"]), want, rtol=rtol)
    grad = model.backward(vals, loss="loss")["x"]  # -(1 - sigmoid(x))
    np.testing.assert_allclose(grad, -(1 - exact), rtol=rtol, atol=np.finfo(dtype).eps)


def test_14_sigmoid_after_a_contraction_keeps_its_tail() -> None:
    """A sigmoid applied in place to a product's result (the plan writes into the product's buffer)."""
    model = ig.compile("h[b,i] = sigmoid(x[b,j] W[j,i])\nloss = sum[b,i](-log(h[b,i]))")
    x = np.full((2, 3), -20.0, np.float32)
    loss = float(model.forward(x=x, W=np.eye(3, dtype=np.float32))["loss"])
    assert loss == pytest.approx(6 * 20.0, rel=1e-6)


# ---- 17: no raw control characters in echoed source lines --------------------------------------

HOSTILE_LINES = [
    "y = x \x1b]0;pwned\x07 + 1\n",  # retitles an xterm
    "y = x + q[ \x1b[2J\x1b[H\n",  # clears the screen, then an unclosed bracket
    "y = \u202ex + q[\n",  # a right-to-left override reorders the rest of the line
    "y = x \x9b2J + \x7f\n",  # the 8-bit CSI, and DEL
]


@pytest.mark.parametrize("text", HOSTILE_LINES, ids=["osc-title", "csi-clear", "bidi", "c1-del"])
def test_17_echoed_source_lines_show_control_characters_visibly(tmp_path: Path, text: str) -> None:
    import unicodedata

    path = tmp_path / "hostile.idx"
    path.write_text(text, encoding="utf-8")
    code, out, err = run_cli(["fmt", str(path)])
    assert code == 2 and "Traceback" not in err
    head, line, caret = err.rstrip("\n").split("\n")
    assert all(unicodedata.category(ch) not in ("Cc", "Cf") for ch in err.replace("\n", ""))
    column = int(head.split(":")[2])
    assert len(line) == len(text.rstrip("\n")) + 2  # one visible character per hidden one
    assert caret.index("^") == column + 1  # the caret still points under its column


# ---- 5: Ctrl-C at any moment: status 130, one line, no traceback ------------------------------

COMMAND = Path(sys.executable).with_name("indexgrad")  # the console script, as a user runs it


def _wait_for_numpy(proc: subprocess.Popen, limit: float = 60.0) -> bool:
    """Wait until the child maps numpy's C core: its imports are under way (so indexgrad's own
    code runs). False if it ended first."""
    maps = Path(f"/proc/{proc.pid}/maps")
    end = time.monotonic() + limit
    while time.monotonic() < end and proc.poll() is None:
        try:
            if "_multiarray_umath" in maps.read_text():
                return True
        except OSError:
            return False
        time.sleep(0.001)
    return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the imports")
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.5])
@pytest.mark.parametrize("how", ["script", "module"])
def test_5_ctrl_c_at_any_moment_exits_130_quietly(tmp_path: Path, how: str, delay: float) -> None:
    """SIGINT while numpy loads (delay 0), while the program is read, and while it trains."""
    if how == "script" and not COMMAND.exists():
        pytest.skip("the console script is not installed")
    argv = [str(COMMAND)] if how == "script" else [sys.executable, "-m", "indexgrad"]
    argv += ["train", str(ROOT / "examples" / "mlp.idx"), "--epochs", "50", "--save", str(tmp_path / "c.npz")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for_numpy(proc), proc.communicate()
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.splitlines()[-1] == "indexgrad: interrupted", err
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary checkpoint left behind


# ---- 11: a closed pipe does not stop the work ---------------------------------------------------


def _run_into_closed_pipe(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run the command with its stdout a pipe whose reader has already gone (`... | head -0`)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(argv, stdout=write, stderr=subprocess.PIPE, text=True, cwd=cwd, timeout=300)
    finally:
        os.close(write)


def test_11_run_into_a_closed_pipe_still_writes_out(tmp_path: Path) -> None:
    (tmp_path / "p.idx").write_text("y[i] = 2 x[i]\nloss = sum[i](y[i])\n")
    np.savez(tmp_path / "in.npz", x=np.arange(3.0))
    done = _run_into_closed_pipe(
        [sys.executable, "-m", "indexgrad", "run", "p.idx", "--inputs", "in.npz", "--out", "o.npz"], tmp_path
    )
    assert done.returncode == 0 and done.stderr == ""
    with np.load(tmp_path / "o.npz") as z:
        np.testing.assert_array_equal(z["y"], [0.0, 2.0, 4.0])


def test_11_train_into_a_closed_pipe_trains_every_epoch_and_plots(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "indexgrad", "train", str(ROOT / "examples" / "mlp.idx")]
    argv += ["--epochs", "2", "--hidden", "8", "--save", "c.npz", "--plot", "p.png"]
    done = _run_into_closed_pipe(argv, tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    with np.load(tmp_path / "c.npz") as z:
        assert int(z["epoch"]) == 2


# ---- 7, 8, 9, 12: output files ------------------------------------------------------------------

TWICE = "file[i] = 2 x[i]\nallow_pickle[i] = 3 x[i]\nloss = sum[i](file[i] allow_pickle[i])\n"


@pytest.fixture
def twice(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "twice.idx").write_text(TWICE)
    np.savez(tmp_path / "in.npz", x=np.arange(3.0))
    return tmp_path / "twice.idx", tmp_path / "in.npz"


def test_7_out_stores_tensors_named_like_savez_keywords(tmp_path: Path, twice: tuple[Path, Path]) -> None:
    """np.savez(file, **arrays) took `file` as its own argument and dropped `allow_pickle`."""
    prog, inputs = twice
    out = tmp_path / "o.npz"
    code, _, err = run_cli(["run", str(prog), "--inputs", str(inputs), "--out", str(out)])
    assert code == 0, err
    with np.load(out, allow_pickle=False) as z:
        assert sorted(z.files) == ["allow_pickle", "file", "loss"]
        np.testing.assert_array_equal(z["file"], [0.0, 2.0, 4.0])
        np.testing.assert_array_equal(z["allow_pickle"], [0.0, 3.0, 6.0])
        assert float(z["loss"]) == 2 * 3 * (1 + 4)


@pytest.mark.parametrize("name", ["", "a/b", "../up", "back\\slash", "nul\0"])
def test_7_a_name_no_npz_member_can_have_is_refused(tmp_path: Path, name: str) -> None:
    from indexgrad.files import save_npz_atomic

    with pytest.raises(ig.IndexgradError, match="cannot store an array named"):
        save_npz_atomic(tmp_path / "o.npz", {"fine": np.zeros(1), name: np.ones(1)})
    assert list(tmp_path.iterdir()) == []


def _limited(nbytes: int):  # type: ignore[no-untyped-def]
    """A preexec_fn giving the child a file size limit (RLIMIT_FSIZE): a longer write fails."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))


def test_8_a_failed_plot_keeps_the_old_image(tmp_path: Path) -> None:
    """Under a file size limit the new plot cannot be written whole; the old one stays as it was."""
    plot = tmp_path / "p.png"
    argv = [sys.executable, "-m", "indexgrad", "train", str(ROOT / "examples" / "mlp.idx"), "--epochs", "1"]
    argv += ["--hidden", "8", "--plot", str(plot)]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    old = plot.read_bytes()
    assert len(old) > 4096
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300, preexec_fn=_limited(4096))
    assert again.returncode == 2 and f"cannot write {plot}: File too large" in again.stderr, again.stderr
    assert plot.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]


@pytest.fixture
def dying_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `dot` on PATH that writes half an SVG, then is killed by SIGXFSZ (a file size limit)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dot = bin_dir / "dot"
    dot.write_text('#!/bin/sh\nout="$3"\nprintf "<svg><g>" > "$out"\nkill -XFSZ $$\n')
    dot.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return dot


def test_8_a_killed_render_keeps_the_old_drawing_and_says_why(tmp_path: Path, dying_dot: Path) -> None:
    svg = tmp_path / "g.svg"
    svg.write_text("<svg>the good one</svg>")
    code, _, err = run_cli(["graph", str(ROOT / "examples" / "affine.idx"), "--render", str(svg)])
    assert code == 2 and "killed by SIGXFSZ (file size limit exceeded)" in err, err
    assert "exit status -" not in err
    assert svg.read_text() == "<svg>the good one</svg>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "g.svg"]


def test_9_replacing_an_output_keeps_its_permission_bits(tmp_path: Path, twice: tuple[Path, Path]) -> None:
    """The atomic replace wrote a new file with 0666 less the umask: a private file became world-readable."""
    prog, inputs = twice
    out = tmp_path / "o.npz"
    for mode in (0o600, 0o640, 0o604):
        out.write_bytes(b"old")
        out.chmod(mode)
        code, _, err = run_cli(["run", str(prog), "--inputs", str(inputs), "--out", str(out)])
        assert code == 0, err
        assert out.stat().st_mode & 0o777 == mode
        assert np.load(out)["file"].shape == (3,)


def test_9_a_checkpoint_keeps_its_permission_bits(tmp_path: Path) -> None:
    ckpt = tmp_path / "c.npz"
    argv = ["train", str(ROOT / "examples" / "mlp.idx"), "--hidden", "8", "--save", str(ckpt)]
    assert run_cli([*argv, "--epochs", "1"])[0] == 0
    ckpt.chmod(0o600)
    assert run_cli([*argv, "--epochs", "2", "--resume", str(ckpt)])[0] == 0
    assert ckpt.stat().st_mode & 0o777 == 0o600 and int(np.load(ckpt)["epoch"]) == 2


def _dead_pid() -> int:
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except OSError:
            pass
        pid -= 1


def test_12_temporaries_of_killed_writers_are_removed_at_the_next_write(
    tmp_path: Path, twice: tuple[Path, Path]
) -> None:
    prog, inputs = twice
    out = tmp_path / "o.npz"
    stale = tmp_path / f".o.npz.{_dead_pid()}.k1ll3d.tmp"  # a writer killed before its rename
    live = tmp_path / f".o.npz.{os.getpid()}.wr1t1ng.tmp"  # a writer still at work
    other = tmp_path / f".other.npz.{_dead_pid()}.zzz.tmp"  # another file's: not this write's business
    for p in (stale, live, other):
        p.write_bytes(b"PK half")
    code, _, err = run_cli(["run", str(prog), "--inputs", str(inputs), "--out", str(out)])
    assert code == 0, err
    assert not stale.exists() and live.exists() and other.exists()


def test_12_save_refuses_to_start_over_an_existing_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "c.npz"
    argv = ["train", str(ROOT / "examples" / "mlp.idx"), "--hidden", "8", "--save", str(ckpt)]
    assert run_cli([*argv, "--epochs", "2"])[0] == 0
    before = ckpt.read_bytes()
    code, _, err = run_cli([*argv, "--epochs", "1"])
    assert code == 2 and "already exists" in err and f"--resume {ckpt}" in err and "--force" in err, err
    assert ckpt.read_bytes() == before
    assert run_cli([*argv, "--epochs", "3", "--resume", str(ckpt)])[0] == 0  # resuming it is fine
    assert run_cli([*argv, "--epochs", "1", "--force"])[0] == 0  # and so is saying so
    assert int(np.load(ckpt)["epoch"]) == 1


# ---- 10: checkpoints without held-out history; checkpoints that diverged ------------------------

MLP_TRAIN = ["train", str(ROOT / "examples" / "mlp.idx"), "--hidden", "8"]


def _rewrite_checkpoint(path: Path, **changes: np.ndarray) -> None:
    from indexgrad.files import save_npz_atomic

    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    save_npz_atomic(path, {**arrays, **changes})


@pytest.fixture
def no_valid(tmp_path: Path) -> Path:
    """A 2-epoch checkpoint of `train` as fit(..., checkpoint=) writes it without valid=."""
    ckpt = tmp_path / "c.npz"
    assert run_cli([*MLP_TRAIN, "--epochs", "2", "--save", str(ckpt)])[0] == 0
    empty = np.zeros(0)
    _rewrite_checkpoint(ckpt, **{"history.valid_loss": empty, "history.valid_metric": empty})
    return ckpt


def test_10_a_checkpoint_without_held_out_history_plots_and_resumes(tmp_path: Path, no_valid: Path) -> None:
    from indexgrad.train import load_checkpoint

    code, out, err = run_cli(
        [*MLP_TRAIN, "--epochs", "2", "--resume", str(no_valid), "--plot", str(tmp_path / "a.png")]
    )
    assert code == 0 and "nothing to train" in out and "test accuracy" in out, err
    assert (tmp_path / "a.png").stat().st_size > 1000
    code, out, err = run_cli(
        [
            *MLP_TRAIN,
            "--epochs",
            "3",
            "--resume",
            str(no_valid),
            "--save",
            str(no_valid),
            "--plot",
            str(tmp_path / "b.png"),
        ]
    )
    assert code == 0 and "epoch 3/3" in out and "test loss" in out, err
    history = load_checkpoint(no_valid).history  # its own loader takes what it wrote
    assert len(history.loss) == len(history.valid_loss) == len(history.valid_metric) == 3
    assert np.isnan(history.valid_loss[:2]).all() and np.isfinite(history.valid_loss[2])
    assert run_cli([*MLP_TRAIN, "--epochs", "4", "--resume", str(no_valid), "--save", str(no_valid)])[0] == 0


def test_10_resuming_without_held_out_data_keeps_the_history_aligned(tmp_path: Path) -> None:
    from indexgrad.train import fit, load_checkpoint

    model = ig.compile(ROOT / "examples" / "mlp.idx")
    rng = np.random.default_rng(0)
    params = {
        "W1": rng.standard_normal((5, 4)),
        "B1": np.zeros(4),
        "W2": rng.standard_normal((4, 3)),
        "B2": np.zeros(3),
    }
    data = {"x": rng.standard_normal((7, 5)), "Y": np.eye(3)[rng.integers(0, 3, 7)]}
    ckpt = tmp_path / "c.npz"
    fit(model, params, data, epochs=1, batch=4, progress=False, checkpoint=ckpt, valid=data)
    fit(model, params, data, epochs=3, batch=4, progress=False, checkpoint=ckpt, resume=ckpt)  # no valid
    history = load_checkpoint(ckpt).history
    assert len(history.valid_loss) == 3 and np.isnan(history.valid_loss[1:]).all()


def test_10_a_diverged_checkpoint_is_named_as_such(no_valid: Path) -> None:
    """Resuming params that hold NaN said "loss became nan in epoch 3; try a smaller learning rate"."""
    with np.load(no_valid) as z:
        w = z["param.W1"].copy()
    w[0, 0] = np.nan
    _rewrite_checkpoint(no_valid, **{"param.W1": w})
    code, _, err = run_cli([*MLP_TRAIN, "--epochs", "4", "--resume", str(no_valid)])
    assert code == 2 and "param 'W1' holds NaN" in err and "diverged" in err and "became" not in err, err


def test_10_params_that_diverge_at_an_epoch_end_are_not_checkpointed(tmp_path: Path) -> None:
    from indexgrad.optim import SGD
    from indexgrad.train import fit

    class LastStepBlowsUp(SGD):
        steps = 0

        def step(self, params, grads):  # type: ignore[no-untyped-def]
            super().step(params, grads)
            self.steps += 1
            if self.steps == 2:  # the last batch of epoch 1
                params["W2"][...] = np.inf

    model = ig.compile(ROOT / "examples" / "mlp.idx")
    rng = np.random.default_rng(0)
    params = {
        "W1": rng.standard_normal((5, 4)),
        "B1": np.zeros(4),
        "W2": rng.standard_normal((4, 3)),
        "B2": np.zeros(3),
    }
    data = {"x": rng.standard_normal((7, 5)), "Y": np.eye(3)[rng.integers(0, 3, 7)]}
    ckpt = tmp_path / "c.npz"
    with pytest.raises(
        ig.IndexgradError, match="param 'W2' became inf in epoch 1; try a smaller learning rate"
    ):
        fit(
            model,
            params,
            data,
            epochs=2,
            batch=4,
            optimizer=LastStepBlowsUp(0.1),
            progress=False,
            checkpoint=ckpt,
        )
    assert not ckpt.exists()


# ---- 15, 16: check and gradcheck ------------------------------------------------------------

SCALED = {  # right derivatives that finite differences with a fixed step and tolerance called wrong
    "offset": ("loss = sum[i](x[i] + 1000000)\n", 300),
    "reciprocal": ("loss = sum[b,i](1 / (x[b,j] W[j,i]))\n", 300),
    "long chain": (
        "h1 = x\n" + "".join(f"h{k + 1} = 1.5 h{k} + sin(h{k})\n" for k in range(1, 30)) + "loss = h30\n",
        60,
    ),
}


@pytest.mark.parametrize("name", sorted(SCALED))
def test_15_check_passes_right_derivatives_on_every_seed(name: str) -> None:
    from indexgrad.gradcheck import check_program

    text, seeds = SCALED[name]
    program = ig.parse(text)
    failed = {}
    for seed in range(seeds):
        report, _ = check_program(program, {}, seed=seed)
        if not report.ok:
            failed[seed] = report.errors
    assert not failed, failed


WRONG_RULES = {  # derivative rules with a mistake, as a bug in functions.py would make them
    "tanh": lambda u, y: (Sum((Num(1), y), (1, -1)),),  # 1 - y instead of 1 - y^2
    "sin": lambda u, y: (Call("sin", (u,)),),  # sin instead of cos
    "exp": lambda u, y: (Product((Num(1.01), y), (False, False)),),  # off by 1%
}
WRONG_CASES = {
    "tanh": "loss = sum[i](tanh(x[i] W[i]) + 1000000)\n",
    "sin": "loss = sum[b,i](sin(1 / (x[b,j] W[j,i])))\n",
    "exp": "h1[i] = tanh(3 x[i])\n"
    + "".join(f"h{k + 1}[i] = tanh(3 h{k}[i] + W{k}[i])\n" for k in range(1, 30))
    + "loss = sum[i](exp(h30[i]))\n",
}


@pytest.mark.parametrize("func", sorted(WRONG_RULES))
def test_15_a_wrong_derivative_is_still_caught(func: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from indexgrad.functions import FUNCTIONS
    from indexgrad.gradcheck import check_program

    monkeypatch.setitem(FUNCTIONS, func, replace(FUNCTIONS[func], derivative=WRONG_RULES[func]))
    program = ig.parse(WRONG_CASES[func])
    caught = [not check_program(program, {}, seed=seed)[0].ok for seed in range(10)]
    assert all(caught), caught


def test_15_gradcheck_catches_a_gradient_off_by_a_little() -> None:
    class Off(ig.Model):
        def backward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return {n: g * (1 + 1e-4) for n, g in super().backward(*args, **kwargs).items()}

    rng = np.random.default_rng(0)
    program = ig.parse("loss = sum[b](tanh(x[b,j] W[j]))\n")
    arrays = {"x": rng.standard_normal((4, 3)), "W": rng.standard_normal(3)}
    assert ig.gradcheck(ig.Model(program), arrays)
    report = ig.gradcheck(Off(program), arrays)
    assert not report and all(e > 1e-5 for e in report.errors.values()), report.errors


def test_16_check_leaves_the_users_names_alone(tmp_path: Path) -> None:
    """check added `check.seed` and `check.dot` to a vector output's program, whatever it held."""
    seeded = tmp_path / "seeded.idx"
    seeded.write_text("y[i] = x[i] check.seed[i]\nz[i] = 2 y[i]\n")
    code, out, err = run_cli(["check", str(seeded)])
    assert code == 0 and "check.seed:" in out and "2 inputs checked" in out, out + err
    dotted = tmp_path / "dotted.idx"
    dotted.write_text("check.dot[i] = 3 x[i]\n")
    code, out, err = run_cli(["check", str(dotted)])
    assert code == 0 and "1 input checked" in out and err == "", out + err


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"arrays": None}, "mapping of names to arrays"),
        ({"eps": "a"}, "positive step eps"),
        ({"eps": -1.0}, "positive step eps"),
        ({"tolerance": float("nan")}, "positive tolerance"),
        ({"seed": -1}, "non-negative integer seed"),
        ({"seed": 1.5}, "non-negative integer seed"),
        ({"directions": 0}, "directions >= 1"),
        ({"directions": True}, "directions >= 1"),
    ],
)
def test_gradcheck_refuses_its_own_bad_arguments(kwargs: dict, needle: str) -> None:
    args = {"arrays": {"x": np.ones(3)}, **kwargs}
    with pytest.raises(ig.IndexgradError, match=needle):
        ig.gradcheck("loss = sum[i](x[i]^2)", **args)


def test_gradcheck_refuses_a_loss_that_is_not_scalar() -> None:
    with pytest.raises(ig.IndexgradError, match="scalar loss"):
        ig.gradcheck("y[i] = x[i]^2", {"x": np.ones(3)})
