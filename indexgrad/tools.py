"""Reader tools on the command line: the computation graph (DOT, Mermaid) and the cost report."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import opt_einsum as oe

from .check import all_refs, sized_like
from .derive import derive_for
from .errors import IndexgradError
from .files import atomic_path, check_writable, refuse_overwrite
from .lower import (
    Contract,
    Elementwise,
    Implicit,
    Prim,
    Reduction,
    Terms,
    label_refs,
    lower,
    prim_refs,
    prim_statement,
)
from .nodes import (
    Affine,
    Expr,
    Gather,
    Program,
    Reduce,
    Ref,
    SizeOf,
    Span,
    Statement,
    children,
    ref_index_names,
)
from .plan import path_order, plan_contraction, shapes_after
from .printer import format_index, format_number, format_ref, format_statement
from .shapes import Listed, infer_shapes, parse_dims, parse_names, tensor_name
from .syntax import load

# ---- the computation graph -------------------------------------------------------------------

# kind -> (DOT attributes, Mermaid shape brackets, Mermaid class style); docs/format.md shows them
KINDS: dict[str, tuple[str, tuple[str, str], str]] = {
    "input": (
        'shape=box, style=filled, fillcolor="#dbe9f6"',
        ("[", "]"),
        "fill:#dbe9f6,stroke:#3b6ea5",
    ),
    "label": (
        'shape=box, style="filled,dashed", fillcolor="#dbe9f6"',
        ("[/", "/]"),
        "fill:#dbe9f6,stroke:#3b6ea5,stroke-dasharray:4",
    ),
    "param": (
        'shape=box, style="filled,bold", fillcolor="#fde2b8"',
        ("[[", "]]"),
        "fill:#fde2b8,stroke:#b86e00",
    ),
    "defined": (
        'shape=ellipse, style=filled, fillcolor="#e2f0d9"',
        ("(", ")"),
        "fill:#e2f0d9,stroke:#4b7b2c",
    ),
    "temporary": (
        'shape=ellipse, style="filled,dashed", fillcolor="#f2f2f2", fontsize=9',
        ("([", "])"),
        "fill:#f2f2f2,stroke:#888888,stroke-dasharray:4",
    ),
    "seed": (
        'shape=cds, style=filled, fillcolor="#f8d7da"',
        (">", "]"),
        "fill:#f8d7da,stroke:#a33a3a",
    ),
    "gradient": (
        'shape=hexagon, style=filled, fillcolor="#f8d7da"',
        ("{{", "}}"),
        "fill:#f8d7da,stroke:#a33a3a",
    ),
    "gradient temporary": (
        'shape=ellipse, style="filled,dashed", fillcolor="#fbeaec", fontsize=9',
        ("([", "])"),
        "fill:#fbeaec,stroke:#a33a3a,stroke-dasharray:4",
    ),
}


@dataclass(frozen=True)
class Node:
    """A tensor of the graph: its name, how it is shown (`W[j,i]`) and its kind (a key of KINDS)."""

    name: str
    text: str
    kind: str


@dataclass(frozen=True)
class Edge:
    """One operand of one primitive statement: source tensor, defined tensor, operation label."""

    source: str
    target: str
    label: str
    backward: bool = False


@dataclass
class Graph:
    """The computation DAG of a program: tensors as nodes, statements as labelled edges."""

    title: str
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    _seen: set[Edge] = field(default_factory=set, repr=False)  # edges, for a lookup in constant time

    def add(self, name: str, text: str, kind: str) -> None:
        if name not in self.nodes:
            self.nodes[name] = Node(name, text, kind)

    def connect(self, edge: Edge) -> None:
        if edge not in self._seen:
            self._seen.add(edge)
            self.edges.append(edge)


def _plain(r: Ref) -> bool:
    return all(isinstance(i, Affine) and i.plain is not None for i in r.indices)


def _shown_refs(program: Program, prims: list[Prim]) -> dict[str, str]:
    """How each tensor is shown: its declaration, else its first reference by plain index names."""
    out: dict[str, str] = {}
    for d in program.decls:
        out.setdefault(d.ref.name, format_ref(d.ref))
    refs: list[Ref] = []
    for p in prims:
        refs.append(p.out)
        refs.extend(prim_refs(p))
        refs.extend(label_refs(p))
    for r in refs:
        if _plain(r):
            out.setdefault(r.name, format_ref(r))
    for r in refs:  # a gradient written only through index arithmetic: its tensor's indices
        base = sized_like(r.name)
        if r.name not in out and base in out and "[" in out[base]:
            out[r.name] = r.name + out[base][len(base) :]
        out.setdefault(r.name, r.name)
    return out


def _summed(p: Contract) -> list[str]:
    out = set(ref_index_names(p.out))
    seen: dict[str, None] = {}
    for f, _ in p.factors:
        if isinstance(f, Ref):
            for n in ref_index_names(f):
                if n not in out:
                    seen.setdefault(n, None)
    return list(seen)


def operation_label(p: Prim) -> str:
    """A short name for what a primitive statement does: `× Σj`, `relu`, `+`, `logsumexp[c]`."""
    if isinstance(p, Contract):
        parts = []
        if p.coef != 1:
            parts.append("−" if p.coef == -1 else format_number(p.coef))
        if len(prim_refs(p)) > 1:
            parts.append("×")
        summed = _summed(p)
        if summed:
            parts.append("Σ" + ",".join(summed))
        if any(not isinstance(f, Ref) for f, _ in p.factors):
            parts.append(
                "÷ size" if any(k < 0 for f, k in p.factors if not isinstance(f, Ref)) else "× size"
            )
        text = " ".join(parts)
    elif isinstance(p, Elementwise):
        text = p.func
    elif isinstance(p, Terms):
        text = "+"
    elif isinstance(p, Implicit):
        text = p.method
    else:
        text = f"{p.reducer}[{','.join(p.indices)}]"
    if p.op == "+=":
        text = ("+= " + text).strip() if text != "+" else "+="
    return text


def _edge_labels(p: Prim) -> list[tuple[Ref, str]]:
    """(operand, label) per operand: the operation, plus how this operand is read or scaled."""
    base = operation_label(p)
    out: list[tuple[Ref, str]] = []
    if isinstance(p, Contract):
        for f, k in p.factors:
            if isinstance(f, Ref):
                out.append((f, base + (f" ^{format_number(k)}" if k != 1 else "")))
    elif isinstance(p, Terms):
        for c, u in p.terms:
            if isinstance(u, Ref):
                sign = "−" if c < 0 else "+"
                mag = "" if abs(c) == 1 else f" {format_number(abs(c))}×"
                label = base if (c == 1 and base != "+") else sign + mag
                if p.op == "+=" and not label.startswith("+="):
                    label = "+= " + label
                out.append((u, label))
    else:
        out.extend((r, base) for r in prim_refs(p))
    fixed = []
    for r, label in out:
        if not _plain(r):  # how index arithmetic or a label reads it: `[j+k]`
            label += f" [{','.join(format_index(i) for i in r.indices)}]"
        fixed.append((r, label.strip() or "="))
    return fixed


def computation_graph(
    program: Program, grad: bool = False, loss: str | None = None, wrt: list[str] | None = None
) -> Graph:
    """The DAG of the lowered program; with `grad`, the lowered backward program overlaid."""
    prims = lower(program)
    back_prims: list[Prim] = []
    derived: Program | None = None
    if grad:
        derived = derive_for(program, [loss] if loss else [], wrt)
        back_prims = lower(derived)
    shown = _shown_refs(program, prims + back_prims)
    g = Graph(Path(program.filename).stem if program.filename != "<string>" else "program")
    params, labels, defined = (
        set(program.params()),
        set(program.integer_inputs()),
        set(program.defined()),
    )
    for n in program.inputs():
        g.add(n, shown.get(n, n), "param" if n in params else "label" if n in labels else "input")
    for p in prims:
        for r in [*prim_refs(p), *label_refs(p)]:
            g.add(r.name, shown[r.name], "label" if r.name in labels else "input")
        g.add(p.out.name, shown[p.out.name], "defined" if p.out.name in defined else "temporary")
    if derived is not None:
        grads = set(derived.defined())
        for p in back_prims:
            for r in [*prim_refs(p), *label_refs(p)]:
                g.add(r.name, shown[r.name], "seed")
            g.add(
                p.out.name,
                shown[p.out.name],
                "gradient" if p.out.name in grads else "gradient temporary",
            )
    for backward, ps in ((False, prims), (True, back_prims)):
        for p in ps:
            for r, label in _edge_labels(p):
                if backward and label.startswith("+= "):  # every backward statement is '+='
                    label = label[3:]
                g.connect(Edge(r.name, p.out.name, label, backward))
            for r in label_refs(p):
                g.connect(Edge(r.name, p.out.name, "label", backward))
    return g


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def graph_dot(g: Graph) -> str:
    """Graphviz DOT text: one node statement per tensor, one edge per operand."""
    lines = [
        f"digraph {_dot_quote(g.title)} {{",
        "  rankdir=LR;",
        '  node [fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    for n in g.nodes.values():
        lines.append(
            f"  {_dot_quote(n.name)} [label={_dot_quote(n.text)}, tooltip={_dot_quote(n.kind)}, "
            f"{KINDS[n.kind][0]}];"
        )
    for e in g.edges:
        style = ', color="#a33a3a", fontcolor="#a33a3a", style=dashed' if e.backward else ""
        lines.append(
            f"  {_dot_quote(e.source)} -> {_dot_quote(e.target)} "
            f"[label={_dot_quote(e.label)}{style}];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_ids(g: Graph) -> dict[str, str]:
    ids: dict[str, str] = {}
    taken: set[str] = set()
    for name in g.nodes:
        base = cand = "t_" + re.sub(r"\W", "_", name)
        k = 2
        while cand in taken:
            cand, k = f"{base}_{k}", k + 1
        taken.add(cand)
        ids[name] = cand
    return ids


def _mermaid_text(text: str) -> str:
    return '"' + text.replace('"', "#quot;") + '"'


def graph_mermaid(g: Graph) -> str:
    """Mermaid flowchart text: a node line per tensor, an edge line per operand, classes by kind."""
    ids = _mermaid_ids(g)
    lines = ["flowchart LR"]
    for n in g.nodes.values():
        left, right = KINDS[n.kind][1]
        lines.append(f"  {ids[n.name]}{left}{_mermaid_text(n.text)}{right}")
    for e in g.edges:
        arrow = "-.->" if e.backward else "-->"
        lines.append(f"  {ids[e.source]} {arrow}|{_mermaid_text(e.label)}| {ids[e.target]}")
    used = dict.fromkeys(n.kind for n in g.nodes.values())
    for kind in used:
        cls = kind.replace(" ", "_")
        lines.append(f"  classDef {cls} {KINDS[kind][2]}")
        members = ",".join(ids[n.name] for n in g.nodes.values() if n.kind == kind)
        lines.append(f"  class {members} {cls}")
    return "\n".join(lines) + "\n"


RENDER_FORMATS = ("svg", "png", "pdf")


def render_dot(text: str, out: str) -> None:
    """Draw DOT text into `out` (svg, png or pdf by its suffix) with Graphviz's `dot` program."""
    fmt = Path(out).suffix.lower().lstrip(".")
    if fmt not in RENDER_FORMATS:
        raise IndexgradError(
            f"--render writes {', '.join('.' + f for f in RENDER_FORMATS)} files; got '{out}'"
        )
    exe = shutil.which("dot")
    if exe is None:
        raise IndexgradError(
            "--render needs Graphviz's `dot` program, which is not on PATH; install it with "
            "`apt-get install graphviz` (Debian, Ubuntu), `brew install graphviz` (macOS) or "
            "`conda install graphviz` (`pip install graphviz` installs only Python bindings, not "
            "the program), or leave out --render and pipe the DOT text to another renderer"
        )
    with atomic_path(out) as tmp:  # a failed or killed `dot` leaves no half-drawn file at `out`
        try:
            done = subprocess.run(
                [exe, f"-T{fmt}", "-o", str(tmp)], input=text.encode(), capture_output=True, timeout=120
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise IndexgradError(f"could not run `dot`: {e}") from None
        if done.returncode != 0:
            msg = done.stderr.decode(errors="replace").strip()
            raise IndexgradError(f"`dot` could not write {out}: {msg or _ended(done.returncode)}")


def _ended(status: int) -> str:
    """How a program ended, in words: `exit status 3`, or the signal that killed it (a negative
    status), with what the signal usually means (SIGXFSZ: the file size limit)."""
    if status >= 0:
        return f"exit status {status}"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        return f"killed by signal {-status}"
    meaning = signal.strsignal(-status) or ""
    return f"killed by {name}" + (f" ({meaning.lower()})" if meaning else "")


def _needs_grad(a: argparse.Namespace) -> None:
    """--loss and --wrt say what --grad differentiates: without it they would be dropped unread."""
    if not a.grad and (a.loss or a.wrt):
        flag = "--loss" if a.loss else "--wrt"
        raise IndexgradError(f"{flag} chooses what --grad differentiates; add --grad, or leave out {flag}")


def cmd_graph(a: argparse.Namespace) -> int:
    _needs_grad(a)
    program = load(a.file)
    g = computation_graph(program, a.grad, a.loss, parse_names(a.wrt))
    if a.render is not None:
        check_writable(a.render, "--render")
        if a.format == "mermaid":
            raise IndexgradError(
                "--render draws the DOT graph with Graphviz; leave out --format mermaid"
            )
        refuse_overwrite(a.render, "--render", {"program file": a.file})
        render_dot(graph_dot(g), a.render)
        print(f"wrote {a.render}")
        return 0
    print(graph_mermaid(g) if a.format == "mermaid" else graph_dot(g), end="")
    return 0


# ---- checks of a program against the commands that invent its arrays -------------------------

MAX_RANK = 64  # numpy's most axes (numpy >= 2.0, which the package requires)


def index_names(program: Program) -> list[str]:
    """Every index name a program mentions, in order of first appearance."""
    names: dict[str, None] = {}

    def visit(e: Expr) -> None:
        if isinstance(e, Reduce):
            names.update(dict.fromkeys(e.indices))
        elif isinstance(e, SizeOf):
            names[e.index] = None
        for c in children(e):
            visit(c)

    for r in all_refs(program):
        names.update(dict.fromkeys(ref_index_names(r)))
    for s in program.statements:
        visit(s.expr)
    return list(names)


def check_dims(program: Program, dims: dict[str, int]) -> None:
    """Refuse a --dims name that is no index of the program: a misspelt name would size nothing."""
    known = index_names(program)
    # infer_shapes also reads NAMEaxis (`P1`) for the size of a gathered axis
    refs = all_refs(program)
    gathered = {f"{r.name}{k}" for r in refs for k, i in enumerate(r.indices) if isinstance(i, Gather)}
    unknown = [n for n in dims if n not in known and n not in gathered]
    if unknown:
        which = ", ".join(f"'{n}'" for n in unknown)
        raise IndexgradError(
            f"--dims sizes {which}, which {'is not an index' if len(unknown) == 1 else 'are not indices'} "
            "of the program; its indices: " + (", ".join(known) or "none")
        )


def check_ranks(program: Program) -> None:
    """Refuse a tensor with more indices than a numpy array has axes, at its first reference."""
    for r in all_refs(program):
        if len(r.indices) > MAX_RANK:
            raise IndexgradError(
                f"'{r.name}' has {len(r.indices)} indices: too many dimensions, numpy arrays have at "
                f"most {MAX_RANK}",
                r.span,
                program.filename,
                program.source,
            )


# ---- the cost report -------------------------------------------------------------------------


def _size(names: tuple[str, ...], sizes: dict[str, int]) -> int:
    return int(np.prod([sizes[n] for n in names], dtype=np.int64))


def contraction_cost(p: Contract, sizes: dict[str, int]) -> dict[str, Any]:
    """opt_einsum's figures for one contraction, read as the executor reads it (SPEC 3)."""
    refs = prim_refs(p)
    names = [ref_index_names(r) for r in refs]
    present = {n for nm in names for n in nm}
    kept = tuple(n for n in ref_index_names(p.out) if n in present)
    shapes = [tuple(sizes[n] for n in nm) for nm in names]
    row: dict[str, Any] = {
        "operands": [
            {"name": r.name, "indices": list(nm), "shape": list(s)}
            for r, nm, s in zip(refs, names, shapes)
        ],
        "output": {"indices": list(kept), "shape": [sizes[n] for n in kept]},
    }
    if not refs:
        return row | {
            "path": [],
            "order": "",
            "flops": 0,
            "naive_flops": 0,
            "left_to_right_flops": 0,
            "largest_intermediate": 0,
        }
    plan = plan_contraction(names, kept, shapes)
    if len(refs) > 1:
        flops, naive, largest = plan.flops, plan.naive_flops, plan.largest_intermediate
        ltr = flops
        if len(refs) > 2:
            _, info = oe.contract_path(
                plan.equation, *shapes, shapes=True, optimize=[(0, 1)] * (len(refs) - 1)
            )
            ltr = int(info.opt_cost)
    else:  # opt_einsum's own count for a one-operand sum or copy
        _, info = oe.contract_path(plan.equation, *shapes, shapes=True)
        flops, naive, largest = (
            int(info.opt_cost),
            int(info.naive_cost),
            int(info.largest_intermediate),
        )
        ltr = flops
    return row | {
        "path": [list(s) for s in plan.path],
        "order": path_order(plan.path, [r.name for r in refs]),
        "flops": flops,
        "naive_flops": naive,
        "left_to_right_flops": ltr,
        "largest_intermediate": largest,
    }


def prim_cost(p: Prim, sizes: dict[str, int]) -> dict[str, Any]:
    """Cost of one primitive: opt_einsum's for contractions, one flop per element otherwise."""
    out = _size(ref_index_names(p.out), sizes)
    row: dict[str, Any] = {"statement": format_statement(prim_statement(p))}
    if isinstance(p, Contract):
        return row | {"kind": "contraction"} | contraction_cost(p, sizes)
    if isinstance(p, Elementwise):
        return row | {"kind": "elementwise", "flops": out}
    if isinstance(p, Terms):
        ops = max(1, len(p.terms) - 1) + sum(1 for c, _ in p.terms if abs(c) != 1)
        return row | {"kind": "sum of terms", "flops": ops * out}
    if isinstance(p, Implicit):  # the body's cost, once per iteration
        flops = sum(prim_cost(q, sizes)["flops"] for q in p.body)
        return row | {"kind": f"{p.method} (per iteration)", "flops": flops}
    assert isinstance(p, Reduction)
    return row | {"kind": "reduction", "flops": _size(ref_index_names(p.arg), sizes)}


def _sized(
    prims: list[Prim], shapes: dict[str, tuple[int, ...]], dtypes: dict[str, np.dtype], program: Program
) -> tuple[dict[str, tuple[int, ...]], list[dict[str, int]]]:
    """Every name's shape and each primitive's index sizes, on inputs of these shapes."""
    temps = {p.out.name for p in prims} - set(program.defined())
    try:
        every, _, sizes = shapes_after(prims, shapes, dtypes, temps)
    except IndexgradError as e:
        raise e.located(program.filename, program.source) from None
    return every, sizes


def cost_report(
    program: Program, dims: dict[str, int], loss: str | None = None, wrt: list[str] | None = None
) -> dict[str, Any]:
    """Forward and backward FLOPs per statement for the sizes in `dims` (docs/format.md)."""
    prims = lower(program)
    shapes = infer_shapes(program, dims)
    labels = set(program.integer_inputs())
    dtypes = {n: np.dtype(np.int64 if n in labels else np.float64) for n in shapes}
    every, fwd_sizes = _sized(prims, shapes, dtypes, program)
    derived = derive_for(program, [loss] if loss else [], wrt)
    back = lower(derived)
    shapes2 = dict(every)
    for n in derived.inputs():
        base = sized_like(n)
        if n not in shapes2 and base is not None and base in every:
            shapes2[n] = every[base]
    _, back_sizes = _sized(back, shapes2, dict.fromkeys(shapes2, np.dtype(np.float64)) | dtypes, derived)
    rows: dict[Span, dict[str, Any]] = {}  # by place: each use of a definition has rows of its own
    every: dict[str, set[int]] = {}
    for s in program.statements:
        rows.setdefault(s.span, _row(s))
    for which, ps, szs in (("forward", prims, fwd_sizes), ("backward", back, back_sizes)):
        written: set[str] = set()
        for p, sz in zip(ps, szs):
            for n, v in sz.items():
                every.setdefault(n, set()).add(v)
            row = rows.setdefault(p.span, _other_row())
            c = {"pass": which} | prim_cost(p, sz)
            # '+=' into a tensor that holds values, or a scatter-add, adds once per element written
            adds = p.op == "+=" and (p.out.name in written or not _plain(p.out))
            c["accumulate_flops"] = _size(ref_index_names(p.out), sz) if adds else 0
            written.add(p.out.name)
            row["primitives"].append(c)
            row[f"{which}_flops"] += c["flops"] + c["accumulate_flops"]
    for row in rows.values():
        row["ratio"] = _ratio(row["backward_flops"], row["forward_flops"])
    fwd = sum(r["forward_flops"] for r in rows.values())
    bwd = sum(r["backward_flops"] for r in rows.values())
    return {
        "file": program.filename,
        "sizes": {n: sorted(v)[0] if len(v) == 1 else sorted(v) for n, v in sorted(every.items())},
        "statements": list(rows.values()),
        "totals": {"forward_flops": fwd, "backward_flops": bwd, "ratio": _ratio(bwd, fwd)},
    }


def _row(s: Statement) -> dict[str, Any]:
    return {
        "line": s.span.line or None,
        "statement": format_statement(s),
        "forward_flops": 0,
        "backward_flops": 0,
        "primitives": [],
    }


def _other_row() -> dict[str, Any]:
    return {
        "line": None,
        "statement": "(other)",
        "forward_flops": 0,
        "backward_flops": 0,
        "primitives": [],
    }


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 3) if b else None


