"""One batch through the model: what crossed a block, the gradients at its two boundaries, and
probe pairs through its own vector–Jacobian product (collect's per-batch work)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import fail
from .block import Block
from .boundary import Crossing, boundaries, buffers_kept

__all__ = ["crossing_of", "Step", "Pairs"]

Step = Callable[[nn.Module, Any], torch.Tensor]  # step(model, batch) -> loss: one batch, any model


Pairs = list[tuple[torch.Tensor, torch.Tensor]]


def crossing_of(
    model: nn.Module,
    block: Block,
    batch: Any,
    run: Step,
    backward: bool,
    probes: int = 0,
    draws: torch.Generator | None = None,
) -> tuple[Crossing, tuple[torch.Tensor, torch.Tensor] | None, Pairs]:
    """One batch: what crossed the block, (grad at its input, grad at its output) if asked, and
    `probes` (v, v·J) pairs through the block's own VJP on the same recorded forward (taken first,
    keeping the graph, so the loss's backward still finds it).
    The model's buffers are put back only after the backward, which may still need them."""
    graph = backward or probes > 0
    with buffers_kept(model):
        with boundaries(block, alias_input=graph) as seen:
            if graph:
                with torch.enable_grad():
                    value = run(model, batch)
            else:
                with torch.no_grad():
                    run(model, batch)
        crossing = seen.take()
        probed = _probes(crossing, probes, draws) if probes > 0 else []
        if not backward:
            return crossing, None, probed
        return crossing, _gradients(block, crossing, value), probed


def _probes(crossing: Crossing, probes: int, draws: torch.Generator | None) -> Pairs:
    """`probes` pairs (v, v·J(x)): v ~ N(0, I) shaped like the block's output, drawn on the CPU
    from `draws` (the same numbers on any device), and v·J by torch.autograd.grad through the
    block alone (its input is the alias leaf)."""
    out, leaf = crossing.output, crossing.input
    assert out is not None
    pairs = []
    for _ in range(probes):
        v = torch.randn(out.shape, generator=draws, dtype=torch.float64).to(out.device, out.dtype)
        if not out.requires_grad:
            vJ = torch.zeros_like(leaf)
        else:
            (vJ,) = torch.autograd.grad(out, [leaf], grad_outputs=v, retain_graph=True, allow_unused=True)
            vJ = torch.zeros_like(leaf) if vJ is None else vJ
        pairs.append((v.detach(), vJ.detach()))
    return pairs


def _gradients(block: Block, crossing: Crossing, value: Any) -> tuple[torch.Tensor, torch.Tensor]:
    assert crossing.output is not None
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.requires_grad:
        raise fail(
            "step",
            "a scalar loss that depends on the model",
            type(value).__name__,
            "return the batch's loss from step",
        )
    g_in, g_out = torch.autograd.grad(value, [crossing.input, crossing.output], allow_unused=True)
    if g_out is None:
        raise fail(
            "block",
            "a block whose output reaches the loss",
            f"no gradient at {block.label}'s output",
            "pick a block on the path to the loss (or output=k for the element the model uses)",
        )
    g_in = torch.zeros_like(crossing.input) if g_in is None else g_in
    return g_in.detach(), g_out.detach()
