"""Hand-derived forward and backward pass for Sequential MLPs, every intermediate value kept.

Shape convention: row vectors. For a Linear layer with weight W (out × in) and bias b:
z = a·Wᵀ + b; the activation after it gives a' = σ(z) and σ'(z) (the notebook's mask R);
δ = dL/dz; dW = δᵀ·a, db = Σ_rows δ; the δ of the layer below is (δ·W) ⊙ σ'(z_below).
The last layer's δ starts from the loss: δ_L = dL/d(output) ⊙ σ'(z_L) (see `losses.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import check_device, check_finite, check_module, check_tensor, describe, fail
from .chain import Chain, chain_leaves, parse_chain
from .losses import LossRule, loss_rule
from .rules import SUPPORTED_MODULES, ActivationRule

__all__ = ["backprop", "run_chain", "Tape", "LayerTape", "linear_chain", "prepare"]


@dataclass
class LayerTape:
    """One Linear layer's values: input a, output z, σ'(z) of the activation after it, δ = dL/dz.

    `activation` names the elementwise modules after the layer ("relu", "tanh → dropout(eval)"),
    None when there are none; then `act_derivative` is None too (σ' = 1).
    """

    name: str
    a: torch.Tensor
    z: torch.Tensor
    activation: str | None
    act_derivative: torch.Tensor | None
    delta: torch.Tensor | None = None


@dataclass
class Tape:
    """Everything the hand-derived pass computed, layer by layer.

    grads: {parameter name as in model.named_parameters(): dL/dθ}.
    per_sample_grads: {parameter name: (n, *shape)}, each sample's contribution to the batch
    gradient, so `per_sample_grads[k].sum(0) == grads[k]`; with reduction "mean" that is 1/n
    times the gradient of the sample's own loss.
    """

    loss: torch.Tensor
    output: torch.Tensor
    layers: list[LayerTape]
    grads: dict[str, torch.Tensor] = field(default_factory=dict)
    per_sample_grads: dict[str, torch.Tensor] = field(default_factory=dict)
    loss_name: str = "mse"
    reduction: str = "mean"
    target: torch.Tensor | None = None


def linear_chain(model: nn.Module) -> Chain:
    """Read a Sequential (nested ones opened) as a chain of Linear layers and activations, or raise."""
    check_module("model", model)
    if not isinstance(model, nn.Sequential):
        raise fail(
            "model",
            f"an nn.Sequential of supported modules ({SUPPORTED_MODULES})",
            f"{type(model).__name__} at position 0 (the model itself)",
            "wrap the layers in nn.Sequential",
        )
    fix = "remove or replace that module, or check that part of the model by other means"
    chain = parse_chain(chain_leaves(model), "model", fix)
    if not chain.linears:
        raise fail("model", "at least one nn.Linear", "none", "add a Linear layer")
    dtypes = {p.dtype for s in chain.linears for p in s.linear.parameters()}
    if len(dtypes) != 1 or not dtypes <= {torch.float32, torch.float64}:
        raise fail(
            "model",
            "float32 or float64 parameters, all of one dtype",
            ", ".join(sorted(map(str, dtypes))),
            "call model.float() or model.double()",
        )
    return chain


def prepare(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse", reduction: str = "mean"
) -> tuple[Chain, torch.Tensor, torch.Tensor, LossRule]:
    """Validate model, x, y, loss and reduction; return the chain, x, target y and loss rule."""
    chain = linear_chain(model)
    rule = loss_rule(loss, reduction)
    weight = chain.linears[0].linear.weight
    in_features, out_features = chain.linears[0].linear.in_features, chain.linears[-1].linear.out_features
    if chain.flatten:
        x = check_tensor("x", x, floating=True)
        if x.ndim < 2 or math.prod(x.shape[1:]) != in_features:
            raise fail(
                "x",
                f"shape (n, ...) with {in_features} features per sample (the model flattens them)",
                describe(x),
                "pass data of that shape",
            )
    else:
        x = check_tensor("x", x, ndim=2, floating=True, shape=(None, in_features))
    if x.dtype != weight.dtype:
        raise fail(
            "x",
            f"dtype {weight.dtype}, the model's parameter dtype",
            describe(x),
            f"convert x with x.to({weight.dtype}) or the model with model.to({x.dtype})",
        )
    check_device("x", x, weight.device, "the model")
    if len(x) == 0:
        raise fail("x", "a non-empty batch", "0 rows", "pass at least one sample")
    check_finite("x", x)
    y = check_tensor("y", y)
    check_finite("y", y)
    check_device("y", y, x.device, "x")
    target = rule.target(y, (len(x), out_features), x.dtype)
    return chain, x, target, rule


def backprop(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse", reduction: str = "mean"
) -> Tape:
    """Run the model's forward and backward by hand; return every intermediate as a Tape.

    model: nn.Sequential of Linear layers and elementwise activations (see rules.SUPPORTED_MODULES),
    float32 or float64, Dropout in eval mode. x: (n, in_features) of the model's dtype (any
    (n, ...) if the model starts with nn.Flatten). loss: "mse" (y float (n, k), or (n,) when
    k = 1), "ce" (y int64 class indices (n,), output = logits), "bce" (y in [0, 1] shaped like
    the output, output = logits). reduction: "mean" or "sum", as in torch.nn.functional.
    The model is only read: its parameters and .grad stay as they were; hooks on it are not run.
    """
    chain, x, target, rule = prepare(model, x, y, loss, reduction)
    return run_chain(chain, x, target, rule)


def _activate(rules: tuple[ActivationRule, ...], z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """a = σ_m(…σ_1(z)) and σ'(z) = Π_j σ_j'(u_{j−1}), the chain rule through the modules."""
    if not rules:
        return z, None
    derivative = rules[0].derivative(z)
    a = rules[0].forward(z)
    for rule in rules[1:]:
        derivative = derivative * rule.derivative(a)
        a = rule.forward(a)
    return a, derivative


def _linear(a: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """z = a·Wᵀ + b, computed as nn.Linear computes it (one fused addmm), so ties at kinks agree."""
    weight = linear.weight.detach()
    if linear.bias is None:
        return a @ weight.T
    return torch.addmm(linear.bias.detach(), a, weight.T)


@torch.no_grad()
def run_chain(chain: Chain, x: torch.Tensor, y: torch.Tensor, rule: LossRule) -> Tape:
    """The hand pass on a chain and inputs already checked by `prepare` (what `backprop` runs)."""
    # forward: z_i = a_{i−1}·W_iᵀ + b_i, a_i = σ_i(z_i), keeping σ_i'(z_i)
    a = x.reshape(len(x), -1) if chain.flatten else x
    for prefix_rule in chain.prefix:  # elementwise modules before the first Linear act on x
        a = prefix_rule.forward(a)
    layers: list[LayerTape] = []
    for step in chain.layers:
        z = _linear(a, step.linear)
        a_next, derivative = _activate(step.rules, z)
        layers.append(LayerTape(step.name, a, z, step.activation, derivative))
        a = a_next
    output = a
    tape = Tape(
        loss=rule.value(output, y),
        output=output,
        layers=layers,
        loss_name=rule.name,
        reduction=rule.reduction,
        target=y,
    )
    # backward: δ_i = dL/da_i ⊙ σ_i'(z_i); dL/da_{i−1} = δ_i·W_i
    grad_a = rule.gradient(output, y)
    steps = chain.layers
    for index in range(len(layers) - 1, -1, -1):
        step, layer = steps[index], layers[index]
        delta = grad_a * layer.act_derivative if layer.act_derivative is not None else grad_a
        layer.delta = delta
        tape.grads[f"{step.name}.weight"] = delta.T @ layer.a
        tape.per_sample_grads[f"{step.name}.weight"] = torch.einsum("ni,nj->nij", delta, layer.a)
        if step.linear.bias is not None:
            tape.grads[f"{step.name}.bias"] = delta.sum(dim=0)
            tape.per_sample_grads[f"{step.name}.bias"] = delta.clone()
        if index:
            grad_a = delta @ step.linear.weight.detach()
    order = [f"{s.name}.{kind}" for s in steps for kind in ("weight", "bias")]
    tape.grads = {k: tape.grads[k] for k in order if k in tape.grads}
    tape.per_sample_grads = {k: tape.per_sample_grads[k] for k in order if k in tape.grads}
    return tape
