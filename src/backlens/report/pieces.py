"""What a report is made of: sections holding tables, lines of text, verdicts and HTML blocks.

The tables a command prints on the terminal are rich Tables; `captured` runs the command's own
print function against a collector and turns each Table into a TablePiece, so the report shows
the same tables as the terminal from one source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup
from rich.table import Table
from rich.text import Text

__all__ = ["TablePiece", "TextPiece", "HtmlPiece", "Piece", "Section", "captured", "plain"]


@dataclass(frozen=True)
class TablePiece:
    columns: list[str]
    rows: list[list[str]]
    title: str = ""
    caption: str = ""
    kind: str = "table"


@dataclass(frozen=True)
class TextPiece:
    text: str
    verdict: bool = False  # verdict lines are drawn out and listed again at the top
    kind: str = "text"


@dataclass(frozen=True)
class HtmlPiece:
    html: Markup  # built by backlens.display, which escapes every value it shows
    kind: str = "html"


Piece = TablePiece | TextPiece | HtmlPiece


@dataclass
class Section:
    title: str
    pieces: list[Piece] = field(default_factory=list)


def plain(value: Any) -> str:
    """A cell or line without rich markup: "[green]pass" -> "pass"."""
    if value is None:
        return ""
    if isinstance(value, Text):
        return value.plain
    if isinstance(value, str):
        return Text.from_markup(value).plain
    return str(value)


def _table(table: Table) -> TablePiece:
    columns = [plain(c.header) for c in table.columns]
    cells = [[plain(cell) for cell in c.cells] for c in table.columns]
    rows = [list(row) for row in zip(*cells, strict=True)] if cells else []
    return TablePiece(columns, rows, plain(table.title), plain(table.caption))


class _Collector:
    """Stands in for a rich Console: keeps what is printed, as pieces."""

    def __init__(self) -> None:
        self.pieces: list[Piece] = []

    def print(self, *objects: Any, **_: Any) -> None:
        for item in objects:
            if isinstance(item, Table):
                self.pieces.append(_table(item))
            else:
                text = plain(item).strip()
                if text:
                    self.pieces.append(TextPiece(text, verdict=text.startswith("verdict")))

    def rule(self, title: Any = "", **_: Any) -> None:
        self.print(title)


def captured(print_fn: Callable[..., Any], *args: Any) -> list[Piece]:
    """The pieces `print_fn(console, *args)` prints."""
    collector = _Collector()
    print_fn(collector, *args)
    return collector.pieces
