"""Fuzzing (issue 8): random programs from the grammar and random mutations of the examples, pushed
through parse -> derive -> print -> parse -> derive_jvp -> compile -> forward -> backward and the CLI.

Every outcome must be a result or an `IndexgradError` (placed in the source where the error comes
from the source) -- never another exception, a hang, or a traceback / "internal error" from the CLI.

The quick tests run in the default profile (well under a minute).  The `@pytest.mark.fuzz` tests
are the long run, `make fuzz` (`pytest tests -m fuzz --hypothesis-profile=fuzz`); they are skipped
unless that profile is loaded.  Count the cases of a run with `--hypothesis-show-statistics`, or read
`.hypothesis/fuzz-cases.txt`, which the last fuzz test writes (and checks: at least 100,000 cases).

Crashes found become `.idx` files in tests/fuzz_regressions/, replayed by `test_regression`.  A file's
first line says what it triggered; `# xfail: reason` marks one the core does not handle yet, and
`# signature: ExceptionType file.py function` (the innermost indexgrad frame) lets the random tests
step over that known crash while it is open, so they keep finding new ones.  Fixing a bug: delete the
file's `# xfail:` line; the replay then must pass, and the random tests treat the crash as a bug again.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import signal
import sys
import tempfile
import threading
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from agree import assert_backends_agree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import indexgrad as ig
from indexgrad.cli import main as cli_main
from indexgrad.errors import visible
from indexgrad.shapes import infer_shapes, random_inputs
from indexgrad.tools import index_names

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.idx"))
EXAMPLE_TEXT = {p.name: p.read_bytes() for p in EXAMPLES}
REGRESSIONS = Path(__file__).resolve().parent / "fuzz_regressions"

# The fuzz profile (tests/conftest.py) is loaded by hypothesis's pytest plugin before this module is
# collected, so its max_examples tells whether this is the long run.
LONG_RUN = settings().max_examples >= 1000
long_only = pytest.mark.skipif(not LONG_RUN, reason="long fuzz run: make fuzz (--hypothesis-profile=fuzz)")

DEADLINE_MS = 2000  # per example
HANG_SECONDS = 20  # a watchdog for a real hang, which hypothesis's deadline alone cannot interrupt
MAX_ELEMENTS = 200_000  # random inputs larger than this are not built (a program may ask for x[10^9])

CASES: Counter[str] = Counter()  # cases run per test, for the count of `make fuzz`
FUZZ_TARGET = 100_000

HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


def header(path: Path, key: str) -> list[str]:
    """Values of `# key: value` lines at the top of a regression file."""
    out = []
    for line in path.read_bytes().split(b"\n")[:6]:
        if line.startswith(f"# {key}:".encode()):
            out.append(line.split(b":", 1)[1].strip().decode())
    return out


def known_crashes() -> dict[tuple[str, str, str], str]:
    """Crashes the core does not handle yet: `# signature: Type file.py function` of every regression
    file still marked `# xfail:`.  The random tests step over these (and count them), so that they keep
    looking for new ones; once a bug is fixed and its xfail line removed, they are bugs again."""
    out = {}
    for path in sorted(REGRESSIONS.glob("*.idx")):
        if header(path, "xfail"):
            for sig in header(path, "signature"):
                kind, file, func = sig.split()
                out[(kind, file, func)] = path.name
    return out


KNOWN = known_crashes()


def signature(e: BaseException) -> tuple[str, str, str]:
    """Exception type, and file and function of the innermost frame inside the indexgrad package."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f"{os.sep}indexgrad{os.sep}" in f.filename]
    named = [f for f in frames if not f.name.startswith("<")] or frames
    if not named:
        return (type(e).__name__, "?", "?")
    return (type(e).__name__, Path(named[-1].filename).name, named[-1].name)


def budget(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=DEADLINE_MS,
        suppress_health_check=HEALTH,
        print_blob=True,
    )


# ---- the pipeline ---------------------------------------------------------------------------------


class Hang(BaseException):
    """Raised by the watchdog; a BaseException so no `except Exception` in the code under test eats it."""


