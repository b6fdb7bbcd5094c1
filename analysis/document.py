"""The report as one model: its parts as data, built once from the summary
(analysis/render.py ``build``) and rendered twice, as markdown and as the HTML page, by the
templates in analysis/templates/. Nothing here says how a part looks; its text is plain (no
markup): what is emphasised says so in its Span's style, and each rendering escapes the rest
as its format needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar


@dataclass(frozen=True)
class Span:
    """A run of text in a paragraph or a table cell."""

    text: str
    style: str = ""  # "" (plain), "bold" or "code"


Inline = tuple[Span, ...]


def bold(text: str) -> Span:
    return Span(text, "bold")


def code(text: str) -> Span:
    return Span(text, "code")


def inline(*parts: str | Span) -> Inline:
    """Spans from plain strings and Spans, in order."""
    return tuple(p if isinstance(p, Span) else Span(p) for p in parts)


@dataclass(frozen=True)
class Paragraph:
    spans: Inline
    kind: ClassVar[str] = "paragraph"  # what the templates dispatch on


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[Inline, ...], ...]  # each row one cell per column
    kind: ClassVar[str] = "table"


def table(header: tuple[str, ...], rows) -> Table:
    """A Table from rows of cells, each cell a string, a Span or an Inline."""
    return Table(header, tuple(tuple(c if isinstance(c, tuple) else inline(c) for c in row)
                               for row in rows))


@dataclass(frozen=True)
class Figure:
    """A figure: its key (roc, confusion, ...), title, PNG file and the reading under it."""

    key: str
    title: str
    path: Path
    reading: str
    wide: bool = False  # a row of the page's grid to itself (one panel per model, say)


@dataclass(frozen=True)
class Figures:
    figures: tuple[Figure, ...]
    kind: ClassVar[str] = "figures"


Block = Paragraph | Table | Figures


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Report:
    """The whole report: its title, the line on where it comes from, the headline (what the
    fusion bought), then the sections in order."""

    title: str
    intro: Paragraph
    headline: Paragraph
    sections: tuple[Section, ...]
