"""Per-sample gradients of any module by torch.func: vmap over samples of a vector-Jacobian product.

Shapes: the call's positional tensor inputs with the sample axis at `batch_dim` (tensors whose
size there is not n are shared by all samples), grad_outputs δ likewise.
Math: sample i's gradient is s·J_iᵀ δ_i, J_i the Jacobian of the module's output for sample i
with respect to its parameters, computed as grad_θ ⟨f(θ, x_i), δ_i⟩ under vmap over i, with f
the module's own call (its own hooks included: weight_norm's, parametrizations') at the
recorded inputs. It must run after the trace's `with` block has exited (Trace.recording is
False): inside it the trace's hooks would record the recomputation; the callers check.
Cost: one extra forward to check the recorded inputs reproduce the recorded output (a module
taking keyword arguments the trace does not record, or a stochastic one such as dropout in
training mode, does not: that raises), then one forward and one backward of the module per
sample, vectorized; memory of n per-sample gradients of the module at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import fail
from .nested import replace_tensors, tensors_in
from .per_sample_base import CallData, out_grad_pairs

__all__ = ["func_grads", "FUNC_TOLERANCE"]

FUNC_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}  # recomputed vs recorded output


def _device(module: nn.Module, calls: Sequence[CallData]) -> torch.device:
    for p in module.parameters():
        return p.device
    return calls[0].input.device


def _check_recomputed(module: nn.Module, args: tuple[Any, ...], call: CallData, first_only: bool) -> None:
    with torch.no_grad():
        again = tensors_in(module(*args))
    recorded = tensors_in(call.outputs)
    if first_only:
        again, recorded = again[:1], recorded[:1]
    for k, (a, r) in enumerate(zip(again, recorded, strict=False)):
        r = r.to(a.device)
        tol = FUNC_TOLERANCE.get(r.dtype, 1e-2)
        bad = a.shape != r.shape or (
            r.is_floating_point() and float((a - r).abs().max()) > tol * max(float(r.abs().max()), 1e-30)
        )
        if bad or len(again) != len(recorded):
            raise fail(
                call.where,
                "a module whose forward at the recorded positional inputs gives the recorded output",
                f"output {k} differs",
                "per-sample gradients by torch.func recompute the call: pass masks and options "
                "positionally (keyword arguments are not recorded), and use eval mode or "
                "dropout=0 for stochastic modules",
            )


def func_grads(
    module: nn.Module | None,
    calls: Sequence[CallData],
    scale: float,
    names: frozenset[str],
    batch_dim: int = 0,
    first_only: bool = False,
) -> dict[str, torch.Tensor]:
    """{name: (n, *shape)} for the parameters `names` of `module` (names as named_parameters).

    first_only: check only the first output against the record (attention recorded with
    need_weights=False returns None where the recomputation returns its weights).
    """
    assert module is not None
    device = _device(module, calls)
    params = dict(module.named_parameters())
    train = {k: params[k].detach() for k in sorted(names)}
    fixed = {k: v.detach() for k, v in params.items() if k not in names}
    fixed.update(dict(module.named_buffers()))
    total: dict[str, torch.Tensor] = {}
    for call in calls:
        for name, value in _one_call(
            module, call, train, fixed, device, scale, batch_dim, first_only
        ).items():
            total[name] = value if name not in total else total[name] + value
    return total


def _one_call(
    module: nn.Module,
    call: CallData,
    train: dict[str, torch.Tensor],
    fixed: dict[str, torch.Tensor],
    device: torch.device,
    scale: float,
    batch_dim: int,
    first_only: bool,
) -> dict[str, torch.Tensor]:
    from torch.func import functional_call, grad, vmap

    moved = iter(t.to(device) for t in tensors_in(call.inputs))
    args = _keep_leaves(call.inputs, tuple(replace_tensors(call.inputs, moved, None)))
    _check_recomputed(module, args, call, first_only)
    flat = tensors_in(args)
    n = flat[0].shape[batch_dim]
    batched = [t.ndim > batch_dim and t.shape[batch_dim] == n for t in flat]
    xs = [t for t, b in zip(flat, batched, strict=True) if b]
    shared = [t for t, b in zip(flat, batched, strict=True) if not b]
    pairs = out_grad_pairs(call.outputs, call.grad_outputs)
    used = [k for k, (_, g) in enumerate(pairs) if g is not None]
    ds = [pairs[k][1].to(device) * scale for k in used]  # type: ignore[union-attr]

    def one(p: dict[str, torch.Tensor], xs_i: list[torch.Tensor], ds_i: list[torch.Tensor]) -> torch.Tensor:
        it_x, it_s = iter(xs_i), iter(shared)
        rebuilt = [next(it_x).unsqueeze(batch_dim) if b else next(it_s) for b in batched]
        out = tensors_in(functional_call(module, {**p, **fixed}, _with(args, rebuilt)))
        dots = [(out[k].squeeze(batch_dim) * d).sum() for k, d in zip(used, ds_i, strict=True)]
        return torch.stack(dots).sum()

    got = vmap(grad(one), in_dims=(None, batch_dim, batch_dim))(train, xs, ds)
    return dict(got)


def _keep_leaves(original: Sequence[Any], moved: Sequence[Any]) -> tuple[Any, ...]:
    """`moved` with the non-tensor leaves of `original` (flags such as need_weights) put back."""
    return tuple(
        _keep_leaves(o, m) if isinstance(o, (tuple, list)) else (m if isinstance(o, torch.Tensor) else o)
        for o, m in zip(original, moved, strict=True)
    )


def _with(args: tuple[Any, ...], tensors: list[torch.Tensor]) -> tuple[Any, ...]:
    return _keep_leaves(args, tuple(replace_tensors(args, iter(tensors), None)))