@contextlib.contextmanager
def watchdog(seconds: float = HANG_SECONDS):
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def fire(signum, frame):
        raise Hang(f"no result after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


LINE_BREAK = re.compile(r"\r\n|\r|\n")  # the grammar's newlines; str.splitlines() knows more
SPLITLINES_ONLY = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


class Finding(AssertionError):
    """A bug the harness sees without an exception: a misplaced error, an "internal error" message."""

    def __init__(self, kind: str, stage: str, message: str) -> None:
        super().__init__(f"{kind} ({stage}): {message}")
        self.signature = ("Finding", kind, stage)


def misplaced_kind(text: str) -> str:
    if re.search(r"\r(?!\n)", text):
        return "misplaced-lone-cr"
    if any(c in text for c in SPLITLINES_ONLY):
        return "misplaced-splitlines"
    return "misplaced"


def assert_placed(e: ig.IndexgradError, text: str | None, filename: str | None, stage: str) -> None:
    """An error from the source text has a line and column inside it, and shows that line; every
    error renders, and none calls itself an internal error."""
    rendered = str(e)
    assert isinstance(rendered, str) and rendered
    assert isinstance(e.message, str) and e.message.strip(), f"{stage}: empty error message"
    if "internal error" in rendered.lower():
        raise Finding("internal-error", stage, rendered)
    if text is not None and stage in ("parse", "load"):
        assert e.line is not None and e.column is not None, f"{stage}: error without a place: {e.message}"
    if e.line is not None and text is not None:
        lines = LINE_BREAK.split(text)
        line = lines[e.line - 1] if 1 <= e.line <= len(lines) else None
        if line is None or e.column is None or not 1 <= e.column <= len(line) + 1:
            raise Finding(misplaced_kind(text), stage, f"{e.line}:{e.column} is not in the text: {rendered}")
        shown = visible(line.replace("\t", " ")).strip()  # as the renderer draws it
        if shown and shown not in rendered:
            raise Finding(misplaced_kind(text), stage, f"line {e.line} is {line!r}, not shown: {rendered}")
    if filename is not None and stage in ("parse", "load"):
        assert e.filename == filename, f"{stage}: error names file {e.filename!r}, not {filename!r}"


def small_enough(program: ig.Program, dims: dict[str, int]) -> bool:
    try:
        shapes = infer_shapes(program, dims)
    except ig.IndexgradError:
        return True  # random_inputs will say the same, as a user error
    return sum(math.prod(s) for s in shapes.values()) <= MAX_ELEMENTS


def run_pipeline(
    text: str | None = None,
    path: Path | None = None,
    filename: str = "fuzz.idx",
    full: bool = True,
    dims_size: int = 2,
    seed: int = 0,
) -> str:
    """Push one input as far as it goes; returns the stage it stopped at ("ok" if it got through).

    Raises AssertionError (or lets a non-IndexgradError escape) on a bug.
    """
    stage = "load" if path is not None else "parse"
    with watchdog(), warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            if path is not None:
                filename = str(path)
                prog = ig.load(path)
                text = prog.source
            else:
                prog = ig.parse(text, filename)
            assert isinstance(prog, ig.Program)

            # the canonical form parses back to the same canonical form
            stage = "reparse"
            canon = str(prog)
            again = ig.parse(canon, "canonical.idx")
            assert str(again) == canon, f"fmt is not idempotent:\n{canon}\n---\n{again}"

            stage = "derive"
            back = ig.derive(prog)
            stage = "reparse-derived"
            back_text = str(back)
            ig.parse(back_text, "derived.idx")
            if not full:
                return "ok"

            stage = "derive_jvp"
            ig.derive_jvp(prog)
            stage = "compile"
            model = ig.compile(prog)

            stage = "inputs"
            dims = {n: dims_size for n in "abcdhijkluvnors" if n not in prog.dims()}
            if not small_enough(prog, dims):
                return "too-large"
            arrays = random_inputs(prog, dims, np.random.default_rng(seed))

            stage = "forward"
            vals = model.forward(**arrays)
            defined = prog.defined()
            if not defined:
                return "ok"
            loss = defined[-1]
            value = np.asarray(vals[loss])

            stage = "backward"
            if value.ndim == 0:
                grads = model.backward(vals)
            else:
                grads = model.backward(vals, seed={loss: np.ones_like(value)})
            for name in model.inputs:
                assert np.shape(grads[name]) == np.shape(arrays[name]), f"gradient of {name} mis-shaped"

            stage = "jvp"
            model.jvp(vals, {n: np.ones_like(arrays[n]) for n in model.inputs[:2]})
            stage = "values"
            assert_vjp_matches_jvp(model, vals, grads, loss, seed)
            stage = "repeat"
            assert_planned_calls_repeat(model, arrays, grads, loss, value.ndim == 0)
            return "ok"
        except ig.IndexgradError as e:
            from_source = ("parse", "load", "inputs", "forward", "backward", "jvp", "compile")
            where = text if stage in from_source else None
            assert_placed(e, where, filename, stage)
            assert stage not in ("reparse", "reparse-derived"), (
                f"the printed program does not parse back ({stage}): {e}"
            )
            return f"error:{stage}"
        except Finding as e:
            known = KNOWN.get(e.signature)
            if known is None:
                raise
            return f"known:{known}"
        except (AssertionError, Hang):
            raise
        except Exception as e:
            known = KNOWN.get(signature(e))
            if known is None:
                raise
            return f"known:{known}"


def assert_planned_calls_repeat(model: ig.Model, arrays: dict, grads: dict, loss: str, scalar: bool) -> None:
    """A planned call (the same shapes again: fused kernels, no size checks) gives the first call's
    bits, for every input and for the first input alone (a pruned program, planned anew)."""
    for wrt in (None, model.inputs[:1]):
        want = grads if wrt is None else None
        for _ in range(2):
            vals = model.forward(**arrays)
            seed = None if scalar else {loss: np.ones_like(np.asarray(vals[loss]))}
            got = model.backward(vals, wrt=wrt, seed=seed)
            if want is None:
                want = got
                continue
            for n, g in want.items():
                same = np.asarray(got[n]).tobytes() == np.asarray(g).tobytes()
                assert same, f"a planned call gives other values for {n}.grad"


def assert_vjp_matches_jvp(model: ig.Model, vals: dict, grads: dict, loss: str, seed: int) -> None:
    """<seed, J v> by forward mode equals <J^T seed, v> by reverse mode (the seed is all ones),
    for a random direction v: the two are computed by different derived programs, so a wrong
    value in either (an array updated in place through a second name, a lost term) shows."""
    rng = np.random.default_rng(seed + 1)
    v = {n: rng.standard_normal(np.shape(vals[n])) for n in model.inputs}
    jv = np.asarray(model.jvp(vals, v)[loss], dtype=np.float64)
    forward_terms = jv.ravel()
    reverse_terms = np.concatenate(
        [(np.asarray(grads[n], dtype=np.float64) * v[n]).ravel() for n in model.inputs] or [np.zeros(0)]
    )
    if not (np.isfinite(forward_terms).all() and np.isfinite(reverse_terms).all()):
        return  # overflow or a function outside its domain: no number to compare
    scale = np.abs(forward_terms).sum() + np.abs(reverse_terms).sum()
    if scale > 1e100:
        return
    lhs, rhs = forward_terms.sum(), reverse_terms.sum()
    if abs(lhs - rhs) > 1e-7 * scale + 1e-12:
        found = f"<seed, J v> = {lhs!r} by jvp, <J^T seed, v> = {rhs!r} by backward"
        raise Finding("vjp-jvp", "values", found)


def _dims_used(data: bytes, dims: str) -> str:
    """The entries of `dims` naming an index the program uses (check refuses the others), or all
    of them when the program does not parse (check stops at the syntax error first)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            used = set(index_names(ig.parse(data.decode("utf-8"))))
    except (ig.IndexgradError, UnicodeDecodeError, RecursionError):
        return dims
    return ",".join(d for d in dims.split(",") if d.split("=")[0] in used)


def _with_dims(cmd: tuple[str, ...], dims: str) -> tuple[str, ...]:
    return (*cmd, "--dims", dims) if dims else cmd


def run_cli(source: bytes | str, commands=(("grad",), ("check", "--dims", "b=2,i=2"), ("fmt",))) -> list[int]:
    """Each command on the source in a temporary file: exit 0/1/2, never a traceback."""
    data = source.encode("utf-8", "surrogatepass") if isinstance(source, str) else source
    commands = tuple(
        _with_dims(c[:-2], _dims_used(data, c[-1])) if c[-2:-1] == ("--dims",) else c for c in commands
    )
    codes = []
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.idx"
        path.write_bytes(data)
        for cmd in commands:
            out, err = io.StringIO(), io.StringIO()
            with (
                watchdog(),
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(err),
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore")
                code = cli_main([cmd[0], str(path), *cmd[1:]])
            text = out.getvalue() + err.getvalue()
            assert code in (0, 1, 2), f"indexgrad {cmd[0]}: exit {code}\n{text}"
            if "internal error" in text and KNOWN:
                # a crash the core does not handle yet (see KNOWN): only if the API trips over it too
                again = [run_pipeline(path=path, dims_size=n, seed=k) for n in (2, 3) for k in range(3)]
                if any(a.startswith("known:") for a in again):
                    codes.append(-1)
                    continue
            assert "internal error" not in text, f"indexgrad {cmd[0]}:\n{text}"
            assert "Traceback" not in text, f"indexgrad {cmd[0]}:\n{text}"
            if code == 2:
                assert "error" in err.getvalue(), f"indexgrad {cmd[0]} exit 2 without a message"
            codes.append(code)
    return codes


# ---- strategy (a): random programs from the grammar ----------------------------------------------

INDEX_NAMES = ["b", "i", "j", "k"]
TENSOR_NAMES = ["x", "y", "W", "B", "h", "z", "P", "loss", "x.grad", "y.pre", "s"]
LABEL_NAMES = ["lab", "t"]
FUNCTIONS = {
    "relu": 1, "sigmoid": 1, "tanh": 1, "exp": 1, "log": 1, "sqrt": 1, "sin": 1, "cos": 1,
    "abs": 1, "softplus": 1, "step": 1, "sign": 1, "max": 2, "min": 2, "where": 3,
}  # fmt: skip
COMPARISONS = ["<", "<=", ">", ">=", "==", "!="]
UNKNOWN_FUNCTIONS = ["foo", "Relu", "softmax", "x"]
REDUCERS = ["sum", "mean", "max", "min", "logsumexp"]
NUMBERS = ["0", "1", "2", "0.5", "1e-3", "3.", ".5", "2", "1.5", "007", "2E+2", "1e308", "1e400"]
SEPARATORS = ["\n", "\n", "\n", ";", "; ", "\r\n", "\r", "  # note\n", "\n\n", "\t\n"]


class Gen:
    """Draws a program statement by statement, remembering ranks and definitions so that a good share
    of programs are valid and get through to forward and backward; the rest probe the errors."""

    def __init__(self, draw):
        self.draw = draw
        self.ranks: dict[str, int] = {}
        self.defined: list[str] = []
        self.read: set[str] = set()
        self.target = ""

    def pick(self, xs):
        return self.draw(st.sampled_from(xs))

    def chance(self, p: float) -> bool:
        return self.draw(st.integers(0, 999)) < p * 1000

    def rarely(self, p: float) -> bool:
        """A chance p that, unlike `chance`, is not taken by the draws hypothesis starts from (zeros)."""
        return self.draw(st.integers(0, 999)) >= (1 - p) * 1000

    def rank_of(self, name: str) -> int:
        if name not in self.ranks or self.chance(0.03):
            self.ranks.setdefault(name, self.draw(st.integers(0, 3)))
            return self.draw(st.integers(0, 3)) if self.chance(0.03) else self.ranks[name]
        return self.ranks[name]

    def index(self, local: list[str]) -> str:
        r = self.draw(st.integers(0, 43))
        pool = local or INDEX_NAMES
        if r < 32:
            return self.pick(pool)
        if r < 34:
            return self.pick(INDEX_NAMES)
        if r == 34:
            return f"{self.pick(pool)}+{self.pick(INDEX_NAMES)}"
        if r == 35:
            return f"{self.pick(['2', '3'])}*{self.pick(pool)}+{self.pick(INDEX_NAMES)}"
        if r == 36:
            return f"{self.pick(pool)}{self.pick(['+1', '-1', '+0', '*2', '-2*k', ' + 2*j'])}"
        if r == 37:
            return self.pick(["0", "1", "-1", "+j", "i-j"])
        if r == 38:  # SPEC 9: a boundary mode
            mode = self.pick(["pad", "clamp", "wrap", "foo"])
            return f"{mode}({self.pick(pool)}{self.pick(['-1', '+j-1', '', '+1', '*2'])})"
        if r == 39:  # integer division and remainder
            return self.pick([f"{self.pick(pool)}//2", f"{self.pick(pool)}%2", f"({self.pick(pool)}+j)//2"])
        if r == 40:  # a plain read written as a shift by 0
            return f"{self.pick(pool)}+0"
        if r == 41:  # a label indexed by arithmetic
            return f"{self.pick(LABEL_NAMES)}[{self.pick(pool)}+{self.pick(['0', '1', 'j'])}]"
        return f"{self.pick(LABEL_NAMES)}[{self.pick(pool)}]"  # a gather

    def ref(self, local: list[str], indices: list[str] | None = None) -> str:
        inputs = [n for n in TENSOR_NAMES if n not in self.defined and n != self.target]
        pool = self.defined * 3 + inputs[:4]
        name = self.pick(pool) if pool and self.chance(0.95) else self.pick(TENSOR_NAMES)
        self.read.add(name)
        rank = self.rank_of(name)
        if indices is not None and len(indices) == rank:
            idx = list(indices)
        else:
            idx = [self.index(local) for _ in range(rank)]
        if not idx:
            return name if self.chance(0.8) else f"{name}[]"
        return f"{name}[" + self.pick([",", ", "]).join(idx) + "]"

    def core_ref(self, left: list[str]) -> str:
        """A reference with exactly the left side's indices (permuted), from a tensor of that rank."""
        fits = [n for n in self.defined if self.ranks.get(n) == len(left)]
        fresh = [n for n in TENSOR_NAMES if n not in self.ranks and n != self.target]
        if fits and (not fresh or self.chance(0.6)):
            name = self.pick(fits)
        elif fresh:
            name = self.pick(fresh)
            self.ranks[name] = len(left)
        else:
            return self.ref(left, left)
        self.read.add(name)
        idx = self.draw(st.permutations(left)) if left else []
        return f"{name}[{', '.join(idx)}]" if idx else name

    def expr(self, local: list[str], depth: int) -> str:
        r = self.draw(st.integers(0, 14 if depth > 0 else 3))
        if r <= 2:
            return self.ref(local)
        if r == 3:
            return self.pick(NUMBERS)
        if r in (4, 5):
            op = self.pick([" ", " ", " * ", " / ", "*", " "])
            return f"{self.expr(local, depth - 1)}{op}{self.expr(local, depth - 1)}"
        if r in (6, 7):
            op = self.pick([" + ", " - ", "+", "-"])
            return f"{self.expr(local, depth - 1)}{op}{self.expr(local, depth - 1)}"
        if r == 8:
            name = self.pick(list(FUNCTIONS) * 3 + UNKNOWN_FUNCTIONS)
            arity = FUNCTIONS.get(name, 1)
            if self.chance(0.05):
                arity = self.draw(st.integers(0, 3))
            args = ", ".join(self.expr(local, depth - 1) for _ in range(arity))
            return f"{name}({args})"
        if r == 9:
            red = self.pick(REDUCERS)
            free = [n for n in INDEX_NAMES if n not in local] or INDEX_NAMES
            names = self.draw(st.lists(st.sampled_from(free), min_size=1, max_size=2, unique=True))
            if self.chance(0.02):
                names = []
            body = self.ref(local + names, local + names)
            if self.chance(0.5):
                body = f"{body}{self.pick([' ', ' + ', ' - ', ' / '])}{self.expr(local + names, depth - 1)}"
            return f"{red}[{','.join(names)}]({body})"
        if r == 10:
            exp = self.pick(["2", "3", "0.5", "-1", "(-2)", "+2", "0", "1e3"])
            base = self.pick([self.ref(local), f"({self.expr(local, depth - 1)})", self.pick(NUMBERS)])
            return f"{base}{self.pick(['^', '**', ' ^ '])}{exp}"
        if r == 11:
            return f"({self.expr(local, depth - 1)})"
        if r == 12:
            return f"-{self.expr(local, depth - 1)}"
        if r == 13:
            k = self.pick(local or INDEX_NAMES)
            return self.pick([f"size[{k}]", f"sqrt(size[{k}])", f"(size[{k}] - 1)", f"log(size[{k}] + 1)"])
        if r == 14 and depth > 0 and self.chance(0.4):  # SPEC 9: comparisons, delta
            if self.chance(0.5):
                left, right = self.expr(local, depth - 1), self.expr(local, depth - 1)
                return f"({left} {self.pick(COMPARISONS)} {right})"
            a, b = self.pick(local or INDEX_NAMES), self.pick(INDEX_NAMES)
            return f"delta[{a},{self.pick([b, b + '+1', a])}]"
        return f"{self.expr(local, depth - 1)} {self.pick(['*', ''])} ({self.expr(local, depth - 1)})"

    def statement(self) -> str:
        fresh = [n for n in TENSOR_NAMES if n not in self.read and n not in self.defined]
        name = self.pick(fresh) if fresh and self.chance(0.9) else self.pick(TENSOR_NAMES)
        op = "+=" if self.chance(0.12) else "="
        rank = self.rank_of(name)
        if self.chance(0.95):
            left = self.draw(st.permutations(INDEX_NAMES))[:rank]
        else:
            left = [self.index([]) for _ in range(rank)]
        self.target = name
        depth = self.draw(st.integers(0, 3))
        if self.chance(0.85):  # a reference that gives every left index its size, then more
            rhs = self.core_ref(left)
            if self.chance(0.7):
                rhs += self.pick([" ", " + ", " - ", " * ", " / "]) + self.expr(left, depth)
            if self.chance(0.3):
                name_f = self.pick([f for f, a in FUNCTIONS.items() if a == 1])
                rhs = f"{name_f}({rhs})"
        else:
            rhs = self.expr(left, depth)
        self.defined.append(name)
        self.target = ""
        target = f"{name}[{', '.join(left)}]" if left else self.pick([name, name, f"{name}[]"])
        return f"{target} {op} {rhs}"

    def declaration(self) -> str:
        role = self.pick(["param", "input"])
        refs = []
        for _ in range(self.draw(st.integers(1, 3))):
            name = self.pick(TENSOR_NAMES)
            self.read.add(name)
            rank = self.rank_of(name)
            refs.append(name if rank == 0 else f"{name}[{','.join(INDEX_NAMES[:rank])}]")
        return f"{role} {', '.join(refs)}"


    def definition(self) -> str:
        """A definition (SPEC 10) whose body is drawn like a program, its arguments what the body
        reads, and uses of it; some with a name, a count or a rank that is wrong, or a body line
        that is not indented, to probe those errors."""
        inner = Gen(self.draw)
        body = [inner.statement() for _ in range(self.draw(st.integers(1, 3)))]
        outputs = inner.defined[-self.draw(st.integers(1, 2)) :]
        reads = sorted(n for n in inner.read if n not in inner.defined)
        params = [n for n in reads if self.chance(0.3)]
        labels = [n for n in LABEL_NAMES if any(f"{n}[" in line for line in body)]
        inner.ranks.update({n: 1 for n in labels})  # read as lab[i] in index positions
        args = [n for n in reads if n not in params] + labels or [self.pick(TENSOR_NAMES)]
        written = {}  # an output's header is written as the body first defines it
        for line in reversed(body):
            target = line.split(" = ", 1)[0].split(" += ", 1)[0]
            written[target.split("[", 1)[0]] = target.replace(" ", "")

        def header_ref(n: str) -> str:
            if n in written and n in outputs:
                return written[n]
            rank = inner.ranks.get(n, 0)
            return f"{n}[{','.join(INDEX_NAMES[:rank])}]" if rank else n

        name = self.pick(DEF_NAMES)
        indent = self.pick(["  ", "    ", "\t", "        "])
        lines = [f"def {name}({', '.join(map(header_ref, args))}) -> {', '.join(map(header_ref, outputs))}:"]
        if params:
            lines.append(indent + "param " + ", ".join(map(header_ref, params)))
        lines += [("" if self.rarely(0.03) else indent) + line for line in body]
        for u in range(self.draw(st.integers(1, 2))):
            passed = []
            for n in args[: len(args) - (1 if self.rarely(0.03) else 0)]:
                rank = inner.ranks.get(n, 0) + (1 if self.rarely(0.03) else 0)
                names = self.draw(st.permutations(USE_INDEX_NAMES))[:rank]
                passed.append(self.ref(list(names), list(names)) if self.rarely(0.2) else f"{n}{_idx(names)}")
            targets = []
            for k, n in enumerate(outputs):
                names = self.draw(st.permutations(USE_INDEX_NAMES))[: inner.ranks.get(n, 0)]
                target = f"u{u}{'abc'[k]}"
                self.ranks[target] = len(names)
                self.defined.append(target)
                targets.append(f"{target}{_idx(names)}")
            lines.append(f"{', '.join(targets)} = {name}({', '.join(passed)})")
        return "\n" + "\n".join(lines) + "\n"


DEF_NAMES = ["layer", "layer", "layer", "cell", "f", "relu"]
USE_INDEX_NAMES = ["b", "i", "j", "k", "d", "h"]


def _idx(names: list[str]) -> str:
    return f"[{','.join(names)}]" if names else ""


@st.composite
def programs(draw) -> str:
    g = Gen(draw)
    items = []
    if draw(st.booleans()):
        items.append("# a random program")
    for _ in range(draw(st.integers(0, 2))):
        items.append(g.declaration())
    if draw(st.integers(0, 3)) == 0:
        items.append(g.definition())
    if draw(st.integers(0, 4)) == 0:  # SPEC 9: a fixed extent
        items.append(f"dim {draw(st.sampled_from(['k', 'j', 'u']))}={draw(st.integers(1, 3))}")
    for _ in range(draw(st.integers(1, 5))):
        items.append(g.statement())
    text = ""
    for it in items:
        text += it + draw(st.sampled_from(SEPARATORS))
    if draw(st.integers(0, 9)) == 0:
        text = text.rstrip("\n;\r")  # no final newline
    if draw(st.integers(0, 9)) == 0:
        text = text.replace(" = ", " = \\\n    ", 1)  # a line continuation
    return text


# ---- strategy (b): random mutations of the examples ----------------------------------------------

PALETTE = (
    list("[](),;=+-*/^#.:_ \t\r\n0123456789eE")
    + list("abijkxyzWB")
    + ["**", "+=", "sum[", "max(", "log(", "\\\n"]
    + ["//", "%", "<", ">=", "!=", "pad(", "wrap(", "delta[", "where(", "dim u=2\n", "size["]
    + ["é", "λ", "∑", "\u00a0", "\u200b", "\x00", "\x7f", "\ufeff", "\u2028", "\x0c", "\x85"]
)
BYTE_PALETTE = [bytes([b]) for b in b"[](),;=+-*/^# \t\r\n09ai"] + [
    b"\x00", b"\xff", b"\xc3", b"\xe2\x82", b"\xef\xbb\xbf", b"\x80", b"\xc3\xa9",
]  # fmt: skip


@st.composite
def char_mutants(draw) -> tuple[str, str]:
    name = draw(st.sampled_from(sorted(EXAMPLE_TEXT)))
    text = EXAMPLE_TEXT[name].decode("utf-8")
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["insert", "delete", "replace", "duplicate", "cut"]))
        pos = draw(st.integers(0, len(text)))
        piece = draw(st.sampled_from(PALETTE))
        if kind == "insert":
            text = text[:pos] + piece + text[pos:]
        elif kind == "delete":
            text = text[:pos] + text[pos + 1 :]
        elif kind == "replace":
            text = text[:pos] + piece + text[pos + 1 :]
        elif kind == "duplicate":
            end = draw(st.integers(pos, min(len(text), pos + 40)))
            text = text[:end] + text[pos:end] + text[end:]
        else:
            end = draw(st.integers(pos, min(len(text), pos + 20)))
            text = text[:pos] + text[end:]
    return name, text


