"""Analytic maps of a Block, computed from the block's own code.

`mean_jacobian(block, X_in, direction)` differentiates exactly what the model runs between the
block's boundaries (the module, or the span's modules in order), on a float64 copy in eval mode
(Dropout off, BatchNorm on its running statistics: a fixed function of each sample; `info`
says when the model itself was in training mode). A Linear/activation chain on rows keeps the
batched closed form; anything else takes reverse-mode autograd, one backward pass per output
coordinate over a chunk of samples — which works for any module (attention, GRUs, BatchNorm),
where torch.func's vmap lacks batching rules. Samples are assumed independent in eval mode.

Shape convention: X_in (k, *input_shape) whole samples. positions="flat": J̄ = E_n[∂y/∂x],
(out_numel, in_numel). positions="shared": J̄ = E_{n,t}[∂y_t/∂x_t], (d_out, d_in), the mean of the
Jacobian's diagonal blocks: how each token's (pixel's) features respond to its own features.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import check_choice, describe, fail
from ..linear import analytic as core
from ..linear.linear_map import LinearMap
from ..linear.methods import MEAN_JACOBIAN
from ..torch_private import BatchNormBase
from .block import Block
from .boundary import Crossing
from .positions import POSITIONS, check_shared, default_positions, feature_axis, to_rows

__all__ = [
    "mean_jacobian",
    "mean_jacobian_parts",
    "JacobianParts",
    "expected_mask",
    "weights_only",
    "block_function",
]

CHUNK_BYTES = 1 << 27  # input gradients held at once: 128 MiB
TRAIN_MODE_NOTE = "the model was in training mode: the map is of its eval-mode function"


def _mode_dependent(module: nn.Module) -> bool:
    return any(m.training and isinstance(m, (nn.Dropout, BatchNormBase)) for m in module.modules())


def block_function(
    block: Block, call: Crossing | None = None
) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]:
    """The block's own code as f(x) on a batch, float64 and eval mode, the entry's other arguments
    fixed as in `call`; and what `info` should say about it."""
    tensors = [a for a in (*call.args, *call.kwargs.values())] if call is not None else []
    if any(isinstance(a, torch.Tensor) for a in tensors):
        raise fail(
            "block",
            "a block whose entry takes only its input as a tensor (other tensors vary per sample)",
            f"{block.label} called with further tensor arguments",
            "pick the block's submodules, or use ridge",
        )
    module = block.layers()
    info: dict[str, Any] = {"note": TRAIN_MODE_NOTE} if _mode_dependent(module) else {}
    twin = copy.deepcopy(module).double().eval()
    args, kwargs = (call.args, call.kwargs) if call is not None else ((), {})

    def f(x: torch.Tensor) -> torch.Tensor:
        out = twin(x, *args, **kwargs)
        return out[block.output] if isinstance(out, (tuple, list)) and block.output is not None else out

    return f, info


def _check_span_ran(block: Block, call: Crossing | None) -> None:
    """A span's function is its Sequential's slice only if the model runs that Sequential: seen on
    a recorded forward (collect's `call`), or given when the Sequential is the model itself."""
    if block.is_span and call is None and block.container is not block.model:
        raise fail(
            "call",
            f"the recorded call of span {block.label} (Collection.call, from collect)",
            "None",
            "collect the block first: the recorded forward shows its Sequential runs it",
        )


def _check_inputs(X_in: Any) -> torch.Tensor:
    if not isinstance(X_in, torch.Tensor) or not X_in.is_floating_point() or X_in.ndim < 2 or len(X_in) == 0:
        raise fail(
            "X_in",
            "a floating-point tensor of samples (k, *input_shape), k ≥ 1",
            describe(X_in),
            "pass the block's inputs, e.g. Collection.inputs",
        )
    if not bool(torch.isfinite(X_in).all()):
        raise fail("X_in", "finite values", "NaN or Inf", "clean the inputs")
    return X_in.detach().cpu().double()


def _accumulate(f: Callable, X: torch.Tensor, positions: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ of the Jacobian rows the positions ask for, Σ of the output rows), over all samples."""
    with torch.no_grad():
        probe = f(X[:1])
    if not isinstance(probe, torch.Tensor) or probe.shape[0] != 1:
        raise fail(
            "block",
            "a block that maps a batch of samples to a batch of outputs",
            describe(probe),
            "pick another block",
        )
    out_numel, in_numel = probe[0].numel(), X[0].numel()
    shared = positions == "shared" and X.ndim > 2
    d_in, d_out = (
        (X.shape[feature_axis(X)], probe.shape[feature_axis(probe)]) if shared else (in_numel, out_numel)
    )
    total = torch.zeros(d_out, d_in, dtype=torch.float64)
    sum_y = torch.zeros(d_out, dtype=torch.float64)
    chunk = max(1, CHUNK_BYTES // (8 * in_numel * 4))
    for start in range(0, len(X), chunk):
        x = X[start : start + chunk].clone().requires_grad_(True)
        with torch.enable_grad():
            y = f(x)
        sum_y += to_rows(y.detach(), positions if shared else "flat").sum(dim=0)
        flat_y = y.reshape(len(x), -1)
        for o in range(out_numel):
            (g,) = torch.autograd.grad(
                flat_y[:, o].sum(), x, retain_graph=o + 1 < out_numel, allow_unused=True
            )
            if g is None:
                continue
            _add_row(total, g, o, probe, shared)
    return total, sum_y


def _add_row(total: torch.Tensor, g: torch.Tensor, o: int, probe: torch.Tensor, shared: bool) -> None:
    """Add output coordinate o's input gradients (n, *in_shape) into the Jacobian sum."""
    if not shared:
        total[o] += g.reshape(len(g), -1).sum(dim=0)
        return
    axis = feature_axis(probe)
    index = torch.unravel_index(torch.tensor(o), probe.shape[1:])  # (feature k, position …) in probe layout
    k = int(index[axis - 1])
    position = [int(i) for j, i in enumerate(index) if j != axis - 1]
    moved = g.movedim(feature_axis(g), -1)  # (n, *positions, d_in)
    total[k] += moved[(slice(None), *position)].sum(dim=0)  # type: ignore[index]


@dataclass(frozen=True)
class JacobianParts:
    """A block's mean Jacobian J̄ (block_out, block_in) and the means that give the forward bias."""

    J: torch.Tensor
    mean_x: torch.Tensor
    mean_y: torch.Tensor
    info: dict[str, Any]

    def map(self, direction: str) -> LinearMap:
        return core.make_map(self.J, direction, self.mean_x, self.mean_y, MEAN_JACOBIAN, dict(self.info))


def mean_jacobian_parts(
    block: Block, X_in: torch.Tensor, positions: str | None = None, call: Crossing | None = None
) -> JacobianParts:
    """J̄ of a Block over the samples X_in, with E[x] and E[y] per row (both directions' maps)."""
    _check_span_ran(block, call)
    X = _check_inputs(X_in)
    if positions is None:  # as collect would choose: shared when the block keeps its positions
        f_probe, _ = block_function(block, call)
        with torch.no_grad():
            positions = default_positions(X[:1], f_probe(X[:1]))
    check_choice("positions", positions, POSITIONS)
    if block.is_linear_chain() and (X.ndim == 2 or (X.ndim == 3 and positions == "shared")):
        rows = to_rows(X, "shared")
        lm = core.mean_jacobian(block.layers(), rows, "forward")
        mean_x = rows.double().mean(dim=0)
        return JacobianParts(
            lm.matrix.T, mean_x, mean_x @ lm.matrix + lm.bias, {**lm.info, "positions": positions}
        )
    f, info = block_function(block, call)
    if positions == "shared" and X.ndim > 2:
        with torch.no_grad():
            check_shared(X[:1], f(X[:1]), block.label)
    total, sum_y = _accumulate(f, X, positions)
    shared = X.ndim > 2 and positions == "shared"
    count = to_rows(X[:1], positions).shape[0] * len(X) if shared else len(X)
    mean_x = to_rows(X, positions if shared else "flat").mean(dim=0)
    info.update(path="autograd", positions=positions, n=len(X))
    return JacobianParts(total / count, mean_x, sum_y / count, info)


def mean_jacobian(
    target: Any,
    X_in: torch.Tensor,
    direction: str,
    positions: str | None = None,
    call: Crossing | None = None,
) -> LinearMap:
    """The exact mean Jacobian of a Block (its own code), a module, a list of layers or any callable
    on rows, over the samples X_in: the backward map (J̄, grad_in ≈ grad_out·J̄), or its transpose."""
    if not isinstance(target, Block):
        return core.mean_jacobian(target, X_in, direction)
    check_choice("direction", direction, core.DIRECTIONS)
    return mean_jacobian_parts(target, X_in, positions, call).map(direction)


def _chain_rows(block: Block, X_in: torch.Tensor, method: str) -> torch.Tensor:
    why = block.not_a_chain()
    if why is not None:
        raise fail(
            "block",
            f"a Linear/activation chain for {method}",
            f"block {block.label} has {why}",
            "use mean_jacobian or ridge",
        )
    X = _check_inputs(X_in)
    if X.ndim > 3:
        raise fail(
            "X_in",
            f"rows of the chain's features for {method}: (k, d) or (k, T, d)",
            describe(X_in),
            "use mean_jacobian",
        )
    return to_rows(X, "shared")


def expected_mask(target: Any, X_in: torch.Tensor, direction: str, call: Crossing | None = None) -> LinearMap:
    """W_L·diag(E[σ'(z_{L−1})])·…·W_1 of a Block that is a chain (else BacklensError), a module or
    a list of layers, over X_in: the backward map, or its transpose."""
    if not isinstance(target, Block):
        return core.expected_mask(target, X_in, direction)
    _check_span_ran(target, call)
    lm = core.expected_mask(target.layers(), _chain_rows(target, X_in, "expected-mask"), direction)
    lm.info.update(positions="shared")
    return lm


def weights_only(target: Any, direction: str, call: Crossing | None = None) -> LinearMap:
    """The chain without its activations, for a Block that is a chain, a module or a list of layers."""
    if not isinstance(target, Block):
        return core.weights_only(target, direction)
    _check_span_ran(target, call)
    why = target.not_a_chain()
    if why is not None:
        raise fail(
            "block",
            "a Linear/activation chain for weights-only",
            f"block {target.label} has {why}",
            "use mean_jacobian or ridge",
        )
    return core.weights_only(target.layers(), direction)
