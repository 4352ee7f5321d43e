"""Stream a block's boundary pairs over a DataLoader into Moments, with capped samples of raw rows.

Forward pairs: (activation entering the block, activation leaving it). Backward pairs:
(gradient at the block's output, gradient at its input), so grad_in ≈ grad_out·M. Rows are
flattened over leading dimensions, so (batch, sequence, features) works too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field

import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from ..byhand.losses import torch_loss
from ..errors import BacklensError, check_choice, check_module, fail
from ..linear.moments import Moments
from ..recording.tracing import trace
from .block import Block

__all__ = ["collect", "Collection", "Reservoir"]

DIRECTIONS = ("forward", "backward", "both")  # what collect gathers; "both" is the default


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
        for i in range(take, n):
            j = int(torch.randint(0, self.seen + i + 1, (1,), generator=self._generator))
            if j < self.cap:
                self.rows[j] = joined[i]
        self.seen += n

    def columns(self, widths: Iterable[int]) -> tuple[torch.Tensor, ...]:
        """The sample split back into its columns."""
        stacked = torch.stack(self.rows) if self.rows else torch.empty(0, sum(widths), dtype=torch.float64)
        return tuple(torch.split(stacked, list(widths), dim=1))


@dataclass
class Collection:
    """What `collect` gathered: Moments per direction, a sample of block inputs, samples of raw pairs."""

    block: Block
    forward: Moments | None
    backward: Moments | None
    inputs: torch.Tensor
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]
    n_samples: int


def _pair(columns: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = columns
    return x, y


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


@dataclass
class _Streams:
    """What one pass over the loader accumulates, direction by direction."""

    inputs: Reservoir
    samples: dict[str, Reservoir]
    moments: dict[str, Moments] = field(default_factory=dict)
    widths: dict[str, tuple[int, int]] = field(default_factory=dict)
    n_samples: int = 0

    def add(self, direction: str, X: torch.Tensor, Y: torch.Tensor) -> None:
        X, Y = _flat(X), _flat(Y)
        if direction not in self.moments:
            self.moments[direction] = Moments(X.shape[1], Y.shape[1])
            self.widths[direction] = (X.shape[1], Y.shape[1])
        self.moments[direction].update(X, Y)
        self.samples[direction].add(X, Y)


def _check_block(model: nn.Module, block: Block) -> None:
    check_module("model", model)
    if not isinstance(block, Block) or block.model is not model:
        raise fail(
            "block",
            "a backlens.Block of this model",
            type(block).__name__,
            "build it with Block(model, start, end)",
        )


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
) -> Collection:
    """Run `model` over `loader` and stream `block`'s boundary pairs into float64 Moments.

    For "backward" each batch's own loss is differentiated with respect to the input
    (torch.autograd.grad), so the gradients are those one training step would see, while the
    model's parameters and their .grad stay untouched. Memory is O(d²) whatever the data size.
    `loss` is a name from `byhand.losses.LOSSES` or a callable (output, y) -> scalar.
    """
    _check_block(model, block)
    check_choice("direction", direction, DIRECTIONS)
    loss_fn = torch_loss(loss) if isinstance(loss, str) else loss
    wanted = ["forward", "backward"] if direction == "both" else [direction]
    streams = _Streams(
        Reservoir(max_inputs, seed),
        {d: Reservoir(max_pairs, seed + 1 + i) for i, d in enumerate(DIRECTIONS[:2])},
    )
    total = len(loader) if isinstance(loader, Sized) else None
    # A bar only on a terminal: in logs and pipes it would leave blank lines.
    with Progress(transient=True, disable=not show_progress or not Console().is_terminal) as progress:
        task = progress.add_task(f"collecting {block.label}", total=total)
        for xb, yb in loader:
            a_in, a_out, g_out, g_in = _boundaries(model, block, xb, yb, loss_fn, "backward" in wanted)
            if "forward" in wanted:
                streams.add("forward", a_in, a_out)
            if g_out is not None and g_in is not None:
                streams.add("backward", g_out, g_in)
            streams.inputs.add(_flat(a_in))
            streams.n_samples += len(_flat(a_in))
            progress.advance(task)
    if streams.n_samples == 0:
        raise fail("loader", "at least one batch", "an empty loader", "pass data to collect from")
    return Collection(
        block,
        streams.moments.get("forward"),
        streams.moments.get("backward"),
        streams.inputs.columns([a_in.shape[-1]])[0],
        {d: _pair(streams.samples[d].columns(w)) for d, w in streams.widths.items()},
        streams.n_samples,
    )


def _boundaries(
    model: nn.Module,
    block: Block,
    xb: torch.Tensor,
    yb: torch.Tensor,
    loss_fn: Callable,
    backward: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    names = list(dict.fromkeys([block.start, block.end]))
    # The input must require grad so a block starting at the first layer still gets its grad_input.
    x = xb.detach().clone().requires_grad_(backward)
    with trace(model, select=names, store="device") as rec:
        if backward:
            value = loss_fn(model(x), yb)
            torch.autograd.grad(value, [x])
        else:
            with torch.no_grad():
                model(x)
    try:
        start, end = rec[block.start], rec[block.end]
        a_in, a_out = start.input, end.output
        g_out, g_in = (end.grad_output, start.grad_input) if backward else (None, None)
    except BacklensError as error:
        raise fail(
            "block",
            "modules called once per forward pass",
            str(error),
            "pick a block of single-call modules",
        ) from None
    if a_in is None or a_out is None or (backward and (g_out is None or g_in is None)):
        raise fail(
            "block",
            "tensor activations and gradients at both boundaries",
            f"None at {block.label}",
            "pick a block whose modules take and return tensors",
        )
    return a_in.detach(), a_out.detach(), g_out, g_in
