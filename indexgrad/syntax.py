"""Lark parse of .idx text into frozen syntax nodes, and syntax errors in words a person uses."""

from __future__ import annotations

import codecs
import os
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedInput
from lark.lark import PostLex

from .check import check
from .errors import IndexgradError, IndexgradWarning, source_lines
from .functions import FUNCTIONS
from .gcpause import gc_paused
from .inline import inline
from .nodes import (
    Affine,
    Call,
    Compare,
    Decl,
    Def,
    Expr,
    Floor,
    Gather,
    Neg,
    Num,
    Power,
    Product,
    Program,
    Reduce,
    Ref,
    SizeOf,
    Span,
    Statement,
    Sum,
    Use,
)

MAX_DEPTH = 200  # brackets deeper than this are refused before parsing
# a program file longer than this is refused unread (/dev/zero, /dev/urandom, a data file named by
# mistake); 10^5 statements take about 2 MiB
MAX_SOURCE_BYTES = 16 << 20


@lru_cache(maxsize=1)
def grammar_text() -> str:
    """The grammar shipped as package data, or beside the package in a source checkout."""
    local = Path(__file__).resolve().parent.parent / "grammar" / "indexgrad.lark"
    if local.is_file():
        return local.read_text(encoding="utf-8")
    return (resources.files("indexgrad.grammar") / "indexgrad.lark").read_text(encoding="utf-8")


@dataclass(frozen=True)
class _Group:
    """A parenthesised expression while parsing, so chains are not flattened across parentheses."""

    expr: Expr
    span: Span


@dataclass
class _Chain:
    """A sum or product while parsing: each further term is appended in place, so a chain of n
    terms costs O(n) (a new tuple per term would cost O(n^2) to build and to free)."""

    node: type[Sum] | type[Product]
    items: list[Expr]
    flags: list[Any]  # signs of a Sum, divide flags of a Product
    span: Span

    def extend(self, item: Expr, flag: Any, end: Span) -> _Chain:
        self.items.append(item)
        self.flags.append(flag)
        self.span = Span(self.span.line, self.span.column, end.end_line, end.end_column)
        return self

    def build(self) -> Expr:
        return self.node(tuple(self.items), tuple(self.flags), span=self.span)


def _unwrap(x: Any) -> Expr:
    if isinstance(x, _Chain):
        return x.build()
    return x.expr if isinstance(x, _Group) else x


def _place(x: Any, last: bool) -> Span | Token | None:
    """The first (or last) child with a place: a node's span, or a token (read as one)."""
    if isinstance(x, Token):
        return x if x.line else None
    if isinstance(x, _Group):
        return x.span
    if isinstance(x, (list, tuple)):
        for y in reversed(x) if last else x:
            sp = _place(y, last)
            if sp is not None:
                return sp
        return None
    sp = getattr(x, "span", None)
    return sp if isinstance(sp, Span) and sp.line > 0 else None


def _span_of(children: list[Any]) -> Span:
    """From the start of the first child that has a place to the end of the last one."""
    first, last = (children[0], children[-1]) if children else (None, None)
    if type(first) is Token and type(last) is Token and first.line and last.line:  # `x[...]`, `f(...)`
        return Span(first.line, first.column or 0, last.end_line or 0, last.end_column or 0)
    first, last = _place(children, False), _place(children, True)
    if first is None or last is None:
        return Span()
    return Span(first.line or 0, first.column or 0, last.end_line or 0, last.end_column or 0)


def _tok_span(t: Token) -> Span:
    return Span(t.line or 0, t.column or 0, t.end_line or 0, t.end_column or 0)


class _Blocks(PostLex):
    """Postlexer: `_DEDENT` ends a definition's body before the first line indented no deeper than
    its `def` line (or at the end). Indentation means nothing elsewhere, so programs without
    definitions read as before. The token borrows the place of the token it precedes, so every
    span stays a place in the text; and since the lines of a body are lexed in the same parser
    states as any other line, the contextual lexer reads them alike."""

    always_accept = ()

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        header: Token | None = None  # the `def` whose body is open or about to open
        body = False  # its body has begun
        opening = False  # its ':' is read: the body starts on the next line
        starts = True  # the next token begins a line
        last: Token | None = None
        for tok in stream:
            if tok.type == "_NEWLINE":
                starts = True
            elif starts and header is not None:
                starts = False
                deeper = (tok.column or 0) > (header.column or 0)
                if opening and not deeper:
                    raise _no_body(header, tok)
                if body and not deeper:
                    body = False
                    yield Token.new_borrow_pos("_DEDENT", "", tok)
                elif opening:
                    body, opening = True, False
            else:
                starts = False
            if tok.type == "DEF" and body:
                raise IndexgradError(
                    "a definition cannot be inside another: define it above and use it in the body",
                    _tok_span(tok),
                )
            if tok.type == "DEF":
                header = tok
            elif tok.type == "COLON" and header is not None and not body:
                opening = True
            last = tok
            yield tok
        if opening and header is not None:
            raise _no_body(header, None)
        if body and last is not None:
            if last.type != "_NEWLINE":
                yield Token.new_borrow_pos("_NEWLINE", "", last)
            yield Token.new_borrow_pos("_DEDENT", "", last)


