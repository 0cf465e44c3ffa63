"""LaTeX for statements and programs: explicit sums, x.grad as a bar, x.tan as a dot."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .indices import attach_sums, free_indices
from .nodes import (
    Affine,
    Call,
    Compare,
    Expr,
    Gather,
    Index,
    Neg,
    Num,
    Power,
    Product,
    Reduce,
    Ref,
    SizeOf,
    Statement,
    Sum,
)
from .printer import format_index, format_number

# `+=` as a relation; mathtext has no \mathrel, so the relation's thick spaces are written out
PLUS_EQ = r"\;{+}{=}\;"

_NAMED = {"exp", "log", "tanh", "sin", "cos"}  # functions LaTeX knows (\exp, \log, ...)
_GREEK = set(
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi pi rho sigma tau "
    "upsilon phi chi psi omega Gamma Delta Theta Lambda Xi Pi Sigma Upsilon Phi Psi Omega".split()
)
_DERIVED = re.compile(r"^(.+)\.(grad|tan)$")


def name_latex(name: str) -> str:
    """A tensor name: `x` italic, longer names in \\mathit, `N.grad` as a bar, `N.tan` as a dot."""
    m = _DERIVED.match(name)
    if m:
        base = name_latex(m.group(1))
        if m.group(2) == "tan":
            return rf"\dot{{{base}}}"
        return rf"\bar{{{base}}}" if _narrow(base) else rf"\overline{{{base}}}"
    return _word(name)


def _word(name: str) -> str:
    if len(name) == 1:
        return name
    if name in _GREEK:
        return "\\" + name
    return r"\mathit{" + name.replace("_", r"\_") + "}"


def _narrow(tex: str) -> bool:
    """True for a one-letter (or accented one-letter) name: it takes \\bar, not \\overline."""
    return (
        len(tex) == 1
        or (tex.startswith("\\") and "{" not in tex and tex[1:] in _GREEK)
        or (tex.startswith((r"\bar{", r"\dot{")) and _narrow(tex[5:-1]))
    )


def index_latex(i: Index) -> str:
    """One index position: `j`, `j+k`, `2j+k`, `\\lfloor r/2 \rfloor`, `\\operatorname{pad}(r+u-1)`, or
    a label reference `y_{b}`."""
    if isinstance(i, Gather):
        return ref_latex(i.ref)
    if not i.parts:
        text = format_index(Affine(i.terms, i.const, shifted=i.shifted), _word, "")
    else:
        text = format_index(Affine(i.terms, 0), _word, "") if i.terms else ""
        for k, f in i.parts:
            inner = index_latex(f.inner)
            if f.op == "//":
                part = rf"\lfloor {inner}/{f.divisor} \rfloor"
            else:
                part = rf"({inner} \bmod {f.divisor})"
            sign = "-" if k < 0 else ("+" if text else "")
            text += sign + (str(abs(k)) if abs(k) != 1 else "") + part
        if i.const:
            text += f"{i.const:+d}"
    return rf"\operatorname{{{i.mode}}}({text})" if i.mode else text


def ref_latex(r: Ref) -> str:
    """`x[b,j]` as `x_{b,j}`; a scalar has no subscript."""
    base = name_latex(r.name)
    if not r.indices:
        return base
    return f"{base}_{{{','.join(index_latex(i) for i in r.indices)}}}"


def number_latex(v: float) -> str:
    text = format_number(abs(v))
    if "e" in text:
        mant, exp = text.split("e")
        text = rf"{mant} \times 10^{{{int(exp)}}}" if mant != "1.0" else rf"10^{{{int(exp)}}}"
    return ("-" if v < 0 else "") + text


_RELATIONS = {"<": "<", "<=": r"\le", ">": ">", ">=": r"\ge", "==": "=", "!=": r"\ne"}


def _paren(text: str) -> str:
    return rf"\left({text}\right)"


def _sum_sign(indices: Sequence[str]) -> str:
    return rf"\sum_{{{','.join(_word(k) for k in indices)}}} "


def _opens_sum(e: Expr) -> bool:
    """True when e prints as a sum sign that would swallow whatever follows it."""
    if isinstance(e, Product):
        return bool(e.summed) or _opens_sum(e.factors[0])
    if isinstance(e, Reduce):
        return e.op == "sum"
    if isinstance(e, Neg):
        return _opens_sum(e.arg)
    return False


def _is_sum(e: Expr) -> bool:
    return isinstance(e, (Sum, Compare)) or (isinstance(e, Num) and e.value < 0)


def _factor(f: Expr, first: bool, last: bool) -> str:
    """A factor of a product, parenthesised when it would otherwise read differently."""
    text = expr_latex(f)
    if _is_sum(f) or (isinstance(f, Neg) and not first) or (not last and _opens_sum(f)):
        return _paren(text)
    return text


def _join(factors: list[Expr]) -> str:
    out = ""
    for n, f in enumerate(factors):
        text = _factor(f, n == 0, n == len(factors) - 1)
        if not out:
            out = text
        elif isinstance(f, Num) or (text[:1].isdigit() and isinstance(factors[n - 1], Num)):
            out += r" \cdot " + text  # `2 \cdot 3`, `x \cdot 2`: digits must not run together
        else:
            out += " " + text
    return out


def expr_latex(e: Expr) -> str:
    """An expression, with every attached sum (`Product.summed`) written as \\sum."""
    if isinstance(e, Ref):
        return ref_latex(e)
    if isinstance(e, Num):
        return number_latex(e.value)
    if isinstance(e, SizeOf):
        return f"|{_word(e.index)}|"
    if isinstance(e, Neg):
        inner = expr_latex(e.arg)
        return "-" + (_paren(inner) if _is_sum(e.arg) or isinstance(e.arg, Neg) else inner)
    if isinstance(e, Power):
        base = expr_latex(e.base)
        if not isinstance(e.base, (Ref, Call, SizeOf)) and not (
            isinstance(e.base, Num) and e.base.value >= 0
        ):
            base = _paren(base)
        return f"{base}^{{{number_latex(e.exponent)}}}"
    if isinstance(e, Call):
        return call_latex(e)
    if isinstance(e, Compare):
        return f"{expr_latex(e.left)} {_RELATIONS[e.op]} {expr_latex(e.right)}"
    if isinstance(e, Reduce):
        body = expr_latex(e.body)
        if e.op == "sum":
            return _sum_sign(e.indices) + (_paren(body) if _is_sum(e.body) else body)
        op = {"max": r"\max", "min": r"\min"}.get(e.op, rf"\operatorname{{{e.op}}}")
        return f"{op}_{{{','.join(_word(k) for k in e.indices)}}} {_paren(body)}"
    if isinstance(e, Product):
        # -Σ_j a b reads better than Σ_j (-a) b
        if e.summed and isinstance(e.factors[0], Neg) and not e.divide[0]:
            rest = Product((e.factors[0].arg, *e.factors[1:]), e.divide, e.summed)
            return "-" + expr_latex(rest)
        top = [f for f, d in zip(e.factors, e.divide) if not d]
        bottom = [f for f, d in zip(e.factors, e.divide) if d]
        text = _join(top) if top else "1"
        if bottom:
            den = _join(bottom)
            text = rf"\frac{{{text}}}{{{den}}}"
        return (_sum_sign(e.summed) if e.summed else "") + text
    if isinstance(e, Sum):
        out = ""
        for n, (t, sign) in enumerate(zip(e.terms, e.signs)):
            text = expr_latex(t)
            wrap = isinstance(t, Sum) or (n > 0 and (isinstance(t, Neg) or _is_sum(t)))
            text = _paren(text) if wrap else text
            out += text if n == 0 else (" + " if sign > 0 else " - ") + text
        return out
    raise TypeError(f"not an expression: {e!r}")


def call_latex(e: Call) -> str:
    args = ", ".join(expr_latex(a) for a in e.args)
    if e.func == "sqrt":
        return rf"\sqrt{{{args}}}"
    if e.func == "abs":
        return rf"\left|{args}\right|"
    if e.func in ("max", "min"):
        return rf"\{e.func}" + _paren(args)
    if e.func in _NAMED:
        return rf"\{e.func}" + _paren(args)
    return rf"\operatorname{{{e.func}}}" + _paren(args)


def with_sums(s: Statement) -> Statement:
    """s with the scoping rule's sums attached, if the checker has not attached them already.

    Lowered statements (`forward_statements`) are built without the checker; their implied sums
    are attached here by the checker's own rule, so they print the same way.
    """
    lhs = {n for i in s.target.indices for n in i.names()}
    if not free_indices(s.expr) - lhs - set(s.summed):
        return s
    expr, free = attach_sums(s.expr, frozenset(lhs))
    summed = tuple(sorted(free - lhs))
    return Statement(s.target, s.op, expr, summed, s.span)


def _sides(s: Statement) -> tuple[str, str, str]:
    s = with_sums(s)
    e, minus = s.expr, ""
    if s.summed and isinstance(e, Neg) and not _is_sum(e.arg):  # -Σ_c x, not Σ_c -x
        e, minus = e.arg, "-"
    rhs = expr_latex(e)
    if s.summed:
        rhs = minus + _sum_sign(s.summed) + (_paren(rhs) if _is_sum(e) else rhs)
    return ref_latex(s.target), ("=" if s.op == "=" else PLUS_EQ), rhs


def statement_latex(s: Statement) -> str:
    """One statement as LaTeX math (no delimiters, no `&`); matplotlib's mathtext renders it."""
    lhs, op, rhs = _sides(s)
    return f"{lhs} {op} {rhs}"


