"""Per-sample gradients of LayerNorm, GroupNorm and RMSNorm: the affine part after normalizing.

Shapes: input x (n, ..., *N) for LayerNorm/RMSNorm with normalized_shape N; (n, C, *S) for
GroupNorm. x̂ is x normalized without the affine part, recomputed from the recorded input by
the same functional torch uses (so in the input's dtype and with the layer's eps).
Forward:    y = x̂ ⊙ w + b (GroupNorm: per channel c, w[c], b[c]).
Derivative: G_i(w) = s·Σ_positions δ_i ⊙ x̂_i, G_i(b) = s·Σ_positions δ_i, summed over the
            axes that are not the parameter's (and over the calls).
Norms build G (it is as small as the parameter).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import fail
from .per_sample_base import CallData, first_pairs

__all__ = ["layer_norm_grads", "group_norm_grads", "rms_norm_grads"]


def _affine(
    calls: Sequence[CallData],
    scale: float,
    names: frozenset[str],
    normalize: object,
    param_ndim: int,
    channel_axis: bool,
) -> dict[str, torch.Tensor]:
    acts, backs = first_pairs(calls)
    grads: dict[str, torch.Tensor] = {}
    for x, dy in zip(acts, backs, strict=True):
        dy = dy * scale
        if channel_axis:  # GroupNorm: keep axes 0 and 1
            axes = tuple(range(2, dy.ndim))
        else:  # LayerNorm / RMSNorm: keep axis 0 and the last param_ndim
            axes = tuple(range(1, dy.ndim - param_ndim))
        parts: dict[str, torch.Tensor] = {}
        if "weight" in names:
            xhat = normalize(x)  # type: ignore[operator]
            parts["weight"] = (dy * xhat).sum(axes) if axes else dy * xhat
        if "bias" in names:
            parts["bias"] = dy.sum(axes) if axes else dy
        for key, value in parts.items():
            grads[key] = value if key not in grads else grads[key] + value
    return grads


def _check_batched(module: nn.Module, calls: Sequence[CallData], least: int) -> None:
    for call in calls:
        if call.input.ndim < least:
            raise fail(
                call.where,
                f"a batched input (n, ...) with at least {least} axes to a {type(module).__name__}",
                f"shape {tuple(call.input.shape)}",
                "call the layer on a batch: per-sample gradients need the sample axis first",
            )


def layer_norm_grads(
    module: nn.Module | None, calls: Sequence[CallData], scale: float, names: frozenset[str]
) -> dict[str, torch.Tensor]:
    """{"weight": (n, *N), "bias": (n, *N)} for nn.LayerNorm."""
    assert isinstance(module, nn.LayerNorm)
    shape = tuple(module.normalized_shape)
    _check_batched(module, calls, len(shape) + 1)
    return _affine(
        calls, scale, names, lambda x: F.layer_norm(x, shape, None, None, module.eps), len(shape), False
    )


def rms_norm_grads(
    module: nn.Module | None, calls: Sequence[CallData], scale: float, names: frozenset[str]
) -> dict[str, torch.Tensor]:
    """{"weight": (n, *N)} for nn.RMSNorm."""
    assert isinstance(module, nn.RMSNorm)
    shape = tuple(module.normalized_shape)
    _check_batched(module, calls, len(shape) + 1)
    return _affine(calls, scale, names, lambda x: F.rms_norm(x, shape, None, module.eps), len(shape), False)


def group_norm_grads(
    module: nn.Module | None, calls: Sequence[CallData], scale: float, names: frozenset[str]
) -> dict[str, torch.Tensor]:
    """{"weight": (n, C), "bias": (n, C)} for nn.GroupNorm."""
    assert isinstance(module, nn.GroupNorm)
    _check_batched(module, calls, 2)
    return _affine(
        calls,
        scale,
        names,
        lambda x: F.group_norm(x, module.num_groups, None, None, module.eps),
        1,
        True,
    )
