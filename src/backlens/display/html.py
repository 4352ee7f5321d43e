"""Small HTML pieces: tables, tensors shaded by value, a spectrum sparkline as inline SVG.

Every piece is a string of well-formed HTML; every text that comes from data goes through
html.escape. No scripts, no external URLs: the output displays the same in a notebook, in a
saved notebook and in an offline report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

import numpy as np
import torch

__all__ = [
    "STYLE",
    "html_table",
    "key_values",
    "notebook_number",
    "section",
    "sparkline",
    "tensor_table",
    "wrap",
]

# One stylesheet for every piece, scoped to .backlens so it leaves the notebook's own style alone.
STYLE = """
.backlens { font-family: system-ui, sans-serif; font-size: 13px; }
.backlens table { border-collapse: collapse; margin: 4px 0 8px 0; }
.backlens th, .backlens td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
.backlens th { background: #f3f3f3; }
.backlens td.text, .backlens th.text { text-align: left; }
.backlens td.pass { color: #176317; font-weight: 600; }
.backlens td.fail { color: #b00020; font-weight: 600; }
.backlens .caption { color: #555; font-size: 12px; margin: 2px 0; }
.backlens .tensor td { font-family: ui-monospace, monospace; min-width: 3em; }
""".strip()

# Tables of tensors are cut to this many rows and columns: display is for looking, files for all.
MAX_ROWS = 12
MAX_COLS = 12


def wrap(body: str, style: bool = True) -> str:
    """The pieces inside one <div class="backlens">, with the stylesheet unless style=False."""
    css = f"<style>{STYLE}</style>" if style else ""
    return f'<div class="backlens">{css}{body}</div>'


def section(title: str, body: str, level: int = 4) -> str:
    """A heading and what follows it."""
    return f"<h{level}>{escape(title)}</h{level}>{body}"


def notebook_number(value: Any, digits: int = 2) -> str:
    """The notebook's printing: fixed 2 decimals, tiny values shown as 0; other things as text."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if not math.isfinite(number):
            return str(number)
        text = f"{number:.{digits}f}"
        return f"{0:.{digits}f}" if float(text) == 0 else text  # "-0.00" prints as 0.00
    return str(value)


def _cell(value: Any, css: str = "") -> str:
    klass = f' class="{css}"' if css else ""
    text = value if isinstance(value, str) else notebook_number(value, 3)
    return f"<td{klass}>{escape(text)}</td>"


def html_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    caption: str | None = None,
    text_columns: Sequence[int] = (0,),
    classes: Sequence[Sequence[str]] | None = None,
) -> str:
    """A table: strings as they are, numbers to 3 decimals; text_columns align left.

    classes: a CSS class per cell ("pass", "fail", ...), row by row, where wanted.
    """
    head = "".join(
        f'<th class="text">{escape(c)}</th>' if i in text_columns else f"<th>{escape(c)}</th>"
        for i, c in enumerate(columns)
    )
    body = []
    for r, row in enumerate(rows):
        cells = []
        for i, value in enumerate(row):
            css = classes[r][i] if classes is not None and classes[r][i] else ""
            cells.append(_cell(value, css or ("text" if i in text_columns else "")))
        body.append(f"<tr>{''.join(cells)}</tr>")
    title = f'<div class="caption">{escape(caption)}</div>' if caption else ""
    return f"{title}<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def key_values(pairs: Mapping[str, Any], caption: str | None = None) -> str:
    """A two-column table of names and values."""
    return html_table(("", ""), [(str(k), _value_text(v)) for k, v in pairs.items()], caption, (0, 1))


def _value_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _as_matrix(value: torch.Tensor | np.ndarray) -> np.ndarray:
    array = value.detach().cpu().double().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    array = array.astype(np.float64)
    if array.ndim == 0:
        return array.reshape(1, 1)
    if array.ndim == 1:
        return array.reshape(1, -1)
    return array.reshape(-1, array.shape[-1])  # leading dimensions stacked as rows


def _shade(value: float, scale: float) -> str:
    """Blue for negative, red for positive, white at zero; alpha by |value| / max |value|."""
    if scale == 0 or value == 0 or not math.isfinite(value):
        return ""
    alpha = min(abs(value) / scale, 1.0) * 0.6
    rgb = "214,39,40" if value > 0 else "31,119,180"
    return f' style="background: rgba({rgb},{alpha:.2f})"'


def tensor_table(value: torch.Tensor | np.ndarray | None, caption: str | None = None) -> str:
    """A tensor as a table of its entries, 2 decimals, shaded by value; cut to 12 × 12 with a note.

    A tensor of more than two dimensions is shown with its leading dimensions stacked as rows.
    """
    if value is None:
        return f'<div class="caption">{escape(caption or "")}: None</div>'
    shape = tuple(value.shape)
    matrix = _as_matrix(value)
    shown = matrix[:MAX_ROWS, :MAX_COLS]
    finite = shown[np.isfinite(shown)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    rows = "".join(
        "<tr>"
        + "".join(f"<td{_shade(v, scale)}>{escape(notebook_number(float(v)))}</td>" for v in row)
        + "</tr>"
        for row in shown
    )
    cut = matrix.shape[0] > MAX_ROWS or matrix.shape[1] > MAX_COLS
    note = f"shape {shape}" + (f", first {shown.shape[0]} × {shown.shape[1]} shown" if cut else "")
    title = f"{caption}: {note}" if caption else note
    return f'<div class="caption">{escape(title)}</div><table class="tensor"><tbody>{rows}</tbody></table>'


def sparkline(values: Sequence[float] | torch.Tensor, width: int = 160, height: int = 32) -> str:
    """A spectrum (or any positive series) as an inline SVG polyline on a log scale."""
    data = [float(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]
    positive = [v for v in data if v > 0 and math.isfinite(v)]
    if len(data) < 2 or not positive:
        return '<div class="caption">no spectrum to draw</div>'
    floor = min(positive)
    logs = [math.log10(max(v, floor)) if math.isfinite(v) else math.log10(floor) for v in data]
    low, high = min(logs), max(logs)
    span = (high - low) or 1.0
    step = (width - 2) / (len(logs) - 1)
    points = " ".join(
        f"{1 + i * step:.1f},{1 + (height - 2) * (1 - (v - low) / span):.1f}" for i, v in enumerate(logs)
    )
    label = f"{len(data)} values, {max(data):.3g} to {min(data):.3g} (log scale)"
    return (
        f'<svg width="{width}" height="{height}" role="img">'
        f"<title>{escape(label)}</title>"
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{points}"/></svg>'
    )
