"""The `ridge` training method: each block's backward passes through a map fitted from the
gradient pairs it saw while training, refitted every K steps so it follows the changing network.

Every backward streams the block's true pairs (grad_out, grad_in through the block's own code)
into a window of Moments; every `refit_every` steps the window is fitted by ridge (α by GCV, no
intercept: a backward map is linear in the gradient) and blended into the map in use,
M ← λ·M + (1 − λ)·M_window (λ = `forgetting`; the first fit is taken whole), so old windows fade
geometrically. Until the first fit the block passes the exact gradient (`fitted` says so). The
block's own parameters get their local gradients from the δ that arrives, as with every method.
A block whose input needs no gradient (the first layers, on data) sends nothing below, so no
map is fitted for it (`needed` is False) and it costs nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import BacklensWarning, describe, fail
from ..linear.moments import Moments
from ..linear.ridge import ridge
from .block import Block
from .positions import from_rows, to_rows

__all__ = ["RidgeState", "ridge_backward"]


@dataclass
class RidgeState:
    """One block's fitted backward map (None until the first fit) and its current window."""

    refit_every: int
    forgetting: float
    record_every: int = 1
    matrix: torch.Tensor | None = None
    window: Moments | None = None
    steps: int = 0
    fits: int = 0
    needed: bool | None = None  # does anything below the block want a gradient (None: not run yet)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def fitted(self) -> bool:
        return self.matrix is not None

    @property
    def recording(self) -> bool:
        """Whether the coming backward's pairs go into the window (every record_every-th, from
        the first)."""
        return self.steps % self.record_every == 0

    def record(self, g_out: torch.Tensor, g_in: torch.Tensor | None) -> None:
        """One backward: its pairs into the window when recording, then a refit every K steps."""
        if g_in is not None:
            X, Y = to_rows(g_out.detach(), "shared"), to_rows(g_in.detach(), "shared")
            if self.window is None:
                self.window = Moments(X.shape[1], Y.shape[1])
            self.window.update(X, Y)
        self.steps += 1
        if self.steps % self.refit_every == 0 and self.window is not None:
            self._refit()

    def _refit(self) -> None:
        assert self.window is not None
        with warnings.catch_warnings(record=True) as caught:  # kept in info: one per refit is noise
            warnings.simplefilter("always", BacklensWarning)
            lm = ridge(self.window, alpha="gcv", intercept=False)
        fit = lm.matrix.double()
        self.matrix = (
            fit if self.matrix is None else self.forgetting * self.matrix + (1 - self.forgetting) * fit
        )
        self.fits += 1
        self.info = {
            "alpha": lm.info.get("alpha"),
            "n": self.window.n,
            "fits": self.fits,
            "warnings": [str(w.message) for w in caught],
        }
        self.window = None


class _RidgeBackward(torch.autograd.Function):
    """y passes unchanged; backward: the true VJP through the block is recorded, the block's
    parameters get their local gradients, and what goes below is grad·M (or the true VJP until
    the first fit)."""

    @staticmethod
    def forward(
        ctx: Any, y: torch.Tensor, leaf: torch.Tensor, x: torch.Tensor, state: RidgeState
    ) -> torch.Tensor:  # type: ignore[override]
        ctx.state = state
        ctx.save_for_backward(y, leaf)
        return y.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        y, leaf = ctx.saved_tensors
        state: RidgeState = ctx.state
        recording, matrix = state.recording, state.matrix  # before this step's refit
        true = None
        if recording or matrix is None:  # the true VJP: a pair to record, or the gradient itself
            with torch.enable_grad():
                (true,) = torch.autograd.grad(y, leaf, grad, retain_graph=True, allow_unused=True)
            true = torch.zeros_like(leaf) if true is None else true
        state.record(grad, true if recording else None)
        if matrix is None:
            below = true
        else:
            M = matrix.to(device=grad.device, dtype=grad.dtype)
            below = from_rows(to_rows(grad, "shared") @ M, leaf, "shared")
        return grad, None, below if ctx.needs_input_grad[2] else None, None


@contextmanager
def ridge_backward(block: Block, state: RidgeState) -> Iterator[None]:
    """Hooks for one block: its input replaced by a leaf of its own (so the block's VJP can be
    taken), its output passed through _RidgeBackward. The block must run once per forward."""
    entered: list[tuple[torch.Tensor, torch.Tensor] | None] = []

    def enter(module: nn.Module, args: tuple[Any, ...]) -> Any:
        x = args[0]
        state.needed = isinstance(x, torch.Tensor) and x.requires_grad
        if not state.needed:  # nothing below wants a gradient: no map to send one, none to fit
            entered[:] = [None]
            return None
        leaf = x.detach().requires_grad_(True)
        entered[:] = [(x, leaf)]
        return (leaf, *args[1:])

    def leave(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if not isinstance(output, torch.Tensor) or not entered:
            raise fail(
                "block",
                "a block that returns one tensor, once per call, for 'ridge'",
                f"{block.label} returning {describe(output)}",
                "pick another block",
            )
        crossing = entered.pop()
        if crossing is None:
            return None
        x, leaf = crossing
        return _RidgeBackward.apply(output, leaf, x, state)

    handles = [block.entry.register_forward_pre_hook(enter), block.exit.register_forward_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
