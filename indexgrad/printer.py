"""Canonical .idx text for programs, statements and expressions; `parse(str(p)) == p` holds."""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence

from .errors import source_lines
from .nodes import (
    Call,
    Compare,
    Decl,
    Def,
    Expr,
    Gather,
    Index,
    Neg,
    Num,
    Power,
    Product,
    Program,
    Reduce,
    Ref,
    SizeOf,
    Statement,
    Sum,
    Use,
)

INDENT = "    "  # a definition's body

# precedence levels, loosest first: comparison < sum < product < unary < power < atom
_COMPARE, _SUM, _PRODUCT, _UNARY, _POWER, _ATOM = range(6)


def format_number(v: float) -> str:
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def format_index(i: Index, name: Callable[[str], str] = str, times: str = "*") -> str:
    """An index position as text: `j`, `2*j+k`, `i-1`, `r//2`, `pad(r+u-1)`; `name` and `times` let
    LaTeX reuse it."""
    if isinstance(i, Gather):
        return format_ref(i.ref) if i.ref.indices else f"{i.ref.name}[]"
    parts: list[str] = []

    def add(k: int, text: str, bare: bool) -> None:
        mag = abs(k)
        if mag != 1:
            text = f"{mag}{times}{text if bare else '(' + text + ')'}"
        elif not bare and k < 0:
            text = f"({text})"
        parts.append(("-" if k < 0 else "") + text if not parts else ("-" if k < 0 else "+") + text)

    for k, n in i.terms:
        add(k, name(n), True)
    for k, f in i.parts:
        inner = format_index(f.inner, name, times)
        text = (inner if f.inner.plain is not None else f"({inner})") + f.op + str(f.divisor)
        add(k, text, False)
    if i.const or not parts or i.shifted:
        c = i.const
        parts.append(str(c) if not parts else (f"+{c}" if c >= 0 else str(c)))
    text = "".join(parts)
    return f"{i.mode}({text})" if i.mode else text


def format_ref(r: Ref) -> str:
    if not r.indices:
        return r.name
    return f"{r.name}[{','.join(format_index(i) for i in r.indices)}]"


def _level(e: Expr) -> int:
    if isinstance(e, Compare):
        return _COMPARE
    if isinstance(e, Sum):
        return _SUM
    if isinstance(e, Product):
        return _PRODUCT
    if isinstance(e, Neg):
        return _UNARY
    if isinstance(e, Power):
        return _POWER
    if isinstance(e, Num) and e.value < 0:
        return _UNARY
    return _ATOM


def _wrap(e: Expr, ok: bool) -> str:
    text = format_expr(e)
    return text if ok else f"({text})"


def format_expr(e: Expr) -> str:
    if isinstance(e, Ref):
        return format_ref(e)
    if isinstance(e, Num):
        return format_number(e.value)
    if isinstance(e, SizeOf):
        return f"size[{e.index}]"
    if isinstance(e, Neg):
        return "-" + _wrap(e.arg, _level(e.arg) > _UNARY)  # -(-x): the parser reads --x as x
    if isinstance(e, Power):
        return f"{_wrap(e.base, _level(e.base) == _ATOM)}^{format_number(e.exponent)}"
    if isinstance(e, Call):
        return f"{e.func}({', '.join(format_expr(a) for a in e.args)})"
    if isinstance(e, Compare):
        left, right = (_wrap(x, _level(x) > _COMPARE) for x in (e.left, e.right))
        return f"{left} {e.op} {right}"
    if isinstance(e, Reduce):
        return f"{e.op}[{','.join(e.indices)}]({format_expr(e.body)})"
    if isinstance(e, Product):
        out = ""
        for n, (f, d) in enumerate(zip(e.factors, e.divide)):
            lvl = _level(f)
            if n == 0:
                out = _wrap(f, lvl >= _UNARY)
                continue
            text = _wrap(f, lvl >= _POWER)
            if d:
                out += f" / {text}"
            elif (
                isinstance(f, Num)
                or (isinstance(e.factors[n - 1], Num) and isinstance(f, (Num, SizeOf)))
                or (text.startswith("(") and _ends_with_name(e.factors[n - 1]))
            ):
                out += f" * {text}"
            else:
                out += f" {text}"
        return out
    if isinstance(e, Sum):
        out = ""
        for n, (t, sign) in enumerate(zip(e.terms, e.signs)):
            lvl = _level(t)
            if n == 0:
                out = _wrap(t, lvl >= _PRODUCT)
            else:
                out += (" + " if sign > 0 else " - ") + _wrap(t, lvl >= _PRODUCT)
        return out
    raise TypeError(f"not an expression: {e!r}")


_TRAILING_NAME = re.compile(r"(^|[^\w.])[A-Za-z_][\w.]*$")


