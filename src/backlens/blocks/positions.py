"""Feature axes of a block's activations: which rows a linear map acts on.

positions="shared": one map over the feature vector at each position — each token of an
(n, T, d) activation (features last), each pixel's channel vector of an (n, C, H, W) or
(n, C, D, H, W) one (channels on axis 1). positions="flat": the whole activation of a sample
flattened into one row. For (n, d) both are the same. The default is "shared" when the block
keeps the number of positions (tokens or pixels) and "flat" when it changes them.
"""

from __future__ import annotations

import torch

from ..errors import check_choice, fail

__all__ = ["POSITIONS", "feature_axis", "position_count", "to_rows", "from_rows", "default_positions"]

POSITIONS = ("shared", "flat")


def feature_axis(t: torch.Tensor) -> int:
    """Axis of the features: channels (1) for conv-shaped 4-D/5-D tensors, else the last."""
    return 1 if t.ndim >= 4 else t.ndim - 1


def position_count(t: torch.Tensor) -> int:
    """Positions per sample under "shared": tokens or pixels (1 for (n, d))."""
    return t[0].numel() // t.shape[feature_axis(t)] if t.ndim >= 2 else 1


def default_positions(a_in: torch.Tensor, a_out: torch.Tensor) -> str:
    """'shared' when the block keeps the positions of its input, else 'flat'."""
    if a_in.ndim <= 2 and a_out.ndim <= 2:
        return "shared"
    same = a_in.ndim == a_out.ndim and position_count(a_in) == position_count(a_out)
    return "shared" if same else "flat"


def to_rows(t: torch.Tensor, positions: str) -> torch.Tensor:
    """(n, ...) → rows: (n·positions, features) for "shared", (n, everything) for "flat"."""
    check_choice("positions", positions, POSITIONS)
    if t.ndim < 2:
        raise fail(
            "activation", "a batch of at least 2 dims (n, features)", tuple(t.shape), "pick another block"
        )
    if positions == "flat" or t.ndim == 2:
        return t.reshape(t.shape[0], -1)
    axis = feature_axis(t)
    return t.movedim(axis, -1).reshape(-1, t.shape[axis])


def from_rows(rows: torch.Tensor, like: torch.Tensor, positions: str) -> torch.Tensor:
    """The inverse of to_rows for rows of a tensor shaped like `like` (features may differ)."""
    n = like.shape[0]
    if positions == "flat" or like.ndim == 2:
        return rows.reshape(like.shape) if rows.shape[1] == like[0].numel() else rows.reshape(n, -1)
    axis = feature_axis(like)
    moved = list(like.movedim(axis, -1).shape)
    moved[-1] = rows.shape[1]
    return rows.reshape(moved).movedim(-1, axis)


def check_shared(a_in: torch.Tensor, a_out: torch.Tensor, label: str) -> None:
    """Raise unless one shared map can send each input position to the same output position."""
    if a_in.ndim != a_out.ndim or position_count(a_in) != position_count(a_out):
        raise fail(
            "positions",
            "'shared' only for a block that keeps its positions",
            f"block {label}: in {tuple(a_in.shape)} → out {tuple(a_out.shape)}",
            "use positions='flat'",
        )
