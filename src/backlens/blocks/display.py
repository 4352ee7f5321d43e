"""HTML for compare rows in Jupyter: one table, held-out scores beside fitting-data scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..display import html_table, wrap

if TYPE_CHECKING:
    from .compare import CompareRow

__all__ = ["compare_html", "COMPARE_COLUMNS"]

COMPARE_COLUMNS = (
    "block",
    "method",
    "dir",
    "held-out rel.err",
    "R²",
    "cos",
    "fitting rel.err",
    "R²",
    "cos",
    "in use",
    "‖Mb−Mfᵀ‖",
    "n",
    "n_eff",
    "note",
)


def _in_use(row: CompareRow) -> str:
    return "—" if row.in_use is None else f"{row.in_use_metric} {row.in_use:.3f}".strip()


def _num(value: float | int | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def compare_html(rows: Sequence[CompareRow], style: bool = True) -> str:
    cells = [
        (
            r.block,
            r.method,
            r.direction[:3] if r.direction in ("forward", "backward") else r.direction,
            _num(r.test_rel_error),
            _num(r.test_r2),
            _num(r.test_cosine),
            _num(r.train_rel_error),
            _num(r.train_r2),
            _num(r.train_cosine),
            _in_use(r),
            _num(r.consistency),
            "—" if r.n is None else str(r.n),
            _num(r.n_eff),
            r.note,
        )
        for r in rows
    ]
    caption = "held-out scores first, then scores on the fitting data"
    return wrap(html_table(COMPARE_COLUMNS, cells, caption, text_columns=(0, 1, 2, 13)), style)
