"""A Pygments lexer for .idx files (entry point `idx` in the group `pygments.lexers`)."""

from __future__ import annotations

from pygments.lexer import RegexLexer, bygroups, words
from pygments.token import Comment, Keyword, Name, Number, Operator, Punctuation, Whitespace

from .functions import CALLS, MODES, REDUCTIONS

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


class IdxLexer(RegexLexer):
    """Layer equations in explicit index notation: `y[b,i] = x[b,j] W[j,i]`."""

    name = "indexgrad"
    aliases = ["idx", "indexgrad"]
    filenames = ["*.idx"]
    mimetypes = ["text/x-indexgrad"]

    tokens = {
        "root": [
            (r"[ \t\f]+", Whitespace),
            (r"\\[ \t]*\r?\n", Whitespace),  # a line continued
            (r"\r?\n|\r", Whitespace),
            (r"#[^\r\n]*", Comment.Single),
            # `param` / `input` start a declaration only when a name follows (as in the grammar)
            (r"(param|input)(?=[ \t]+[A-Za-z_])", Keyword.Declaration),
            # `def NAME(`: a definition's header (SPEC 10)
            (rf"(def)([ \t]+)({_NAME})(?=[ \t]*\()", bygroups(Keyword, Whitespace, Name.Function)),
            (words(tuple(sorted(REDUCTIONS)), suffix=r"(?=[ \t]*\[)"), Name.Builtin),
            (r"size(?=[ \t]*\[)", Name.Builtin),
            (words(CALLS + MODES, suffix=r"(?=[ \t]*\()"), Name.Function),
            (r"(dim)(?=[ \t]+[A-Za-z_][A-Za-z0-9_]*[ \t]*=)", Keyword.Declaration),
            (r"delta(?=[ \t]*\[)", Name.Builtin),
            (
                rf"({_NAME})((?:\.{_NAME})*?)(\.(?:grad|tan)\d*(?:\.(?:grad|tan)\d*)*)\b",
                bygroups(Name.Variable, Name.Variable, Name.Attribute),
            ),
            (rf"{_NAME}(?:\.{_NAME})*", Name.Variable),
            (r"(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", Number),
            (r"->|\+=|\*\*|//|<=|>=|==|!=|[=+\-*/^%<>]", Operator),
            (r"[\[\](),;:]", Punctuation),
        ],
    }


__all__ = ["IdxLexer"]
