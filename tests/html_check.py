"""Parse HTML with the standard library: is it well-formed, and what text does it hold."""

from __future__ import annotations

from html.parser import HTMLParser

# Elements that never take a closing tag.
VOID = {"br", "hr", "img", "meta", "link", "input", "col", "area", "base", "source", "wbr"}


class _Checker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)  # <polyline .../>: opens and closes

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.open[-1] if self.open else 'nothing'}")
        else:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        if data.strip() and (not self.open or self.open[-1] != "style"):  # a stylesheet is no text
            self.text.append(data.strip())


def parse(html: str) -> _Checker:
    """Parse; raise AssertionError naming the first unbalanced tag."""
    checker = _Checker()
    checker.feed(html)
    checker.close()
    assert not checker.errors, checker.errors[:3]
    assert not checker.open, f"never closed: {checker.open}"
    return checker


def cells(html: str) -> list[str]:
    """Every piece of text, in order (table cells among them)."""
    return parse(html).text
