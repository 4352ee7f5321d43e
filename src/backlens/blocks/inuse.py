"""A block's linear stand-in in use, in any model: forward, the block's output replaced by the
map's; backward, the block's vector–Jacobian product replaced by the map's inside the real
backward of the whole model, so skip connections and every other path stay exact.

The backward swap is a custom autograd Function at the block's exit: in the forward it passes
the block's output through unchanged; in the backward it sends grad_out·M to the block's input
and nothing into the block itself. Training through a linear backward builds on `swap_backward`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import fail
from ..linear.linear_map import LinearMap
from .block import Block
from .boundary import boundaries, buffers_kept, same_randomness
from .positions import POSITIONS, from_rows, to_rows
from .ranks import summed_over_ranks

__all__ = ["replaced", "swap_backward", "forward_metric", "backward_cosine", "map_positions"]


def map_positions(lm: LinearMap, a_in: torch.Tensor, positions: str | None = None) -> str:
    """How `lm` reads the block's activations: as asked, as fitted (info), or by its width."""
    chosen = positions or lm.info.get("positions")
    if chosen in POSITIONS:
        return str(chosen)
    for candidate in POSITIONS:
        if to_rows(a_in[:1], candidate).shape[1] == lm.d_in:
            return candidate
    raise fail(
        "lm",
        f"a map whose input width matches the block's features ({to_rows(a_in[:1], 'shared').shape[1]}) "
        f"or its flattened input ({a_in[0].numel()})",
        repr(lm),
        "fit the map on this block's pairs",
    )


