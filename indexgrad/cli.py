"""The `indexgrad` command: grad, jvp, check, run, fmt (and more), exit 0 / 1 / 2."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .derive import default_loss, derive_for, derive_jvp, forward_statements
from .errors import IndexgradError, IndexgradWarning, render
from .files import check_writable, load_npz, refuse_overwrite, same_file, save_npz_atomic
from .gradcheck import check_program
from .lower import lower, prim_statement
from .model import Model
from .nodes import Program
from .printer import format_program
from .printout import program_text, statements_json
from .shapes import Listed, parse_dims, parse_names, tensor_name
from .syntax import load
from .tools import add_iteration_flags, check_dims, check_ranks

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
BACKEND_HELP = "the array library that runs the program: numpy (default), torch or jax"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"indexgrad: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _diagnostic(e: IndexgradError, severity: str = "error") -> dict[str, Any]:
    sp = e.span
    return {
        "file": e.filename,
        "line": sp.line if sp else None,
        "column": sp.column if sp else None,
        "end": [sp.end_line, sp.end_column] if sp else None,
        "severity": severity,
        "code": "indexgrad",
        "message": e.message,
        "rendered": render(e.message, sp, e.filename, e.source, severity),  # FILE:LINE:COL, line, caret
    }


def _warn(program: Program, fmt: str) -> None:
    for w in program.warnings:
        if fmt == "json":
            err = IndexgradError(w.message, w.span, program.filename, program.source)
            print(json.dumps(_diagnostic(err, "warning")), file=sys.stderr)
        else:
            print(
                render(w.message, w.span, program.filename, program.source, "warning"),
                file=sys.stderr,
            )


def cmd_fmt(a: argparse.Namespace) -> int:
    """Canonical text of each file; with several files, each after a `# file:` comment line.

    A file with an error is reported (as the others) and skipped; the exit status is then 2.
    """
    failed = False
    for n, path in enumerate(a.file):
        try:
            p = load(path)
        except IndexgradError as e:
            if len(a.file) == 1:
                raise
            print(json.dumps(_diagnostic(e)) if a.format == "json" else str(e), file=sys.stderr)
            failed = True
            continue
        _warn(p, a.format)
        if a.format == "json":
            data: dict[str, Any] = {"file": path} if len(a.file) > 1 else {}
            print(json.dumps({**data, "statements": statements_json(p.statements, p)}, indent=2))
        elif a.format == "latex":
            from .latex import program_latex

            print(program_latex([], p.statements))
        else:
            if len(a.file) > 1:
                print(("\n" if n else "") + f"# file: {path}")
            print(format_program(p, comments=True), end="")
    return EXIT_USAGE if failed else EXIT_OK


CODE_FORMATS = ["numpy", "torch", "jax"]


def _code(a: argparse.Namespace, p: Program, mode: str) -> str | None:
    """For --format numpy|torch|jax, the derived program as a module of that library's calls,
    planned for the sizes --dims gives; None for the formats that print the language."""
    if a.format not in CODE_FORMATS:
        if a.dims:
            formats = "|".join(CODE_FORMATS)
            raise IndexgradError(f"--dims sizes generated code: give it with --format {formats}")
        return None
    if getattr(a, "order", 1) != 1:
        raise IndexgradError(
            f"--format {a.format} writes first derivatives; --order 2 prints as idx, latex or json"
        )
    from .codegen import to_python

    dims = parse_dims(a.dims)
    check_ranks(p)
    check_dims(p, dims)
    return to_python(p, a.format, mode, dims, getattr(a, "loss", None), parse_names(a.wrt))


def cmd_grad(a: argparse.Namespace) -> int:
    p = load(a.file)
    _warn(p, a.format)
    code = _code(a, p, "grad")
    if code is not None:
        print(code, end="")
        return EXIT_OK
    wrt = parse_names(a.wrt)
    losses = [a.loss] if a.loss else []
    d = derive_for(p, losses, wrt)
    forward = forward_statements(p, d)
    if a.order == 2:
        both = Program(
            p.decls, tuple(prim_statement(q) for q in lower(p)) + d.statements, p.filename, p.source
        )
        from .check import check

        both = check(both)
        d = derive_jvp(both, wrt)
        forward = [prim_statement(q) for q in lower(both)]
        text = program_text(
            forward, d, a.format, "tangents of the gradients: Hessian-vector products",
            "forward and gradient statements", uses=p,
        )
        print(text, end="")
        return EXIT_OK
    if a.order != 1:
        raise IndexgradError("--order must be 1 or 2")
    print(program_text(forward, d, a.format, "gradients", source=p), end="")
    return EXIT_OK


def cmd_jvp(a: argparse.Namespace) -> int:
    p = load(a.file)
    _warn(p, a.format)
    code = _code(a, p, "jvp")
    if code is not None:
        print(code, end="")
        return EXIT_OK
    d = derive_jvp(p, parse_names(a.wrt))
    print(program_text([], d, a.format, "tangents", uses=p), end="")
    return EXIT_OK


def _check_flags(a: argparse.Namespace) -> None:
    """Refuse a --seed numpy cannot seed with, and a --tolerance that no error could pass or fail."""
    if a.seed < 0:
        raise IndexgradError(f"--seed must be a non-negative integer, got {a.seed}")
    if not (math.isfinite(a.tolerance) and a.tolerance > 0):
        raise IndexgradError(f"--tolerance must be a positive number, got {a.tolerance}")


def _iterations(a: argparse.Namespace) -> dict[str, Any]:
    """--tol and --max-iter: the tolerance and iteration limit of fix and solve."""
    from .iterate import iteration_settings

    return iteration_settings(a.tol, a.max_iter)


def _float64(backend: str) -> contextlib.AbstractContextManager[Any]:
    """check and run with --backend jax compute float64 data in float64, as on numpy and torch:
    the command turns jax's 64-bit mode on (a CLI user cannot call jax.config.update), unless
    the environment variable JAX_ENABLE_X64 says what the user wants."""
    if backend != "jax" or "JAX_ENABLE_X64" in os.environ or importlib.util.find_spec("jax") is None:
        return contextlib.nullcontext()
    import jax

    return jax.enable_x64(True)  # type: ignore[no-any-return]


def cmd_check(a: argparse.Namespace) -> int:
    _check_flags(a)
    dims = parse_dims(a.dims)
    p = load(a.file)
    _warn(p, "text")
    with _float64(a.backend):
        report, checked = check_program(p, dims, a.loss, a.seed, a.tolerance, a.backend, _iterations(a))
    for name, err in report.errors.items():
        status = "ok" if err <= report.tolerance else "MISMATCH"
        print(f"{name}: relative error {err:.2e}  {status}")
    print(
        f"{'passed' if report.ok else 'FAILED'}: "
        f"{checked} input{'' if checked == 1 else 's'} checked against finite differences"
    )
    return EXIT_OK if report.ok else EXIT_FAIL


def cmd_run(a: argparse.Namespace) -> int:
    if a.out is not None:
        if a.out and not a.out.lower().endswith(".npz"):
            message = f"--out {a.out!r} must end in .npz: the outputs are written as an .npz archive"
            raise IndexgradError(message)
        check_writable(a.out, "--out")  # before the work, not after it
        refuse_overwrite(a.out, "--out", {"program file": a.file, "inputs file": a.inputs})
    p = load(a.file)
    _warn(p, "text")
    check_ranks(p)
    arrays = load_npz(a.inputs)
    with _float64(a.backend):
        model = Model(p, a.backend, iterations=_iterations(a))
        vals = model.forward(**arrays)
        user = {n: model.engine.to_numpy(vals[n]) for n in p.defined()}
    for n, v in user.items():
        shown = f"{float(v):.6g}" if v.ndim == 0 else f"shape {v.shape} {v.dtype}"
        print(f"{n}: {shown}")
    if a.out:
        save_npz_atomic(a.out, user)
    return EXIT_OK


def _check_trainable(p: Program) -> None:
    """Refuse a program `train` cannot fit: its loss must be one number, and it must read the labels."""
    from .train import check_loss

    if not p.statements:
        raise IndexgradError("the program defines nothing to train", filename=p.filename)
    if not p.integer_inputs() and "Y" not in p.inputs():
        raise IndexgradError(
            "train fits a classifier: the digits data set gives pixels x[b,d] and one-hot labels "
            "Y[b,c] (or integer labels y[b], read as in P[b, y[b]]), but the program reads no labels; "
            "its last tensor, the loss, must compare class scores with them",
            filename=p.filename,
        )
    check_loss(p, default_loss(p))


def _refuse_other_checkpoint(save: str, resume: str | None, force: bool) -> None:
    """Refuse to start a run over an existing file with --save (it would lose that run's epochs)
    unless it is the checkpoint being resumed, or --force says to."""
    if force or not Path(save).exists() or (resume is not None and same_file(save, resume)):
        return
    raise IndexgradError(
        f"--save {save} already exists, and this run would overwrite it from epoch 1; continue it "
        f"with --resume {save}, choose another --save file, or pass --force to overwrite it"
    )


def cmd_train(a: argparse.Namespace) -> int:
    from .digits import train_command
    from .train import check_plot_path

    if a.save is not None:
        check_writable(a.save, "--save")
        refuse_overwrite(a.save, "--save", {"program file": a.file})
        _refuse_other_checkpoint(a.save, a.resume, a.force)
    if a.plot is not None:
        check_writable(a.plot, "--plot")
        check_plot_path(a.plot)
        reads = {"program file": a.file, "checkpoint to resume": a.resume, "checkpoint to save": a.save}
        refuse_overwrite(a.plot, "--plot", reads)
    dims = parse_dims(a.dims)
    p = load(a.file)
    check_ranks(p)
    check_dims(p, dims)
    _check_trainable(p)
    return train_command(
        a.file,
        a.data,
        a.epochs,
        a.lr,
        a.batch,
        a.optimizer,
        a.seed,
        a.plot,
        a.hidden,
        save=a.save,
        resume=a.resume,
        dims=dims,
        backend=a.backend,
        device=a.device,
    )


def cmd_serve(a: argparse.Namespace) -> int:
    try:
        from .serve import serve
    except ImportError as e:
        raise IndexgradError(
            f"indexgrad serve needs Starlette and Uvicorn ({e}); install them with "
            "pip install 'indexgrad[serve]'"
        ) from None
    if not 0 <= a.port <= 65535:
        raise IndexgradError(f"--port must be between 0 and 65535, got {a.port}")
    if a.workers < 1 or not (math.isfinite(a.timeout) and a.timeout > 0):
        raise IndexgradError("--workers must be at least 1 and --timeout a positive number of seconds")
    serve(a.host, a.port, a.workers, a.timeout)
    return EXIT_OK


_FORMAT_HELP = "idx, latex, json; or numpy, torch, jax: a standalone Python module of that library's calls"
_DIMS_HELP = "index sizes the generated module is planned for, e.g. b=64,d=784 (others are 3)"


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="indexgrad",
        description="Layer equations in index notation: derive, print, check and run their gradients.",
    )
    ap.add_argument("--version", action="version", version=f"indexgrad {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    fmts = ["idx", "latex", "json"]

    g = sub.add_parser("grad", help="print the derived gradient program")
    g.add_argument("file")
    g.add_argument("--loss", type=tensor_name)
    g.add_argument("--wrt", action=Listed, help="comma-separated input names")
    g.add_argument("--order", type=int, default=1, help="2 prints the Hessian-vector program")
    g.add_argument("--format", choices=fmts + CODE_FORMATS, default="idx", help=_FORMAT_HELP)
    g.add_argument("--dims", action=Listed, help=_DIMS_HELP)
    g.set_defaults(func=cmd_grad)

    j = sub.add_parser("jvp", help="print the forward-mode (tangent) program")
    j.add_argument("file")
    j.add_argument("--wrt", action=Listed)
    j.add_argument("--format", choices=fmts + CODE_FORMATS, default="idx", help=_FORMAT_HELP)
    j.add_argument("--dims", action=Listed, help=_DIMS_HELP)
    j.set_defaults(func=cmd_jvp)

    c = sub.add_parser("check", help="finite-difference check on random inputs")
    c.add_argument("file")
    c.add_argument("--dims", action=Listed, help="index sizes, e.g. b=4,i=3")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--loss", type=tensor_name)
    c.add_argument("--tolerance", type=float, default=1e-5)
    c.add_argument("--backend", default="numpy", help=BACKEND_HELP)
    add_iteration_flags(c)
    c.set_defaults(func=cmd_check, format="text")

    r = sub.add_parser("run", help="run the program on arrays from an .npz file")
    r.add_argument("file")
    r.add_argument("--inputs", required=True)
    r.add_argument("--out")
    r.add_argument("--backend", default="numpy", help=BACKEND_HELP)
    add_iteration_flags(r)
    r.set_defaults(func=cmd_run, format="text")

    f = sub.add_parser("fmt", help="print the canonical form of one or more files")
    f.add_argument("file", nargs="+")
    f.add_argument("--format", choices=fmts, default="idx")
    f.set_defaults(func=cmd_fmt)

    t = sub.add_parser("train", help="train a model on a built-in data set")
    t.add_argument("file")
    t.add_argument("--data", default="digits")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--optimizer", default="adam")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--hidden", type=int, default=128)
    t.add_argument("--dims", action=Listed, help="sizes of indices the data does not give, e.g. o=8,u=3,v=3")
    t.add_argument("--plot")
    t.add_argument("--save", metavar="CKPT", help="write a checkpoint (.npz) after every epoch")
    t.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint up to --epochs")
    t.add_argument("--backend", default="numpy", help=BACKEND_HELP)
    t.add_argument("--device", help="where it computes: cpu (any backend), cuda (torch), gpu (jax)")
    t.add_argument("--force", action="store_true", help="let --save overwrite a file that is not --resume's")
    t.set_defaults(func=cmd_train, format="text")

    s = sub.add_parser("serve", help="the playground: a web page that derives, draws and checks as you type")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=2, help="processes that answer requests")
    s.add_argument("--timeout", type=float, default=10.0, help="seconds a request may run")
    s.set_defaults(func=cmd_serve, format="text")

    from . import tools

    tools.add_commands(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    try:
        a = ap.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    fmt = getattr(a, "format", "text")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", IndexgradWarning)  # printed with a caret instead
            return int(a.func(a))
    except IndexgradError as e:
        if e.filename is None and e.span is None:  # a flag's or the environment's mistake
            e.filename = f"indexgrad {a.command}"
        if fmt == "json":
            print(json.dumps(_diagnostic(e)), file=sys.stderr)
        else:
            print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("indexgrad: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:  # a bug in indexgrad, not the user's fault: say so without a traceback
        if getattr(signal.getsignal(signal.SIGINT), "interrupted", False):  # see __main__.CtrlC
            print("indexgrad: interrupted", file=sys.stderr)
            return 130
        print(
            f"indexgrad: internal error: {type(e).__name__}: {e}\n"
            "This is a bug in indexgrad; please report it with the input that caused it.",
            file=sys.stderr,
        )
        return EXIT_USAGE