@st.composite
def byte_mutants(draw) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(EXAMPLE_TEXT)))
    data = bytearray(EXAMPLE_TEXT[name])
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        if draw(st.booleans()):
            piece = draw(st.sampled_from(BYTE_PALETTE) | st.binary(min_size=1, max_size=3))
            data[pos:pos] = piece
        else:
            del data[pos : pos + draw(st.integers(1, 3))]
    return name, bytes(data)


# ---- sanity of the harness itself ---------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_go_through(path: Path) -> None:
    """The pipeline takes every example through to the end (the mutants start from working files)."""
    out = run_pipeline(path=path, dims_size=3)
    assert out in ("ok", "error:forward"), out  # composite.idx's log may see a negative argument


def test_generated_programs_reach_the_end() -> None:
    """The generator is not so wild that nothing gets past the checker."""
    stages: Counter[str] = Counter()

    @given(programs())
    @budget(150)
    def collect(text: str) -> None:
        stages[run_pipeline(text)] += 1

    collect()
    assert stages["ok"] >= 10, stages


# ---- the quick runs (default profile) -------------------------------------------------------------
# a sample on every make test of what make fuzz runs thousands of (test_fuzz_programs_full,
# test_fuzz_mutants_full, test_fuzz_bytes_fast, test_fuzz_cli, test_fuzz_programs_agree_on_torch)


