"""HTML for a Trace, a ModuleRecord and a Call in Jupyter: tensors as small shaded tables."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

import torch

from ..display import html_table, section, tensor_table, wrap

if TYPE_CHECKING:
    from .record import Call, ModuleRecord, Trace

__all__ = ["call_html", "record_html", "trace_html"]


def _slots(label: str, values: tuple[Any, ...] | None) -> list[tuple[str, Any]]:
    """(caption, tensor or None) for each tensor slot; one "no backward" line when values is None."""
    if values is None:
        return [(f"{label}: no backward reached this call", None)]
    many = len(values) > 1
    return [(f"{label}[{k}]" if many else label, v) for k, v in enumerate(values)]


def _call_body(call: Call) -> str:
    parts = []
    for label, values in (
        ("input", call.inputs),
        ("output", call.outputs),
        ("grad_output", call.grad_outputs),
        ("grad_input", call.grad_inputs),
    ):
        for caption, value in _slots(label, values):
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                parts.append(tensor_table(value, caption))
            else:
                shown = "None" if value is None else type(value).__name__
                parts.append(f'<div class="caption">{escape(caption)}: {escape(shown)}</div>')
    return "".join(parts)


def call_html(call: Call, style: bool = True) -> str:
    title = f"{call.module or '(model)'}, call {call.index}"
    return wrap(section(title, _call_body(call)), style)


def record_html(record: ModuleRecord, style: bool = True) -> str:
    title = f"{record.name or '(model)'} ({record.module_type}): {len(record.calls)} calls"
    calls = "".join(section(f"call {c.index}", _call_body(c), 5) for c in record.calls)
    return wrap(section(title, calls or '<div class="caption">not run</div>'), style)


def _norm(value: Any) -> str:
    if not isinstance(value, torch.Tensor):
        return "—"
    shape = "×".join(str(s) for s in value.shape) or "scalar"
    if not value.is_floating_point():
        return shape
    return f"{shape} ‖{float(torch.linalg.vector_norm(value.detach().double())):.3g}‖"


def trace_html(rec: Trace, style: bool = True) -> str:
    """The summary table (shape and Frobenius norm per field), then each module's tensors."""
    rows = []
    for record in rec:
        for call in record.calls:
            rows.append(
                (
                    record.name or "(model)",
                    record.module_type,
                    str(call.index),
                    _norm(call.input),
                    _norm(call.outputs[0] if call.outputs else None),
                    _norm(call.grad_output) if call.grad_outputs is not None else "no backward",
                    _norm(call.grad_input) if call.grad_inputs is not None else "no backward",
                )
            )
    columns = ("module", "type", "call", "input", "output", "grad_output", "grad_input")
    summary = html_table(columns, rows, "trace: ‖·‖ is the Frobenius norm", text_columns=(0, 1))
    details = "".join(record_html(r, style=False) for r in rec)
    return wrap(summary + details, style)