def program_latex(forward: Sequence[Statement], statements: Sequence[Statement]) -> str:
    """An `aligned` environment with one row per statement, the forward statements first."""
    rows: list[str] = []
    if forward:
        rows.append("% forward statements")
    for n, s in enumerate([*forward, *statements]):
        if forward and n == len(forward):
            rows.append("% derived statements")
        lhs, op, rhs = _sides(s)
        rows.append(f"{lhs} &{op} {rhs}")
    body: list[str] = []
    data = [k for k, r in enumerate(rows) if not r.startswith("%")]
    for k, r in enumerate(rows):
        body.append(r + (r" \\" if data and k in data and k != data[-1] else ""))
    return "\n".join([r"\begin{aligned}", *body, r"\end{aligned}"])


def render_png(statements: Sequence[Statement], path: str, fontsize: int = 15) -> None:
    """Draw statements as equations, one per line, into a PNG with matplotlib's mathtext."""
    from matplotlib.figure import Figure  # no pyplot: no global backend

    rows = [statement_latex(s) for s in statements]
    height = 0.25 + 0.5 * len(rows)
    fig = Figure(figsize=(8, height))
    for k, tex in enumerate(rows):
        fig.text(0.02, 1 - (0.25 + 0.5 * k + 0.25) / height, f"${tex}$", fontsize=fontsize, va="center")
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15, facecolor="white")


__all__ = [
    "PLUS_EQ",
    "expr_latex",
    "name_latex",
    "program_latex",
    "ref_latex",
    "render_png",
    "statement_latex",
]
