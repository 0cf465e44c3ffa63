"""Inlining: each use of a definition becomes the definition's statements with fresh names (SPEC 10)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from .check import check, refuse_reserved
from .errors import IndexgradError
from .functions import RESERVED, reserved_kind
from .nodes import (
    DELTA,
    NOSPAN,
    Affine,
    Call,
    Decl,
    Def,
    Expr,
    Gather,
    Index,
    Product,
    Program,
    Reduce,
    Ref,
    SizeOf,
    Span,
    Statement,
    Use,
    children,
    map_expr,
    plain_names,
    refs_in_statement,
)

_DERIVED_WORD = re.compile(r"^(grad|tan)\d*$")
# a definition using one that uses one ... : every inlined place remembers each use it came
# through (Span.via), so a deeper chain is refused rather than overflowing Python's stack
MAX_NESTING = 100
# each use copies its definition's statements, so a definition used twice in the next, and so on,
# doubles at each level: more inlined statements than this are refused before any is made
MAX_INLINED = 200_000


@dataclass(frozen=True)
class _Flat:
    """A definition's body with its own uses inlined, in the definition's names."""

    definition: Def
    decls: tuple[Decl, ...]
    statements: tuple[Statement, ...]
    local: frozenset[str]  # tensors that become USE.NAME: params and intermediates
    interface: tuple[str, ...]  # index names a use binds or keeps: the header's and the params'


def inline(program: Program) -> Program:
    """The program with every use replaced by its definition's statements; `written` is kept."""
    if not program.written:
        return program
    try:
        return _Inliner(program).run()
    except IndexgradError as e:
        raise e.located(program.filename, program.source) from None


def _err(message: str, span: Span) -> IndexgradError:
    return IndexgradError(message, span)


def _made(item: Decl | Statement | Use) -> list[Ref]:
    """The tensors an item declares or writes: names a use's fresh names must not take."""
    return [item.ref] if isinstance(item, Decl) else _written(item)


def _names(item: Decl | Statement | Use) -> list[Ref]:
    """The tensor references an item writes and reads."""
    if isinstance(item, Decl):
        return [item.ref]
    if isinstance(item, Statement):
        return [item.target, *refs_in_statement(item)]
    return [*item.targets, *item.args]


