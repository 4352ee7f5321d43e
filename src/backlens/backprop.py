"""Hand-derived forward and backward pass for Sequential MLPs, every intermediate value kept.

Shape convention: row vectors. For a Linear layer with weight W (out × in) and bias b:
z = a·Wᵀ + b; the activation after it gives a' = σ(z) and σ'(z) (the notebook's mask R);
δ = dL/dz; dW = δᵀ·a, db = Σ_rows δ; the δ of the layer below is (δ·W) ⊙ σ'(z_below).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import check_choice, check_finite, check_module, check_tensor, fail
from .rules import LOSS_RULES, ActivationRule, activation_rule

__all__ = ["backprop", "Tape", "LayerTape", "linear_chain"]


@dataclass
class LayerTape:
    """One Linear layer's values: its input a, output z, σ'(z) of the activation after it, δ."""

    name: str
    a: torch.Tensor
    z: torch.Tensor
    activation: str | None
    act_derivative: torch.Tensor | None
    delta: torch.Tensor | None = None


@dataclass
class Tape:
    """Everything the hand-derived pass computed, layer by layer."""

    loss: torch.Tensor
    output: torch.Tensor
    layers: list[LayerTape]
    grads: dict[str, torch.Tensor] = field(default_factory=dict)
    per_sample_grads: dict[str, torch.Tensor] = field(default_factory=dict)


def linear_chain(model: nn.Module) -> list[tuple[str, nn.Linear, ActivationRule | None, str | None]]:
    """Flatten a Sequential into (linear name, linear, rule of the activation after it, its name)."""
    check_module("model", model)
    flat: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        if isinstance(module, nn.Sequential):
            for child_name, child in module.named_children():
                walk(f"{prefix}.{child_name}" if prefix else child_name, child)
        else:
            flat.append((prefix, module))

    if not isinstance(model, nn.Sequential):
        raise fail("model", "an nn.Sequential of Linear layers and elementwise activations",
                   type(model).__name__, "wrap the layers in nn.Sequential")
    walk("", model)
    chain: list[tuple[str, nn.Linear, ActivationRule | None, str | None]] = []
    supported = "Linear, ReLU, Identity"
    for position, (name, module) in enumerate(flat):
        if isinstance(module, nn.Linear):
            chain.append((name, module, None, None))
            continue
        rule = activation_rule(module)
        if rule is None:
            raise fail("model", f"only {supported} modules", f"{type(module).__name__} at position "
                       f"{position} (name {name!r})", "remove it or check that layer by other means")
        if not chain or chain[-1][2] is not None:
            raise fail("model", "an activation right after a Linear layer",
                       f"{type(module).__name__} at position {position}", "put a Linear layer first")
        lin_name, linear, _, _ = chain[-1]
        chain[-1] = (lin_name, linear, rule, name)
    if not chain:
        raise fail("model", "at least one nn.Linear", "none", "add a Linear layer")
    return chain


def backprop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse",
             reduction: str = "mean") -> Tape:
    """Run the model's forward and backward by hand; return every intermediate as a Tape."""
    chain = linear_chain(model)
    check_choice("loss", loss, list(LOSS_RULES))
    check_choice("reduction", reduction, ["mean", "sum"])
    first = chain[0][1]
    x = check_tensor("x", x, ndim=2, floating=True, shape=(None, first.in_features))
    y = check_tensor("y", y, ndim=(1, 2), floating=True)
    if len(x) == 0:
        raise fail("x", "a non-empty batch", "0 rows", "pass at least one sample")
    check_finite("x", x)
    check_finite("y", y)
    out_features = chain[-1][1].out_features
    if y.ndim == 1 and out_features == 1:
        y = y.unsqueeze(1)
    if tuple(y.shape) != (len(x), out_features):
        raise fail("y", f"shape ({len(x)}, {out_features}) for the mse loss", f"shape {tuple(y.shape)}",
                   "pass one target row per sample, as wide as the model's output")
    return _backprop(chain, x, y.to(x.dtype), LOSS_RULES[loss](reduction))


@torch.no_grad()
def _backprop(chain, x: torch.Tensor, y: torch.Tensor, rule) -> Tape:  # type: ignore[no-untyped-def]
    layers: list[LayerTape] = []
    a = x
    for name, linear, act, _act_name in chain:
        weight = linear.weight.to(x.dtype)
        z = a @ weight.T + (linear.bias.to(x.dtype) if linear.bias is not None else 0)
        layers.append(LayerTape(name, a, z, act.name if act else None,
                                act.derivative(z) if act else None))
        a = act.forward(z) if act else z
    output = a
    delta = rule.gradient(output, y)
    tape = Tape(loss=rule.value(output, y), output=output, layers=layers)
    for index in range(len(chain) - 1, -1, -1):
        name, linear, _, _ = chain[index]
        layer = layers[index]
        if layer.act_derivative is not None:  # only the last layer may lack one... or an Identity
            delta = delta * layer.act_derivative
        layer.delta = delta
        tape.grads[f"{name}.weight"] = delta.T @ layer.a
        tape.per_sample_grads[f"{name}.weight"] = torch.einsum("ni,nj->nij", delta, layer.a)
        if linear.bias is not None:
            tape.grads[f"{name}.bias"] = delta.sum(dim=0)
            tape.per_sample_grads[f"{name}.bias"] = delta.clone()
        delta = delta @ linear.weight.to(x.dtype)
    return tape
