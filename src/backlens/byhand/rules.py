"""Elementwise activation rules: each forward σ(z) written next to its local derivative σ'(z).

Shape convention: row vectors, z and a are (batch, features); every rule acts entry by entry,
so σ'(z) has z's shape and the backward step is δ_z = δ_a ⊙ σ'(z) (the notebook's mask R
generalized). At a kink the derivative takes the value autograd takes (ReLU: 0 at z = 0).
Loss rules live in `losses.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ActivationRule", "activation_rule", "ACTIVATION_RULES", "SUPPORTED_MODULES"]

Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ActivationRule:
    """a = forward(z) and σ'(z) = derivative(z), elementwise."""

    name: str
    forward: Fn
    derivative: Fn


# --- ReLU: a = max(z, 0); σ'(z) = [z > 0], the notebook's mask R --------------------------------


def relu(z: torch.Tensor) -> torch.Tensor:
    return z.clamp_min(0)


def relu_derivative(z: torch.Tensor) -> torch.Tensor:
    return (z > 0).to(z.dtype)


# --- LeakyReLU(s): a = z if z > 0 else s·z; σ'(z) = 1 if z > 0 else s ---------------------------


def leaky_relu(slope: float) -> Fn:
    return lambda z: torch.where(z > 0, z, slope * z)


def leaky_relu_derivative(slope: float) -> Fn:
    return lambda z: torch.where(z > 0, torch.ones_like(z), torch.full_like(z, slope))


# --- Tanh: a = tanh z; σ'(z) = 1 − tanh² z ------------------------------------------------------


def tanh(z: torch.Tensor) -> torch.Tensor:
    return torch.tanh(z)


def tanh_derivative(z: torch.Tensor) -> torch.Tensor:
    t = torch.tanh(z)
    return 1 - t * t


# --- Sigmoid: a = s(z) = 1 / (1 + e^−z); σ'(z) = s(z)·(1 − s(z)) -------------------------------


def sigmoid(z: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(z)


def sigmoid_derivative(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 - s)


# --- GELU, exact: a = z·Φ(z); σ'(z) = Φ(z) + z·φ(z), Φ/φ the standard normal cdf/pdf -----------

_INV_SQRT2 = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def _normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(z * _INV_SQRT2))


def gelu(z: torch.Tensor) -> torch.Tensor:
    return z * _normal_cdf(z)


def gelu_derivative(z: torch.Tensor) -> torch.Tensor:
    return _normal_cdf(z) + z * _INV_SQRT_2PI * torch.exp(-0.5 * z * z)


# --- GELU, tanh approximation: a = ½z(1 + tanh u), u = √(2/π)(z + 0.044715 z³) -----------------
#     σ'(z) = ½(1 + tanh u) + ½z(1 − tanh² u)·√(2/π)(1 + 3·0.044715 z²)

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_C = 0.044715


def gelu_tanh(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * z * (1 + torch.tanh(_SQRT_2_OVER_PI * (z + _GELU_C * z**3)))


def gelu_tanh_derivative(z: torch.Tensor) -> torch.Tensor:
    t = torch.tanh(_SQRT_2_OVER_PI * (z + _GELU_C * z**3))
    du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_C * z * z)
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * du


# --- ELU(α): a = z if z > 0 else α(e^z − 1); σ'(z) = 1 if z > 0 else α·e^z ----------------------


def elu(alpha: float) -> Fn:
    return lambda z: torch.where(z > 0, z, alpha * torch.expm1(z.clamp_max(0)))


def elu_derivative(alpha: float) -> Fn:
    return lambda z: torch.where(z > 0, torch.ones_like(z), alpha * torch.exp(z.clamp_max(0)))


# --- Identity (and Dropout in eval mode, which is the identity): a = z; σ'(z) = 1 ---------------


def identity(z: torch.Tensor) -> torch.Tensor:
    return z


def identity_derivative(z: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(z)


def _leaky_relu_rule(module: nn.Module) -> ActivationRule:
    slope = float(module.negative_slope)  # type: ignore[arg-type]
    return ActivationRule(f"leaky_relu({slope:g})", leaky_relu(slope), leaky_relu_derivative(slope))


def _elu_rule(module: nn.Module) -> ActivationRule:
    alpha = float(module.alpha)  # type: ignore[arg-type]
    return ActivationRule(f"elu({alpha:g})", elu(alpha), elu_derivative(alpha))


def _gelu_rule(module: nn.Module) -> ActivationRule | None:
    approximate = getattr(module, "approximate", "none")
    if approximate == "tanh":
        return ActivationRule("gelu_tanh", gelu_tanh, gelu_tanh_derivative)
    return ActivationRule("gelu", gelu, gelu_derivative) if approximate == "none" else None


def _dropout_rule(module: nn.Module) -> ActivationRule | None:
    # In training mode dropout is random, not a fixed function of z: no rule.
    if module.training:
        return None
    return ActivationRule("dropout(eval)", identity, identity_derivative)


ACTIVATION_RULES: dict[type[nn.Module], Callable[[nn.Module], ActivationRule | None]] = {
    nn.ReLU: lambda m: ActivationRule("relu", relu, relu_derivative),
    nn.LeakyReLU: _leaky_relu_rule,
    nn.Tanh: lambda m: ActivationRule("tanh", tanh, tanh_derivative),
    nn.Sigmoid: lambda m: ActivationRule("sigmoid", sigmoid, sigmoid_derivative),
    nn.GELU: _gelu_rule,
    nn.ELU: _elu_rule,
    nn.Identity: lambda m: ActivationRule("identity", identity, identity_derivative),
    nn.Dropout: _dropout_rule,
}

# What the hand engine accepts, for error messages.
SUPPORTED_MODULES = (
    "Linear (with or without bias), ReLU, LeakyReLU, Tanh, Sigmoid, GELU (exact or tanh), ELU, "
    "Identity, Flatten, Dropout (eval mode), nested Sequential"
)


def activation_rule(module: nn.Module) -> ActivationRule | None:
    """The rule for an elementwise activation module, or None if it has none.

    Exact types only: a subclass may override forward, so it gets no rule.
    """
    make = ACTIVATION_RULES.get(type(module))
    return make(module) if make is not None else None