@given(text=programs(), size=st.integers(2, 3), seed=st.integers(0, 3))
@budget(60)
def test_random_programs(text: str, size: int, seed: int) -> None:
    CASES["quick"] += 1
    run_pipeline(text, dims_size=size, seed=seed)


@given(m=char_mutants(), size=st.integers(2, 3))
@budget(60)
def test_mutated_examples(m: tuple[str, str], size: int) -> None:
    CASES["quick"] += 1
    run_pipeline(m[1], filename=m[0], dims_size=size)


@given(m=byte_mutants())
@budget(40)
def test_mutated_bytes_load(m: tuple[str, bytes]) -> None:
    CASES["quick"] += 1
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / m[0]
        path.write_bytes(m[1])
        run_pipeline(path=path, full=False)


@given(src=st.one_of(programs(), char_mutants().map(lambda m: m[1]), byte_mutants().map(lambda m: m[1])))
@budget(25)
def test_cli_never_crashes(src: str | bytes) -> None:
    CASES["quick"] += 1
    run_cli(src)


def test_cli_on_bad_files() -> None:
    """Files that are not programs at all: empty, binary, NUL, a BOM, a lone CR, deeply nested."""
    for data in [
        b"",
        b"\x00",
        b"\xff\xfe\x00y\x00",
        b"\xef\xbb\xbfy = x[i]\n",
        b"\r",
        b"y = " + b"(" * 5000 + b"x" + b")" * 5000,
        b"y = " + b"-" * 20000 + b"x",
        b"y = " + b" + ".join(b"x%d" % k for k in range(3000)),
        b"y[" + b",".join(b"i%d" % k for k in range(64)) + b"] = x[i0]",
        bytes(range(256)),
    ]:
        run_cli(data)


