"""Per-sample gradients of nn.Embedding, and their norms without building them.

Shapes: indices x (n, ...) with T entries per sample, grad_output δ (n, ..., D), table (V, D).
Forward:    y_it = W[x_it].
Derivative: G_i[v] = s·Σ_{t: x_it = v} δ_it, except G_i[padding_idx] = 0 (autograd gives that
            row no gradient; Opacus's sampler does, a difference the tests pin).
Norms:      ‖G_i‖² = s²·Σ_tu [x_it = x_iu ≠ padding_idx] ⟨δ_it, δ_iu⟩, a T×T Gram per sample in
            float64, when T² < V·D; otherwise G_i is built a chunk of samples at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import fail
from .per_sample_base import CallData, first_pairs
from .per_sample_linear import CHUNK_BYTES

__all__ = ["embedding_grads", "embedding_sq_norms"]


def _flat(module: nn.Embedding, calls: Sequence[CallData], scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (n, T) and s·δ (n, T, D), the calls stacked along T."""
    if module.scale_grad_by_freq:
        raise fail(
            calls[0].where,
            "an nn.Embedding with scale_grad_by_freq=False",
            "scale_grad_by_freq=True (it scales by counts over the whole batch)",
            "per-sample gradients are not defined for it; turn it off",
        )
    acts, backs = first_pairs(calls)
    for call, x in zip(calls, acts, strict=True):
        if x.ndim < 2:
            raise fail(call.where, "batched indices (n, T)", f"shape {tuple(x.shape)}", "pass (n, T) indices")
    n = acts[0].shape[0]
    idx = torch.cat([x.reshape(n, -1) for x in acts], dim=1)
    delta = torch.cat([d.reshape(n, -1, module.embedding_dim) for d in backs], dim=1)
    return idx.to(delta.device), delta * scale


def _build(module: nn.Embedding, idx: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    n, _, d = delta.shape
    out = torch.zeros(n, module.num_embeddings, d, dtype=delta.dtype, device=delta.device)
    out.scatter_add_(1, idx.unsqueeze(-1).expand(-1, -1, d), delta)
    if module.padding_idx is not None:
        out[:, module.padding_idx] = 0
    return out


def embedding_grads(
    module: nn.Module | None, calls: Sequence[CallData], scale: float, names: frozenset[str]
) -> dict[str, torch.Tensor]:
    """{"weight": (n, V, D)}."""
    assert isinstance(module, nn.Embedding)
    if "weight" not in names:
        return {}
    idx, delta = _flat(module, calls, scale)
    return {"weight": _build(module, idx, delta)}


def embedding_sq_norms(
    module: nn.Module | None, calls: Sequence[CallData], scale: float, names: frozenset[str]
) -> torch.Tensor:
    """(n,) ‖G_i‖², by the Gram identity or by building G a chunk of samples at a time."""
    assert isinstance(module, nn.Embedding)
    idx, delta = _flat(module, calls, 1.0)
    n, t, d = delta.shape
    if "weight" not in names:
        return torch.zeros(n, dtype=delta.dtype, device=delta.device)
    total = torch.empty(n, dtype=delta.dtype, device=delta.device)
    if t * t < module.num_embeddings * d:
        wide = torch.float64 if delta.device.type != "mps" else torch.float32
        valid = torch.ones_like(idx, dtype=torch.bool)
        if module.padding_idx is not None:
            valid = idx != module.padding_idx
        chunk = max(1, CHUNK_BYTES // max(1, t * t * 8))
        for s in range(0, n, chunk):
            i, v, dl = idx[s : s + chunk], valid[s : s + chunk], delta[s : s + chunk].to(wide)
            same = (i.unsqueeze(2) == i.unsqueeze(1)) & v.unsqueeze(2) & v.unsqueeze(1)
            total[s : s + chunk] = (torch.bmm(dl, dl.transpose(1, 2)) * same).sum((1, 2)).to(delta.dtype)
    else:
        chunk = max(1, CHUNK_BYTES // max(1, module.num_embeddings * d * delta.element_size()))
        for s in range(0, n, chunk):
            total[s : s + chunk] = (
                _build(module, idx[s : s + chunk], delta[s : s + chunk]).flatten(1).square().sum(1)
            )
    return total * scale**2
