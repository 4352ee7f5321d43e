"""Render a run directory's results.json and plots into report.html: CSS and images inline,
no external URL, so the file opens the same anywhere, offline."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from ..display import STYLE
from ..errors import fail
from ..files import atomic_write
from .kinds import run_kind, sections
from .pieces import TablePiece, TextPiece

__all__ = ["REPORT_NAME", "SCREENSHOT_NAME", "render_report", "write_report"]

REPORT_NAME = "report.html"
# A browser's picture of the report (the browser test saves it); never put into a report itself.
SCREENSHOT_NAME = "report_screenshot.png"


@dataclass(frozen=True)
class _Image:
    name: str
    data: str  # base64 of the PNG file


def _results(run_dir: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise fail("run_dir", "a run directory", f"{run_dir}: no such directory", "pass the --out of a run")
    path = run_dir / "results.json"
    if not path.is_file():
        raise fail(
            "run_dir",
            "a run directory holding results.json",
            f"{run_dir} without results.json",
            "pass the --out directory of a finished demo, abstract, train or linearity run",
        )
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise fail("run_dir", "a readable results.json", f"{path}: {error}", "rerun the command") from None
    if not isinstance(results, dict):
        raise fail("run_dir", "results.json holding an object", f"{path}: {type(results).__name__}", "rerun")
    return results


def _flat(values: Any, prefix: str = "") -> list[list[str]]:
    """Nested options as rows of (dotted name, value)."""
    if isinstance(values, dict):
        return [row for k, v in values.items() for row in _flat(v, f"{prefix}{k}.")]
    return [[prefix.rstrip("."), json.dumps(values) if not isinstance(values, str) else values]]


def _images(run_dir: Path) -> list[_Image]:
    paths = sorted(p for p in run_dir.glob("*.png") if p.name != SCREENSHOT_NAME)
    return [_Image(p.name, base64.b64encode(p.read_bytes()).decode("ascii")) for p in paths]


def render_report(run_dir: str | os.PathLike[str]) -> str:
    """The report's HTML for the run directory (nothing written)."""
    path = Path(run_dir)
    results = _results(path)
    kind = run_kind(results, str(path / "results.json"))
    options = results.get("options") or {"seed": results.get("seed")}
    body = sections(kind, results)
    verdicts = [p.text for s in body for p in s.pieces if isinstance(p, TextPiece) and p.verdict]
    env = Environment(
        loader=PackageLoader("backlens.report", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2").render(
        kind=kind,
        name=path.resolve().name,
        style=STYLE,
        text_columns=1,
        options=TablePiece(["option", "value"], _flat(options)),
        versions=TablePiece(["package", "version"], _flat(results.get("versions") or {})),
        verdicts=verdicts,
        sections=body,
        images=_images(path),
        backlens_version=version("backlens"),
    )


def write_report(run_dir: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write run_dir/report.html; refuses to replace an existing one unless overwrite=True."""
    target = Path(run_dir) / REPORT_NAME
    if target.exists() and not overwrite:
        raise fail(
            "run_dir",
            f"a run directory without {REPORT_NAME}",
            f"{target}, written before",
            "pass overwrite=True (--overwrite) to replace it",
        )
    html = render_report(run_dir)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(html)

    return atomic_write(target, write)
