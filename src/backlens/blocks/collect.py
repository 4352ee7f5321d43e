"""Stream a block's boundary pairs over a loader into Moments, with capped samples of raw rows.

Forward pairs: (activation entering the block, activation leaving it). Backward pairs:
(gradient at the block's output, gradient at its input through the block alone), so
grad_in ≈ grad_out·M. Probe pairs (`probes=K`): K seeded isotropic Gaussian cotangents v per
input at the block's output and v·J(x) through the block's own vector–Jacobian product, on the
recorded forward; a map fitted on them estimates E[J], whatever the loss's gradients look like.
Direction-weighted pairs (`weighting="direction"`): the backward pairs each scaled by
1/‖grad_out‖ (rows with a zero grad_out dropped), so every row counts once, not by its energy.
Activations become rows as `positions` says (`blocks.positions`):
one row per token or pixel ("shared"), or one per sample ("flat").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from ..byhand.losses import torch_loss
from ..errors import check_choice, check_module, check_positive_int, check_seed, fail
from ..linear.distributed import world
from ..linear.moments import Moments
from .batch_pass import Step, crossing_of
from .block import Block
from .boundary import Crossing
from .checkpoint import Checkpointer, checkpoint_path, model_fingerprint
from .positions import POSITIONS, check_shared, default_positions, to_rows
from .ranks import merge_ranks
from .reservoir import Reservoir

__all__ = ["collect", "Collection", "Reservoir", "Step", "DIRECTIONS", "WEIGHTINGS", "PROBE_SEED_OFFSET"]

DIRECTIONS = ("forward", "backward", "both")  # what collect gathers; "both" is the default
WEIGHTINGS = ("direction",)  # weighting= for the backward pairs, besides None
PROBE_SEED_OFFSET = 7919  # the probes' generator is seeded with seed + this


@dataclass
class Collection:
    """What `collect` gathered: Moments per direction, samples of block inputs, samples of raw pairs.

    `inputs` are whole samples as the block receives them, (k, *input_shape), for the analytic
    maps; `pairs` are rows; `positions` says how activations became rows; `call` is the entry
    module's other arguments in the first batch (for the block's function).
    """

    block: Block
    forward: Moments | None
    backward: Moments | None
    inputs: torch.Tensor
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]
    n_samples: int
    positions: str = "shared"
    input_shape: tuple[int, ...] = ()
    output_shape: tuple[int, ...] = ()
    call: Crossing | None = None
    cache: dict[str, Any] = field(
        default_factory=dict, repr=False, compare=False
    )  # fits shared by directions
    probe: Moments | None = None  # (v, v·J) pairs of `probes` cotangents per input, as backward
    weighted: Moments | None = None  # backward pairs scaled by 1/‖grad_out‖ (weighting="direction")
    probes: int = 0

    @property
    def in_width(self) -> int:
        """Features per row of the block's input."""
        return int(self.forward.d_in if self.forward is not None else self.backward.d_out)  # type: ignore[union-attr]

    @property
    def out_width(self) -> int:
        return int(self.forward.d_out if self.forward is not None else self.backward.d_in)  # type: ignore[union-attr]