def _no_body(header: Token, tok: Token | None) -> IndexgradError:
    place = _tok_span(tok) if tok is not None else _tok_span(header)
    return IndexgradError(
        f"the body of a definition goes on the lines below its def line (line {header.line}), "
        "each indented deeper than the def",
        place,
    )


def _items(children: list[Any]) -> list[Any]:
    """Lines' items in order, declarations of one line spread out, empty lines dropped."""
    out: list[Any] = []
    for it in children:
        if isinstance(it, list):
            out.extend(it)
        elif it is not None:
            out.append(it)
    return out


def _use(targets: tuple[Ref, ...], op: str, e: Any, span: Span) -> Use:
    """A use of a definition: one or several targets `=` a call whose arguments are tensors."""
    if not isinstance(e, Call) or e.func in FUNCTIONS:
        raise IndexgradError(
            "several tensors are defined at once only by a definition's use, like "
            "h[b,i], c[b,i] = cell(x[b,j], ...); give each its own statement",
            span,
        )
    if op != "=":
        raise IndexgradError(
            f"a use of '{e.func}' defines its outputs with '='; to add the result into a tensor, "
            f"write t[...] = {e.func}(...) and then add t",
            span,
        )
    for a in e.args:
        if not isinstance(a, Ref):
            raise IndexgradError(
                f"an argument of '{e.func}' is a tensor, like x[b,d]; to pass an expression, "
                "define it first (t[b,d] = ...) and pass t[b,d]",
                getattr(a, "span", span),
            )
    return Use(targets, e.func, tuple(e.args), span)


def _with_uses(items: list[Any], defs: set[str]) -> list[Any]:
    """Items with each statement `t = NAME(...)` that calls a definition made a Use."""
    out = []
    for it in items:
        call = it.expr if isinstance(it, Statement) else None
        if isinstance(call, Call) and call.func in defs and call.func not in FUNCTIONS:
            it = _use((it.target,), it.op, call, it.span)  # type: ignore[union-attr]
        elif isinstance(it, Def):
            it = Def(it.name, it.args, it.outputs, tuple(_with_uses(list(it.body), defs)), it.span)
        out.append(it)
    return out


