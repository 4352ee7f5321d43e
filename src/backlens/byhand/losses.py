"""Loss rules: each loss value written next to its gradient dL/dz with respect to the model output.

Shape convention: z is the model output (n, k) (logits for "ce" and "bce"); y is the target
after `LossRule.target` has checked it. With reduction "mean" a loss averages over what torch
averages over: every entry for "mse" and "bce" (n·k of them), the n samples for "ce".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from ..errors import check_choice, describe, fail

__all__ = ["LossRule", "LOSS_RULES", "LOSS_NAMES", "loss_rule"]

Pair = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LossRule:
    """value(z, y) is the loss; gradient(z, y) is dL/dz; target(y, z_shape) validates y for them."""

    name: str
    reduction: str
    expects: str
    value: Pair
    gradient: Pair
    target: Callable[[torch.Tensor, tuple[int, int], torch.dtype], torch.Tensor]


def _reduce(per_entry: torch.Tensor, reduction: str) -> torch.Tensor:
    return per_entry.mean() if reduction == "mean" else per_entry.sum()


# --- MSE: L = reduce (z − y)²;  dL/dz = 2(z − y), divided by n·k for "mean" -----------------------


def mse_value(z: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
    return _reduce((z - y) ** 2, reduction)


def mse_gradient(z: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
    return 2 * (z - y) / (z.numel() if reduction == "mean" else 1)


# --- Cross-entropy on logits, y class indices: ℓ_i = logsumexp(z_i) − z_i[y_i], reduce over i;
#     dL/dz = softmax(z) − onehot(y), divided by n for "mean" ------------------------------------


def _shifted(z: torch.Tensor) -> torch.Tensor:
    return z - z.max(dim=1, keepdim=True).values  # same softmax, no overflow in exp


def ce_value(z: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
    s = _shifted(z)
    log_sum_exp = torch.log(torch.exp(s).sum(dim=1))
    return _reduce(log_sum_exp - s.gather(1, y.unsqueeze(1)).squeeze(1), reduction)


def ce_gradient(z: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
    e = torch.exp(_shifted(z))
    softmax = e / e.sum(dim=1, keepdim=True)
    onehot = torch.zeros_like(z).scatter_(1, y.unsqueeze(1), 1.0)
    return (softmax - onehot) / (len(z) if reduction == "mean" else 1)


# --- Binary cross-entropy on logits, y in [0, 1]: ℓ = −y·log s(z) − (1 − y)·log(1 − s(z))
#     = max(z, 0) − z·y + log(1 + e^−|z|) (stable form);  dL/dz = s(z) − y, over n·k for "mean"


def bce_value(z: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
    return _reduce(z.clamp_min(0) - z * y + torch.log1p(torch.exp(-z.abs())), reduction)


def bce_gradient(z: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
    return (torch.sigmoid(z) - y) / (z.numel() if reduction == "mean" else 1)


# --- what each loss expects of y -----------------------------------------------------------------


def _float_target(
    name: str, y: torch.Tensor, shape: tuple[int, int], dtype: torch.dtype, unit_interval: bool
) -> torch.Tensor:
    n, k = shape
    if not y.is_floating_point():
        fix = "use loss='ce' for class indices, or pass y.float()"
        raise fail("y", f"floating-point targets for loss {name!r}", describe(y), fix)
    if y.ndim == 1 and k == 1:
        y = y.unsqueeze(1)
    if tuple(y.shape) != (n, k):
        also = f" or ({n},)" if k == 1 else ""
        raise fail(
            "y",
            f"shape ({n}, {k}){also} for loss {name!r}: one target row per sample, "
            "as wide as the model's output",
            describe(y),
            "pass targets matching the output",
        )
    if unit_interval and bool(((y < 0) | (y > 1)).any()):
        raise fail(
            "y",
            f"values in [0, 1] for loss {name!r} (probabilities or 0/1 labels)",
            f"values from {float(y.min()):g} to {float(y.max()):g}",
            "rescale the targets, or use loss='mse' for real-valued targets",
        )
    return y.to(dtype)


def _class_target(y: torch.Tensor, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    n, k = shape
    want = f"int64 class indices of shape ({n},) with values 0..{k - 1} for loss 'ce'"
    if y.is_floating_point() or y.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise fail(
            "y",
            want,
            describe(y),
            "pass labels as y.long(); for float targets use loss='mse' or 'bce'",
        )
    if tuple(y.shape) != (n,):
        column = y.ndim == 2 and y.shape[1] == 1
        fix = "pass y.squeeze(1)" if column else "pass one label per sample"
        raise fail("y", want, describe(y), fix)
    if n and (int(y.min()) < 0 or int(y.max()) >= k):
        raise fail(
            "y",
            want,
            f"labels from {int(y.min())} to {int(y.max())}",
            f"relabel the classes 0..{k - 1}, or widen the output to {int(y.max()) + 1}",
        )
    return y.long()


def _rule(
    name: str,
    expects: str,
    value: Callable[..., torch.Tensor],
    gradient: Callable[..., torch.Tensor],
    target: Callable[..., torch.Tensor],
    reduction: str,
) -> LossRule:
    return LossRule(
        name,
        reduction,
        expects,
        partial(value, reduction=reduction),
        partial(gradient, reduction=reduction),
        target,
    )


LOSS_RULES: dict[str, Callable[[str], LossRule]] = {
    "mse": partial(
        _rule,
        "mse",
        "float targets (n, k)",
        mse_value,
        mse_gradient,
        partial(_float_target, "mse", unit_interval=False),
    ),
    "ce": partial(_rule, "ce", "int64 class indices (n,)", ce_value, ce_gradient, _class_target),
    "bce": partial(
        _rule,
        "bce",
        "float targets in [0, 1] (n, k)",
        bce_value,
        bce_gradient,
        partial(_float_target, "bce", unit_interval=True),
    ),
}
LOSS_NAMES = tuple(LOSS_RULES)


def loss_rule(loss: str, reduction: str = "mean") -> LossRule:
    """The rule for a loss name ('mse', 'ce', 'bce') and reduction ('mean', 'sum')."""
    check_choice("loss", loss, list(LOSS_NAMES))
    check_choice("reduction", reduction, ["mean", "sum"])
    return LOSS_RULES[loss](reduction)