def _pair(columns: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = columns
    return x, y


@dataclass
class Streams:
    """What one pass over the loader accumulates, direction by direction."""

    inputs: Reservoir
    samples: dict[str, Reservoir]
    positions: str | None
    moments: dict[str, Moments] = field(default_factory=dict)
    widths: dict[str, tuple[int, int]] = field(default_factory=dict)
    n_samples: int = 0
    shapes: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
    call: Crossing | None = None
    dtype: str = ""  # of the block's input, as the first batch brought it

    def add(self, direction: str, X: torch.Tensor, Y: torch.Tensor) -> None:
        assert self.positions is not None
        X, Y = to_rows(X, self.positions), to_rows(Y, self.positions)
        if direction not in self.moments:
            self.moments[direction] = Moments(X.shape[1], Y.shape[1])
            self.widths[direction] = (X.shape[1], Y.shape[1])
        self.moments[direction].update(X, Y)
        self.samples[direction].add(X, Y)

    def add_weighted(self, g_out: torch.Tensor, g_in: torch.Tensor) -> None:
        """Backward pairs scaled by 1/‖g_out‖ row by row; rows with g_out = 0 carry nothing."""
        assert self.positions is not None
        X, Y = to_rows(g_out, self.positions), to_rows(g_in, self.positions)
        norms = torch.linalg.vector_norm(X.double(), dim=1)
        keep = norms > 0
        scale = (1.0 / norms[keep])[:, None]
        X, Y = X[keep].double() * scale, Y[keep].double() * scale
        if "weighted" not in self.moments:
            self.moments["weighted"] = Moments(X.shape[1], Y.shape[1])
        self.moments["weighted"].update(X, Y)

    def first(self, block: Block, crossing: Crossing, a_in: torch.Tensor, a_out: torch.Tensor) -> None:
        """Settle positions and shapes on the first batch."""
        if self.positions is None:
            self.positions = default_positions(a_in, a_out)
        elif self.positions == "shared":
            check_shared(a_in, a_out, block.label)
        self.shapes = (tuple(a_in.shape[1:]), tuple(a_out.shape[1:]))
        self.dtype = str(a_in.dtype)
        self.call = crossing


def _check_block(model: nn.Module, block: Block) -> None:
    check_module("model", model)
    if not isinstance(block, Block) or block.model is not model:
        raise fail(
            "block",
            "a backlens.Block of this model",
            type(block).__name__,
            "build it with Block(model, path) or Block(model, start, end)",
        )


def _loss_step(loss: str | Callable) -> Step:
    """step for (x, y) batches: the named loss (or a callable (output, y) -> loss) on model(x)."""
    loss_fn = torch_loss(loss) if isinstance(loss, str) else loss

    def step(model: nn.Module, batch: Any) -> torch.Tensor:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise fail(
                "loader",
                "(x, y) batches, or pass step=",
                type(batch).__name__,
                "pass step=lambda model, batch: loss for other batches",
            )
        x, y = batch
        return loss_fn(model(x), y)

    return step


def collect(
    model: nn.Module,
    block: Block,
    loader: Iterable,
    direction: str = "both",
    loss: str | Callable = "mse",
    max_inputs: int = 2048,
    max_pairs: int = 2048,
    seed: int = 0,
    show_progress: bool = True,
    step: Step | None = None,
    positions: str | None = None,
    probes: int = 0,
    weighting: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    every: int = 1,
    distributed: bool | None = None,
) -> Collection:
    """Run `model` over `loader` and stream `block`'s boundary pairs into float64 Moments.

    Each batch runs through `step(model, batch) -> loss` (any batch: dicts, token ids, masks),
    or, without it, batches are (x, y) and `loss` names the loss (`byhand.losses.LOSSES`) or is a
    callable (output, y) -> loss. For "backward" that loss is differentiated with
    torch.autograd.grad, so the gradients are those one training step would see, while the
    model's parameters and their .grad stay untouched. `positions`: "shared" or "flat"
    (default: shared when the block keeps its positions; `Collection.positions` says which).
    `probes=K` also streams K probe pairs per input into `Collection.probe`: v ~ N(0, I) at the
    block's output (a generator seeded with seed + PROBE_SEED_OFFSET) and v·J(x) through the
    block's real vector–Jacobian product, taken on the recorded forward before the loss's
    backward. `weighting="direction"` also streams the backward pairs scaled by 1/‖grad_out‖
    into `Collection.weighted`. Memory is O(features²) whatever the data size.

    `checkpoint=PATH`: every `every` batches (and at the end) the state is written atomically
    to PATH; when PATH exists, collect resumes from it (refusing, naming what changed, when it
    belongs to another model, data or options); deleting it is the caller's. Under an
    initialised torch.distributed process group (`distributed=None`: detected; False: this
    process alone), each rank streams its own shard of the data (`blocks.ranks.shard`, or the
    caller's own sharding) and the ranks' results are merged exactly on every rank; each rank
    then checkpoints to its own file, PATH with `.rank<r>-of-<world>` before the suffix.
    """
    wanted = _check_collect(model, block, direction, positions, probes, weighting)
    check_positive_int("max_inputs", max_inputs)
    check_positive_int("max_pairs", max_pairs)
    check_seed("seed", seed)
    placed = world() if distributed is not False else None
    settings = {
        **{k: v if v is None or isinstance(v, str) else getattr(v, "__qualname__", "") for k, v in
           {"loss": loss, "step": step}.items()},
        "direction": direction, "max_inputs": max_inputs, "max_pairs": max_pairs, "seed": seed,
        "positions": positions, "probes": probes, "weighting": weighting,
    }  # fmt: skip
    keeper = _keeper(model, block, checkpoint, every, settings, placed)
    streams = Streams(
        Reservoir(max_inputs, seed),
        {d: Reservoir(max_pairs, seed + 1 + i) for i, d in enumerate((*DIRECTIONS[:2], "probe"))},
        positions,
    )
    draws = torch.Generator().manual_seed(seed + PROBE_SEED_OFFSET)
    done = keeper.resume(streams, draws) if keeper is not None else 0
    # A bar only on a terminal (in logs and pipes it would leave blank lines), and on one rank.
    quiet = not show_progress or not Console().is_terminal or (placed is not None and placed[0] != 0)
    run = step or _loss_step(loss)
    with Progress(transient=True, disable=quiet) as progress:
        task = progress.add_task(
            f"collecting {block.label}", total=len(loader) if isinstance(loader, Sized) else None
        )
        for index, batch in enumerate(loader):
            _one_batch(
                model, block, batch, run, streams, keeper, (index, done), (wanted, probes, weighting), draws
            )
            progress.advance(task)
    if keeper is not None and keeper.batches < done:
        keeper.check_data()  # the loader ended inside the checkpointed part: refused
    if keeper is not None:
        keeper.save(streams, draws)  # the finished state: a rerun streams nothing again
    if placed is not None:
        merge_ranks(streams, block.label, settings)
    return _collection(block, streams, probes)


def _one_batch(
    model: nn.Module,
    block: Block,
    batch: Any,
    run: Step,
    streams: Streams,
    keeper: Checkpointer | None,
    at: tuple[int, int],
    options: tuple[list[str], int, str | None],
    draws: torch.Generator,
) -> None:
    """Stream one batch's pairs (at = (its index, batches the checkpoint covers): a covered
    batch is re-read, not recomputed), and checkpoint when due."""
    (index, done), (wanted, probes, weighting) = at, options
    if keeper is not None:
        keeper.see(batch)
    if index < done:
        _skipped(model, block, batch, run, streams, keeper, index, done)
        return
    crossing, grads, probed = crossing_of(model, block, batch, run, "backward" in wanted, probes, draws)
    _stream_batch(streams, block, crossing, grads, probed, "forward" in wanted, weighting)
    if keeper is not None and keeper.due():
        keeper.save(streams, draws)


def _keeper(
    model: nn.Module,
    block: Block,
    checkpoint: str | os.PathLike[str] | None,
    every: int,
    settings: dict[str, Any],
    placed: tuple[int, int] | None,
) -> Checkpointer | None:
    """The checkpoint's keeper, fingerprinting model, options and process layout (or None)."""
    if checkpoint is None:
        return None
    check_positive_int("every", every)
    layout = {"block": block.label, "ranks": None if placed is None else list(placed)}
    fingerprint = {**model_fingerprint(model), "options": {**settings, **layout}}
    return Checkpointer(checkpoint_path(checkpoint, placed), every, fingerprint)


def _skipped(
    model: nn.Module,
    block: Block,
    batch: Any,
    run: Step,
    streams: Streams,
    keeper: Checkpointer | None,
    index: int,
    done: int,
) -> None:
    """A batch the checkpoint covers: the first one's crossing is kept (the block's call); after
    the last, the data read again must hash as it did."""
    if index == 0:
        streams.call = crossing_of(model, block, batch, run, False)[0]
    if index == done - 1 and keeper is not None:
        keeper.check_data()


def _check_collect(
    model: nn.Module, block: Block, direction: str, positions: str | None, probes: int, weighting: str | None
) -> list[str]:
    """collect's arguments checked before any work; the directions it gathers."""
    _check_block(model, block)
    check_choice("direction", direction, DIRECTIONS)
    if positions is not None:
        check_choice("positions", positions, POSITIONS)
    if probes != 0:
        check_positive_int("probes", probes)
    if weighting is not None:
        check_choice("weighting", weighting, WEIGHTINGS)
    wanted = ["forward", "backward"] if direction == "both" else [direction]
    if weighting is not None and "backward" not in wanted:
        raise fail(
            "weighting",
            "None unless backward pairs are collected",
            f"weighting={weighting!r} with direction={direction!r}",
            "collect with direction='backward' or 'both'",
        )
    return wanted


def _stream_batch(
    streams: Streams,
    block: Block,
    crossing: Crossing,
    grads: Any,
    probed: Any,
    forward: bool,
    weighting: str | None,
) -> None:
    """One batch's pairs into the streams."""
    a_in, a_out = crossing.input.detach(), crossing.output.detach()  # type: ignore[union-attr]
    if streams.call is None:
        streams.first(block, crossing, a_in, a_out)
    if forward:
        streams.add("forward", a_in, a_out)
    if grads is not None:
        streams.add("backward", grads[1], grads[0])
        if weighting is not None:
            streams.add_weighted(grads[1], grads[0])
    for v, vJ in probed:
        streams.add("probe", v, vJ)
    streams.inputs.add(a_in)
    streams.n_samples += len(a_in)


def _collection(block: Block, streams: Streams, probes: int) -> Collection:
    if streams.n_samples == 0:
        raise fail("loader", "at least one batch", "an empty loader", "pass data to collect from")
    assert streams.positions is not None
    inputs = streams.inputs.columns([int(torch.tensor(streams.shapes[0]).prod())])[0]
    return Collection(
        block,
        streams.moments.get("forward"),
        streams.moments.get("backward"),
        inputs.reshape(-1, *streams.shapes[0]),
        {d: _pair(streams.samples[d].columns(w)) for d, w in streams.widths.items()},
        streams.n_samples,
        streams.positions,
        *streams.shapes,
        streams.call,
        probe=streams.moments.get("probe"),
        weighted=streams.moments.get("weighted"),
        probes=probes,
    )