def _n(v: int) -> str:
    return f"{v:,}"


def cost_text(report: dict[str, Any]) -> str:
    """The cost report as a table, each statement followed by its contractions."""
    sizes = ", ".join(
        f"{n}={v if isinstance(v, int) else '|'.join(map(str, v))}"
        for n, v in report["sizes"].items()
    )
    lines = [f"{report['file']}: index sizes {sizes}", ""]
    head = ("line", "forward", "backward", "bwd/fwd", "statement")
    table = [head]
    for r in report["statements"]:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        table.append(
            (
                str(r["line"] or ""),
                _n(r["forward_flops"]),
                _n(r["backward_flops"]),
                ratio,
                r["statement"],
            )
        )
    t = report["totals"]
    total_ratio = "-" if t["ratio"] is None else f"{t['ratio']:.2f}"
    table.append(("total", _n(t["forward_flops"]), _n(t["backward_flops"]), total_ratio, ""))
    w = [max(len(row[k]) for row in table) for k in range(4)]

    def fmt(row: tuple[str, ...]) -> str:
        cells = [f"{cell:>{width}}" for cell, width in zip(row, w)]
        return "  ".join([*cells, row[4]]).rstrip()

    lines.append(fmt(head))
    pad = " " * (w[0] + 2)
    for row, r in zip(table[1:-1], report["statements"]):
        lines.append(fmt(row))
        for c in r["primitives"]:
            if not _shown(c):
                continue
            extra = (
                f", left-to-right {_n(c['left_to_right_flops'])}"
                if c["left_to_right_flops"] != c["flops"]
                else ""
            )
            lines.append(f"{pad}{c['pass']:<9}{c['statement']}")
            lines.append(
                f"{pad}{'':9}path {c['order']}: {_n(c['flops'])} flops "
                f"(naive {_n(c['naive_flops'])}"
                f"{extra}), largest intermediate {_n(c['largest_intermediate'])}"
            )
    lines.append(fmt(table[-1]))
    lines += [
        "",
        "flops: opt_einsum's count for contractions; one per element for functions, sums of terms",
        "and reductions, and for '+=' into a tensor that already holds values.",
    ]
    return "\n".join(lines) + "\n"


