"""Per-sample gradients of nn.MultiheadAttention's parameters, out_proj included, by torch.func.

out_proj is never called as a module (the attention calls F.linear on its weight), so no record
of it exists: its gradients, like in_proj's (or q/k/v_proj_weight's) and bias_k/bias_v's, come
from the attention call itself — its recorded query, key, value and the grad_output of its
attention output — through `per_sample_func.func_grads` over the attention's own forward. This
is the torch.func route, not a closed form (the closed form needs the softmax's backward by
hand; the vmap route is exact and costs one forward and backward of the attention per sample).
batch_first decides the sample axis. Masks must be passed positionally (the trace does not
record keyword arguments; a mismatch with the recorded output raises).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import fail
from .per_sample_base import CallData, out_grad_pairs
from .per_sample_func import func_grads

__all__ = ["attention_grads"]


def attention_grads(
    module: nn.Module | None, calls: Sequence[CallData], scale: float, names: frozenset[str]
) -> dict[str, torch.Tensor]:
    """{name: (n, *shape)} for in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias, ..."""
    assert isinstance(module, nn.MultiheadAttention)
    batch_dim = 0 if module.batch_first else 1
    for call in calls:
        pairs = out_grad_pairs(call.outputs, call.grad_outputs)
        if batch_dim and len(pairs) > 1 and pairs[1][1] is not None:
            raise fail(
                call.where,
                "no gradient at the attention weights of a batch_first=False attention",
                "one (its weights are batch first, its output is not)",
                "use batch_first=True or need_weights=False",
            )
        if call.input.ndim != 3:
            raise fail(
                call.where, "a batched (3-D) query", f"shape {tuple(call.input.shape)}", "pass a batch"
            )
    return func_grads(module, calls, scale, names, batch_dim=batch_dim, first_only=True)