def agree_on_torch(text: str, size: int, seed: int) -> str:
    """A program from the grammar that compiles, on random inputs: the torch backend gives the
    numpy backend's results (tests/agree.py), or refuses what numpy refuses."""
    with watchdog(), warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        dims = {n: size for n in "abcdhijkluvnors"}
        try:
            prog = ig.parse(text, "fuzz.idx")
            ig.compile(prog)
            if not small_enough(prog, dims):
                return "too-large"
            arrays = random_inputs(prog, dims, np.random.default_rng(seed))
        except ig.IndexgradError:
            return "refused"
        return assert_backends_agree(prog, arrays, rng=np.random.default_rng(seed))


@given(text=programs(), size=st.integers(2, 3), seed=st.integers(0, 3))
@budget(60)
def test_random_programs_agree_on_torch(text: str, size: int, seed: int) -> None:
    agree_on_torch(text, size, seed)


# ---- the long runs (make fuzz) ---------------------------------------------------------------------
# The fast path (parse, print, parse back, derive, print, parse back) runs at several hundred cases a
# second, the full path (compile, forward, backward, jvp) at ~50-100.  Together they pass 100,000.

FAST = 40_000
FULL = 8_000
CLI = 2_000


@pytest.mark.fuzz
@long_only
@given(text=programs())
@budget(FAST)
def test_fuzz_programs_fast(text: str) -> None:
    CASES["programs_fast"] += 1
    run_pipeline(text, full=False)


