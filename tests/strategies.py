"""Hypothesis strategies shared by the backprop and check tests: any supported MLP with data."""

import torch
from hypothesis import strategies as st
from torch import nn

from backlens.workflows.mlp import ACTIVATIONS

ACTIVATION_KINDS = [
    "relu",
    "leaky_relu",
    "tanh",
    "sigmoid",
    "gelu",
    "gelu_tanh",
    "elu",
    "identity",
    "none",
]


@st.composite
def activation(draw: st.DrawFn) -> list[nn.Module]:
    kind = draw(st.sampled_from(ACTIVATION_KINDS))
    if kind == "leaky_relu":
        return [nn.LeakyReLU(draw(st.floats(-2, 2, allow_nan=False)))]
    if kind == "elu":
        return [nn.ELU(alpha=draw(st.floats(0.05, 3)))]
    if kind == "none":
        return []
    return [ACTIVATIONS[kind]()]


@st.composite
def mlp_case(draw: st.DrawFn) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor, str, str]:
    depth = draw(st.integers(1, 6))
    widths = draw(st.lists(st.integers(1, 64), min_size=depth + 1, max_size=depth + 1))
    bias = draw(st.booleans())
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    loss = draw(st.sampled_from(["mse", "ce", "bce"]))
    reduction = draw(st.sampled_from(["mean", "sum"]))
    n = draw(st.integers(1, 64))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(depth):
            layers.append(nn.Linear(widths[i], widths[i + 1], bias=bias))
            if i < depth - 1 or draw(st.booleans()):  # sometimes an activation after the output too
                layers.extend(draw(activation()))
    model = nn.Sequential(*layers).to(dtype)
    x = torch.randn(n, widths[0], generator=gen, dtype=dtype)
    k = widths[-1]
    y = {
        "mse": lambda: torch.randn(n, k, generator=gen, dtype=dtype),
        "ce": lambda: torch.randint(0, k, (n,), generator=gen),
        "bce": lambda: torch.rand(n, k, generator=gen, dtype=dtype),
    }[loss]()
    return model, x, y, loss, reduction


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a − b| / max|b|, in float64 (absolute when b is all zeros)."""
    a, b = a.double(), b.double()
    scale = float(b.abs().max()) if b.numel() else 0.0
    err = float((a - b).abs().max()) if b.numel() else 0.0
    return err / scale if scale > 0 else err