class _Inliner:
    def __init__(self, program: Program) -> None:
        self.p = program
        self.defs: dict[str, _Flat] = {}
        self.at: dict[str, Span] = {d.name: d.span for d in reversed(program.defs())}
        self.used: set[str] = set()
        # `dim` extents are the program's, by index name: a renamed index that has one is renamed
        # to an alias no other statement names, declared with the same extent, so the extent follows
        self.fixed = {d.ref.name: d.size for d in program.written if isinstance(d, Decl) and d.role == "dim"}
        self.aliases: dict[str, str] = {}
        self.names_seen = _all_index_names(program.written) | set(self.fixed)

    def run(self) -> Program:
        decls: list[Decl] = []
        stmts: list[Statement] = []
        taken = {r.name for it in self.p.written if not isinstance(it, Def) for r in _made(it)}
        self.measure()
        for it in self.p.written:
            if isinstance(it, Def):
                self.define(it)
            elif isinstance(it, Decl):
                decls.append(it)
            elif isinstance(it, Statement):
                self.no_calls(it)
                stmts.append(it)
            else:
                more_decls, more = self.expand(it, taken, None)
                decls += more_decls
                stmts += more
        decls += [
            Decl("dim", Ref(alias), _dim_span(decls, n), self.fixed[n]) for n, alias in self.aliases.items()
        ]
        dims = tuple(d for d in decls if d.role == "dim")  # the program's extents hold in bodies too
        for name, flat in self.defs.items():
            if name not in self.used:  # a definition nothing uses is still checked, at its lines
                check(Program(dims + flat.decls, flat.statements, self.p.filename, self.p.source))
        for r in [d.ref for d in decls] + [r for s in stmts for r in [s.target, *refs_in_statement(s)]]:
            if r.name in self.defs:
                raise _err(f"'{r.name}' names a definition and cannot name a tensor", r.span)
        return replace(self.p, decls=tuple(decls), statements=tuple(stmts))

    def measure(self) -> None:
        """Refuse, before anything is inlined, definitions nested more than MAX_NESTING deep and
        a definition or program that would hold more than MAX_INLINED statements once inlined."""
        size: dict[str, int] = {}
        depth: dict[str, int] = {}

        def count(items: tuple | list, inside: Def | None) -> tuple[int, int]:
            total, deepest = 0, 0
            for it in items:
                if isinstance(it, Statement):
                    total += 1
                elif isinstance(it, Use) and it.name in size:  # others: expand says what is wrong
                    if inside is not None and depth[it.name] >= MAX_NESTING:
                        raise _err(
                            f"definitions nest more than {MAX_NESTING} deep here ('{inside.name}' uses "
                            f"'{it.name}', which uses another, and so on); use fewer levels",
                            it.span,
                        )
                    total += size[it.name]
                    deepest = max(deepest, depth[it.name])
                    if total > MAX_INLINED:
                        whose = f"the body of '{inside.name}'" if inside is not None else "the program"
                        raise _err(
                            f"with its uses inlined, {whose} would hold more than {MAX_INLINED:,} "
                            f"statements ('{it.name}' alone stands for {size[it.name]:,}: each use copies "
                            "its definition's statements, so one used twice by the next doubles at "
                            "each level)",
                            it.span,
                        )
            return total, deepest + 1

        for it in self.p.written:
            if isinstance(it, Def):
                size[it.name], depth[it.name] = count(it.body, it)
        count(self.p.written, None)

    # ---- reading a definition ------------------------------------------------------------------

    def define(self, d: Def) -> None:
        if d.name in RESERVED:
            kind = reserved_kind(d.name)
            raise _err(f"'{d.name}' is a built-in {kind} name; give the definition another name", d.span)
        if d.name in self.defs:
            sp = self.defs[d.name].definition.span
            raise _err(f"'{d.name}' is already defined at {sp.line}:{sp.column}; choose another name", d.span)
        if not d.args:  # a use reads `f(x[...])`: a call has one argument at least
            raise _err(f"'{d.name}' takes at least one argument, a tensor like x[b,j]", d.span)
        header: dict[str, Ref] = {}
        for r in (*d.args, *d.outputs):
            refuse_reserved(r)
            if plain_names(r) is None:
                raise _err(
                    f"the header of '{d.name}' lists each tensor with distinct plain index names, "
                    "like x[b,j]",
                    r.span,
                )
            if r.name in header:
                raise _err(f"'{r.name}' appears twice in the header of '{d.name}'", r.span)
            header[r.name] = r
        args = {r.name for r in d.args}
        outputs = {r.name: r for r in d.outputs}
        params = {it.ref.name for it in d.body if isinstance(it, Decl) and it.role == "param"}
        made = {r.name for it in d.body if not isinstance(it, Decl) for r in _written(it)}
        known = args | params | made | {DELTA}  # the identity needs no array
        for it in d.body:
            self.body_item(d, it, args, outputs, known)
        for out in d.outputs:
            if out.name not in made:
                raise _err(f"the output '{out.name}' of '{d.name}' is not defined in its body", out.span)
        decls: list[Decl] = []
        stmts: list[Statement] = []
        taken = set(known)
        for it in d.body:
            if isinstance(it, Decl):
                decls.append(it)
            elif isinstance(it, Statement):
                stmts.append(it)
            else:
                more_decls, more = self.expand(it, taken, d)
                decls += more_decls
                stmts += more
        interface = {n: None for r in (*d.args, *d.outputs) for n in plain_names(r) or ()}
        for dc in decls:
            interface.update({n: None for i in dc.ref.indices if isinstance(i, Affine) for n in i.names()})
        local = {r.name for it in (*decls, *stmts) for r in _names(it)} - set(header) - {DELTA}
        self.defs[d.name] = _Flat(d, tuple(decls), tuple(stmts), frozenset(local), tuple(interface))

    def body_item(
        self, d: Def, it: Decl | Statement | Use, args: set[str], outputs: dict[str, Ref], known: set[str]
    ) -> None:
        """Refuse what a body may not hold; names read must be arguments, params or made in the body."""
        if isinstance(it, Decl):
            if it.role == "dim":
                raise _err(
                    f"an extent holds in the whole program: write dim {it.ref.name}={it.size} above "
                    f"the definition, not in the body of '{d.name}'",
                    it.span,
                )
            if it.role != "param":
                raise _err(
                    f"the inputs of '{d.name}' are its arguments: add {it.ref.name} to its header "
                    "instead of declaring it input",
                    it.span,
                )
            if it.ref.name in args or it.ref.name in outputs:
                message = f"'{it.ref.name}' is in the header of '{d.name}' and cannot be a param too"
                raise _err(message, it.span)
            if plain_names(it.ref) is None:
                raise _err("a declaration lists distinct plain index names", it.ref.span)
        else:
            if isinstance(it, Statement):
                self.no_calls(it)
            for r in _written(it):
                if r.name in args:
                    raise _err(
                        f"'{r.name}' is an argument of '{d.name}' and cannot be assigned in its body; "
                        "give the new tensor a new name",
                        r.span,
                    )
                header = outputs.get(r.name)
                defines = getattr(it, "op", "=") == "="
                if header is not None and defines and plain_names(r) != plain_names(header):
                    raise _err(
                        f"the header of '{d.name}' writes its output as {_text(header)}, so its body "
                        f"defines it with the same index names in the same order, not {_text(r)}",
                        r.span,
                    )
            reads = refs_in_statement(it) if isinstance(it, Statement) else [*it.args]
            for r in reads:
                if r.name not in known:
                    raise _err(
                        f"'{r.name}' is read in the body of '{d.name}' but is not one of its arguments: "
                        f"add it to the header ({d.name}(..., {r.name}[...])) or declare it param in "
                        "the body",
                        r.span,
                    )
        for r in _names(it):
            if r.name not in args and r.name not in outputs and _DERIVED_WORD.match(r.name):
                raise _err(
                    f"'{r.name}' cannot name a tensor of a definition: USE.{r.name} would read as "
                    "the derived tensor of USE; choose another name",
                    r.span,
                )

    def fresh(self, n: str, taken: set[str]) -> str:
        """A new name for index n where a use took it: an index `dim` sizes gets its alias, which
        names it in every statement (index names are local to a statement) and no other index; any
        other index the first of n2, n3, ... not taken here and not an index `dim` sizes."""
        if n not in self.fixed:
            return _fresh(n, taken | set(self.fixed))
        if n not in self.aliases:
            alias = self.aliases[n] = _fresh(n, self.names_seen)
            self.names_seen.add(alias)
            self.fixed[alias] = self.fixed[n]
        return self.aliases[n]

    def no_calls(self, s: Statement) -> None:
        """A definition is used only as the whole right side of its own statement."""
        for e in _calls(s.expr):
            if e.func in self.at:
                raise _err(
                    f"'{e.func}' is a definition: its use stands alone, as in t[...] = {e.func}(...); "
                    "then read t in this statement",
                    e.span,
                )

    # ---- using a definition --------------------------------------------------------------------

    def expand(self, use: Use, taken: set[str], inside: Def | None) -> tuple[list[Decl], list[Statement]]:
        """The declarations and statements one use stands for, in the names of where it is written."""
        flat = self.defs.get(use.name)
        if flat is None:
            if inside is not None and use.name == inside.name:
                raise _err(
                    f"'{use.name}' uses itself; recursion is not supported (a definition may use "
                    "only the definitions above it)",
                    use.span,
                )
            if use.name in self.at:
                sp = self.at[use.name]
                raise _err(
                    f"'{use.name}' is defined below, at {sp.line}:{sp.column}; move its definition "
                    "above this use",
                    use.span,
                )
            raise _err(f"no definition named '{use.name}' (known: {', '.join(self.at) or 'none'})", use.span)
        d = flat.definition
        self.used.add(d.name)
        _count(use, "argument", use.args, d.args)
        _count(use, "output", use.targets, d.outputs)
        bind = _binding(use, d)
        self.same_extents(use, bind)
        images = set(bind.values())
        # inside a definition, the body's own indices leave the names of its header and params
        # free: a use of that definition renames those with its own names, and would rename a
        # local index that shares one too, giving it the extent `dim` gives the use's name
        outer = _interface_names(inside) if inside is not None else set()
        for n in flat.interface:  # index names only params have keep their names where they can
            if n not in bind:
                bind[n] = self.fresh(n, images | outer) if n in images | outer else n
                images.add(bind[n])
        prefix = use.targets[0].name
        tensors = {a.name: b.name for a, b in zip((*d.args, *d.outputs), (*use.args, *use.targets))}
        seen: set[str] = set()
        for t in use.targets:
            if t.name in seen:
                raise _err(f"'{t.name}' is defined twice by this use", t.span)
            seen.add(t.name)
        for n in sorted(flat.local):
            new = tensors[n] = f"{prefix}.{n}"
            if new in taken:
                raise _err(
                    f"this use of '{d.name}' names its tensor '{n}' '{new}', which is already a "
                    f"name here; rename the use's output '{prefix}'",
                    use.span,
                )
        taken.update(tensors[n] for n in flat.local)
        names = _Rename(bind, tensors, use.span)
        decls = [Decl(dc.role, names.ref(dc.ref), names.span(dc.span)) for dc in flat.decls]
        fresh = self.fresh
        rename = [_Rename.for_statement(s, bind, tensors, use.span, fresh, outer) for s in flat.statements]
        stmts = [r.statement(s) for r, s in zip(rename, flat.statements)]
        return decls, stmts

    def same_extents(self, use: Use, bind: dict[str, str]) -> None:
        """An index of the header that `dim` sizes stands at the use for an index of that extent."""
        for a, b in bind.items():
            if a in self.fixed and self.fixed.get(b) != self.fixed[a]:
                has = f"has the extent {self.fixed[b]}" if b in self.fixed else "has no `dim` extent"
                raise _err(
                    f"index '{a}' of '{use.name}' has the extent {self.fixed[a]} (dim {a}={self.fixed[a]}), "
                    f"but this use calls it '{b}', which {has}; write '{a}' there, or declare "
                    f"dim {b}={self.fixed[a]}",
                    use.span,
                )