@pytest.mark.fuzz
@long_only
@given(m=char_mutants())
@budget(FAST)
def test_fuzz_mutants_fast(m: tuple[str, str]) -> None:
    CASES["mutants_fast"] += 1
    run_pipeline(m[1], filename=m[0], full=False)


@pytest.mark.fuzz
@long_only
@given(m=byte_mutants())
@budget(FAST // 2)
def test_fuzz_bytes_fast(m: tuple[str, bytes]) -> None:
    CASES["bytes_fast"] += 1
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / m[0]
        path.write_bytes(m[1])
        run_pipeline(path=path, full=False)


@pytest.mark.fuzz
@long_only
@given(text=programs(), size=st.integers(2, 3), seed=st.integers(0, 10))
@budget(FULL)
def test_fuzz_programs_full(text: str, size: int, seed: int) -> None:
    CASES["programs_full"] += 1
    run_pipeline(text, dims_size=size, seed=seed)


@pytest.mark.fuzz
@long_only
@given(text=programs(), size=st.integers(2, 3), seed=st.integers(0, 10))
@budget(FULL // 4)
def test_fuzz_programs_agree_on_torch(text: str, size: int, seed: int) -> None:
    agree_on_torch(text, size, seed)


@pytest.mark.fuzz
@long_only
@given(m=char_mutants(), size=st.integers(2, 3))
@budget(FULL)
def test_fuzz_mutants_full(m: tuple[str, str], size: int) -> None:
    CASES["mutants_full"] += 1
    run_pipeline(m[1], filename=m[0], dims_size=size)


@pytest.mark.fuzz
@long_only
@given(src=st.one_of(programs(), char_mutants().map(lambda m: m[1]), byte_mutants().map(lambda m: m[1])))
@budget(CLI)
def test_fuzz_cli(src: str | bytes) -> None:
    CASES["cli"] += 1
    run_cli(src)


@pytest.mark.fuzz
@long_only
@given(seed=st.integers(40, 2**32))
@budget(2_000)
def test_fuzz_planned_calls_repeat(seed: int) -> None:
    """Layered programs: planned (fused) calls give the first call's bits (see test_plan)."""
    from test_plan import planned_calls_repeat

    planned_calls_repeat(seed)


# The CLI interrupted (Ctrl-C, kill -9) at random moments and writing to a full disk (a file size
# limit, RLIMIT_FSIZE, as the kernel enforces it): each run must end in 0, 2 or 130 (or -9 when
# killed) without a traceback, every output must be the old file or a whole new one, and the next
# uninterrupted run must leave no temporary behind.

INTERRUPTED = 100  # each runs the command two or three times: about 10 s
WRITERS = {
    "run": (["run", "p.idx", "--inputs", "in.npz", "--out", "out.npz"], ["out.npz"]),
    "train": (
        ["train", str(ROOT / "examples" / "mlp.idx"), "--epochs", "3", "--hidden", "8"]
        + ["--save", "out.npz", "--force", "--plot", "out.png"],
        ["out.npz", "out.png"],
    ),
}


def _whole(path: Path) -> bool:
    """Whether an output is a complete file of its kind: an .npz numpy reads, a PNG to its end."""
    if path.suffix == ".png":
        return path.read_bytes().endswith(b"IEND\xaeB`\x82")
    try:
        with np.load(path, allow_pickle=False) as z:
            return bool(z.files) and all(z[k].size >= 0 for k in z.files)
    except Exception:
        return False


@pytest.mark.fuzz
@long_only
@given(
    command=st.sampled_from(sorted(WRITERS)),
    signum=st.sampled_from([None, signal.SIGINT, signal.SIGKILL]),
    delay=st.floats(0.0, 2.5),
    fsize=st.one_of(st.none(), st.integers(0, 60_000)),
)
@settings(max_examples=INTERRUPTED, deadline=None, suppress_health_check=HEALTH, print_blob=True)
def test_fuzz_cli_interrupted_and_on_a_full_disk(
    command: str, signum: int | None, delay: float, fsize: int | None
) -> None:
    import subprocess
    import time

    from test_hostile import limited

    CASES["interrupted"] += 1
    argv, outputs = WRITERS[command]
    argv = [sys.executable, "-m", "indexgrad", *argv]
    with tempfile.TemporaryDirectory() as d:
        here = Path(d)
        (here / "p.idx").write_text("y[i,j] = tanh(x[i] z[j])\nloss = sum[i,j](y[i,j])\n")
        np.savez(here / "in.npz", x=np.arange(300.0), z=np.arange(200.0))
        if CASES["interrupted"] % 2:  # half the time over outputs of an earlier run
            subprocess.run(argv, cwd=here, capture_output=True, timeout=300, check=True)
        before = {name: (here / name).read_bytes() for name in outputs if (here / name).exists()}
        limit = None if fsize is None else limited(fsize)
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        proc = subprocess.Popen(argv, cwd=here, **pipes, preexec_fn=limit)  # type: ignore[call-overload]
        if signum is not None:
            time.sleep(delay)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)
        _, err = proc.communicate(timeout=300)
        text = err.decode(errors="replace")
        allowed = {0, 2, 130} | ({-signal.SIGKILL} if signum == signal.SIGKILL else set())
        if signum == signal.SIGINT and text == "":
            allowed.add(-signal.SIGINT)  # before the interpreter set its handler: ended as by the shell
        assert proc.returncode in allowed, (proc.returncode, text)
        assert "Traceback" not in text and "internal error" not in text, text
        if fsize is not None and proc.returncode == 2:
            assert "File too large" in text or "cannot write" in text, text
        for name in outputs:
            path = here / name
            if path.exists():
                assert path.read_bytes() == before.get(name) or _whole(path), (name, text)
            else:
                assert name not in before, (name, text)
        again = subprocess.run(argv, cwd=here, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert all(_whole(here / name) for name in outputs)
        assert not list(here.glob(".*.tmp")), sorted(p.name for p in here.iterdir())


@pytest.mark.fuzz
@long_only
def test_fuzz_case_count() -> None:
    """Runs last in `make fuzz`: writes the case count and checks the run reached 100,000 cases."""
    long_tests = ["programs_fast", "mutants_fast", "bytes_fast", "programs_full", "mutants_full", "cli"]
    total = sum(CASES[k] for k in long_tests)
    report = "\n".join(f"{k}: {CASES[k]}" for k in long_tests) + f"\ntotal: {total}\n"
    out = ROOT / ".hypothesis"
    out.mkdir(exist_ok=True)
    (out / "fuzz-cases.txt").write_text(report)
    print(report)
    if all(CASES[k] for k in long_tests):  # the whole long run, not a -k selection of it
        assert total >= FUZZ_TARGET, report


# ---- regressions: every crash found, replayed --------------------------------------------------


def regression_cases() -> list:
    out = []
    for path in sorted(REGRESSIONS.glob("*.idx")):
        marks = [pytest.mark.xfail(strict=True, reason=r) for r in header(path, "xfail")]
        out.append(pytest.param(path, marks=marks, id=path.name))
    return out


@pytest.mark.parametrize("path", regression_cases())
def test_regression(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each reproducer gives a result or a placed IndexgradError, through the API and the CLI."""
    monkeypatch.setattr(sys.modules[__name__], "KNOWN", {})  # here a known crash is a failure
    for size in (2, 3):
        run_pipeline(path=path, dims_size=size)
    run_cli(path.read_bytes())