def _ends_with_name(e: Expr) -> bool:
    """True when e prints ending in a bare name, so a following '(' would read as a call."""
    return _TRAILING_NAME.search(format_expr(e)) is not None


def format_statement(s: Statement) -> str:
    return f"{format_ref(s.target)} {s.op} {format_expr(s.expr)}"


def format_use(u: Use) -> str:
    """`h1[b,h] = dense(x[b,d])`, `h[b,i], c[b,i] = lstm(...)`."""
    return f"{', '.join(map(format_ref, u.targets))} = {u.name}({', '.join(map(format_ref, u.args))})"


def format_header(d: Def) -> str:
    return f"def {d.name}({', '.join(map(format_ref, d.args))}) -> {', '.join(map(format_ref, d.outputs))}:"


def _decl_lines(decls: tuple[Decl, ...], lines: Sequence[int] = ()) -> list[tuple[int, str]]:
    """One `param`/`input` line per run of declarations with the same role, with the source line
    of the run's first declaration; a run also ends before a declaration that has one of the
    sorted `lines` (lines with comments) at or after the previous one's line."""
    runs: list[list[Decl]] = []
    for d in decls:
        prev = runs[-1][-1] if runs else None
        joined = prev is not None and prev.role == d.role
        if joined:  # the first break at or after prev's line must come at or after d's line
            at = bisect_left(lines, prev.span.line)  # type: ignore[union-attr]
            joined = at == len(lines) or lines[at] >= d.span.line
        if joined:
            runs[-1].append(d)
        else:
            runs.append([d])
    return [(run[0].span.line, f"{run[0].role} {', '.join(_decl_text(d) for d in run)}") for run in runs]


def _decl_text(d: Decl) -> str:
    return f"{d.ref.name}={d.size}" if d.role == "dim" else format_ref(d.ref)


def _written_lines(
    items: tuple[Decl | Def | Statement | Use, ...], breaks: Sequence[int], indent: str = ""
) -> tuple[list[tuple[int, str]], set[int]]:
    """(source line, text) per line of a program as written, and the lines a blank line precedes:
    a definition, and what follows one. Declarations in a row join as `_decl_lines` joins them."""
    lines: list[tuple[int, str]] = []
    gaps: set[int] = set()
    run: list[Decl] = []
    for it in (*items, None):
        if isinstance(it, Decl):
            run.append(it)
            continue
        lines += [(n, indent + text) for n, text in _decl_lines(tuple(run), breaks)]
        run = []
        if isinstance(it, Def):
            gaps.add(len(lines))
            lines.append((it.span.line, indent + format_header(it)))
            body, _ = _written_lines(it.body, breaks, indent + INDENT)
            lines += body
            gaps.add(len(lines))
        elif isinstance(it, Statement):
            lines.append((it.span.line, indent + format_statement(it)))
        elif isinstance(it, Use):
            lines.append((it.span.line, indent + format_use(it)))
    return lines, gaps


def format_program(p: Program, comments: bool = False) -> str:
    """The canonical text of a program, its definitions as written; with `comments`, its source's
    comments kept in place: a comment on a line of its own before the line that follows it (and
    indented like it), one after code at the end of that code's line (declarations on lines with
    comments between them are not joined). A blank line sets each definition apart."""
    notes = _comments(p.source) if comments else []
    breaks = sorted({n for n, _, _ in notes})
    if p.written:
        items, gaps = _written_lines(p.written, breaks)
    else:
        items, gaps = _decl_lines(p.decls, breaks), set()
        items += [(s.span.line, format_statement(s)) for s in p.statements]
    own: list[tuple[int, str]] = []  # comments on lines of their own
    after: dict[int, list[str]] = {}  # item index -> comments after its code
    starts = sorted(range(len(items)), key=lambda k: (items[k][0], k))
    start_lines = [items[k][0] for k in starts]
    for number, text, alone in notes:
        begun = bisect_right(start_lines, number)  # the code's statement: the last begun
        if alone or not begun:
            own.append((number, text))
        else:
            after.setdefault(starts[begun - 1], []).append(text)
    out: list[str] = []
    taken = 0  # comments of their own already placed
    for k, (number, text) in enumerate(items):
        if k in gaps and out and out[-1]:
            out.append("")
        indent = text[: len(text) - len(text.lstrip(" "))]
        while taken < len(own) and own[taken][0] < number:
            out.append(indent + own[taken][1])
            taken += 1
        out.append("  ".join([text, *after.get(k, [])]))
    out.extend(text for _, text in own[taken:])
    return "".join(line + "\n" for line in out)


def _comments(source: str) -> list[tuple[int, str, bool]]:
    """(line, comment, whether it has the line to itself) for each comment in a program's source."""
    out = []
    for number, line in enumerate(source_lines(source), 1):
        at = line.find("#")
        if at >= 0:
            out.append((number, line[at:].rstrip(), not line[:at].strip()))
    return out
