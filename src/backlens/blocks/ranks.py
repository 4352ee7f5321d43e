"""One collection from many processes: each rank streams its shard, then the ranks agree on what
they collected and merge it, so every rank holds what one process streaming all shards would.

Agreement first (torch.distributed.all_gather_object of a small description): the same block
and options on every rank, and, among ranks whose shard was not empty, the same positions,
shapes, dtype and pair widths; otherwise every rank raises the same BacklensError, before any
reduction could hang or mix dtypes. Moments are then reduced exactly
(`linear.distributed.all_reduce_moments`). The capped samples of raw rows are merged into one
uniform sample of the union: every rank's reservoir is a uniform sample of its own rows, so
drawing the cap uniformly from all rows seen and taking, from each rank, a uniform subset of
the size drawn for it is uniform again (the same draws on every rank: the reservoir's seed).

Sharding is the caller's: `shard_batches(loader)` (whole batches, strided: rank, rank + world,
...) or the user's own. torch's DistributedSampler is not used: it pads shards to equal length
by repeating samples, which would count them twice, and it regroups samples into new batches,
which changes a batch-mean loss's gradients; whole batches keep every pair as one process has it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ..errors import fail
from ..linear.distributed import agree, all_reduce_moments, gather_objects, world
from ..linear.moments import Moments

if TYPE_CHECKING:
    from .collect import Streams
    from .reservoir import Reservoir

__all__ = ["merge_ranks", "shard_batches", "is_main_rank", "summed_over_ranks"]


def is_main_rank() -> bool:
    """True in a single process, or on rank 0 of a process group: the rank that fits and writes."""
    placed = world()
    return placed is None or placed[0] == 0


def summed_over_ranks(values: list[float], distributed: bool | None) -> list[float]:
    """`values` summed over the ranks of an initialised process group (distributed=None: when
    there is one; False: as they are): per-rank totals and counts become the run's."""
    if distributed is False or world() is None:
        return values
    summed = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed.tolist()


def shard_batches(loader: DataLoader) -> DataLoader:
    """This rank's share of `loader`'s batches: batches rank, rank + world, ... of the same
    batches one process would see (the whole loader without a process group). Whole batches,
    so a batch-mean loss gives every gradient pair exactly as one process would; shards may
    differ by one batch; none is repeated or dropped."""
    placed = world()
    if placed is None:
        return loader
    rank, size = placed
    if loader.batch_sampler is None:
        raise fail(
            "loader",
            "a DataLoader with batches (batch_size set)",
            "batch_size=None",
            "shard the data yourself and pass each rank its own loader",
        )
    mine = list(loader.batch_sampler)[rank::size]
    return DataLoader(
        loader.dataset, batch_sampler=mine, collate_fn=loader.collate_fn, num_workers=loader.num_workers
    )


def _data_description(streams: Streams) -> dict[str, Any] | None:
    if streams.n_samples == 0:
        return None
    return {
        "positions": streams.positions,
        "block input shape": streams.shapes[0],
        "block output shape": streams.shapes[1],
        "dtype": streams.dtype,
        "pair widths": {d: (m.d_in, m.d_out) for d, m in sorted(streams.moments.items())},
    }


def merge_ranks(streams: Streams, label: str, settings: dict[str, Any]) -> None:
    """Merge every rank's streams in place (call on every rank, after its shard is streamed)."""
    agree("block", {"block": label, **settings})
    every = agree("loader", _data_description(streams))
    reference = next((d for d in every if d is not None), None)
    if reference is None:  # every shard empty: collect's own empty-loader error follows
        return
    if streams.n_samples == 0:  # an empty shard adopts the others' layout, with zero rows
        streams.positions = reference["positions"]
        streams.shapes = (reference["block input shape"], reference["block output shape"])
        streams.dtype = reference["dtype"]
        for direction, (d_in, d_out) in reference["pair widths"].items():
            streams.moments[direction] = Moments(d_in, d_out)
            if direction != "weighted":
                streams.widths[direction] = (d_in, d_out)
    for direction in sorted(reference["pair widths"]):
        streams.moments[direction] = all_reduce_moments(streams.moments[direction])
    _merge_reservoir(streams.inputs)
    for direction in streams.widths:
        _merge_reservoir(streams.samples[direction])
    if any(d is None for d in every):  # some rank saw no batch: it takes the first crossing seen
        streams.call = next(c for c in gather_objects(streams.call) if c is not None)
    streams.n_samples = sum(gather_objects(streams.n_samples))


def _merge_reservoir(reservoir: Reservoir) -> None:
    """Replace the rank's reservoir by one uniform sample (of at most cap rows) of all ranks' rows."""
    mine = torch.stack(reservoir.rows) if reservoir.rows else None
    parts = gather_objects((mine, reservoir.seen))
    seen = [s for _, s in parts]
    total = sum(seen)
    draws = torch.Generator().manual_seed(reservoir.seed)
    if total > reservoir.cap:
        owner = torch.repeat_interleave(torch.arange(len(seen)), torch.tensor(seen))
        chosen = owner[torch.randperm(total, generator=draws)[: reservoir.cap]]
        counts = torch.bincount(chosen, minlength=len(seen)).tolist()
    else:
        counts = seen
    rows: list[torch.Tensor] = []
    for (held, _), k in zip(parts, counts, strict=True):
        if held is not None and k:
            rows.extend(held[torch.randperm(len(held), generator=draws)[:k]] if k < len(held) else held)
    reservoir.rows, reservoir.seen = rows, total
