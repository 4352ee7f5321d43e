"""Compare the hand-derived pass with autograd's .grad and with a trace, quantity by quantity."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from rich.table import Table
from torch import nn

from .backprop import Tape, backprop
from .rules import LOSS_RULES
from .trace import trace

__all__ = ["check", "Report", "CheckRow", "tolerance"]

# Relative tolerances by dtype: a few hundred ulps of float64; float32 on unit-scale data.
TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-4}


def tolerance(dtype: torch.dtype) -> float:
    """The relative tolerance used for a dtype."""
    return TOLERANCES.get(dtype, 1e-2)


@dataclass(frozen=True)
class CheckRow:
    """One hand quantity against one oracle."""

    layer: str
    quantity: str
    oracle: str
    max_abs: float
    max_rel: float
    tol: float

    @property
    def ok(self) -> bool:
        return self.max_rel <= self.tol


def compare(layer: str, quantity: str, oracle: str, hand: torch.Tensor, ref: torch.Tensor | None,
            tol: float) -> CheckRow:
    """Max abs error, and max abs error relative to the reference's largest entry."""
    if ref is None or hand.shape != ref.shape:
        return CheckRow(layer, quantity, oracle, float("inf"), float("inf"), tol)
    diff = (hand.double() - ref.double()).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    scale = float(ref.double().abs().max()) if ref.numel() else 0.0
    return CheckRow(layer, quantity, oracle, max_abs, max_abs / scale if scale > 0 else max_abs, tol)


@dataclass
class Report:
    """Every comparison of one check; `ok` when all are within tolerance."""

    rows: list[CheckRow]
    tape: Tape

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    def __rich__(self) -> Table:
        table = Table(title="hand-derived backprop vs autograd and the trace")
        for column in ("layer", "quantity", "against", "max abs err", "max rel err", "tolerance", ""):
            table.add_column(column, justify="right" if "err" in column or column == "tolerance" else "left")
        for r in self.rows:
            table.add_row(r.layer, r.quantity, r.oracle, f"{r.max_abs:.2e}", f"{r.max_rel:.2e}",
                          f"{r.tol:.0e}", "[green]pass" if r.ok else "[red]FAIL")
        return table

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=120, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
        console.print(self)
        return console.export_text()


def check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse",
          reduction: str = "mean") -> Report:
    """Run the hand engine, autograd and a trace on one batch and compare every quantity.

    The autograd run uses a copy of the model, so its parameters and .grads stay as they were.
    """
    tape = backprop(model, x, y, loss=loss, reduction=reduction)
    tol = tolerance(x.dtype)
    twin = copy.deepcopy(model).to(x.dtype)
    twin.zero_grad(set_to_none=True)
    target = y.unsqueeze(1) if y.ndim == 1 and tape.output.ndim == 2 and tape.output.shape[1] == 1 else y
    names = [layer.name for layer in tape.layers]
    with trace(twin, select=names, store="cpu") as rec:
        out = twin(x)
        value = LOSS_RULES[loss](reduction).value(out, target.to(out.dtype))
        value.backward()
    rows = [compare("model", "loss", "autograd", tape.loss, value.detach(), tol)]
    params = dict(twin.named_parameters())
    for layer in tape.layers:
        record = rec[layer.name]
        rows.append(compare(layer.name, "a (input)", "trace", layer.a, record.input, tol))
        rows.append(compare(layer.name, "z (output)", "trace", layer.z, record.output, tol))
        assert layer.delta is not None
        rows.append(compare(layer.name, "δ = dL/dz", "trace grad_output", layer.delta, record.grad_output, tol))
        for kind in ("weight", "bias"):
            key = f"{layer.name}.{kind}"
            if key in tape.grads:
                rows.append(compare(layer.name, f"d{kind}", "autograd .grad", tape.grads[key], params[key].grad, tol))
    return Report(rows, tape)
