"""Compare the hand-derived pass with autograd, a trace and torch.func, quantity by quantity.

Each row is one hand quantity against one oracle: max abs error, and max relative error
rel = max|hand − ref| / max|ref| (relative to the reference's largest entry), against a
tolerance scaled to the dtype: float64 1e-10, float32 1e-4 (on unit-scale data).
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from ..errors import check_positive_real, fail
from ..recording.tracing import trace
from .chain import Chain
from .engine import Tape, prepare, run_chain
from .losses import torch_loss

__all__ = ["check", "Report", "CheckRow", "compare", "tolerance", "TOLERANCES"]

# Relative tolerances by dtype: a few hundred ulps of float64; float32 on unit-scale data.
TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-4}

SYMBOLS = {"weight": "dW", "bias": "db"}
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def tolerance(dtype: torch.dtype) -> float:
    """The relative tolerance used for a dtype (float32 or float64)."""
    if dtype not in TOLERANCES:
        raise fail("dtype", "torch.float32 or torch.float64", dtype, "convert the model and data")
    return TOLERANCES[dtype]


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
        return self.max_rel <= self.tol  # False for NaN


def compare(
    layer: str,
    quantity: str,
    oracle: str,
    hand: torch.Tensor | None,
    ref: torch.Tensor | None,
    tol: float,
) -> CheckRow:
    """Max abs error, and max abs error relative to the reference's largest entry (inf: missing)."""
    if hand is None or ref is None or hand.shape != ref.shape:
        return CheckRow(layer, quantity, oracle, float("inf"), float("inf"), tol)
    hand64, ref64 = hand.detach().double().cpu(), ref.detach().double().cpu()
    diff = (hand64 - ref64).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    scale = float(ref64.abs().max()) if ref64.numel() else 0.0
    max_rel = max_abs / scale if scale > 0 else max_abs
    return CheckRow(layer, quantity, oracle, max_abs, max_rel, tol)


