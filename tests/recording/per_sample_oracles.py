"""Shared helpers for the per-sample tests: the torch.func oracle, tolerances, a traced step."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

import backlens

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest error relative to the reference's largest entry (0 when both are 0)."""
    scale = float(ref.double().abs().max())
    diff = float((ours.double() - ref.double()).abs().max())
    return diff / scale if scale else diff


def mse(reduction: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda out, y: F.mse_loss(out, y, reduction=reduction)


def func_grads(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch_dim: int = 0,
) -> dict[str, torch.Tensor]:
    """torch.func vmap(grad) on a hook-free copy: each sample's gradient of its own loss term."""
    model = copy.deepcopy(model)
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}

    def one(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (xi.unsqueeze(batch_dim),))
        return loss(out, yi.unsqueeze(batch_dim))

    return vmap(grad(one), in_dims=(None, batch_dim, batch_dim))(params, x, y)


def norms_of(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(g.flatten(1).square().sum(1) for g in grads.values()).sqrt()  # type: ignore[union-attr]


def traced_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    select: object = None,
    store: str = "cpu",
) -> backlens.Trace:
    model.zero_grad(set_to_none=True)
    with backlens.trace(model, select=select, store=store) as rec:  # type: ignore[arg-type]
        loss(model(x), y).backward()
    return rec
