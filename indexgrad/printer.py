"""Canonical .idx text for programs, statements and expressions; `parse(str(p)) == p` holds."""

from __future__ import annotations

import re
from collections.abc import Callable

from .nodes import (
    Call,
    Decl,
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
)

# precedence levels, loosest first: sum < product < unary < power < atom
_SUM, _PRODUCT, _UNARY, _POWER, _ATOM = range(5)


def format_number(v: float) -> str:
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def format_index(i: Index, name: Callable[[str], str] = str, times: str = "*") -> str:
    """An index position as text: `j`, `2*j+k`, `i-1`; `name` and `times` let LaTeX reuse it."""
    if isinstance(i, Gather):
        return format_ref(i.ref) if i.ref.indices else f"{i.ref.name}[]"
    parts: list[str] = []
    for k, n in i.terms:
        mag = abs(k)
        text = name(n) if mag == 1 else f"{mag}{times}{name(n)}"
        if not parts:
            parts.append(("-" if k < 0 else "") + text)
        else:
            parts.append(("-" if k < 0 else "+") + text)
    if i.const or not parts:
        c = i.const
        parts.append(str(c) if not parts else (f"+{c}" if c > 0 else str(c)))
    return "".join(parts)


def format_ref(r: Ref) -> str:
    if not r.indices:
        return r.name
    return f"{r.name}[{','.join(format_index(i) for i in r.indices)}]"


def _level(e: Expr) -> int:
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
                out = _wrap(t, lvl >= _PRODUCT or (lvl == _UNARY))
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


def _format_decls(decls: tuple[Decl, ...]) -> list[str]:
    lines: list[str] = []
    role, group = "", []  # type: ignore[var-annotated]
    for d in decls:
        if d.role != role and group:
            lines.append(f"{role} {', '.join(format_ref(r) for r in group)}")
            group = []
        role = d.role
        group.append(d.ref)
    if group:
        lines.append(f"{role} {', '.join(format_ref(r) for r in group)}")
    return lines


def format_program(p: Program) -> str:
    lines = _format_decls(p.decls) + [format_statement(s) for s in p.statements]
    return "".join(line + "\n" for line in lines)
