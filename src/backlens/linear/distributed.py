"""Moments merged across the processes of a torch.distributed group: every rank ends with the
statistics of all ranks' rows, as if one process had streamed them all.

No protocol of our own: a small description of each rank's Moments is all-gathered first, and
every rank raises the same BacklensError when they disagree (a mismatched all_reduce would
hang, or under NCCL silently mix dtypes). Then the sums are reduced with ReduceOp.SUM only
(ReduceOp.AVG is absent on older gloo and wrong on some newer builds). Precision: each rank's
centred sums are re-expressed about one shift K common to all ranks (the global mean, itself
from a reduced Σx and n), S_r = C_r + n_r·δ_rδ_rᵀ and s_r = n_r·δ_r with δ_r = μ_r − K; their
SUM is the run's raw sums about K (Moments' own state), read out as C = S − s·sᵀ/n. With K
at the global mean, s is ≈ 0 and nothing cancels: the result equals the exact pairwise merge
(Moments.merge) to float64 rounding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..errors import fail
from .moments import Moments

__all__ = ["all_reduce_moments", "world", "agree", "gather_objects"]


def world(group: Any = None) -> tuple[int, int] | None:
    """(rank, world size) when a process group is initialised, else None."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return dist.get_rank(group), dist.get_world_size(group)


def gather_objects(value: Any, group: Any = None) -> list[Any]:
    """Every rank's `value`, in rank order (torch.distributed.all_gather_object)."""
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, value, group=group)
    return gathered


def agree(
    argument: str, description: dict[str, Any] | None, group: Any = None
) -> list[dict[str, Any] | None]:
    """All-gather `description` and raise, on every rank alike, naming the first field on which
    the ranks differ (a rank passing None, one with nothing to describe, is left out).
    Returns every rank's description."""
    every = gather_objects(description, group)
    given = [(r, d) for r, d in enumerate(every) if d is not None]
    keys = list(dict.fromkeys(k for _, d in given for k in d))
    for key in keys:
        values = [(r, d.get(key)) for r, d in given]
        if any(v != values[0][1] for _, v in values):
            shown = ", ".join(f"rank {r}: {v!r}" for r, v in values)
            raise fail(
                argument,
                f"the same {key} on every rank",
                shown,
                "run the same model, block, options and data layout on every rank",
            )
    return every


def _reduce_device(group: Any) -> torch.device:
    """Where the reduced tensors must live: the current GPU under NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _summed(tensors: list[torch.Tensor], group: Any) -> list[torch.Tensor]:
    """all_reduce(SUM) of float64 tensors, flattened into one buffer (one collective)."""
    device = _reduce_device(group)
    flat = torch.cat([t.reshape(-1).double() for t in tensors]).to(device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat = flat.cpu()
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].reshape(t.shape))
        start += t.numel()
    return out


def all_reduce_moments(moments: Moments, group: Any = None) -> Moments:
    """The merge of every rank's Moments, on every rank (a new Moments; `moments` is unchanged).

    Every rank must call it with Moments of the same d_in, d_out and yy; otherwise every rank
    raises BacklensError naming what differs.
    """
    if world(group) is None:
        raise fail(
            "group",
            "an initialised torch.distributed process group",
            "none",
            "call torch.distributed.init_process_group first (torchrun sets it up)",
        )
    d_in, d_out, yy = moments.d_in, moments.d_out, moments.yy_mode
    agree("moments", {"Moments shape": (d_in, d_out), "yy mode": yy}, group)
    n, mean_x, mean_y = moments.n, moments.mean_x, moments.mean_y
    norms = (moments.sum_sq_norms, moments.sum_quartic_norms)
    known = torch.tensor([0.0 if norms[0] is None else 1.0], dtype=torch.float64)
    # the common shift K: the global mean
    total_x, total_y, count, every_known = _summed(
        [n * mean_x, n * mean_y, torch.tensor([float(n)], dtype=torch.float64), known], group
    )
    n_all = int(round(float(count[0])))
    if n_all == 0:
        return Moments(d_in, d_out, yy=yy)
    kx, ky = total_x / n_all, total_y / n_all
    dx, dy = mean_x - kx, mean_y - ky
    # this rank's raw sums about K; summed over the ranks they are the run's sums about K
    parts = {
        "xx": moments.cxx + n * torch.outer(dx, dx),
        "xy": moments.cxy + n * torch.outer(dx, dy),
        "syy_diag": moments.cyy_diag + n * dy * dy,
        "sx": n * dx,
        "sy": n * dy,
        "norms": torch.tensor([v or 0.0 for v in norms], dtype=torch.float64),
    }
    if yy == "full":
        parts["syy"] = moments.cyy + n * torch.outer(dy, dy)
    summed = dict(zip(parts, _summed(list(parts.values()), group), strict=True))
    G = torch.zeros(d_in + 1, d_in + 1 + d_out, dtype=torch.float64)
    G[:d_in, :d_in], G[:d_in, d_in + 1 :] = summed["xx"], summed["xy"]
    G[:d_in, d_in], G[d_in, d_in + 1 :], G[d_in, d_in] = summed["sx"], summed["sy"], float(n_all)
    state = {"n": torch.tensor([n_all]), "kx": kx, "ky": ky, "G": G, "syy_diag": summed["syy_diag"]}
    if yy == "full":
        state["syy"] = summed["syy"]
    if int(round(float(every_known[0]))) == dist.get_world_size(group):  # else n_eff is unknown
        state["norms"] = summed["norms"]
    return Moments.from_state(d_in, d_out, yy, state)
