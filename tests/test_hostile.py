"""A hostile or careless user (issue 25): long programs, huge or odd archives, small memory (a
real address-space limit, an emulated cgroup), interrupted and piped commands, odd names and
flags, API misuse, tails of sigmoid, badly scaled checks and escape sequences; each test names
the item of the issue it guards (messages the issue lists to mend have no number)."""

from __future__ import annotations

import math
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_reliability import run_cli

import indexgrad as ig
from indexgrad import nodes
from indexgrad.nodes import Call, Num, Product, Span, Sum, refs_in
from indexgrad.printer import format_program

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = str(Path(ig.__file__).resolve().parent)


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


def test_5_ctrl_c_that_python_cannot_raise_still_ends_the_command() -> None:
    """A KeyboardInterrupt in a callback of the import system's locks reaches sys.unraisablehook,
    which would print "Exception ignored" with a traceback and go on: it ends the command."""
    code = (
        "import sys, weakref\n"
        "from indexgrad.__main__ import _unraisable\n"
        "sys.unraisablehook = _unraisable\n"
        "class Lock: pass\n"
        "def cb(ref): raise KeyboardInterrupt\n"
        "lock = Lock(); ref = weakref.ref(lock, cb); del lock\n"
        "print('went on')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (130, "", "indexgrad: interrupted\n")


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


def limited(nbytes: int, kind: str = "RLIMIT_FSIZE") -> Callable[[], None]:
    """A preexec_fn giving the child a limit the kernel enforces: by default on file size (a
    longer write fails, as on a full disk); RLIMIT_AS (`ulimit -v`) on memory, where an
    allocation past it fails as it would in a small container."""
    import resource

    which = getattr(resource, kind)
    return lambda: resource.setrlimit(which, (nbytes, nbytes))


def test_8_a_failed_plot_keeps_the_old_image(tmp_path: Path) -> None:
    """Under a file size limit the new plot cannot be written whole; the old one stays as it was."""
    plot = tmp_path / "p.png"
    old = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 32  # an earlier plot (the writer never reads it)
    plot.write_bytes(old)
    argv = [sys.executable, "-m", "indexgrad", "train", str(ROOT / "examples" / "mlp.idx"), "--epochs", "1"]
    argv += ["--hidden", "8", "--plot", str(plot)]
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300, preexec_fn=limited(4096))
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
    "offset": ("loss = sum[i](x[i] + 1000000)\n", 100),
    "reciprocal": ("loss = sum[b,i](1 / (x[b,j] W[j,i]))\n", 300),
    "long chain": (
        "h1 = x\n" + "".join(f"h{k + 1} = 1.5 h{k} + sin(h{k})\n" for k in range(1, 30)) + "loss = h30\n",
        30,
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


# ---- 2, 3, 4: memory: archives read after their headers, the container's limit, huge params -----


def _peak_rss(argv: list[str], cwd: Path, env: dict[str, str], **kw: Any) -> tuple[int, str, int]:
    """Exit status, stderr and the command's peak resident memory in bytes, as a small interpreter
    that runs it sees its child (the command's own ru_maxrss would count this test process, whose
    pages a fork shares)."""
    measure = (
        "import resource, subprocess, sys\n"
        "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
        "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    wrapped = [sys.executable, "-c", measure, *argv]
    done = subprocess.run(wrapped, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, **kw)
    code, rss = map(int, done.stdout.split())
    return code, done.stderr, rss * 1024


@pytest.fixture(scope="module")
def half_gib_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An honest .npz of 2 MB holding x: 2^26 float64 zeros (512 MiB once read)."""
    import zipfile

    path = tmp_path_factory.mktemp("big") / "big.npz"
    n = 1 << 26
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("x.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (n,)})
            chunk = bytes(16 << 20)
            for _ in range(n * 8 // len(chunk)):
                f.write(chunk)
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "INDEXGRAD_MEMORY_LIMIT"}
    return {**env, **extra}


def test_2_an_archive_over_the_limit_is_refused_from_its_headers(
    tmp_path: Path, half_gib_archive: Path
) -> None:
    """Under INDEXGRAD_MEMORY_LIMIT=32e6 the 512 MiB array is never allocated (it was read whole,
    then copied: over a gigabyte)."""
    (tmp_path / "p.idx").write_text("y[i] = 2 x[i]\n")
    argv = [sys.executable, "-m", "indexgrad", "run", "p.idx", "--inputs", str(half_gib_archive)]
    code, err, rss = _peak_rss(argv, tmp_path, _env(INDEXGRAD_MEMORY_LIMIT="32e6"))
    assert code == 2 and "Traceback" not in err, err
    assert "'x', of shape (67108864,) float64" in err and "512.0 MiB" in err and "memory limit" in err, err
    assert rss < 256 << 20, rss  # the interpreter and numpy, not the array


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_2_every_npy_header_version_is_read_from_its_header(tmp_path: Path, version: tuple[int, int]) -> None:
    """Headers are read before the arrays; numpy writes version 3.0 for some arrays (UTF-8 headers)."""
    import zipfile

    from indexgrad.files import load_npz

    arrays = {"x": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "s": np.float32(2.5), "n": np.arange(4)}
    with zipfile.ZipFile(tmp_path / "v.npz", "w") as z:
        for name, a in arrays.items():
            with z.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, np.asanyarray(a), version=version)
    got = load_npz(tmp_path / "v.npz")
    assert sorted(got) == sorted(arrays)
    for name, a in arrays.items():
        np.testing.assert_array_equal(got[name], a, strict=True)


def test_2_3_the_default_limit_heeds_a_real_address_space_limit(
    tmp_path: Path, half_gib_archive: Path
) -> None:
    """With no INDEXGRAD_MEMORY_LIMIT, under `ulimit -v` the archive is refused as over the limit,
    not called damaged after a MemoryError."""
    (tmp_path / "p.idx").write_text("y[i] = 2 x[i]\n")
    argv = [sys.executable, "-m", "indexgrad", "run", "p.idx", "--inputs", str(half_gib_archive)]
    code, err, _ = _peak_rss(argv, tmp_path, _env(), preexec_fn=limited(640 << 20, "RLIMIT_AS"))
    assert code == 2 and "Traceback" not in err, err
    assert "memory limit" in err and "damaged" not in err, err


def test_3_train_refuses_params_over_the_limit_before_making_them(tmp_path: Path) -> None:
    """`--hidden 10000000` asks for 10^7 x 784 weights (63 GB): refused, not killed."""
    argv = [sys.executable, "-m", "indexgrad", "train", str(ROOT / "examples" / "mlp.idx")]
    argv += ["--hidden", "10000000"]
    code, err, _ = _peak_rss(argv, tmp_path, _env(), preexec_fn=limited(1 << 30, "RLIMIT_AS"))
    assert code == 2 and "Traceback" not in err, err
    assert "the params (the largest, 'W1'" in err and "memory limit" in err, err


def _cgroup_v2(root: Path, path: str, limits: dict[str, tuple[str, int]]) -> Path:
    """A cgroup v2 tree under root: for each group (a path below root), memory.max and
    memory.current; returns a /proc/self/cgroup naming `path`."""
    for group, (limit, usage) in limits.items():
        d = root / group.strip("/")
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.max").write_text(limit + "\n")
        (d / "memory.current").write_text(f"{usage}\n")
    membership = root.parent / "self-cgroup"
    membership.write_text(f"0::{path}\n")
    return membership


def test_3_cgroup_room_is_the_least_room_of_the_group_and_its_parents(tmp_path: Path) -> None:
    from indexgrad.memory import cgroup_room

    root = tmp_path / "cgroup"
    groups = {"/": ("max", 5 << 30), "/box": (str(1 << 30), 600 << 20), "/box/job": ("max", 100 << 20)}
    membership = _cgroup_v2(root, "/box/job", groups)
    assert cgroup_room(root, membership) == (1 << 30) - (600 << 20)  # the parent's 1 GiB binds
    (root / "box" / "job" / "memory.max").write_text("314572800\n")  # 300 MiB of its own
    assert cgroup_room(root, membership) == (300 << 20) - (100 << 20)
    (root / "box" / "memory.max").write_text("max\n")
    (root / "box" / "job" / "memory.max").write_text("max\n")
    assert cgroup_room(root, membership) is None  # no limit anywhere


def test_3_cgroup_v1_and_a_namespaced_group(tmp_path: Path) -> None:
    from indexgrad.memory import cgroup_room

    root = tmp_path / "cgroup"
    (root / "memory").mkdir(parents=True)
    (root / "memory" / "memory.limit_in_bytes").write_text(f"{1 << 30}\n")
    (root / "memory" / "memory.usage_in_bytes").write_text(f"{200 << 20}\n")
    membership = tmp_path / "self-cgroup"
    membership.write_text("12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n")  # /docker/abc hidden
    assert cgroup_room(root, membership) == (1 << 30) - (200 << 20)
    (root / "memory" / "memory.limit_in_bytes").write_text(f"{(1 << 63) - 4096}\n")  # v1's "unlimited"
    assert cgroup_room(root, membership) is None
    assert cgroup_room(tmp_path / "none", tmp_path / "missing") is None


def test_3_check_in_a_small_cgroup_is_refused_not_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`check outer.idx --dims i=15000,j=15000` in a 1 GiB cgroup: a 1.7 GiB array, refused at
    its statement (the host's free memory was the limit, and the container killed the command)."""
    from indexgrad import memory

    root = tmp_path / "cgroup"
    membership = _cgroup_v2(root, "/", {"/": (str(1 << 30), 50 << 20)})
    real = memory.cgroup_room
    monkeypatch.setattr(memory, "cgroup_room", lambda: real(root, membership))
    monkeypatch.delenv("INDEXGRAD_MEMORY_LIMIT", raising=False)
    assert ig.memory_limit() <= int(((1 << 30) - (50 << 20)) * 0.8)
    (tmp_path / "outer.idx").write_text("input x[i], z[j]\ny[i,j] = x[i] z[j]\nloss = sum[i,j](y[i,j]^2)\n")
    code, _, err = run_cli(["check", str(tmp_path / "outer.idx"), "--dims", "i=15000,j=15000"])
    assert code == 2 and "memory limit" in err and "outer.idx:2:1" in err, err


def test_3_check_refuses_random_inputs_that_fit_one_by_one_but_not_together(tmp_path: Path) -> None:
    """Eight 16 MB inputs under a 40 MB limit: each was drawn after a check of itself alone."""
    terms = " + ".join(f"x{k}[i,j]" for k in range(8))
    (tmp_path / "eight.idx").write_text(f"loss = sum[i,j]({terms})\n")
    argv = [sys.executable, "-m", "indexgrad", "check", "eight.idx", "--dims", "i=1000,j=2000"]
    code, err, rss = _peak_rss(argv, tmp_path, _env(INDEXGRAD_MEMORY_LIMIT="40e6"))
    assert code == 2 and "eight.idx:1:17: error: the random inputs (the largest, 'x0'" in err, err
    assert "would need 122.1 MiB, over the memory limit of 38.1 MiB; use smaller --dims" in err, err
    assert rss < 120 << 20, rss  # none of the 128 MB was drawn


@pytest.mark.parametrize("text", ["inf", "1e400", "Infinity", " 1e30 "])
def test_4_a_memory_limit_of_infinity_means_none(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from indexgrad.memory import NO_LIMIT

    monkeypatch.setenv("INDEXGRAD_MEMORY_LIMIT", text)
    assert ig.memory_limit() == NO_LIMIT
    vals = ig.compile("y[i] = 2 x[i]\n").forward(x=np.arange(3.0))  # the guard compares, never overflows
    np.testing.assert_array_equal(vals["y"], [0.0, 2.0, 4.0])
    try:
        ig.set_memory_limit(math.inf)
        assert ig.memory_limit() == NO_LIMIT
    finally:
        ig.set_memory_limit(None)


@pytest.mark.parametrize("text", ["-1", "0", "nan", "lots"])
def test_4_a_memory_limit_that_is_no_size_is_refused(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INDEXGRAD_MEMORY_LIMIT", text)
    with pytest.raises(ig.IndexgradError, match="INDEXGRAD_MEMORY_LIMIT must be a positive number of bytes"):
        ig.memory_limit()


@pytest.mark.parametrize("seed", ["4294967296", "-1"])
def test_4_train_refuses_a_seed_scikit_learn_cannot_take(seed: str) -> None:
    code, _, err = run_cli(["train", str(ROOT / "examples" / "mlp.idx"), "--seed", seed])
    assert code == 2 and "--seed must be between 0 and 4294967295" in err, err


# ---- 6: API misuse is an IndexgradError -----------------------------------------------------------

MLP2 = "h[i] = tanh(x[j] W1[j,i])\nloss = sum[i](h[i]^2)\n"
INPUTS2 = {"x": np.ones(3), "W1": np.ones((3, 2))}


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda m, v: m.jvp(v, None), "tangents must be a dict from input names to arrays, not NoneType"),
        (lambda m, v: m.jvp(None, {"x": np.ones(3)}), "vals must be the dict forward() returned"),
        (lambda m, v: m.hvp(v, v=3), "v must be a dict from input names to arrays, not int"),
        (lambda m, v: m.hvp(None, v={"x": np.ones(3)}), "vals must be the dict forward() returned"),
        (lambda m, v: m.backward(v, wrt=3), "wrt must be a name or a list of names, not int"),
        (lambda m, v: m.hvp(v, v={"W1": np.ones(3)}), "v for 'W1' has shape (3,), not (3, 2)"),
        (lambda m, v: ig.gradcheck(m, None), "mapping of names to arrays, got NoneType"),
        (lambda m, v: ig.gradcheck(m, INPUTS2, eps="a"), "positive step eps"),
        (lambda m, v: ig.gradcheck(m, INPUTS2, seed=-1), "non-negative integer seed"),
        (lambda m, v: ig.gradcheck(m, INPUTS2, directions=0), "directions >= 1"),
        (lambda m, v: ig.gradcheck(m, INPUTS2, loss="nope"), "loss 'nope' is not defined by the program"),
        (lambda m, v: ig.gradcheck(m, INPUTS2, loss=3), "loss must be the name of a defined tensor, not int"),
        (lambda m, v: ig.gradcheck(m, INPUTS2, wrt=3), "wrt must be a name or a list of names, not int"),
        (lambda m, v: ig.gradcheck(m, {**INPUTS2, "x": "abc"}), "'x' must hold real numbers"),
        (lambda m, v: ig.gradcheck(m, {"x": np.ones(3)}), "no array was given for input 'W1'"),
        (lambda m, v: ig.load(None), "load() takes the path of an .idx file, got NoneType"),
        (lambda m, v: ig.load("a\0b.idx"), "cannot read a\u2400b.idx: embedded null byte"),
        (lambda m, v: m.forward(INPUTS2), "forward() takes the arrays by name: forward(x=..., W=...)"),
        (lambda m, v: m.forward(np.ones(3)), "for a dict d of them; the program's inputs: x, W1"),
        (lambda m, v: ig.derive(MLP2, wrt=3), "wrt must be a name or a list of names, not int"),
        (lambda m, v: ig.derive_jvp(MLP2, wrt=[None]), "wrt must list names as strings, not NoneType"),
    ],
)
def test_6_api_misuse_is_an_indexgrad_error(call: Callable[[Any, Any], Any], needle: str) -> None:
    model = ig.compile(MLP2)
    vals = model.forward(**INPUTS2)
    with pytest.raises(ig.IndexgradError) as e:
        call(model, vals)
    assert needle in str(e.value) and ".tan" not in str(e.value), str(e.value)


# ---- 13: a shifted read in a sum of terms differentiates -----------------------------------------


@pytest.mark.parametrize("form", ["z[j] + x[10-j]", "x[10-j] + z[j]", "z[j] - 2 x[10-j]", "x[10-j] z[j]"])
def test_13_a_shifted_read_in_a_sum_has_a_backward(form: str, tmp_path: Path) -> None:
    """Inlining y.grad[j] = loss.grad into `x.grad[10-j] += y.grad[j]` left j sized by nothing."""
    import autograd
    import autograd.numpy as anp

    text = f"y[j] = {form}\nloss = sum[j](y[j])\n"
    rng = np.random.default_rng(0)
    x, z = rng.standard_normal(11), rng.standard_normal(3)
    model = ig.compile(text)
    grads = model.backward(model.forward(x=x, z=z))

    def oracle(x: np.ndarray, z: np.ndarray) -> Any:
        xs = x[10 - np.arange(3)]
        sums = {"z[j] + x[10-j]": z + xs, "x[10-j] + z[j]": xs + z, "z[j] - 2 x[10-j]": z - 2 * xs}
        return anp.sum(sums.get(form, xs * z))

    np.testing.assert_allclose(grads["x"], autograd.grad(oracle, 0)(x, z), rtol=1e-12)
    np.testing.assert_allclose(grads["z"], autograd.grad(oracle, 1)(x, z), rtol=1e-12)
    (tmp_path / "p.idx").write_text(text)
    code, out, err = run_cli(["check", str(tmp_path / "p.idx")])
    assert code == 0 and "passed: 2 inputs checked" in out, out + err


# ---- messages to mend ----------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["/", ""])
def test_a_number_that_underflows_to_zero_is_refused_both_ways(op: str) -> None:
    """`x / 1e-400` said 'this number is 0' while `x * 1e-400` was silently 0."""
    text = f"y[i] = x[i] {op} 1e-400\n"
    with pytest.raises(ig.IndexgradError, match="number 1e-400 is too small for floating point") as e:
        ig.parse(text)
    assert e.value.span.column == text.index("1e-400") + 1
    assert ig.parse("y[i] = x[i] 0.0e5 + 1e-300\n")  # zero written as zero, and a small normal number


def test_a_scatter_reads_as_a_gather_without_an_empty_list(tmp_path: Path) -> None:
    (tmp_path / "shift.idx").write_text("y[j] = x[j+1]\nloss = sum[j](y[j])\n")
    code, out, err = run_cli(["grad", str(tmp_path / "shift.idx")])
    assert code == 0, err
    assert "#   that is x.grad[j2] += y.grad[j2-1], where in range" in out, out
    assert "over  in" not in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run", "P", "--inputs", "IN", "--out", ""], "--out needs a file name, got ''"),
        (["grad", "P", "--loss", ""], "--loss: needs a tensor name, got ''"),
        (["check", "P", "--loss", " "], "--loss: needs a tensor name, got ''"),
        (["train", "MLP", "--save", ""], "--save needs a file name, got ''"),
        (["train", "MLP", "--plot", ""], "--plot needs a file name, got ''"),
        (["train", "MLP", "--dims", "b=5"], "--dims sizes 'b', which the data set sizes (b=1437"),
        (["train", "MLP", "--lr", "inf"], "--lr must be a positive number, got inf"),
        (["train", "MLP", "--lr", "nan"], "--lr must be a positive number, got nan"),
        (["train", "MLP", "--save", "/proc/c.npz"], "--save /proc/c.npz: cannot write there"),
        (["run", "P", "--inputs", "IN", "--out", "nodir/o.npz"], "--out nodir/o.npz: no such directory"),
        (["graph", "P", "--loss", "loss"], "--loss chooses what --grad differentiates; add --grad"),
        (["plan", "P", "--dims", "i=3", "--wrt", "x"], "--wrt chooses what --grad differentiates"),
    ],
)
def test_empty_or_unusable_flags_are_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], needle: str
) -> None:
    """`--out ''` and the like were taken as the flag left out; a read-only or missing place was
    found only after the work (/proc takes no new file, even for root, as a read-only mount)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.idx").write_text("y[i] = 2 x[i]\nloss = sum[i](y[i])\n")
    np.savez(tmp_path / "in.npz", x=np.arange(3.0))
    names = {"P": "p.idx", "IN": "in.npz", "MLP": str(ROOT / "examples" / "mlp.idx")}
    code, out, err = run_cli([names.get(a, a) for a in argv])
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert "epoch" not in out and sorted(p.name for p in tmp_path.iterdir()) == ["in.npz", "p.idx"]


def test_version() -> None:
    assert run_cli(["--version"]) == (0, f"indexgrad {ig.__version__}\n", "")


def test_compile_of_text_ending_in_idx_is_text_not_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = ig.compile("y = w.idx")
    assert list(model.inputs) == ["w.idx"] and float(model.forward(**{"w.idx": np.float64(2.0)})["y"]) == 2.0
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prog").write_text("y[i] = 3 x[i]\n")  # an existing file is a path, whatever its name
    np.testing.assert_array_equal(ig.compile("prog").forward(x=np.ones(2))["y"], [3.0, 3.0])
    with pytest.raises(ig.IndexgradError, match="missing.idx"):
        ig.compile("missing.idx")
    (tmp_path / "lr=0.1").mkdir()
    (tmp_path / "lr=0.1" / "m.idx").write_text("y[i] = 4 x[i]\n")  # a path may hold '='
    np.testing.assert_array_equal(ig.compile("lr=0.1/m.idx").forward(x=np.ones(2))["y"], [4.0, 4.0])


# ---- hostile files, pipes and programs (second round) ---------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_an_output_never_replaces_a_fifo_or_device(tmp_path: Path, twice: tuple[Path, Path]) -> None:
    """`--save /dev/null --force` (as root) renamed a new file over the device: /dev/null became a
    regular file for everyone. A FIFO stands in for the device here."""
    from indexgrad.files import save_npz_atomic

    fifo = tmp_path / "c.npz"
    os.mkfifo(fifo)
    code, out, err = run_cli([*MLP_TRAIN, "--epochs", "1", "--save", str(fifo), "--force"])
    assert code == 2 and f"--save {fifo} is a FIFO, not a regular file" in err and "epoch" not in out, err
    prog, inputs = twice
    code, _, err = run_cli(["run", str(prog), "--inputs", str(inputs), "--out", str(fifo)])
    assert code == 2 and "is a FIFO, not a regular file" in err, err
    with pytest.raises(ig.IndexgradError, match="it is a FIFO, which a new file renamed over it"):
        save_npz_atomic(fifo, {"x": np.zeros(1)})
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz", "in.npz", "twice.idx"]


def test_the_graph_of_a_long_program_is_drawn_in_linear_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each edge was looked up in the list of all edges so far: `indexgrad graph` of 8000
    statements took 5 seconds, of 10^5 statements (5 * 10^9 comparisons) a quarter of an hour."""
    from indexgrad import tools

    compared = 0
    eq = tools.Edge.__eq__

    def counted(self, other):  # type: ignore[no-untyped-def]
        nonlocal compared
        compared += 1
        return eq(self, other)

    monkeypatch.setattr(tools.Edge, "__eq__", counted)
    n = 300
    p = ig.parse("t0 = x + 1\n" + "".join(f"t{k} = t{k - 1} + 1\n" for k in range(1, n)))
    g = tools.computation_graph(p)
    assert len(g.edges) == n and compared <= n


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_an_endless_program_file_is_refused_after_a_bounded_read(device: str) -> None:
    """The whole file was read before anything else: /dev/zero filled the memory until killed."""
    if not Path(device).exists():
        pytest.skip(f"no {device}")
    argv = [sys.executable, "-m", "indexgrad", "grad", device]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"{device}: error: the file holds more than 16 MiB, which is no .idx program "
        "(a program is at most that much text); is it the file you meant?\n"
    )


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-32-be"])
def test_a_program_in_utf16_or_utf32_is_named_as_such(tmp_path: Path, encoding: str) -> None:
    """It was 'not valid UTF-8 (byte 0xff)' above a line of mojibake."""
    path = tmp_path / "wide.idx"
    path.write_bytes(("\ufeff" + "y[i] = 2 x[i]\n").encode(encoding))
    code, _, err = run_cli(["fmt", str(path)])
    wide = encoding[:6].upper()
    assert code == 2 and err == (
        f"{path}: error: the file is {wide} (it starts with a {wide} byte-order mark); "
        "an .idx program is UTF-8: save it as UTF-8\n"
    ), err
    path.write_bytes("y[i] = 2 x[i]\n".encode("utf-16-le"))  # no mark: a NUL after each character
    code, _, err = run_cli(["fmt", str(path)])
    assert code == 2 and err.startswith(f"{path}:1:2: error: unexpected NUL byte: an .idx program is"), err


