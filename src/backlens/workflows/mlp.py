"""Build an MLP as an nn.Sequential from a width list and an activation name."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import check_seed, describe, fail, memory_for

__all__ = ["build_mlp", "parse_widths", "ACTIVATIONS"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "elu": nn.ELU,
    "identity": nn.Identity,
}


def build_mlp(
    widths: Sequence[int], activation: str = "relu", bias: bool = True, seed: int | None = None
) -> nn.Sequential:
    """Linear layers between consecutive widths, the activation after every one but the last.

    `build_mlp([3, 2, 2, 1], "relu")` is the notebook's model: Linear, ReLU, Linear, ReLU, Linear.
    With `seed`, the initial weights are reproducible and the global RNG is left untouched.
    """
    widths = list(widths) if isinstance(widths, (list, tuple)) else widths
    if (
        not isinstance(widths, list)
        or len(widths) < 2
        or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)
    ):
        raise fail(
            "widths",
            "a list of at least two positive ints, e.g. [3, 2, 2, 1]",
            repr(widths),
            "give the input width, the hidden widths and the output width",
        )
    if activation not in ACTIVATIONS:
        raise fail("activation", "one of " + ", ".join(ACTIVATIONS), repr(activation), "pick a listed name")
    if seed is not None:
        check_seed("seed", seed)
    with torch.random.fork_rng(devices=[], enabled=seed is not None), memory_for("widths", "weights"):
        if seed is not None:
            torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Linear(w_in, w_out, bias=bias))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def parse_widths(text: str) -> list[int]:
    """'3,2,2,1' -> [3, 2, 2, 1], with a clear error for anything else (empty parts too)."""
    if not isinstance(text, str):
        raise fail("text", "a str like '3,2,2,1'", describe(text), "pass the widths as text")
    try:
        widths = [int(part) for part in text.split(",")]
    except ValueError:
        raise fail("text", "comma-separated positive ints like 3,2,2,1", repr(text), "fix the list") from None
    if len(widths) < 2 or any(w <= 0 for w in widths):
        raise fail("text", "at least two positive ints like 3,2,2,1", repr(text), "fix the list")
    return widths
