"""Loss rules: each loss value written next to its gradient dL/dz with respect to the model output.

Shape convention: z is the model output (n, k) (logits for "ce" and "bce"); y is the target
after `LossRule.target` has checked it. `LOSSES` is the one registry of losses: hand rule, torch
function and task metric; everything else (training, check, compare, the CLI) reads it. With
reduction "mean" a loss averages over what torch averages over: every entry for "mse" and "bce"
(n·k of them), the n samples for "ce".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch.nn import functional as F

from ..errors import check_choice, describe, fail

__all__ = [
    "Loss",
    "LossRule",
    "LOSSES",
    "LOSS_NAMES",
    "REDUCTIONS",
    "get_loss",
    "loss_rule",
    "torch_loss",
    "accuracy",
    "binary_accuracy",
    "mean_squared_error",
]

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


# --- the task metric each loss is judged by, on the model's output: mean over samples ----------


def accuracy(out: torch.Tensor, y: torch.Tensor) -> float:
    """Share of rows whose largest logit is the class index y."""
    return float((out.argmax(dim=1) == y).double().mean())


def binary_accuracy(out: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of logits against 0/1 targets: a logit > 0 predicts 1."""
    return float(((out > 0) == (y.reshape(out.shape) > 0.5)).double().mean())


def mean_squared_error(out: torch.Tensor, y: torch.Tensor) -> float:
    return float(((out - y.reshape(out.shape)) ** 2).mean())


@dataclass(frozen=True)
class Loss:
    """One loss everywhere: the hand rule (by reduction), torch's own function (the oracle and
    the training loss), and the task metric a model trained with it is judged by."""

    name: str
    expects: str
    value: Callable[..., torch.Tensor]
    gradient: Callable[..., torch.Tensor]
    target: Callable[..., torch.Tensor]
    torch_function: Callable[..., torch.Tensor]
    metric_name: str
    metric: Callable[[torch.Tensor, torch.Tensor], float]

    def rule(self, reduction: str) -> LossRule:
        return LossRule(
            self.name,
            reduction,
            self.expects,
            partial(self.value, reduction=reduction),
            partial(self.gradient, reduction=reduction),
            self.target,
        )

    def torch_loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """torch's loss; float targets are reshaped to the output's shape and dtype first."""
        if self.name != "ce":
            y = y.reshape(out.shape).to(out.dtype)
        return self.torch_function(out, y, reduction=reduction)


LOSSES: dict[str, Loss] = {
    "mse": Loss(
        "mse",
        "float targets (n, k)",
        mse_value,
        mse_gradient,
        partial(_float_target, "mse", unit_interval=False),
        F.mse_loss,
        "mse",
        mean_squared_error,
    ),
    "ce": Loss(
        "ce",
        "int64 class indices (n,)",
        ce_value,
        ce_gradient,
        _class_target,
        F.cross_entropy,
        "accuracy",
        accuracy,
    ),
    "bce": Loss(
        "bce",
        "float targets in [0, 1] (n, k)",
        bce_value,
        bce_gradient,
        partial(_float_target, "bce", unit_interval=True),
        F.binary_cross_entropy_with_logits,
        "accuracy",
        binary_accuracy,
    ),
}
LOSS_NAMES = tuple(LOSSES)
REDUCTIONS = ("mean", "sum")


def get_loss(loss: str) -> Loss:
    """The registry entry for a loss name ('mse', 'ce', 'bce')."""
    check_choice("loss", loss, list(LOSS_NAMES))
    return LOSSES[loss]


def loss_rule(loss: str, reduction: str = "mean") -> LossRule:
    """The hand rule for a loss name ('mse', 'ce', 'bce') and reduction ('mean', 'sum')."""
    entry = get_loss(loss)
    check_choice("reduction", reduction, list(REDUCTIONS))
    return entry.rule(reduction)


def torch_loss(loss: str, reduction: str = "mean") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """torch's own loss function for a name, as (output, target) -> loss."""
    entry = get_loss(loss)
    check_choice("reduction", reduction, list(REDUCTIONS))
    return partial(entry.torch_loss, reduction=reduction)
