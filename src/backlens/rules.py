"""Forward rules and their local derivatives, side by side: activations and losses.

Shape convention: row vectors, z and a are (batch, features).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ActivationRule", "LossRule", "activation_rule", "ACTIVATION_RULES", "LOSS_RULES"]

Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ActivationRule:
    """a = forward(z) and σ'(z) = derivative(z), elementwise."""

    name: str
    forward: Fn
    derivative: Fn


def _relu(z: torch.Tensor) -> torch.Tensor:
    return z.clamp_min(0)


def _relu_derivative(z: torch.Tensor) -> torch.Tensor:
    # The notebook's mask R: 1 where z > 0, else 0 (autograd also takes 0 at z == 0).
    return (z > 0).to(z.dtype)


def _identity(z: torch.Tensor) -> torch.Tensor:
    return z


def _identity_derivative(z: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(z)


ACTIVATION_RULES: dict[type[nn.Module], Callable[[nn.Module], ActivationRule]] = {
    nn.ReLU: lambda m: ActivationRule("relu", _relu, _relu_derivative),
    nn.Identity: lambda m: ActivationRule("identity", _identity, _identity_derivative),
}


def activation_rule(module: nn.Module) -> ActivationRule | None:
    """The rule for an elementwise activation module, or None if it has none."""
    make = ACTIVATION_RULES.get(type(module))
    return make(module) if make is not None else None


@dataclass(frozen=True)
class LossRule:
    """value(z, y) is the loss; gradient(z, y) is dL/dz, both for a batch of rows."""

    name: str
    reduction: str
    value: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    gradient: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _mse_value(reduction: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def value(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        squared = (z - y) ** 2
        return squared.mean() if reduction == "mean" else squared.sum()

    return value


def _mse_gradient(reduction: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def gradient(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # d/dz of mean((z - y)^2) over b·k entries is 2/(b·k)·(z - y); for sum, 2·(z - y).
        scale = 2.0 / z.numel() if reduction == "mean" else 2.0
        return scale * (z - y)

    return gradient


LOSS_RULES: dict[str, Callable[[str], LossRule]] = {
    "mse": lambda r: LossRule("mse", r, _mse_value(r), _mse_gradient(r)),
}