def _written(it: Statement | Use) -> list[Ref]:
    return [it.target] if isinstance(it, Statement) else list(it.targets)


def _calls(e: Expr) -> list[Call]:
    out = [e] if isinstance(e, Call) else []
    for c in children(e):
        out += _calls(c)
    return out


def _text(r: Ref) -> str:
    from .printer import format_ref

    return format_ref(r)


def _count(use: Use, what: str, got: tuple[Ref, ...], want: tuple[Ref, ...]) -> None:
    if len(got) != len(want):
        listed = ", ".join(_text(r) for r in want) or "none"
        raise _err(
            f"'{use.name}' takes {len(want)} {what}{'' if len(want) == 1 else 's'} ({listed}), "
            f"got {len(got)}",
            use.span,
        )


def _binding(use: Use, d: Def) -> dict[str, str]:
    """The use's index name for each index name of the definition's header, by position."""
    bind: dict[str, str] = {}
    where: dict[str, Ref] = {}
    for mine, theirs in zip((*d.args, *d.outputs), (*use.args, *use.targets)):
        names = plain_names(theirs)
        if names is None:
            raise _err(
                f"a use of '{use.name}' passes and defines tensors with distinct plain index names, "
                f"like {_text(mine)}",
                theirs.span,
            )
        want = plain_names(mine) or ()
        if len(names) != len(want):
            raise _err(
                f"'{theirs.name}' stands for {_text(mine)} of '{use.name}', which has "
                f"{len(want)} ind{'ex' if len(want) == 1 else 'ices'}; here it has {len(names)}",
                theirs.span,
            )
        for a, b in zip(want, names):
            if bind.setdefault(a, b) != b:
                raise _err(
                    f"index '{a}' of '{use.name}' is '{bind[a]}' in {_text(where[a])} but '{b}' in "
                    f"{_text(theirs)}; one index of the definition is one index at its use",
                    theirs.span,
                )
            where.setdefault(a, theirs)
    by_image: dict[str, str] = {}
    for a, b in bind.items():
        if b in by_image:
            raise _err(
                f"'{use.name}' has distinct indices '{by_image[b]}' and '{a}', which this use would "
                f"both call '{b}'; distinct indices of a definition stay distinct, so write a new "
                "name for one of them",
                use.span,
            )
        by_image[b] = a
    return bind