def _forward_swap(
    lm: LinearMap, positions: str | None
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def swap(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mode = map_positions(lm, x, positions)
        rows = lm.apply(to_rows(x, mode))
        return from_rows(rows, y, mode).to(y.dtype)

    return swap


class _LinearBackward(torch.autograd.Function):
    """y passes unchanged; its gradient goes to x as grad·M, and none into the block's graph."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, x: torch.Tensor, backward: Callable) -> torch.Tensor:  # type: ignore[override]
        ctx.backward_map = backward
        return y.clone()  # a new tensor: an in-place op after the block must not reach y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor | None, None]:  # type: ignore[override]
        return None, ctx.backward_map(grad) if ctx.needs_input_grad[1] else None, None


class _LocalAndMapped(torch.autograd.Function):
    """y passes unchanged; its gradient goes into the block (its parameters' local gradients, the
    block's input being cut) and, as map(grad), to the block's input x."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, x: torch.Tensor, backward: Callable) -> torch.Tensor:  # type: ignore[override]
        ctx.backward_map = backward
        return y.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, None]:  # type: ignore[override]
        # nothing below wants a gradient (the first layer, on data): send none, as backprop does
        return grad, ctx.backward_map(grad) if ctx.needs_input_grad[1] else None, None


def swap_backward(
    map_gradient: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], local: bool = False
) -> Callable:
    """A boundary swap whose backward sends map_gradient(grad_out, x) to the block's input.

    local=True also lets the gradient into the block, for its parameters' own gradients (use it
    with boundaries(..., cut=True), so the block's own path to x is cut): how training through a
    linear backward updates the layers a map stands in for."""
    function = _LocalAndMapped if local else _LinearBackward

    def swap(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if local and not x.requires_grad:  # nothing below wants a gradient: the block's own
            return y  # backward is all there is, as the Function would give it (and no cost)
        return function.apply(y, x, lambda grad: map_gradient(grad, x))

    return swap


def _backward_swap(lm: LinearMap, positions: str | None) -> Callable:
    def gradient(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mode = positions if positions in POSITIONS else _backward_positions(lm, x, grad)
        return from_rows(lm.apply(to_rows(grad, mode)), x, mode).to(x.dtype)

    return swap_backward(gradient)


def _backward_positions(lm: LinearMap, x: torch.Tensor, grad: torch.Tensor) -> str:
    chosen = lm.info.get("positions")
    if chosen in POSITIONS:
        return str(chosen)
    for candidate in POSITIONS:
        if (
            to_rows(grad[:1], candidate).shape[1] == lm.d_in
            and to_rows(x[:1], candidate).shape[1] == lm.d_out
        ):
            return candidate
    raise fail(
        "lm",
        "a backward map from the block's output width to its input width",
        repr(lm),
        "fit the map on this block's backward pairs",
    )


@contextmanager
def replaced(
    model: nn.Module, block: Block, lm: LinearMap, direction: str = "forward", positions: str | None = None
) -> Iterator[None]:
    """Within the body the block is replaced by `lm`: forward, its output is the map's; backward,
    its vector–Jacobian product is the map's (the forward stays exact). Restored on exit."""
    if not isinstance(block, Block) or block.model is not model:
        raise fail(
            "block",
            "a backlens.Block of this model",
            type(block).__name__,
            "build it with Block(model, path)",
        )
    if not isinstance(lm, LinearMap):
        raise fail("lm", "a backlens.LinearMap", type(lm).__name__, "pass a fitted map")
    if direction not in ("forward", "backward"):
        raise fail("direction", "'forward' or 'backward'", repr(direction), "pick one")
    swap = _forward_swap(lm, positions) if direction == "forward" else _backward_swap(lm, positions)
    with boundaries(block, swap=swap):
        yield


def _batch_size(batch: Any) -> int:
    first = (
        batch[0]
        if isinstance(batch, (tuple, list))
        else next(iter(batch.values()))
        if isinstance(batch, dict)
        else batch
    )
    return len(first) if hasattr(first, "__len__") else 1


@torch.no_grad()
def forward_metric(
    block: Block,
    lm: LinearMap | None,
    loader: Iterable,
    metric: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
    step: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    positions: str | None = None,
    distributed: bool | None = None,
) -> float:
    """Mean per sample of `metric(output, y)` over (x, y) batches — or of `step(model, batch)`,
    the loss, for any batch — with the block replaced by `lm` (None: intact). In a process
    group (distributed=None: detected) the mean is over every rank's batches."""
    if (metric is None) == (step is None):
        raise fail(
            "metric, step",
            "exactly one of them",
            "both or neither",
            "pass metric for (x, y) batches, else step",
        )
    model = block.model
    total, count = 0.0, 0
    for index, batch in enumerate(loader):
        # the intact model and every map see the same Dropout masks; BatchNorm's statistics stay
        swapped = replaced(model, block, lm, positions=positions) if lm is not None else _nothing()
        with same_randomness(index), buffers_kept(model), swapped:
            if step is not None:
                value = float(step(model, batch))
            else:
                value = metric(model(batch[0]), batch[1])  # type: ignore[misc]
        size = _batch_size(batch)
        total += value * size
        count += size
    every_total, every_count = summed_over_ranks([total, count], distributed)
    return every_total / every_count


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _below(
    model: nn.Module, block: Block, run: Callable[[nn.Module, Any], torch.Tensor], batch: Any
) -> tuple[list[nn.Parameter], list[torch.Tensor | None]]:
    """The parameters upstream of the block's input (those whose gradient passes through or
    around the block) and their true gradients for this batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    with boundaries(block, copies=False) as seen:
        value = run(model, batch)
    x = seen.take().input
    if not x.requires_grad:
        return [], []
    reach = torch.autograd.grad(x, params, torch.ones_like(x), retain_graph=True, allow_unused=True)
    below = [p for p, r in zip(params, reach, strict=True) if r is not None]
    if not below:
        return [], []
    true: list[torch.Tensor | None] = list(torch.autograd.grad(value, below, allow_unused=True))
    return below, true


def _cosine(a: Sequence[torch.Tensor | None], b: Sequence[torch.Tensor | None]) -> float:
    """cos between two lists of gradients; a missing gradient counts as zeros."""
    flat_a, flat_b = [], []
    for s, t in zip(a, b, strict=True):
        if s is None and t is None:
            continue
        like = s if s is not None else t
        assert like is not None
        flat_a.append((s if s is not None else torch.zeros_like(like)).reshape(-1).double())
        flat_b.append((t if t is not None else torch.zeros_like(like)).reshape(-1).double())
    if not flat_a:
        return math.nan
    return _cos(torch.cat(flat_a), torch.cat(flat_b))


def _cos(flat_a: torch.Tensor, flat_b: torch.Tensor) -> float:
    denom = float(flat_a.norm() * flat_b.norm())
    return float(flat_a @ flat_b) / denom if denom > 0 else math.nan


def backward_cosine(
    block: Block,
    lm: LinearMap,
    loader: Iterable,
    loss_fn: Callable | None = None,
    step: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    positions: str | None = None,
    distributed: bool | None = None,
) -> float | None:
    """Mean over batches of cos(true ∇θ, ∇θ with the block's backward replaced by `lm`), over the
    parameters upstream of the block's input; None when there are none (the block starts at the
    model's input). The real backward of the whole model runs both times. In a process group
    (distributed=None: detected) the mean is over every rank's batches."""
    if (loss_fn is None) == (step is None):
        raise fail(
            "loss_fn, step",
            "exactly one of them",
            "both or neither",
            "pass loss_fn for (x, y) batches, else step",
        )
    run = step or (lambda model, batch: loss_fn(model(batch[0]), batch[1]))  # type: ignore[misc]
    model = block.model
    cosines, nothing_below = [], 0.0
    for index, batch in enumerate(loader):
        with torch.enable_grad(), buffers_kept(model):
            with same_randomness(index):  # both passes draw the same Dropout masks
                below, true = _below(model, block, run, batch)
            if not below:
                nothing_below = 1.0  # every rank still meets the others at the sum below
                break
            with (
                same_randomness(index),
                replaced(model, block, lm, direction="backward", positions=positions),
            ):
                value = run(model, batch)
            approx: list[torch.Tensor | None] = list(torch.autograd.grad(value, below, allow_unused=True))
        cosines.append(_cosine(true, approx))
    finite = [c for c in cosines if not math.isnan(c)]
    total, count, nothing_below = summed_over_ranks([sum(finite), len(finite), nothing_below], distributed)
    if nothing_below:
        return None
    return total / count if count else math.nan
