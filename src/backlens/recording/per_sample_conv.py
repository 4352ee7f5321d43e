"""Per-sample gradients of Conv1d/2d/3d and ConvTranspose1d/2d/3d by unfold + einsum, and norms.

Shapes: input x (n, C, *S) (d spatial axes), grad_output δ (n, O, *S'), kernel k (d axes, K =
∏k entries), g groups. Unfolding the padded x gives patches P (n, L, C·K), L = ∏S' output
positions, channel-major (c, k) as the weight's (C/g, *k) trailing axes are laid out.
Forward:    z_il[o] = Σ_(c,k) W[o, (c,k)] · P_il[(c,k)] + b[o]  (per group: a Linear over L positions).
Derivative: G_i[o, (c,k)] = s·Σ_l δ_il[o] P_il[(c,k)] (within a group), b: s·Σ_l δ_il.
Transposed: y = convᵀ(x; W) is the input-gradient of conv(·; W) mapping O → C, so with P the
patches of δ_y (unfolded with the layer's kernel, stride, padding, dilation) and x flattened to
(n, L = ∏S_in, C_in): G_i[c, (o,k)] = s·Σ_l x_il[c] P_il[(o,k)] — W is (C_in, O/g, *k).
Norms: per group the Linear identity (linear_sq_norms: the Gram form when L·(C·K/g + O/g) <
C·K/g · O/g, else building G a chunk of samples at a time).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import fail
from .per_sample_base import CallData, first_pairs
from .per_sample_linear import linear_sq_norms

__all__ = ["unfold_patches", "conv_grads", "conv_sq_norms", "conv_transpose_grads", "conv_transpose_sq_norms"]

PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def _pads(module: Any, d: int) -> list[tuple[int, int]]:
    """(before, after) padding per spatial axis; "same" puts the odd one after, as torch does."""
    kernel, dilation, padding = module.kernel_size, module.dilation, module.padding
    if padding == "valid":
        return [(0, 0)] * d
    if padding == "same":
        total = [dl * (k - 1) for dl, k in zip(dilation, kernel, strict=True)]
        return [(t // 2, t - t // 2) for t in total]
    return [(int(p), int(p)) for p in padding]


def unfold_patches(
    x: torch.Tensor,
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    pads: Sequence[tuple[int, int]],
    mode: str = "zeros",
) -> torch.Tensor:
    """(n, C, *S) -> (n, L, C·K) patches, any number of spatial axes (F.unfold does only 2-D)."""
    d = len(kernel)
    if any(p for pair in pads for p in pair):
        flat = [p for pair in reversed(pads) for p in pair]  # F.pad wants the last axis first
        x = F.pad(x, flat, mode=PAD_MODES[mode]) if mode != "zeros" else F.pad(x, flat)
    for axis in range(d):
        x = x.unfold(2 + axis, dilation[axis] * (kernel[axis] - 1) + 1, stride[axis])
    if any(dl > 1 for dl in dilation):
        index: tuple[Any, ...] = (..., *(slice(None, None, dl) for dl in dilation))
        x = x[index]
    n, c = x.shape[:2]
    x = x.permute(0, *range(2, 2 + d), 1, *range(2 + d, 2 + 2 * d))  # (n, *S', C, *k)
    return x.reshape(n, -1, c * _prod(kernel))


def _weight_shape(module: nn.Module) -> tuple[int, ...]:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return tuple(weight.shape)


def _sum(parts: Iterable[torch.Tensor]) -> torch.Tensor:
    return functools.reduce(torch.add, parts)


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _batched(module: Any, x: torch.Tensor, where: str) -> int:
    d = len(module.kernel_size)
    if x.ndim != d + 2:
        raise fail(
            where,
            f"a batched input (n, C, {d} spatial axes) to a {type(module).__name__}",
            f"shape {tuple(x.shape)}",
            "call the layer on a batch: per-sample gradients need the sample axis first",
        )
    return d


def _conv_factors(
    module: Any, calls: Sequence[CallData], scale: float
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per call: patches P (n, L, g, C·K/g) and s·δ (n, L, g, O/g)."""
    acts, backs = first_pairs(calls)
    g = int(module.groups)
    patches, deltas = [], []
    for call, x, dy in zip(calls, acts, backs, strict=True):
        d = _batched(module, x, call.where)
        p = unfold_patches(
            x,
            module.kernel_size,
            module.stride,
            module.dilation,
            _pads(module, d),
            module.padding_mode,
        )
        n, length, ck = p.shape
        delta = dy.reshape(n, dy.shape[1], -1).transpose(1, 2) * scale  # (n, L, O)
        patches.append(p.reshape(n, length, g, ck // g))
        deltas.append(delta.reshape(n, length, g, -1))
    return patches, deltas


def conv_grads(
    module: nn.Module | None, calls: Sequence[CallData], scale: float, names: frozenset[str]
) -> dict[str, torch.Tensor]:
    """{"weight": (n, O, C/g, *k), "bias": (n, O)} for Conv1d/2d/3d."""
    assert module is not None
    patches, deltas = _conv_factors(module, calls, scale)
    grads: dict[str, torch.Tensor] = {}
    n = patches[0].shape[0]
    if "weight" in names:
        w = _sum(torch.einsum("nlgo,nlgk->ngok", dl, p) for p, dl in zip(patches, deltas, strict=True))
        grads["weight"] = w.reshape(n, *_weight_shape(module))
    if "bias" in names:
        grads["bias"] = _sum(dl.sum(1).reshape(n, -1) for dl in deltas)
    return grads


def conv_sq_norms(
    module: nn.Module | None, calls: Sequence[CallData], scale: float, names: frozenset[str]
) -> torch.Tensor:
    """(n,) ‖G_i‖² over weight and bias: the Linear identity per group, calls stacked along L."""
    assert module is not None
    patches, deltas = _conv_factors(module, calls, 1.0)
    total = torch.zeros(patches[0].shape[0], dtype=deltas[0].dtype, device=deltas[0].device)
    if "weight" in names:
        for gi in range(patches[0].shape[2]):
            total += linear_sq_norms(
                [p[:, :, gi] for p in patches], [dl[:, :, gi] for dl in deltas], bias=False
            )
    if "bias" in names:
        total += _sum(dl.sum(1) for dl in deltas).flatten(1).square().sum(1)
    return total * scale**2


def _transpose_factors(
    module: Any, calls: Sequence[CallData], scale: float
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Per call: x (n, L, g, C/g), patches of s·δ_y (n, L, g, O·K/g), and s·δ_y (n, O, L')."""
    acts, backs = first_pairs(calls)
    g = int(module.groups)
    if module.padding_mode != "zeros":
        raise fail(calls[0].where, "padding_mode 'zeros'", module.padding_mode, "use zero padding")
    xs, patches, flat = [], [], []
    for call, x, dy in zip(calls, acts, backs, strict=True):
        d = _batched(module, x, call.where)
        dy = dy * scale
        pads = [(int(p), int(p)) for p in module.padding]
        p = unfold_patches(dy, module.kernel_size, module.stride, module.dilation, pads)
        n, length, ok = p.shape
        if length != x[0, 0].numel():
            raise fail(call.where, f"{x[0, 0].numel()} input positions", length, "report this shape")
        xs.append(x.reshape(n, x.shape[1], -1).transpose(1, 2).reshape(n, length, g, -1))
        patches.append(p.reshape(n, length, g, ok // g))
        flat.append(dy.reshape(n, dy.shape[1], -1))
        del d
    return xs, patches, flat


def conv_transpose_grads(
    module: nn.Module | None, calls: Sequence[CallData], scale: float, names: frozenset[str]
) -> dict[str, torch.Tensor]:
    """{"weight": (n, C_in, O/g, *k), "bias": (n, O)} for ConvTranspose1d/2d/3d."""
    assert module is not None
    xs, patches, flat = _transpose_factors(module, calls, scale)
    n = xs[0].shape[0]
    grads: dict[str, torch.Tensor] = {}
    if "weight" in names:
        w = _sum(torch.einsum("nlgc,nlgk->ngck", x, p) for x, p in zip(xs, patches, strict=True))
        grads["weight"] = w.reshape(n, *_weight_shape(module))
    if "bias" in names:
        grads["bias"] = _sum(f.sum(2) for f in flat)
    return grads


def conv_transpose_sq_norms(
    module: nn.Module | None, calls: Sequence[CallData], scale: float, names: frozenset[str]
) -> torch.Tensor:
    """(n,) ‖G_i‖²: per group the Linear identity with x as the backprop and δ's patches as input."""
    assert module is not None
    xs, patches, flat = _transpose_factors(module, calls, scale)
    total = torch.zeros(xs[0].shape[0], dtype=flat[0].dtype, device=flat[0].device)
    if "weight" in names:
        for gi in range(xs[0].shape[2]):
            total += linear_sq_norms([p[:, :, gi] for p in patches], [x[:, :, gi] for x in xs], bias=False)
    if "bias" in names:
        total += _sum(f.sum(2) for f in flat).square().sum(1)
    return total
