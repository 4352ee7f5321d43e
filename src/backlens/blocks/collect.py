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

from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from ..byhand.losses import torch_loss
from ..errors import check_choice, check_module, check_positive_int, check_seed, fail
from ..linear.moments import Moments
from .block import Block
from .boundary import Crossing, boundaries, buffers_kept
from .positions import POSITIONS, check_shared, default_positions, to_rows

__all__ = ["collect", "Collection", "Reservoir", "Step", "DIRECTIONS", "WEIGHTINGS", "PROBE_SEED_OFFSET"]

DIRECTIONS = ("forward", "backward", "both")  # what collect gathers; "both" is the default
WEIGHTINGS = ("direction",)  # weighting= for the backward pairs, besides None
PROBE_SEED_OFFSET = 7919  # the probes' generator is seeded with seed + this
Step = Callable[[nn.Module, Any], torch.Tensor]  # step(model, batch) -> loss: one batch, any model


@dataclass
class Reservoir:
    """A uniform random sample of at most `cap` rows of a stream (reservoir sampling, algorithm R)."""

    cap: int
    seed: int = 0
    seen: int = 0
    rows: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)

    def add(self, *columns: torch.Tensor) -> None:
        """Offer rows (the same row of every column goes in or out together)."""
        n = len(columns[0])
        joined = torch.cat([c.reshape(n, -1).detach().to("cpu", torch.float64) for c in columns], dim=1)
        take = min(n, max(0, self.cap - len(self.rows)))
        self.rows.extend(joined[:take])
        if take < n:  # row i replaces a uniform slot j in [0, seen + i] when j < cap
            later = torch.arange(take, n, dtype=torch.float64)
            draws = torch.rand(n - take, generator=self._generator, dtype=torch.float64)
            slots = (draws * (self.seen + later + 1)).floor().long()
            for i, j in zip(later.long().tolist(), slots.tolist(), strict=True):
                if j < self.cap:
                    self.rows[j] = joined[i]
        self.seen += n

    def columns(self, widths: Iterable[int]) -> tuple[torch.Tensor, ...]:
        """The sample split back into its columns."""
        stacked = torch.stack(self.rows) if self.rows else torch.empty(0, sum(widths), dtype=torch.float64)
        return tuple(torch.split(stacked, list(widths), dim=1))


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
class _Streams:
    """What one pass over the loader accumulates, direction by direction."""

    inputs: Reservoir
    samples: dict[str, Reservoir]
    positions: str | None
    moments: dict[str, Moments] = field(default_factory=dict)
    widths: dict[str, tuple[int, int]] = field(default_factory=dict)
    n_samples: int = 0
    shapes: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
    call: Crossing | None = None

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
    """
    wanted = _check_collect(model, block, direction, positions, probes, weighting)
    check_positive_int("max_inputs", max_inputs)
    check_positive_int("max_pairs", max_pairs)
    check_seed("seed", seed)
    run = step or _loss_step(loss)
    streams = _Streams(
        Reservoir(max_inputs, seed),
        {d: Reservoir(max_pairs, seed + 1 + i) for i, d in enumerate((*DIRECTIONS[:2], "probe"))},
        positions,
    )
    draws = torch.Generator().manual_seed(seed + PROBE_SEED_OFFSET)
    total = len(loader) if isinstance(loader, Sized) else None
    # A bar only on a terminal: in logs and pipes it would leave blank lines.
    with Progress(transient=True, disable=not show_progress or not Console().is_terminal) as progress:
        task = progress.add_task(f"collecting {block.label}", total=total)
        for batch in loader:
            crossing, grads, probed = _crossing(model, block, batch, run, "backward" in wanted, probes, draws)
            _stream_batch(streams, block, crossing, grads, probed, "forward" in wanted, weighting)
            progress.advance(task)
    return _collection(block, streams, probes)


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
    streams: _Streams,
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


def _collection(block: Block, streams: _Streams, probes: int) -> Collection:
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


Pairs = list[tuple[torch.Tensor, torch.Tensor]]


def _crossing(
    model: nn.Module,
    block: Block,
    batch: Any,
    run: Step,
    backward: bool,
    probes: int = 0,
    draws: torch.Generator | None = None,
) -> tuple[Crossing, tuple[torch.Tensor, torch.Tensor] | None, Pairs]:
    """One batch: what crossed the block, (grad at its input, grad at its output) if asked, and
    `probes` (v, v·J) pairs through the block's own VJP on the same recorded forward (taken first,
    keeping the graph, so the loss's backward still finds it).
    The model's buffers are put back only after the backward, which may still need them."""
    graph = backward or probes > 0
    with buffers_kept(model):
        with boundaries(block, alias_input=graph) as seen:
            if graph:
                with torch.enable_grad():
                    value = run(model, batch)
            else:
                with torch.no_grad():
                    run(model, batch)
        crossing = seen.take()
        probed = _probes(crossing, probes, draws) if probes > 0 else []
        if not backward:
            return crossing, None, probed
        return crossing, _gradients(block, crossing, value), probed


def _probes(crossing: Crossing, probes: int, draws: torch.Generator | None) -> Pairs:
    """`probes` pairs (v, v·J(x)): v ~ N(0, I) shaped like the block's output, drawn on the CPU
    from `draws` (the same numbers on any device), and v·J by torch.autograd.grad through the
    block alone (its input is the alias leaf)."""
    out, leaf = crossing.output, crossing.input
    assert out is not None
    pairs = []
    for _ in range(probes):
        v = torch.randn(out.shape, generator=draws, dtype=torch.float64).to(out.device, out.dtype)
        if not out.requires_grad:
            vJ = torch.zeros_like(leaf)
        else:
            (vJ,) = torch.autograd.grad(out, [leaf], grad_outputs=v, retain_graph=True, allow_unused=True)
            vJ = torch.zeros_like(leaf) if vJ is None else vJ
        pairs.append((v.detach(), vJ.detach()))
    return pairs


def _gradients(block: Block, crossing: Crossing, value: Any) -> tuple[torch.Tensor, torch.Tensor]:
    assert crossing.output is not None
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.requires_grad:
        raise fail(
            "step",
            "a scalar loss that depends on the model",
            type(value).__name__,
            "return the batch's loss from step",
        )
    g_in, g_out = torch.autograd.grad(value, [crossing.input, crossing.output], allow_unused=True)
    if g_out is None:
        raise fail(
            "block",
            "a block whose output reaches the loss",
            f"no gradient at {block.label}'s output",
            "pick a block on the path to the loss (or output=k for the element the model uses)",
        )
    g_in = torch.zeros_like(crossing.input) if g_in is None else g_in
    return g_in.detach(), g_out.detach()