@dataclass
class Report:
    """Every comparison of one check; `ok` when all are within tolerance. Print it for the table."""

    rows: list[CheckRow]
    tape: Tape
    dtype: torch.dtype = torch.float32
    loss: str = "mse"
    reduction: str = "mean"

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(row.ok for row in self.rows)

    @property
    def failures(self) -> list[CheckRow]:
        return [row for row in self.rows if not row.ok]

    def __rich__(self) -> Table:
        dtype = str(self.dtype).replace("torch.", "")
        table = Table(
            title=f"hand backprop vs autograd, trace, torch.func: {self.loss} ({self.reduction}), {dtype}",
            caption="rel = max|hand − ref| / max|ref|; tol: float64 1e-10, float32 1e-4. trace: "
            "a = input, z = output, δ = grad_output. per sample: share of the batch gradient",
        )
        for column in ("layer", "quantity", "against", "abs err", "rel err", "tol", "ok"):
            right = "err" in column or column == "tol"
            table.add_column(column, justify="right" if right else "left")
        for r in self.rows:
            table.add_row(
                r.layer,
                r.quantity,
                r.oracle,
                f"{r.max_abs:.2e}",
                f"{r.max_rel:.2e}",
                f"{r.tol:.0e}",
                "[green]pass" if r.ok else "[red]FAIL",
            )
        return table

    def __repr__(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        verdict = "all within tolerance" if self.ok else f"{len(self.failures)} mismatches"
        return f"<Report of {len(self.rows)} checks, {verdict}: {self.loss} ({self.reduction}), {dtype}>"

    def _repr_html_(self) -> str:
        from ..display import html_table, wrap

        dtype = str(self.dtype).replace("torch.", "")
        columns = ("layer", "quantity", "against", "abs err", "rel err", "tol", "ok")
        cells = [
            (r.layer, r.quantity, r.oracle, f"{r.max_abs:.2e}", f"{r.max_rel:.2e}", f"{r.tol:.0e}")
            + ("pass" if r.ok else "FAIL",)
            for r in self.rows
        ]
        css = [[""] * 6 + ["pass" if r.ok else "fail"] for r in self.rows]
        verdict = "all quantities within tolerance" if self.ok else f"{len(self.failures)} mismatches"
        caption = f"hand backprop vs autograd, trace, torch.func: {self.loss} ({self.reduction}), {dtype}"
        table = html_table(columns, cells, f"{caption}: {verdict}", text_columns=(0, 1, 2), classes=css)
        return wrap(table)

    def __str__(self) -> str:
        console = Console(width=120, file=io.StringIO(), record=True)
        console.print(self)
        return console.export_text()


def check(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: str = "mse",
    reduction: str = "mean",
    rtol: float | None = None,
) -> Report:
    """Run the hand engine, autograd, a trace and torch.func on one batch; compare every quantity.

    Rows per Linear layer: a against the traced input, z against the traced output, σ'(z)
    against autograd through the activation modules, δ against the traced grad_output, dW and
    db against autograd's .grad, per-sample gradients against torch.func (vmap of grad of each
    sample's loss, times 1/n for reduction "mean"); plus the loss against torch.nn.functional.
    Oracles run on hook-free copies with every parameter requiring grad, so the model's
    parameters, .grad and hooks stay as they were. rtol overrides the dtype's tolerance.
    """
    if rtol is not None:
        check_positive_real("rtol", rtol, "pass a relative tolerance such as 1e-6, or None for the dtype's")
    chain, x, target, rule = prepare(model, x, y, loss, reduction)
    tape = run_chain(chain, x, target, rule)
    tol = tolerance(x.dtype) if rtol is None else float(rtol)
    rows = _against_autograd(model, chain, tape, x, target, tol)
    rows += _against_torch_func(model, tape, x, target, tol)
    order = {step.name: i for i, step in enumerate(chain.layers)}
    rows.sort(key=lambda r: -1 if r.layer == "model" else order[r.layer])  # stable: layer by layer
    return Report(rows, tape, x.dtype, tape.loss_name, tape.reduction)


def _hook_free_copy(model: nn.Module) -> nn.Module:
    """A deep copy: no hooks, no in-place activations, every parameter requiring grad, no .grad."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        for hooks in HOOK_DICTS:
            getattr(module, hooks).clear()
        if getattr(module, "inplace", False):
            module.inplace = False  # type: ignore[assignment]
    for parameter in twin.parameters():
        parameter.requires_grad_(True)
        parameter.grad = None
    return twin


def _against_autograd(
    model: nn.Module, chain: Chain, tape: Tape, x: torch.Tensor, target: torch.Tensor, tol: float
) -> list[CheckRow]:
    twin = _hook_free_copy(model)
    names = [step.name for step in chain.layers]
    with torch.enable_grad(), trace(twin, select=names, store="cpu") as rec:
        # x requires grad so every hooked layer has an input needing grad, as mid-network layers do
        out = twin(x.detach().requires_grad_(True))
        value = torch_loss(tape.loss_name, tape.reduction)(out, target)
        value.backward()
    rows = [compare("model", "loss", "torch loss", tape.loss, value, tol)]
    params = dict(twin.named_parameters())
    for step, layer in zip(chain.layers, tape.layers, strict=True):
        record = rec[step.name]
        rows.append(compare(step.name, "a (input)", "trace", layer.a, record.input, tol))
        rows.append(compare(step.name, "z (output)", "trace", layer.z, record.output, tol))
        if layer.act_derivative is not None:
            reference = _local_derivative(twin, step.act_names, layer.z)
            rows.append(
                compare(
                    step.name,
                    f"σ'(z) {layer.activation}",
                    "autograd",
                    layer.act_derivative,
                    reference,
                    tol,
                )
            )
        rows.append(compare(step.name, "δ = dL/dz", "trace", layer.delta, record.grad_output, tol))
        for kind in ("weight", "bias"):
            key = f"{step.name}.{kind}"
            if key in tape.grads:
                rows.append(
                    compare(step.name, SYMBOLS[kind], ".grad", tape.grads[key], params[key].grad, tol)
                )
    return rows


def _local_derivative(twin: nn.Module, act_names: tuple[str, ...], z: torch.Tensor) -> torch.Tensor:
    """σ'(z) by autograd through the activation modules (elementwise: the VJP with ones)."""
    with torch.enable_grad():
        z_ref = z.detach().clone().requires_grad_(True)
        a = z_ref
        for name in act_names:
            a = twin.get_submodule(name)(a)
        (derivative,) = torch.autograd.grad(a, z_ref, torch.ones_like(a), allow_unused=True)
    return derivative if derivative is not None else torch.zeros_like(z)


def _against_torch_func(
    model: nn.Module, tape: Tape, x: torch.Tensor, target: torch.Tensor, tol: float
) -> list[CheckRow]:
    from torch.func import functional_call, grad, vmap

    twin = _hook_free_copy(model)  # vmap fails on modules carrying backward hooks
    params = {name: p.detach() for name, p in twin.named_parameters()}
    loss_fn = torch_loss(tape.loss_name, tape.reduction)

    def sample_loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(twin, p, (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, target)
    scale = 1.0 / len(x) if tape.reduction == "mean" else 1.0  # a sample's share of the batch loss
    rows = []
    for key, hand in tape.per_sample_grads.items():
        layer, kind = key.rsplit(".", 1)
        rows.append(
            compare(
                layer,
                f"{SYMBOLS[kind]} per sample",
                "torch.func",
                hand,
                per_sample[key] * scale,
                tol,
            )
        )
    return rows