class _Build(Transformer):
    """Builds nodes while the LALR parser reduces (no recursion, so long chains are fine)."""

    def start(self, items: list[Any]) -> list[Any]:
        return _items(items)

    def line(self, items: list[Any]) -> Any:
        return items[0] if items else None

    def statement(self, c: list[Any]) -> Statement:
        return Statement(c[0], str(c[1]), _unwrap(c[2]), (), _span_of(c))

    def use(self, c: list[Any]) -> Use:
        return _use(tuple(c[:-2]), str(c[-2]), _unwrap(c[-1]), _span_of(c))

    def refs(self, c: list[Any]) -> tuple[Ref, ...]:
        return tuple(c)

    def definition(self, c: list[Any]) -> Def:
        name, args, outputs, colon = c[1], c[2] or (), c[5], c[6]
        span = Span(c[0].line, c[0].column, colon.end_line, colon.end_column)
        return Def(str(name), args, outputs, tuple(_items(c[7:])), span)

    def declaration(self, c: list[Any]) -> list[Decl]:
        role = str(c[0])
        return [Decl(role, r, r.span) for r in c[1:]]

    def dim_declaration(self, c: list[Any]) -> list[Decl]:
        return list(c[1:])

    def dim_entry(self, c: list[Any]) -> Decl:
        name, assign, size = c
        span = _span_of(c)
        if str(assign) != "=":
            raise IndexgradError(
                "a dim declaration gives each index its extent with '=': dim u=2", _tok_span(assign)
            )
        if int(size) < 1:
            raise IndexgradError(f"the extent of '{name}' must be at least 1, got {size}", _tok_span(size))
        return Decl("dim", Ref(str(name), (), _tok_span(name)), span, int(size))

    # ---- expressions
    def _chain(self, c: list[Any], node: type[Sum] | type[Product], flag: Any, first: Any) -> _Chain:
        """`left op right`, appended to left when left is a chain of the same kind (not a group)."""
        left, right = c
        span = _span_of(c)
        if not (isinstance(left, _Chain) and left.node is node):
            left = _Chain(node, [_unwrap(left)], [first], span)
        return left.extend(_unwrap(right), flag, span)

    def add(self, c: list[Any]) -> _Chain:
        return self._chain(c, Sum, 1, 1)

    def sub(self, c: list[Any]) -> _Chain:
        return self._chain(c, Sum, -1, 1)

    def mul(self, c: list[Any]) -> _Chain:
        return self._chain(c, Product, False, False)

    def juxt(self, c: list[Any]) -> _Chain:
        return self._chain(c, Product, False, False)

    def div(self, c: list[Any]) -> _Chain:
        return self._chain(c, Product, True, False)

    def neg(self, c: list[Any]) -> Expr:
        arg = _unwrap(c[0])
        if isinstance(arg, Neg) and not isinstance(c[0], _Group):
            return arg.arg  # --x is x; long chains of minus signs stay flat
        return Neg(arg, _span_of(c))

    def pow(self, c: list[Any]) -> Power:
        return Power(_unwrap(c[0]), c[2], _span_of(c))

    def signed_number(self, c: list[Any]) -> float:
        value = _number(c[-1])
        return -value if len(c) == 2 and str(c[0]) == "-" else value

    def number(self, c: list[Any]) -> Num:
        return Num(_number(c[0]), _span_of(c))

    def compare(self, c: list[Any]) -> Compare:
        return Compare(str(c[1]), _unwrap(c[0]), _unwrap(c[2]), _span_of(c))

    def call(self, c: list[Any]) -> Call:
        return Call(str(c[0]), tuple(_unwrap(a) for a in c[1:-1]), _span_of(c))

    def reduce(self, c: list[Any]) -> Reduce:
        return Reduce(str(c[0]), c[1], _unwrap(c[2]), _span_of(c))

    def size(self, c: list[Any]) -> SizeOf:
        return SizeOf(str(c[1]), _span_of(c))

    def group(self, c: list[Any]) -> _Group:
        return _Group(_unwrap(c[1]), _span_of(c))

    def name_list(self, c: list[Any]) -> tuple[str, ...]:
        return tuple(str(t) for t in c)

    # ---- references and index positions
    def ref(self, c: list[Any]) -> Ref:
        indices = tuple(c[1]) if len(c) > 2 and c[1] is not None else ()
        return Ref(str(c[0]), indices, _span_of(c))

    def index_list(self, c: list[Any]) -> list[Any]:
        return c

    def gather(self, c: list[Any]) -> Gather:
        indices = tuple(c[1]) if len(c) > 2 and c[1] is not None else ()
        return Gather(Ref(str(c[0]), indices, _span_of(c)), _span_of(c))

    def moded(self, c: list[Any]) -> Affine:
        return replace(c[1], mode=str(c[0]), span=_span_of(c))

    def plain(self, c: list[Any]) -> Affine:
        return Affine(((1, str(c[0])),), 0, _tok_span(c[0]))

    # index arithmetic: each rule gives a _Lin, and `affine` the position it spells
    def affine(self, c: list[Any]) -> Affine:
        return c[0].affine()

    def ix_name(self, c: list[Any]) -> _Lin:
        return _Lin({str(c[0]): 1}, [], 0, False, _tok_span(c[0]))

    def ix_int(self, c: list[Any]) -> _Lin:
        return _Lin({}, [], int(c[0]), True, _tok_span(c[0]))

    def ix_group(self, c: list[Any]) -> _Lin:
        return replace(c[1], span=_span_of(c))

    def ix_sign(self, c: list[Any]) -> _Lin:
        lin = c[1].scaled(-1 if str(c[0]) == "-" else 1)
        return replace(lin, span=_span_of(c))

    def ix_add(self, c: list[Any]) -> _Lin:
        return c[0].plus(c[2].scaled(-1 if str(c[1]) == "-" else 1), _span_of(c))

    def ix_mul(self, c: list[Any]) -> _Lin:
        a, b = c
        if b.constant():
            return replace(a.scaled(b.const), span=_span_of(c))
        if a.constant():
            return replace(b.scaled(a.const), span=_span_of(c))
        raise IndexgradError(
            "an index position is linear in its index names: multiply a name by a whole number "
            "(2*j), not by another name",
            _span_of(c),
        )

    def ix_floor(self, c: list[Any]) -> _Lin:
        a, op, k = c[0], str(c[1]), int(c[2])
        span = _span_of(c)
        if k <= 0:
            raise IndexgradError(
                f"'{op}' in an index position takes a positive whole number, got {k}", _tok_span(c[2])
            )
        if a.constant():
            return _Lin({}, [], a.const // k if op == "//" else a.const % k, True, span)
        return _Lin({}, [(1, Floor(a.affine(), op, k))], 0, False, span)


@dataclass(frozen=True)
class _Lin:
    """Integer arithmetic of index names while parsing: coefficients, `//` and `%` parts, a constant,
    and whether a constant was written (`r+0` is a shifted position, `r` a plain one)."""

    coefs: dict[str, int]
    parts: list[tuple[int, Floor]]
    const: int
    written: bool
    span: Span

    def constant(self) -> bool:
        return not self.coefs and not self.parts

    def scaled(self, k: int) -> _Lin:
        return _Lin(
            {n: k * c for n, c in self.coefs.items()},
            [(k * c, f) for c, f in self.parts],
            k * self.const,
            self.written,
            self.span,
        )

    def plus(self, other: _Lin, span: Span) -> _Lin:
        coefs = dict(self.coefs)
        for n, c in other.coefs.items():
            coefs[n] = coefs.get(n, 0) + c
        parts = list(self.parts)
        for c, f in other.parts:
            at = next((k for k, (_, g) in enumerate(parts) if g == f), None)
            if at is None:
                parts.append((c, f))
            else:
                parts[at] = (parts[at][0] + c, f)
        return _Lin(coefs, parts, self.const + other.const, self.written or other.written, span)

    def affine(self) -> Affine:
        if len(self.coefs) == 1 and not self.parts and not self.written and self.const == 0:  # `j`
            ((n, k),) = self.coefs.items()
            if k == 1:
                return Affine(((1, n),), 0, self.span)
        terms = tuple((k, n) for n, k in sorted(self.coefs.items()) if k != 0)  # canonical: by name
        parts = tuple((k, f) for k, f in self.parts if k != 0)
        shifted = self.written and self.const == 0 and len(terms) == 1 and terms[0][0] == 1 and not parts
        return Affine(terms, self.const, self.span, None, parts, shifted)


def _number(t: Token) -> float:
    text = str(t)
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise IndexgradError(f"number {text} is too large", _tok_span(t))
    if value == 0 and re.search(r"[1-9]", re.split(r"[eE]", text)[0]):  # 1e-400, not 0 or 0.0e5
        raise IndexgradError(
            f"number {text} is too small for floating point, where it is 0; write 0 if 0 is meant",
            _tok_span(t),
        )
    return value


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(
        grammar_text(),
        parser="lalr",
        propagate_positions=False,
        transformer=_Build(),
        postlex=_Blocks(),
        maybe_placeholders=True,
    )


_LONE_CR = re.compile(r"\r(?!\n)")


def parse_syntax(text: str, filename: str = "<string>") -> Program:
    """Parse text into an unchecked Program; raises IndexgradError on bad syntax.

    A program with definitions holds its items as written in `written`, and only its own
    declarations and statements in `decls` and `statements` until `inline` adds its uses'.

    A lone carriage return ends a line as CRLF and LF do; it becomes LF first (same offsets) so
    that every line number counts it.
    """
    text = _LONE_CR.sub("\n", text)
    _check_depth(text, filename)
    _check_numbers(text, filename)
    try:
        items = _parser().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(e, text, filename) from None
    except IndexgradError as e:
        raise e.located(filename, text) from None
    except Exception as e:  # a transformer callback raised inside lark
        inner = getattr(e, "orig_exc", None)
        if isinstance(inner, IndexgradError):
            raise inner.located(filename, text) from None
        raise
    names = {it.name for it in items if isinstance(it, Def)}
    try:
        items = _with_uses(items, names)
    except IndexgradError as e:
        raise e.located(filename, text) from None
    decls = tuple(it for it in items if isinstance(it, Decl))
    stmts = tuple(it for it in items if isinstance(it, Statement))
    written = tuple(items) if any(isinstance(it, (Def, Use)) for it in items) else ()
    return Program(decls, stmts, filename=filename, source=text, written=written)


# ---- syntax errors ----------------------------------------------------------------------------

_CLOSERS = {"(": ")", "[": "]"}
_WHAT = {"(": "parenthesis", "[": "index list"}

_TOKEN_WORDS = {
    "RSQB": "']'",
    "LSQB": "'['",
    "RPAR": "')'",
    "LPAR": "'('",
    "COMMA": "','",
    "NAME": "a name",
    "NUMBER": "a number",
    "INT": "an integer",
    "ASSIGN": "'=' or '+='",
    "_NEWLINE": "the end of the line",
    "SEMICOLON": "';'",
    "$END": "the end of the file",
    "FUNC": "a function name",
    "REDUCER": "a reduction",
    "PLUS": "'+'",
    "MINUS": "'-'",
    "STAR": "'*'",
    "SLASH": "'/'",
    "POW": "'^'",
    "SIGN": "a sign",
    "ADDOP": "'+' or '-'",
    "DECL_KW": "'param' or 'input'",
    "SIZE": "'size'",
    "DEF": "'def'",
    "ARROW": "'->'",
    "COLON": "':'",
    "_DEDENT": "the end of the definition",
    "COMPARE": "a comparison",
    "FLOOROP": "'//' or '%'",
    "DIM_KW": "'dim'",
}


_ARITHMETIC = {"ADDOP", "PLUS", "MINUS", "STAR", "FLOOROP", "SLASH"}


def _bracket_stack(text: str, upto: int) -> list[tuple[str, int, int]]:
    """Open brackets (char, line, column) before offset upto, skipping comments."""
    stack: list[tuple[str, int, int]] = []
    line, col, i = 1, 1, 0
    while i < upto and i < len(text):
        ch = text[i]
        if ch == "#":
            while i < len(text) and text[i] not in "\r\n":
                i += 1
            continue
        if ch in "([":
            stack.append((ch, line, col))
        elif ch in ")]" and stack and _CLOSERS[stack[-1][0]] == ch:
            stack.pop()
        elif ch in "\r\n":
            stack.clear()  # a statement ends at a newline
        if ch == "\n" or (ch == "\r" and text[i + 1 : i + 2] != "\n"):
            line, col = line + 1, 1
        else:
            col += 1
        i += 1
    return stack


_DEPTH_EVENTS = re.compile(r"[()\[\];#\\\r\n]")  # what opens, closes or ends a statement


def _check_depth(text: str, filename: str) -> None:
    """Refuse brackets nested deeper than MAX_DEPTH within one statement, before parsing.

    It visits only the characters that matter (a regex finds the next one), not every one."""
    depth, i, n = 0, 0, len(text)
    while (m := _DEPTH_EVENTS.search(text, i)) is not None:
        i = m.start()
        ch = text[i]
        if ch == "#":  # a comment runs to the end of its line
            ends = [k for k in (text.find("\n", i), text.find("\r", i)) if k >= 0]
            i = min(ends) if ends else n
            continue
        if ch == "\\":
            j = i + 1
            while j < n and text[j] in " \t":
                j += 1
            if j < n and text[j] in "\r\n":  # a continuation: the statement goes on
                i = j + (2 if text[j : j + 2] == "\r\n" else 1)
                continue
        elif ch in "\r\n" or ch == ";":
            depth = 0
        elif ch in "([":
            depth += 1
            if depth > MAX_DEPTH:
                before = text[:i]
                line = 1 + len(_LINE_BREAK.findall(before))
                col = i - max(before.rfind("\n"), before.rfind("\r"))
                raise IndexgradError(
                    f"expression nested more than {MAX_DEPTH} brackets deep; "
                    "split it into several statements",
                    Span(line, col, line, col + 1),
                    filename,
                    text,
                )
        else:
            depth = max(0, depth - 1)
        i += 1


_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_BAD_NUMBER = re.compile(r"(?<![\w.])(\d+\.\d*|\.\d+)(\.)")
_NAME_DOT_DIGIT = re.compile(r"(?<![\w.])[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*(\.)\d")


def _check_numbers(text: str, filename: str) -> None:
    """Refuse `1.2.3` and `x.1`, which would otherwise read as products of numbers."""
    if not (_BAD_NUMBER.search(text) or _NAME_DOT_DIGIT.search(text)):
        return  # neither matches across lines, nor in comments: one search of the whole text tells
    for n, line in enumerate(_LINE_BREAK.split(text), start=1):
        code = line.split("#", 1)[0]
        m = _BAD_NUMBER.search(code)
        if m:
            col = m.start(2) + 1
            word = re.match(r"[\d.eE+-]*", code[m.start() :]).group(0)  # type: ignore[union-attr]
            raise IndexgradError(
                f"malformed number '{word}': a number has at most one decimal point",
                Span(n, col, n, col + 1),
                filename,
                text,
            )
        m = _NAME_DOT_DIGIT.search(code)
        if m:
            col = m.start(1) + 1
            tail = re.match(r"\.\d+", code[m.start(1) :]).group(0)  # type: ignore[union-attr]
            raise IndexgradError(
                f"'{tail}' cannot follow a name: a dotted name continues with a letter "
                "(x.grad); to multiply write x * 0.1",
                Span(n, col, n, col + 1),
                filename,
                text,
            )


def _describe(tok: Token | None) -> str:
    if tok is None or tok.type == "$END":
        return "the end of the file"
    if tok.type == "_NEWLINE":
        return "the end of the line"
    return repr(str(tok))


def _syntax_error(e: UnexpectedInput, text: str, filename: str) -> IndexgradError:
    line = getattr(e, "line", 0) or 0
    column = getattr(e, "column", 0) or 0
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        if ch in "\r\n" or not ch:
            msg = "unexpected end of the line"
        elif ch.isprintable():
            msg = f"unexpected character {ch!r}"
        elif ch == "\0":  # UTF-16 text without its byte-order mark has one after each ASCII character
            msg = "unexpected NUL byte: an .idx program is UTF-8 text (a UTF-16 file: save it as UTF-8)"
        else:
            msg = f"unexpected character {ch!r} (U+{ord(ch):04X})"
        stack = _bracket_stack(text, e.pos_in_stream)
        if text.startswith("...", e.pos_in_stream):  # einsum's ellipsis
            msg = "'...' is not an index here: name every axis, as in x[b,t,i] (there is no ellipsis)"
        elif ch in ")]" and (not stack or _CLOSERS[stack[-1][0]] != ch):
            msg = f"unmatched {ch!r}"
        elif stack and ch in ")]":
            o, ol, oc = stack[-1]
            msg = f"expected {_CLOSERS[o]!r} to close the {_WHAT[o]} opened at {ol}:{oc}"
        return IndexgradError(msg, Span(line, column, line, column + 1), filename, text)
    tok = getattr(e, "token", None)
    expected = set(getattr(e, "expected", set()) or set())
    pos = tok.start_pos if isinstance(tok, Token) and tok.start_pos is not None else len(text)
    if isinstance(tok, Token) and tok.type == "$END":
        pos = len(text)
        lines = source_lines(text) or [""]
        line, column = len(lines), len(lines[-1]) + 1
        if text.endswith(("\n", "\r")):
            line, column = len(lines) + 1, 1
    stack = _bracket_stack(text, pos)
    got = _describe(tok if isinstance(tok, Token) else None)
    closer = {"(": "RPAR", "[": "RSQB"}[stack[-1][0]] if stack else None
    ttype = tok.type if isinstance(tok, Token) else "$END"
    start = max(text.rfind("\n", 0, pos), text.rfind(";", 0, pos), text.rfind("\r", 0, pos)) + 1
    in_decl = re.match(r"[ \t]*(param|input)[ \t]+[A-Za-z_]", text[start:pos]) is not None
    opener = f"{_CLOSERS[stack[-1][0]]!r} to close the {_WHAT[stack[-1][0]]} opened at " if stack else ""
    where = f"{stack[-1][1]}:{stack[-1][2]}" if stack else ""
    ends = {"_NEWLINE", "$END", "RPAR", "RSQB", "COMMA", "PLUS", "SEMICOLON"}
    needs_expr = "NAME" in expected and not expected & ends
    before = text[start:pos]
    line_text = re.split(r"[\r\n;]", text[start:], maxsplit=1)[0]
    division = ttype == "FLOOROP" or (ttype == "SLASH" and text[pos - 1 : pos] == "/")
    in_header = re.match(r"[ \t]*def[ \t]+[A-Za-z_]", text[start:pos]) is not None
    if in_header and expected == {"_NEWLINE"}:
        msg = "a definition's body starts on the next line, indented deeper than its def line"
    elif in_header and expected == {"FUNC"}:
        msg = f"expected the definition's name and its arguments, as in def f(x[i]) -> y[i]:, got {got}"
    elif in_header and "ARROW" in expected:
        msg = f"expected '->' and the outputs after the arguments, as in def f(x[i]) -> y[i]:, got {got}"
    elif in_header and "COLON" in expected and not stack:
        msg = f"expected ':' at the end of the def line, got {got}"
    elif re.match(r"[ \t]*dim[ \t]+[A-Za-z_]", line_text) and not stack:
        msg = "a dim declaration gives index names whole-number extents: dim u=2, v=3"
    elif division and "INT" not in expected:
        op = "%" if str(tok) == "%" else "//"
        msg = f"'{op}' divides index positions (x[r{op}2]); to divide values write a / b"
    elif expected == {"INT"} and re.search(r"(//|%)[ \t]*$", before):
        msg = f"'//' and '%' in an index position take a whole number, as in r//2; got {got}"
    elif ttype == "COMPARE" and re.search(r"[<>]|==|!=", before):
        msg = "comparisons do not chain: write (a < b) (b < c) for a < b < c"
    elif re.search(r"\b(pad|clamp|wrap)\([^()\[\]]*\)[ \t]*$", before) and ttype in _ARITHMETIC:
        msg = "a boundary mode holds the whole index position: write pad(i+1), not pad(i)+1"
    elif expected == {"LPAR"}:
        msg = f"expected '(' after the reduction's index list, got {got}"
    elif expected == {"NAME"} and ttype in ("RSQB", "COMMA"):
        msg = f"expected an index name before {got}"
    elif ttype in ("RSQB", "RPAR", "COMMA") and needs_expr:
        what = "an index" if "INT" in expected else "an expression"
        msg = f"expected {what} before {got}"
    elif ttype in ("RSQB", "RPAR") and not stack:
        msg = f"unmatched {str(tok)!r}"
    elif ttype == "COMMA" and "INT" in expected:
        msg = f"expected an index before {got}"
    elif ttype in ("RSQB", "RPAR") and closer not in expected and "INT" in expected:
        msg = f"expected an index before {got}"
    elif ttype == "LSQB" and "LSQB" not in expected and not needs_expr:
        msg = "unexpected '[': a tensor takes one index list, like x[i,j]"
    elif ttype == "POW":
        msg = "a power cannot be raised again without parentheses: write (a^b)^c"
    elif ttype == "NAME" and stack and stack[-1][0] == "[" and (k := re.search(r"\b\d+(?=[ \t]*$)", before)):
        msg = f"a multiple of an index is written with '*': {k.group()}*{tok}, not {k.group()}{tok}"
    elif ttype in _ARITHMETIC and re.search(r"(\^|\*\*)[ \t]*\([ \t]*[-+\d.eE]+[ \t]*$", before):
        msg = "the exponent after '^' is one number, not a calculation: write its value (x^0.5, not x^(1/2))"
    elif stack and (
        ttype in ("_NEWLINE", "$END", "SEMICOLON", "RPAR", "RSQB", "ASSIGN") or closer in expected
    ):
        msg = f"expected {opener}{where}, got {got}"
    elif ttype == "ASSIGN" and "DECL_KW" in expected:
        msg = f"expected a tensor name, got {got}"
    elif in_decl and ttype == "ASSIGN":
        msg = "a declaration only names tensors; write the definition on its own line"
    elif in_decl and "NAME" in expected:
        msg = f"expected a tensor name, got {got}"
    elif ttype == "ASSIGN" and not needs_expr and "DECL_KW" not in expected:
        msg = "a statement has one '=' (or '+='); start the next statement on a new line or after ';'"
    elif expected and expected <= {"SIGN", "NUMBER", "LPAR"} and "NUMBER" in expected:
        msg = f"the exponent after '^' must be a number, got {got}"
    elif expected and expected <= {"ASSIGN", "LSQB", "COMMA"} | {"__ANON_0"}:
        msg = f"expected '=' or '+=' after the tensor name, got {got}"
    elif "ASSIGN" in expected and not stack:
        msg = f"expected '=' or '+=' after the left side, got {got}"
    elif {"NAME", "NUMBER", "LPAR"} <= expected or {"NAME", "MINUS"} <= expected:
        msg = f"expected an expression, got {got}"
    elif expected and expected <= {"NAME", "INT", "ADDOP", "RSQB"}:
        msg = f"expected an index (a name like i, or j+k), got {got}"
    elif expected:
        # a line may also start a definition or end one, which is seldom what was meant
        words = sorted({_TOKEN_WORDS.get(t, t.lower()) for t in expected - {"DEF", "_DEDENT"}})
        if len(words) > 4:
            msg = f"unexpected {got}"
        else:
            msg = f"expected {' or '.join(words)}, got {got}"
    else:
        msg = f"unexpected {got}"
    if isinstance(tok, Token) and tok.type not in ("$END",) and tok.line:
        width = max(1, len(str(tok))) if tok.type != "_NEWLINE" else 1
        span = Span(tok.line, tok.column, tok.line, tok.column + width)
    else:
        span = Span(line, column, line, column + 1)
    return IndexgradError(msg, span, filename, text)


def parse(text: str, filename: str = "<string>") -> Program:
    """Parse and check .idx text; `str(program)` is its canonical form."""
    if not isinstance(text, str):
        raise IndexgradError(f"parse() takes the program text as a string, got {type(text).__name__}")
    if filename is None or isinstance(filename, os.PathLike):
        filename = "<string>" if filename is None else str(filename)
    elif not isinstance(filename, str):
        raise IndexgradError(f"parse() takes the filename as a string, got {type(filename).__name__}")
    with gc_paused():
        program = check(inline(parse_syntax(text, filename)))
    for w in program.warnings:  # SPEC 1.4: said as a Python warning too (the CLI prints its own)
        where = f"{filename}:{w.span.line}:{w.span.column}: " if w.span and w.span.line else f"{filename}: "
        warnings.warn(IndexgradWarning(where + w.message), stacklevel=_caller_level())
    return program


def _caller_level() -> int:
    """The warnings stack level of the first frame outside this package (the user's call)."""
    here = str(Path(__file__).parent)
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(here):
        frame, level = frame.f_back, level + 1
    return level


def load(path: str | Path) -> Program:
    """Parse and check an .idx file; the path `-` (the string) reads standard input, as `<stdin>`."""
    if not isinstance(path, (str, os.PathLike)):
        raise IndexgradError(f"load() takes the path of an .idx file, got {type(path).__name__}")
    p = Path(path)
    try:
        if path == "-":
            p = Path("<stdin>")
            raw = sys.stdin.buffer.read(MAX_SOURCE_BYTES + 1)
        else:
            with open(p, "rb") as f:
                raw = f.read(MAX_SOURCE_BYTES + 1)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        reason = getattr(e, "strerror", None) or e
        raise IndexgradError(f"cannot read {p}: {reason}", filename=str(p)) from None
    if len(raw) > MAX_SOURCE_BYTES:
        raise IndexgradError(
            f"the file holds more than {MAX_SOURCE_BYTES >> 20} MiB, which is no .idx program "
            "(a program is at most that much text); is it the file you meant?",
            filename=str(p),
        )
    for bom, encoding in _WIDE_BOMS:
        if raw.startswith(bom):
            raise IndexgradError(
                f"the file is {encoding} (it starts with a {encoding} byte-order mark); "
                "an .idx program is UTF-8: save it as UTF-8",
                filename=str(p),
            )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        col = len(raw[line_start : e.start].decode("utf-8", errors="replace")) + 1
        raise IndexgradError(
            f"the file is not valid UTF-8 (byte 0x{raw[e.start]:02x})",
            Span(line, col, line, col + 1),
            str(p),
            raw.decode("utf-8", errors="replace"),
        ) from None
    return parse(text.removeprefix("\ufeff"), str(p))  # a byte-order mark is not part of the text


_WIDE_BOMS = [  # UTF-32 first: its little-endian mark begins with UTF-16's
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
]


def as_program(x: str | Path | Program, caller: str = "compile") -> Program:
    """A Program from a Program, a path to an .idx file, or .idx text; anything else is an error
    naming the function `caller` the user called.

    A Path is a path. A one-line string ending in `.idx` is a path unless it holds `=` or `;`
    and names no file (every statement has an `=`, so `y = w.idx` is program text, while
    `runs/lr=0.1/m.idx` is the file when it exists); another one-line string without `=` is a
    path when it names a file; any other string is program text.
    """
    if isinstance(x, Program):
        return x
    if not isinstance(x, (str, Path)):
        raise IndexgradError(
            f"{caller}() takes .idx text, the path of an .idx file or a Program, got {type(x).__name__}"
        )
    if isinstance(x, Path) or _names_a_file(x):
        return load(x)
    return parse(x)


def _names_a_file(text: str) -> bool:
    if "\n" in text or "\r" in text:
        return False
    try:
        exists = Path(text).is_file()
    except (OSError, ValueError):  # too long a name, or a NUL in it: not a file name
        return False
    if text.endswith(".idx"):
        return exists or not any(c in text for c in "=;")
    return exists and "=" not in text
