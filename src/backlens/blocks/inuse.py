"""A block's linear stand-in in use: the task metric with the block replaced (forward), and the
cosine of the parameter gradients below the block when its backward map carries the gradient."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..linear.linear_map import LinearMap
from .block import Block

__all__ = ["replaced", "forward_metric", "backward_cosine"]


@contextmanager
def replaced(block: Block, lm: LinearMap) -> Iterator[None]:
    """Within the body, the block's output is lm applied to the block's input (hooks, removed on exit)."""
    entering: list[torch.Tensor] = []
    model = block.model

    def keep_input(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        entering.append(inputs[0])

    def swap_output(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> torch.Tensor:
        return lm.apply(entering.pop())

    handles = [
        model.get_submodule(block.start).register_forward_pre_hook(keep_input),
        model.get_submodule(block.end).register_forward_hook(swap_output),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def forward_metric(
    block: Block,
    lm: LinearMap | None,
    loader: Iterable,
    metric: Callable[[torch.Tensor, torch.Tensor], float],
) -> float:
    """Mean of `metric(output, y)` per sample over the loader, the block replaced by `lm` (None: intact)."""
    total, count = 0.0, 0
    for xb, yb in loader:
        if lm is None:
            out = block.model(xb)
        else:
            with replaced(block, lm):
                out = block.model(xb)
        total += metric(out, yb) * len(xb)
        count += len(xb)
    return total / count


def backward_cosine(block: Block, lm: LinearMap, loader: Iterable, loss_fn: Callable) -> float | None:
    """Mean over batches of cos(true ∇θ, ∇θ with grad_in = lm(grad_out)) for parameters below the block.

    None when nothing below the block has parameters (the block starts at the model's input).
    """
    model = block.model
    cosines = []
    for xb, yb in loader:
        captured: dict[str, torch.Tensor] = {}
        handles = [
            model.get_submodule(block.start).register_forward_pre_hook(
                lambda m, inputs, store=captured: store.__setitem__("in", inputs[0])
            ),
            model.get_submodule(block.end).register_forward_hook(
                lambda m, inputs, output, store=captured: store.__setitem__("out", output)
            ),
        ]
        try:
            value = loss_fn(model(xb), yb)
        finally:
            for handle in handles:
                handle.remove()
        a_in, a_out = captured["in"], captured["out"]
        if not a_in.requires_grad:
            return None
        params = [p for p in model.parameters() if p.requires_grad]
        g_out, g_in = torch.autograd.grad(value, [a_out, a_in], retain_graph=True)
        true = torch.autograd.grad(a_in, params, grad_outputs=g_in, retain_graph=True, allow_unused=True)
        approx = torch.autograd.grad(a_in, params, grad_outputs=lm.apply(g_out), allow_unused=True)
        pairs = [(t, a) for t, a in zip(true, approx, strict=True) if t is not None]
        t_flat = torch.cat([t.reshape(-1) for t, _ in pairs]).double()
        a_flat = torch.cat([a.reshape(-1) for _, a in pairs]).double()
        denom = float(t_flat.norm() * a_flat.norm())
        cosines.append(float(t_flat @ a_flat) / denom if denom > 0 else math.nan)
    finite = [c for c in cosines if not math.isnan(c)]
    return sum(finite) / len(finite) if finite else math.nan