def _fresh(n: str, taken: set[str]) -> str:
    cand, k = n, 2
    while cand in taken:
        cand, k = f"{n}{k}", k + 1
    return cand


def _all_index_names(items: tuple | list) -> set[str]:
    """Every index name written anywhere in items, definitions' headers and bodies included."""
    out: set[str] = set()
    for it in items:
        if isinstance(it, Def):
            out |= _all_index_names([*it.args, *it.outputs, *it.body])
        elif isinstance(it, Statement):
            out |= _index_names(it)
        elif isinstance(it, Ref):
            out |= {n for i in it.indices for n in i.names()}
        else:
            out |= _all_index_names(_names(it))
    return out


def _interface_names(d: Def) -> set[str]:
    """The index names of a definition's header and of the params its body declares."""
    refs = [*d.args, *d.outputs, *(it.ref for it in d.body if isinstance(it, Decl))]
    return {n for r in refs for i in r.indices for n in i.names()}


def _dim_span(decls: list[Decl], n: str) -> Span:
    """Where `dim n=...` is written: the place of the alias that stands for n."""
    return next((d.span for d in decls if d.role == "dim" and d.ref.name == n), NOSPAN)


def _via(span: Span, use: Span) -> Span:
    """span, inlined at the use (after the uses it was already inlined through)."""
    return replace(span, via=use if span.via is None else _via(span.via, use))