def _shown(c: dict[str, Any]) -> bool:
    """Contractions worth a path in the table: two or more operands, and a sum or an order."""
    if c["kind"] != "contraction" or len(c["operands"]) < 2:
        return False
    kept = set(c["output"]["indices"])
    summed = any(n not in kept for o in c["operands"] for n in o["indices"])
    return summed or len(c["operands"]) > 2


def cmd_cost(a: argparse.Namespace) -> int:
    program = load(a.file)
    dims = parse_dims(a.dims)
    check_ranks(program)
    check_dims(program, dims)
    report = cost_report(program, dims, a.loss, parse_names(a.wrt))
    if a.format == "json":
        print(json.dumps(report, indent=2))
    else:
        print(cost_text(report), end="")
    return 0


def cmd_plan(a: argparse.Namespace) -> int:
    """`indexgrad plan`: the steps a forward (or, with --grad, backward) call runs for these sizes."""
    from .model import compile as compile_model

    _needs_grad(a)
    program = load(a.file)
    dims = parse_dims(a.dims)
    check_ranks(program)
    check_dims(program, dims)
    model = compile_model(program, backend=a.backend, tol=a.tol, max_iter=a.max_iter)
    shapes = {n: s for n, s in infer_shapes(program, dims).items() if n in model.inputs + model.labels}
    mode = "backward" if a.grad else "forward"
    plan = model.plan(shapes, mode=mode, loss=a.loss, wrt=parse_names(a.wrt))
    print(plan.to_json() if a.format == "json" else plan)
    return 0


