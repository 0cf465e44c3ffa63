"""The playground's JSON requests (SPEC 12) as plain functions from a request dict to (status, reply)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from .derive import derive_for, derive_jvp, forward_statements
from .errors import IndexgradError, IndexgradWarning
from .gradcheck import check_program
from .graph_svg import graph_svg
from .latex import program_latex
from .nodes import Program
from .printout import program_text
from .shapes import parse_dims, parse_names
from .syntax import parse
from .tools import check_dims, check_ranks, computation_graph, cost_report, cost_text

FILENAME = "playground.idx"  # how messages name the editor's text; nothing is read from it


class RequestError(Exception):
    """A request the API cannot read (not a mistake in the program): HTTP 400 with the message."""


def diagnostic(e: IndexgradError, severity: str = "error") -> dict[str, Any]:
    """One error or warning as the page underlines it: 1-based line and column, and where it ends."""
    sp = e.span
    return {
        "line": sp.line if sp else None,
        "column": sp.column if sp else None,
        "end_line": sp.end_line if sp else None,
        "end_column": sp.end_column if sp else None,
        "severity": severity,
        "message": e.message,
    }


def _warnings(p: Program) -> list[dict[str, Any]]:
    return [diagnostic(IndexgradError(w.message, w.span), "warning") for w in p.warnings]


# ---- reading a request -----------------------------------------------------------------------

FIELDS = {
    "derive": ("source", "mode", "loss", "wrt"),
    "check": ("source", "dims", "loss", "seed"),
    "cost": ("source", "dims", "loss", "wrt"),
    "graph": ("source", "grad", "loss", "wrt"),
}


def _fields(kind: str, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object, e.g. {\"source\": \"y = x[i]\"}")
    unknown = [k for k in body if k not in FIELDS[kind]]
    if unknown:
        raise RequestError(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)}; "
            f"/api/{kind} reads {', '.join(FIELDS[kind])}"
        )
    if not isinstance(body.get("source"), str):
        raise RequestError("'source' must be the program's text, a string")
    return body


def _text(body: dict[str, Any], name: str) -> str | None:
    v = body.get(name)
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise RequestError(f"'{name}' must be a string")
    return v.strip() or None


def _wrt(body: dict[str, Any]) -> list[str] | None:
    """`wrt` as the CLI's comma-separated text or as a list of names."""
    v = body.get("wrt")
    if isinstance(v, list):
        if not all(isinstance(n, str) for n in v):
            raise RequestError("'wrt' must be a list of input names or a comma-separated string")
        v = ",".join(v)
    return parse_names(_text({"wrt": v}, "wrt"))


def _dims(body: dict[str, Any]) -> dict[str, int]:
    """`dims` as the CLI's `b=4,i=3` or as an object {"b": 4}; both checked by the CLI's reader."""
    v = body.get("dims")
    if isinstance(v, dict):
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in v.values()):
            raise RequestError("'dims' sizes must be whole numbers, e.g. {\"b\": 4}")
        v = ",".join(f"{k}={n}" for k, n in v.items())
    return parse_dims(_text({"dims": v}, "dims"))


# ---- the requests ----------------------------------------------------------------------------


def derive(body: dict[str, Any]) -> dict[str, Any]:
    """The gradient (mode "grad") or tangent ("jvp") program as .idx text and as LaTeX."""
    mode = body.get("mode") or "grad"
    if mode not in ("grad", "jvp"):
        raise RequestError(f"'mode' must be \"grad\" or \"jvp\", got {mode!r}")
    p = parse(body["source"], FILENAME)
    wrt = _wrt(body)
    if mode == "grad":
        loss = _text(body, "loss")
        d = derive_for(p, [loss] if loss else [], wrt)
        forward = forward_statements(p, d)
        idx = program_text(forward, d, "idx", "gradients", source=p)
    else:
        d, forward = derive_jvp(p, wrt), []
        idx = program_text([], d, "idx", "tangents", uses=p)
    return {
        "idx": idx,
        "latex": program_latex(forward, d.statements),
        "source_latex": program_latex([], p.statements),
        "diagnostics": _warnings(p),
    }


def check(body: dict[str, Any]) -> dict[str, Any]:
    """`indexgrad check`: derived gradients against finite differences on random inputs."""
    seed = body.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise RequestError("'seed' must be a non-negative whole number")
    dims = _dims(body)
    p = parse(body["source"], FILENAME)
    report, checked = check_program(p, dims, _text(body, "loss"), seed)
    return {
        "ok": report.ok,
        "errors": report.errors,
        "tolerance": report.tolerance,
        "checked": checked,
        "diagnostics": _warnings(p),
    }


def cost(body: dict[str, Any]) -> dict[str, Any]:
    """`indexgrad cost`: FLOPs per statement forward and backward for the sizes in `dims`."""
    dims = _dims(body)
    p = parse(body["source"], FILENAME)
    check_ranks(p)
    check_dims(p, dims)
    report = cost_report(p, dims, _text(body, "loss"), _wrt(body))
    return {"report": report, "text": cost_text(report), "diagnostics": _warnings(p)}


def graph(body: dict[str, Any]) -> dict[str, Any]:
    """The computation graph as SVG; with `grad`, the backward program overlaid."""
    grad = body.get("grad", False)
    if not isinstance(grad, bool):
        raise RequestError("'grad' must be true or false")
    p = parse(body["source"], FILENAME)
    g = computation_graph(p, grad, _text(body, "loss"), _wrt(body))
    return {"svg": graph_svg(g), "diagnostics": _warnings(p)}


REQUESTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "derive": derive,
    "check": check,
    "cost": cost,
    "graph": graph,
}

# what a reply holds besides diagnostics when the program has an error
EMPTY: dict[str, dict[str, Any]] = {
    "derive": {"idx": "", "latex": "", "source_latex": ""},
    "check": {"ok": None, "errors": {}, "tolerance": None, "checked": 0},
    "cost": {"report": None, "text": ""},
    "graph": {"svg": ""},
}


def handle(kind: str, body: Any) -> tuple[int, dict[str, Any]]:
    """Answer one request: 200 with diagnostics for any mistake in the program or its sizes, 400 for
    a request that is not one, 500 (saying so) for a bug in indexgrad."""
    try:
        fields = _fields(kind, body)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", IndexgradWarning)  # reported as diagnostics instead
            return 200, REQUESTS[kind](fields)
    except RequestError as e:
        return 400, {"error": str(e)}
    except IndexgradError as e:
        return 200, EMPTY[kind] | {"diagnostics": [diagnostic(e)]}
    except MemoryError:
        message = "this program needs more memory than the playground allows; use smaller dims"
        return 200, EMPTY[kind] | {"diagnostics": [diagnostic(IndexgradError(message))]}
    except RecursionError:
        message = "this program nests too deeply for the playground"
        return 200, EMPTY[kind] | {"diagnostics": [diagnostic(IndexgradError(message))]}
    except Exception as e:  # a bug in indexgrad, not the user's: say so as the CLI does
        return 500, {"error": f"internal error: {type(e).__name__}: {e}; this is a bug in indexgrad"}