def _index_names(s: Statement) -> set[str]:
    out = {n for r in [s.target, *refs_in_statement(s)] for i in r.indices for n in _affine_names(i)}
    return out | _bound(s.expr)


def _affine_names(i: Index) -> tuple[str, ...]:
    return i.names() if isinstance(i, Affine) else ()


def _bound(e: Expr) -> set[str]:
    out = set(e.indices) if isinstance(e, Reduce) else {e.index} if isinstance(e, SizeOf) else set()
    for c in children(e):
        out |= _bound(c)
    return out


class _Rename:
    """Tensor and index names of a definition's body renamed for one use, every place via the use."""

    def __init__(self, index: dict[str, str], tensors: dict[str, str], use: Span) -> None:
        self.index, self.tensors, self.use = index, tensors, use

    @classmethod
    def for_statement(
        cls,
        s: Statement,
        bind: dict[str, str],
        tensors: dict[str, str],
        use: Span,
        fresh: Callable[[str, set[str]], str],
        outer: set[str],
    ) -> _Rename:
        """Index names are a statement's own: the header's take the use's names, and a name of the
        statement alone is kept unless a use's name or one of `outer` took it (then `fresh` names it)."""
        names = _index_names(s)
        images = {bind[n] for n in names if n in bind}
        index = {n: bind[n] for n in names if n in bind}
        for n in sorted(names - set(bind)):
            taken = images | outer | (names - {n} - set(bind))
            index[n] = fresh(n, taken) if n in taken else n
            images.add(index[n])
        return cls(index, tensors, use)

    def name(self, n: str) -> str:
        return self.index.get(n, n)

    def span(self, sp: Span) -> Span:
        return _via(sp, self.use)

    def at(self, i: Index) -> Index:
        if isinstance(i, Gather):
            return Gather(self.ref(i.ref), self.span(i.span))
        moved = i.renamed(self.name)
        terms = tuple(sorted(moved.terms, key=lambda t: t[1]))  # the parser's order: by name
        return replace(moved, terms=terms, span=self.span(i.span))

    def ref(self, r: Ref) -> Ref:
        return Ref(self.tensors.get(r.name, r.name), tuple(self.at(i) for i in r.indices), self.span(r.span))

    def node(self, e: Expr) -> Expr:
        if isinstance(e, Ref):
            return self.ref(e)
        if isinstance(e, Reduce):
            return Reduce(e.op, tuple(self.name(k) for k in e.indices), e.body, self.span(e.span))
        if isinstance(e, SizeOf):
            return SizeOf(self.name(e.index), self.span(e.span))
        if isinstance(e, Product):
            return Product(e.factors, e.divide, tuple(self.name(k) for k in e.summed), self.span(e.span))
        return replace(e, span=self.span(e.span))

    def statement(self, s: Statement) -> Statement:
        expr = map_expr(s.expr, self.node)
        summed = tuple(self.name(k) for k in s.summed)
        return Statement(self.ref(s.target), s.op, expr, summed, self.span(s.span))


__all__ = ["inline"]