def add_iteration_flags(p: argparse.ArgumentParser) -> None:
    """--tol and --max-iter: the tolerance and iteration limit of fix and solve (SPEC 11)."""
    p.add_argument("--tol", type=float, help="tolerance of fix and solve (default 1e-12; float32: 1e-5)")
    p.add_argument("--max-iter", type=int, help="iteration limit of fix and solve (default 500 and 50)")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the reader-tool subcommands."""
    g = sub.add_parser("graph", help="print the computation graph (DOT or Mermaid)")
    g.add_argument("file")
    g.add_argument("--grad", action="store_true", help="overlay the backward program")
    g.add_argument("--loss", type=tensor_name, help="the loss for --grad (default: the last defined tensor)")
    g.add_argument("--wrt", action=Listed, help="comma-separated input names for --grad")
    g.add_argument("--format", choices=["dot", "mermaid"], default="dot")
    g.add_argument("--render", metavar="OUT", help="draw the DOT graph into OUT (.svg, .png, .pdf)")
    g.set_defaults(func=cmd_graph)

    c = sub.add_parser(
        "cost", help="FLOPs and contraction paths per statement, forward and backward"
    )
    c.add_argument("file")
    c.add_argument("--dims", action=Listed, help="index sizes, e.g. b=64,d=784 (others are 3)")
    c.add_argument(
        "--loss", type=tensor_name, help="the loss to differentiate (default: the last defined tensor)"
    )
    c.add_argument("--wrt", action=Listed, help="comma-separated inputs whose gradients count (default: all)")
    c.add_argument("--format", choices=["text", "json"], default="text")
    c.set_defaults(func=cmd_cost)

    p = sub.add_parser("plan", help="the steps a call runs: library calls, buffers reused, what is freed")
    p.add_argument("file")
    p.add_argument("--dims", action=Listed, help="index sizes, e.g. b=64,d=784 (others are 3)")
    p.add_argument("--grad", action="store_true", help="the backward pass of the loss (default: forward)")
    p.add_argument("--loss", type=tensor_name, help="the loss for --grad (default: the last defined tensor)")
    p.add_argument(
        "--wrt", action=Listed, help="comma-separated inputs whose gradients --grad computes (default: all)"
    )
    p.add_argument("--backend", default="numpy", help="numpy, torch, jax, or auto (the fastest, timed)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    add_iteration_flags(p)
    p.set_defaults(func=cmd_plan)
