"""Feedback rules of the layer methods: the matrix B a layer's backward uses in place of its weight W.

Shape convention: PyTorch weight layout. For nn.Linear, W and B are (out × in), and the gradient
sent below is δ_prev = δ·B (row vectors) where backprop sends δ·W; for nn.Conv2d, B is shaped
like the conv weight and δ_prev = conv2d_input(δ, B), the transposed convolution by B. The
weight's own gradient stays local: dW = δᵀa with the δ that arrived.

  fa    fixed random B, drawn as nn.Linear/Conv2d draw their weights (kaiming-uniform, a = √5:
        U(−1/√fan_in, 1/√fan_in)) from a seeded generator (Lillicrap et al. 2016)
  usf   B = sign(W)·σ₀, σ₀ = 1/√(3·fan_in), the std of that initialisation (biotorch's uSF,
        scaled by the init's std)
  brsf  B = |R| ∘ sign(W), R ~ N(0, σ₀²) redrawn every batch (biotorch's brSF)
  frsf  B = |R| ∘ sign(W), R ~ N(0, σ₀²) drawn once (biotorch's frSF)
  dfa   B_l (output width × layer-input width) fixed, as fa: the output error e goes to every
        hidden layer as e·B_l (Nøkland 2016)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, MutableMapping

import torch
from torch import nn

__all__ = [
    "Feedback",
    "LAYER_RULES",
    "LAYER_TYPES",
    "fixed_part",
    "feedback_matrix",
    "send_below",
    "init_bound",
    "unsupported",
]

LAYER_TYPES = (nn.Linear, nn.Conv2d)


def fan_in(weight: torch.Tensor) -> int:
    return int(weight[0].numel())


def init_bound(weight: torch.Tensor) -> float:
    """The bound of PyTorch's default init of Linear/Conv2d weights: U(−b, b), b = 1/√fan_in."""
    return 1.0 / math.sqrt(fan_in(weight))


def _uniform(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    bound = init_bound(weight)
    draw = torch.rand(weight.shape, generator=generator, dtype=weight.dtype)  # the generator's CPU
    return ((2 * draw - 1) * bound).to(weight.device)


def _abs_normal(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    std = init_bound(weight) / math.sqrt(3)
    draw = torch.randn(weight.shape, generator=generator, dtype=weight.dtype)  # the generator's CPU
    return (draw.abs() * std).to(weight.device)


def _sign(weight: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.sign(weight.detach(), out=out)


# name -> (draw the fixed part once, or None; B from (W, generator, fixed part), written into
# `out`, a buffer of W's shape kept from step to step, where B changes with W)
LAYER_RULES: dict[str, tuple[Callable[..., torch.Tensor] | None, Callable[..., torch.Tensor]]] = {
    "fa": (_uniform, lambda w, g, fixed, out: fixed),
    "usf": (None, lambda w, g, fixed, out: _sign(w, out).mul_(init_bound(w) / math.sqrt(3))),
    "brsf": (None, lambda w, g, fixed, out: _sign(w, out).mul_(_abs_normal(w, g))),
    "frsf": (_abs_normal, lambda w, g, fixed, out: _sign(w, out).mul_(fixed)),
}


def fixed_part(method: str, weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
    """What a method draws once per layer: fa's B, frsf's |R|; None for the others."""
    draw, _ = LAYER_RULES[method]
    return None if draw is None else draw(weight, generator)


def feedback_matrix(
    method: str,
    weight: torch.Tensor,
    generator: torch.Generator,
    fixed: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """B for this batch, from the current W (usf, brsf, frsf) and the fixed part (fa, frsf);
    written into `out` when given (shaped like W), else into a new tensor."""
    _, make = LAYER_RULES[method]
    w = weight.detach()
    return make(w, generator, fixed, torch.empty_like(w) if out is None else out)


def unsupported(layer: nn.Module) -> str | None:
    """Why a layer has no feedback rule here, or None."""
    if not isinstance(layer, LAYER_TYPES):
        return f"{type(layer).__name__} has no feedback rule (Linear and Conv2d do)"
    if isinstance(layer, nn.Conv2d) and (layer.padding_mode != "zeros" or isinstance(layer.padding, str)):
        return "Conv2d with padding_mode other than 'zeros' or string padding ('same')"
    return None


def send_below(layer: nn.Module, B: torch.Tensor, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The gradient a layer sends to its input with B in place of W: δ·B, or conv2d_input(δ, B)."""
    if isinstance(layer, nn.Linear):
        return grad @ B.to(grad.dtype)
    assert isinstance(layer, nn.Conv2d)
    return torch.nn.grad.conv2d_input(  # type: ignore[attr-defined]
        x.shape,
        B.to(grad.dtype),
        grad,
        layer.stride,
        layer.padding,  # type: ignore[arg-type]
        layer.dilation,
        layer.groups,
    )


class Feedback(MutableMapping[str, torch.Tensor]):
    """{layer or block name: the matrix its last backward used}. A value may be stored as a
    zero-argument function, built on first read and kept: block maps (W_L·diag(E σ')·…·W_1) are
    applied factor by factor in training, so the product is only formed when someone looks."""

    def __init__(self) -> None:
        self._values: dict[str, torch.Tensor | Callable[[], torch.Tensor]] = {}

    def defer(self, name: str, build: Callable[[], torch.Tensor]) -> None:
        self._values[name] = build

    def __getitem__(self, name: str) -> torch.Tensor:
        value = self._values[name]
        if not isinstance(value, torch.Tensor):
            value = self._values[name] = value()
        return value

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        self._values[name] = value

    def __delitem__(self, name: str) -> None:
        del self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Feedback({sorted(self._values)})"