@pytest.mark.skipif(not Path("/dev/fd").is_dir(), reason="needs /dev/fd")
def test_inputs_read_from_a_pipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run p.idx --inputs <(cat in.npz)`: the file was opened twice, once for its first bytes and
    once by zipfile, which needs to seek; a pipe gave 'damaged .npz archive'."""
    import io

    from indexgrad.files import load_npz

    buffer = io.BytesIO()
    np.savez(buffer, x=np.arange(3.0), W=np.eye(2))
    read, write = os.pipe()
    try:
        os.write(write, buffer.getvalue())  # a few hundred bytes: the pipe holds them all
        os.close(write)
        got = load_npz(f"/dev/fd/{read}")
    finally:
        os.close(read)
    assert sorted(got) == ["W", "x"] and got["x"].tolist() == [0.0, 1.0, 2.0]
    monkeypatch.setenv("INDEXGRAD_MEMORY_LIMIT", "100")
    read, write = os.pipe()
    try:
        os.write(write, buffer.getvalue())
        os.close(write)
        with pytest.raises(ig.IndexgradError, match=r"the inputs file \(read from a pipe\) would need"):
            load_npz(f"/dev/fd/{read}")
    finally:
        os.close(read)


@pytest.mark.parametrize(
    "sizes, needle",
    [
        ({"i": -1, "j": 3}, "1:7: error: the size of index 'i' must be a whole number of at least 1, got -1"),
        ({"i": 2.5, "j": 3}, "the size of index 'i' must be a whole number of at least 1, got 2.5"),
        ({"i": True, "j": 3}, "the size of index 'i' must be a whole number of at least 1, got True"),
        ("i=4,j=3", "sizes must be a dict from index names to sizes, not str"),
    ],
)
def test_param_sizes_that_are_no_sizes_are_refused(sizes: Any, needle: str) -> None:
    """numpy's 'negative dimensions are not allowed' and dict()'s 'dictionary update sequence
    element #0 has length 1' escaped from init_params and ig.torch.Module."""
    from indexgrad.train import init_params

    src = "param W[j,i], B[i]\ninput x[b,j]\ny[b,i] = x[b,j] W[j,i] + B[i]\n"
    with pytest.raises(ig.IndexgradError) as e:
        init_params(ig.compile(src), sizes)
    assert needle in str(e.value), str(e.value)
    pytest.importorskip("torch")
    with pytest.raises(ig.IndexgradError) as e:
        ig.torch.Module(src, outputs="y", sizes=sizes)
    assert needle in str(e.value), str(e.value)


def _chain(levels: int, uses: int) -> str:
    """Definitions f1..f{levels}, each using the one before `uses` times, and a use of the last."""
    text = "def f0(x[i]) -> y[i]:\n    y[i] = 2 x[i]\n"
    for k in range(1, levels):
        body = "".join(f"    a{u + 1}[i] = f{k - 1}(a{u}[i])\n" for u in range(uses)).replace("a0[i]", "x[i]")
        text += f"def f{k}(x[i]) -> y[i]:\n{body}    y[i] = 3 a{uses}[i]\n"
    return text + f"z[i] = f{levels - 1}(w[i])\n"


def test_definitions_nested_too_deep_are_refused() -> None:
    """A chain of 1100 definitions, each using the one before, overflowed Python's stack (an
    internal RecursionError): each inlined place keeps the chain of uses it came through."""
    text = _chain(1100, 1)
    with pytest.raises(ig.IndexgradError) as e:
        ig.parse(text, "chain.idx")
    assert "definitions nest more than 100 deep here ('f100' uses 'f99'" in str(e.value)
    assert (e.value.line, e.value.column) == (text.splitlines().index("def f100(x[i]) -> y[i]:") + 2, 5)
    assert len(ig.parse(_chain(100, 1)).statements) == 100  # 100 levels are fine


def test_definitions_that_double_at_each_level_are_refused_before_inlining() -> None:
    """Each definition using the one before twice: 2^40 statements, inlined until the memory ran out."""
    code = f"import indexgrad as ig\nig.parse({_chain(40, 2)!r}, 'double.idx')\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "double.idx:69:5: error: with its uses inlined, the body of 'f17' would hold more than 200,000 " \
        "statements ('f16' alone stands for 131,071" in done.stderr, done.stderr[-2000:]


def test_an_archive_holding_a_name_twice_is_refused(tmp_path: Path) -> None:
    """Two members x.npy: the last was read silently (as np.load does), whichever was meant."""
    import warnings
    import zipfile

    from indexgrad.files import load_npz

    with warnings.catch_warnings(), zipfile.ZipFile(tmp_path / "dup.npz", "w") as z:
        warnings.simplefilter("ignore")  # zipfile's "Duplicate name" warning
        for value in (1.0, 2.0):
            with z.open("x.npy", "w") as f:
                np.lib.format.write_array(f, np.full(3, value))
    with pytest.raises(ig.IndexgradError, match="holds two arrays named .x.; save each once") as e:
        load_npz(tmp_path / "dup.npz")
    assert e.value.filename == str(tmp_path / "dup.npz")


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
@pytest.mark.parametrize(
    "far, near",
    [
        ("wrap(i+100000000000000000001)", "wrap(i+2)"),  # 10**20 + 1 = 2 (mod 3)
        ("wrap(2*i-1000000000000)", "wrap(2*i+2)"),  # -10**12 = 2 (mod 6)
        ("pad(i+1000000000000)", "pad(i+3)"),
        ("pad(i-100000000000000000000)", "pad(i-3)"),
        ("clamp(i-1000000000000)", "clamp(i-3)"),
        ("clamp(i+u+100000000000000000000)", "clamp(i+u+3)"),
    ],
)
def test_a_boundary_mode_far_off_the_axis_reads_as_one_near_it(backend: str, far: str, near: str) -> None:
    """The numpy backend padded the axis out to the constant (a MemoryError, or a TypeError past
    int64, where jax and the generated code failed too); the constant now moves near the axis."""
    if backend == "jax":
        pytest.importorskip("jax").config.update("jax_enable_x64", True)
    rng = np.random.default_rng(0)
    runs = []
    for position in (far, near):
        program = ig.parse(f"dim u=2\ny[i] = x[{position}] z[i] w[u]")
        namespace: dict = {}
        exec(compile(program.to_python("numpy", dims={"i": 3}), "generated", "exec"), namespace)
        if not runs:
            arrays = {k: rng.standard_normal(shape) for k, shape in namespace["SHAPES"].items()}
            seed = rng.standard_normal(3)
        model = ig.compile(program, backend=backend)
        vals = model.forward(**arrays)
        grads = model.backward(vals, seed={"y": seed})
        runs.append((np.asarray(vals["y"]), {k: np.asarray(g) for k, g in grads.items()}))
        np.testing.assert_array_equal(namespace["forward"](**arrays)["y"], runs[-1][0])
    (got, got_grads), (want, want_grads) = runs
    np.testing.assert_array_equal(got, want)
    for k in arrays:
        np.testing.assert_array_equal(got_grads[k], want_grads[k], err_msg=k)


# programs whose sums run over an index of size 0, or whose results have no entries: the values,
# gradients and tangents are zeros (an empty sum) of the shapes numpy gives, on every backend, where
# torch's convolutions refused empty kernels and batches and jax's stacked slices and convolutions
# empty windows; and pad(...) reads zeros from an axis of size 0
EMPTY = [
    ("y[j] = w[k] x[j+k]", {"w": (0,), "x": (4,)}, (4,)),
    ("y[j] = w[k] x[j+k]", {"w": (3,), "x": (0,)}, (0,)),
    ("dim u=2\ny[r] = max[u](x[2*r+u])", {"x": (0,)}, (0,)),
    ("y[b,o,r] = x[b,i,r+k] w[o,i,k]", {"x": (2, 0, 5), "w": (4, 0, 2)}, (2, 4, 4)),
    ("y[b,o,r,c] = x[b,i,r+u,c+v] w[o,i,u,v]", {"x": (2, 3, 5, 5), "w": (0, 3, 2, 2)}, (2, 0, 4, 4)),
    ("y[b,o,r,c] = x[b,i,pad(2*r+u-1),pad(2*c+v-1)] w[o,i,u,v]",
     {"x": (0, 3, 5, 5), "w": (4, 3, 3, 3)}, (0, 4, 3, 3)),
    ("y[b,o,2*r+u] += x[b,i,r] w[i,o,u]", {"x": (2, 3, 0), "w": (3, 4, 2)}, (2, 4, 0)),
    ("y[b,s] = f[b,pad(2*s+k)] z[s] w[k]", {"f": (2, 0), "z": (4,), "w": (2,)}, (2, 4)),
    ("y[b,t,2*i] += x[b,t,2*i] c[t,i]\ny[b,t,2*i+1] += x[b,t,2*i+1] c[t,i]",
     {"x": (2, 4, 6), "c": (4, 0)}, (2, 4, 0)),
]


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("src, shapes, out", EMPTY)
def test_empty_sums_and_empty_results_are_zeros_on_every_backend(
    backend: str, src: str, shapes: dict, out: tuple
) -> None:
    if backend == "jax":
        pytest.importorskip("jax").config.update("jax_enable_x64", True)
    model = ig.compile(src, backend=backend)
    arrays = {k: np.ones(s) for k, s in shapes.items()}
    vals = model.forward(**arrays)
    np.testing.assert_array_equal(np.asarray(vals["y"]), np.zeros(out))
    grads = model.backward(vals, seed={"y": np.ones(out)})
    tangent = model.jvp(vals, arrays)["y"]
    np.testing.assert_array_equal(np.asarray(tangent), np.zeros(out))
    for k, a in arrays.items():
        np.testing.assert_array_equal(np.asarray(grads[k]), np.zeros_like(a), err_msg=k)


@pytest.mark.parametrize("mode", ["clamp", "wrap"])
def test_clamp_or_wrap_of_an_empty_axis_is_an_error_at_the_read(mode: str) -> None:
    """It was raised while running, without a place."""
    model = ig.compile(ig.parse(f"y[s] = f[{mode}(s+1)] z[s]", filename="e.idx"))
    message = rf"{mode}\(\.\.\.\) reads an axis of 'f' that has size 0"
    with pytest.raises(ig.IndexgradError, match=message) as e:
        model.forward(f=np.zeros(0), z=np.ones(4))
    assert str(e.value).startswith("e.idx:1:8: error:")
