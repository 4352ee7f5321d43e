"""Per-sample gradients of Conv1d/2d/3d and ConvTranspose1d/2d/3d by unfold + einsum, and norms.

Shapes: input x (n, C, *S) (d spatial axes), grad_output δ (n, O, *S'), kernel k (d axes, K =
∏k entries), g groups. Unfolding the padded x gives patches P (n, C·K, L) as F.unfold lays them out, L = ∏S'
output positions, channel-major (c, k) as the weight's (C/g, *k) trailing axes are laid out.
Forward:    z_il[o] = Σ_(c,k) W[o, (c,k)] · P_il[(c,k)] + b[o]  (per group: a Linear over L positions).
Derivative: G_i[o, (c,k)] = s·Σ_l δ_il[o] P_il[(c,k)] (within a group), b: s·Σ_l δ_il.
Transposed: y = convᵀ(x; W) is the input-gradient of conv(·; W) mapping O → C, so with P the
patches of δ_y (unfolded with the layer's kernel, stride, padding, dilation) and x flattened to
(n, L = ∏S_in, C_in): G_i[c, (o,k)] = s·Σ_l x_il[c] P_il[(o,k)] — W is (C_in, O/g, *k).
Computed: the weight gradients by torch's convolution weight-gradient kernel with the samples
as groups (torch.nn.grad.convNd_weight; the same sums, faster on CPU than unfold + einsum,
which `conv_grads_by_unfold` keeps and the tests hold equal). Norms: the Gram form per group
when L·(C·K/g + O/g) < C·K/g · O/g (linear_sq_norms on the patches), else the weight gradients
of a chunk of samples at a time, squared.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn import grad as nn_grad

from ..errors import fail
from .per_sample_base import CallData, first_pairs
from .per_sample_linear import CHUNK_BYTES, linear_sq_norms

__all__ = [
    "unfold_patches",
    "conv_grads",
    "conv_grads_by_unfold",
    "conv_sq_norms",
    "conv_transpose_grads",
    "conv_transpose_sq_norms",
]

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
    """(n, C, *S) -> (n, C·K, L) patches, as F.unfold lays them out, for any number of axes.

    Two axes, zero padding the same on both sides: F.unfold itself (im2col). Otherwise pad,
    take windows with Tensor.unfold per axis, subsample them by the dilation, and lay them out.
    """
    d = len(kernel)
    symmetric = all(p[0] == p[1] for p in pads)
    if d == 2 and mode == "zeros" and symmetric:
        return F.unfold(x, tuple(kernel), tuple(dilation), tuple(p[0] for p in pads), tuple(stride))
    if any(p for pair in pads for p in pair):
        flat = [p for pair in reversed(pads) for p in pair]  # F.pad wants the last axis first
        x = F.pad(x, flat, mode=PAD_MODES[mode]) if mode != "zeros" else F.pad(x, flat)
    for axis in range(d):
        x = x.unfold(2 + axis, dilation[axis] * (kernel[axis] - 1) + 1, stride[axis])
    if any(dl > 1 for dl in dilation):
        index: tuple[Any, ...] = (..., *(slice(None, None, dl) for dl in dilation))
        x = x[index]
    n, c = x.shape[:2]
    x = x.permute(0, 1, *range(2 + d, 2 + 2 * d), *range(2, 2 + d))  # (n, C, *k, *S')
    return x.reshape(n, c * _prod(kernel), -1)


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


def _conv_factors(module: Any, calls: Sequence[CallData]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per call: patches P (n, g, C·K/g, L) and δ (n, g, O/g, L), views where they can be."""
    acts, backs = first_pairs(calls)
    g = int(module.groups)
    patches, deltas = [], []
    for call, x, dy in zip(calls, acts, backs, strict=True):
        d = _batched(module, x, call.where)
        p = unfold_patches(
            x, module.kernel_size, module.stride, module.dilation, _pads(module, d), module.padding_mode
        )
        n, ck, length = p.shape
        patches.append(p.reshape(n, g, ck // g, length))
        deltas.append(dy.reshape(n, g, -1, length))
    return patches, deltas


WEIGHT_GRAD = {1: nn_grad.conv1d_weight, 2: nn_grad.conv2d_weight, 3: nn_grad.conv3d_weight}


def _weight_by_grouped_conv(module: Any, calls: Sequence[CallData], start: int, stop: int) -> torch.Tensor:
    """(m, O, C/g, *k) per-sample weight gradients of samples start:stop, unscaled.

    The samples become groups of one convolution: x (1, m·C, *S) and δ (1, m·O, *S') with m·g
    groups; torch's weight gradient of that convolution is every sample's own, computed by the
    convolution backward kernel (faster than unfold + einsum on CPU, same sums).
    """
    acts, backs = first_pairs(calls)
    total: torch.Tensor | None = None
    for call, x, dy in zip(calls, acts, backs, strict=True):
        d = _batched(module, x, call.where)
        x, dy = x[start:stop], dy[start:stop]
        pads = _pads(module, d)
        padding = [0] * d
        if module.padding_mode == "zeros" and all(p[0] == p[1] for p in pads):
            padding = [p[0] for p in pads]  # the kernel pads itself: no padded copy of x
        elif any(p for pair in pads for p in pair):
            flat = [p for pair in reversed(pads) for p in pair]
            mode = module.padding_mode
            x = F.pad(x, flat, mode=PAD_MODES[mode]) if mode != "zeros" else F.pad(x, flat)
        m, c = x.shape[:2]
        o = dy.shape[1]
        shape = (m * o, c // module.groups, *module.kernel_size)
        w = WEIGHT_GRAD[d](
            x.reshape(1, m * c, *x.shape[2:]),
            shape,
            dy.reshape(1, m * o, *dy.shape[2:]),
            stride=module.stride,
            padding=padding,
            dilation=module.dilation,
            groups=m * module.groups,
        ).reshape(m, o, *shape[1:])
        total = w if total is None else total + w
    assert total is not None
    return total


def conv_grads(
    module: nn.Module | None, calls: Sequence[CallData], scale: float, names: frozenset[str]
) -> dict[str, torch.Tensor]:
    """{"weight": (n, O, C/g, *k), "bias": (n, O)} for Conv1d/2d/3d."""
    assert module is not None
    grads: dict[str, torch.Tensor] = {}
    n = calls[0].input.shape[0]
    if "weight" in names:
        grads["weight"] = _scaled(_weight_by_grouped_conv(module, calls, 0, n), scale)
    if "bias" in names:
        _, backs = first_pairs(calls)
        grads["bias"] = _scaled(_sum(dy.reshape(n, dy.shape[1], -1).sum(-1) for dy in backs), scale)
    return grads


def conv_grads_by_unfold(
    module: nn.Module | None, calls: Sequence[CallData], scale: float, names: frozenset[str]
) -> dict[str, torch.Tensor]:
    """conv_grads by unfold + einsum (the module docstring's form; the tests hold both equal)."""
    assert module is not None
    patches, deltas = _conv_factors(module, calls)
    grads: dict[str, torch.Tensor] = {}
    n = patches[0].shape[0]
    if "weight" in names:
        w = _sum(torch.matmul(dl, p.transpose(-1, -2)) for p, dl in zip(patches, deltas, strict=True))
        grads["weight"] = _scaled(w, scale).reshape(n, *_weight_shape(module))
    if "bias" in names:
        grads["bias"] = _scaled(_sum(dl.sum(-1) for dl in deltas), scale).reshape(n, -1)
    return grads


def _scaled(t: torch.Tensor, scale: float) -> torch.Tensor:
    return t.mul_(scale) if scale != 1.0 else t


def conv_sq_norms(
    module: nn.Module | None, calls: Sequence[CallData], scale: float, names: frozenset[str]
) -> torch.Tensor:
    """(n,) ‖G_i‖² over weight and bias: the Gram identity per group when cheaper, else built.

    Built: the weight gradients of a chunk of samples at a time (grouped convolution), squared.
    """
    assert module is not None
    conv: Any = module
    _, backs = first_pairs(calls)
    n, o = backs[0].shape[:2]
    length = sum(dy[0, 0].numel() for dy in backs)
    k_in = conv.in_channels // conv.groups * _prod(conv.kernel_size)
    k_out = o // conv.groups
    if "weight" in names and length * (k_in + k_out) >= k_in * k_out:
        total = torch.zeros(n, dtype=backs[0].dtype, device=backs[0].device)
        chunk = max(1, CHUNK_BYTES // max(1, o * k_in * backs[0].element_size()))
        for start in range(0, n, chunk):
            w = _weight_by_grouped_conv(conv, calls, start, min(n, start + chunk))
            total[start : start + chunk] = w.flatten(1).square().sum(1)
        if "bias" in names:
            total += _sum(dy.reshape(n, o, -1).sum(-1) for dy in backs).square().sum(1)
        return total * scale**2
    patches, deltas = _conv_factors(module, calls)
    total = torch.zeros(patches[0].shape[0], dtype=deltas[0].dtype, device=deltas[0].device)
    if "weight" in names:
        for gi in range(patches[0].shape[1]):
            total += linear_sq_norms(
                [p[:, gi].transpose(1, 2) for p in patches],
                [dl[:, gi].transpose(1, 2) for dl in deltas],
                bias=False,
            )
    if "bias" in names:
        total += _sum(dl.sum(-1) for dl in deltas).flatten(1).square().sum(1)
    return total * scale**2


def _transpose_factors(
    module: Any, calls: Sequence[CallData]
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Per call: x (n, g, C/g, L), patches of δ_y (n, g, O·K/g, L), and δ_y (n, O, L')."""
    acts, backs = first_pairs(calls)
    g = int(module.groups)
    if module.padding_mode != "zeros":
        raise fail(calls[0].where, "padding_mode 'zeros'", module.padding_mode, "use zero padding")
    xs, patches, flat = [], [], []
    for call, x, dy in zip(calls, acts, backs, strict=True):
        _batched(module, x, call.where)
        pads = [(int(p), int(p)) for p in module.padding]
        p = unfold_patches(dy, module.kernel_size, module.stride, module.dilation, pads)
        n, ok, length = p.shape
        if length != x[0, 0].numel():
            raise fail(call.where, f"{x[0, 0].numel()} input positions", length, "report this shape")
        xs.append(x.reshape(n, g, -1, length))
        patches.append(p.reshape(n, g, ok // g, length))
        flat.append(dy.reshape(n, dy.shape[1], -1))
    return xs, patches, flat


def conv_transpose_grads(
    module: nn.Module | None, calls: Sequence[CallData], scale: float, names: frozenset[str]
) -> dict[str, torch.Tensor]:
    """{"weight": (n, C_in, O/g, *k), "bias": (n, O)} for ConvTranspose1d/2d/3d."""
    assert module is not None
    xs, patches, flat = _transpose_factors(module, calls)
    n = xs[0].shape[0]
    grads: dict[str, torch.Tensor] = {}
    if "weight" in names:
        w = _sum(torch.matmul(x, p.transpose(-1, -2)) for x, p in zip(xs, patches, strict=True))
        grads["weight"] = _scaled(w, scale).reshape(n, *_weight_shape(module))
    if "bias" in names:
        grads["bias"] = _scaled(_sum(f.sum(2) for f in flat), scale)
    return grads


def conv_transpose_sq_norms(
    module: nn.Module | None, calls: Sequence[CallData], scale: float, names: frozenset[str]
) -> torch.Tensor:
    """(n,) ‖G_i‖²: per group the Linear identity with x as the backprop and δ's patches as input."""
    assert module is not None
    xs, patches, flat = _transpose_factors(module, calls)
    total = torch.zeros(xs[0].shape[0], dtype=flat[0].dtype, device=flat[0].device)
    if "weight" in names:
        for gi in range(xs[0].shape[1]):
            total += linear_sq_norms(
                [p[:, gi].transpose(1, 2) for p in patches],
                [x[:, gi].transpose(1, 2) for x in xs],
                bias=False,
            )
    if "bias" in names:
        total += _sum(f.sum(2) for f in flat).square().sum(1)
    return total * scale**2
