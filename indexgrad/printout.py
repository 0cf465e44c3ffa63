"""What `indexgrad grad` and `jvp` (and the playground) print of a derived program: idx text
grouped by the uses that inlined it, LaTeX, or JSON."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from .derive import gather_form
from .nodes import Program, Statement, Use, ref_index_names, refs_in, refs_in_statement
from .printer import format_program, format_statement, format_use


def statements_json(stmts: Sequence[Statement], source: Program | None = None) -> list[dict[str, Any]]:
    """The statements as JSON records: text, target, op, line, and the use that inlined each."""
    label = _use_of(source)
    out = []
    for s in stmts:
        item = {"text": format_statement(s), "target": s.target.name, "op": s.op, "line": s.span.line or None}
        use = label(s)
        if use is not None:
            item["in"] = use  # the use whose inlining wrote it
        out.append(item)
    return out


def _use_of(program: Program | None) -> Callable[[Statement], str | None]:
    """For a statement of (or derived from) the program, the text of the use it was inlined by
    (the outermost, as written in the program), or None for one of the program's own."""
    uses = {u.span: format_use(u) for u in (program.written if program else ()) if isinstance(u, Use)}

    def label(s: Statement) -> str | None:
        chain = s.span.uses()
        return uses.get(chain[-1]) if chain else None

    return label


def _grouped(stmts: Sequence[Statement], source: Program | None, readings: dict[str, str]) -> list[str]:
    """One line per statement, a `# in USE` line before each run of statements inlined by one use."""
    label, current = _use_of(source), None
    out = []
    for s in stmts:
        use = label(s)
        if use != current:
            out.append(f"# in {use}" if use else "# outside definitions")
            current = use
        text = format_statement(s)
        out.append(text)
        if text in readings:
            out.append(readings[text])
    return out


def program_text(
    forward: list[Statement],
    derived: Program,
    fmt: str,
    title: str,
    head: str = "forward statements the gradients read",
    source: Program | None = None,
    uses: Program | None = None,
) -> str:
    """What `indexgrad grad` / `jvp` print for a derived program in the format `fmt`. The uses of
    `uses` (by default `source`, the program derived from) label the statements they wrote; the
    declarations of `source` name the positions of a scatter's reading as a gather."""
    uses = uses or source
    if fmt == "json":
        both = {"forward": forward, title: derived.statements}
        return json.dumps({k: statements_json(v, uses) for k, v in both.items()}, indent=2) + "\n"
    if fmt == "latex":
        from .latex import program_latex

        return program_latex(forward, derived.statements) + "\n"
    out: list[str] = []
    if forward:  # a printout that runs alone declares what it reads as the program does
        read = {r.name for s in [*forward, *derived.statements] for r in refs_in_statement(s)}
        own = tuple(d for d in (source.tensor_decls() if source else ()) if d.ref.name in read)
        dims = tuple(d for d in derived.decls if d.role == "dim")
        named = {d.ref.name for d in own}
        rest = tuple(d for d in derived.decls if d.role != "dim" and d.ref.name not in named)
        out.extend(format_program(Program(dims + own + rest)).splitlines())
        derived = Program((), derived.statements)
        out.append(f"# {head}")
        out.extend(_grouped(forward, uses, {}))
        out.append(f"# {title}")
    readings = {}  # a scatter-add is followed by its reading as a gather
    for s in derived.statements:
        g = gather_form(s, source)
        if g is not None:
            kept = {n for r in refs_in(g.expr) for n in ref_index_names(r)}
            new = ref_index_names(g.target)
            over = [n for n in dict.fromkeys(ref_index_names(s.target)) if n not in new and n in kept]
            summing = f"summing over {', '.join(over)} in range" if over else "where in range"
            readings[format_statement(s)] = f"#   that is {format_statement(g)}, {summing}"
    out.extend(format_program(replace(derived, statements=(), written=())).splitlines())  # its declarations
    out.extend(_grouped(derived.statements, uses, readings))
    return "".join(line + "\n" for line in out)
