"""The one user-error type, and the renderer that draws `FILE:LINE:COL: error:` with a caret."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .nodes import Span


class IndexgradError(Exception):
    """A mistake in a user's program, arrays, flags or files, with the place it happened."""

    def __init__(
        self,
        message: str,
        span: Span | None = None,
        filename: str | None = None,
        source: str | None = None,
    ) -> None:
        self.span = span if span is not None and span.line > 0 else None
        if self.span is not None and self.span.via is not None and not message.endswith(_uses(self.span)):
            message += _uses(self.span)  # the place in a definition's body, and where it is used
        super().__init__(message)
        self.message = message
        self.filename = filename
        self.source = source

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def column(self) -> int | None:
        return self.span.column if self.span else None

    def located(self, filename: str | None, source: str | None) -> IndexgradError:
        """Fill in the file and source text where they are not known yet; returns self."""
        if self.filename is None:
            self.filename = filename
        if self.source is None:
            self.source = source
        return self

    def __str__(self) -> str:
        return render(self.message, self.span, self.filename, self.source)


class NoArray(IndexgradError):
    """No array for a tensor a plan reads: `name` says which, so that a caller that knows why
    (backward given vals without the forward values) can say what to pass instead."""

    def __init__(self, name: str, span: Span | None = None) -> None:
        super().__init__(f"no array was given for input '{name}'", span)
        self.name = name


def render(
    message: str,
    span: Span | None,
    filename: str | None,
    source: str | None,
    severity: str = "error",
) -> str:
    """`FILE:LINE:COL: severity: message`, then the source line and a caret under the place."""
    where = visible(filename or "<input>")
    message = "\n".join(visible(part) for part in message.split("\n"))
    if span is None or span.line <= 0:
        return f"{where}: {severity}: {message}"
    head = f"{where}:{span.line}:{span.column}: {severity}: {message}"
    if not source:
        return head
    lines = source_lines(source)
    if not 1 <= span.line <= len(lines):
        return head
    text = visible(lines[span.line - 1].replace("\t", " "))
    width = 1
    if span.end_line == span.line and span.end_column > span.column:
        width = span.end_column - span.column
    width = max(1, min(width, len(text) - span.column + 1))
    shown = f"{head}\n  {text}\n  {' ' * (span.column - 1)}^{'~' * (width - 1)}"
    for use in span.uses():
        note = render("in this use of the definition", replace(use, via=None), filename, source, "note")
        shown += "\n" + note
    return shown


def _uses(span: Span) -> str:
    """Where a place in a definition's body is used: `; in the definition used at 9:1`."""
    return "".join(f"; in the definition used at {u.line}:{u.column}" for u in span.uses())


def visible(text: str) -> str:
    """text with every control or format character drawn as one visible character, so that an
    echoed line cannot move the cursor, retitle or clear a terminal, or reorder what it shows
    (bidirectional overrides), and the caret's column still matches: C0 controls become their
    Control Pictures (ESC is ␛), DEL ␡, and the others (C1, bidirectional and other format
    characters) U+FFFD."""
    if text.isprintable():
        return text
    return "".join(_picture(ch) if unicodedata.category(ch) in _HIDDEN else ch for ch in text)


_HIDDEN = {"Cc", "Cf", "Cs", "Zl", "Zp"}  # controls, format, surrogates, line/paragraph breaks


def _picture(ch: str) -> str:
    code = ord(ch)
    if code < 0x20:
        return chr(0x2400 + code)
    return "\u2421" if code == 0x7F else "\ufffd"


def source_lines(source: str) -> list[str]:
    """The lines of a program as the grammar counts them: split at LF, CRLF or CR, and nowhere else."""
    lines = _LINE_BREAK.split(source)
    return lines[:-1] if lines and not lines[-1] else lines


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def lookup(table: Mapping[str, Any], name: str, what: str) -> Any:
    """table[name], or an IndexgradError listing what is available."""
    if name not in table:
        raise IndexgradError(f"unknown {what} '{name}'; available: " + ", ".join(sorted(table)))
    return table[name]


class IndexgradWarning(UserWarning):
    """A program that runs but probably does not mean what it says (SPEC 1.4)."""
