"""Hook glue: what crosses a block's two boundaries in a forward pass, and swapping what leaves it.

A forward pre-hook on the block's entry module sees the block's input (its first positional
argument; the other arguments are kept, for the block's function); a forward hook on its exit
module sees the output. With `alias_input`, the input is replaced by a fresh leaf that only
the block sees, so the gradient that reaches it is the block's own vector–Jacobian product,
whatever else (a skip connection) uses the original. Hooks live in this context and are
removed on exit, also on error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import describe, fail
from .block import Block

__all__ = ["Crossing", "Boundaries", "boundaries", "buffers_kept", "same_randomness"]

Swap = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (block input, block output) -> output


@dataclass
class Crossing:
    """One call of the block: its input, output, and the entry module's other arguments."""

    input: torch.Tensor
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    output: torch.Tensor | None = None


@dataclass
class Boundaries:
    """Every call of the block since the last `take()`."""

    block: Block
    calls: list[Crossing] = field(default_factory=list)

    def take(self) -> Crossing:
        """The one call of the last forward pass; raise if the block ran another number of times."""
        calls, self.calls = self.calls, []
        if len(calls) != 1 or calls[0].output is None:
            raise fail(
                "block",
                "a block that runs once per forward pass",
                f"block {self.block.label} ran {len(calls)} times" if len(calls) != 1 else "no output seen",
                "pick a block that the model calls once (a module reused in a loop is not one block)",
            )
        return calls[0]


def _output_tensor(block: Block, output: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """The block's output tensor, and how to put a replacement back into the module's output."""
    if isinstance(output, torch.Tensor):
        return output, lambda new: new
    if isinstance(output, (tuple, list)) and block.output is not None and block.output < len(output):
        index = block.output

        def rebuild(new: torch.Tensor) -> Any:
            items = list(output)
            items[index] = new
            return type(output)(items) if isinstance(output, list) else tuple(items)

        chosen = output[index]
        if isinstance(chosen, torch.Tensor):
            return chosen, rebuild
    raise fail(
        "output",
        "a block whose exit returns a tensor, or output=k for the k-th element of a tuple",
        f"{type(block.exit).__name__} returning {describe(output)} (output={block.output})",
        f"pass Block(model, {block.start!r}, output=0) for the first element",
    )


def _check_input(block: Block, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise fail(
            "block",
            "a block whose input is a floating-point tensor (activations, not token ids)",
            f"{block.label} entered with {describe(value)}",
            "start the block after the embedding",
        )
    return value


@dataclass
class _Hooks:
    """The hooks of one `boundaries` context (its options: see there)."""

    seen: Boundaries
    alias_input: bool
    swap: Swap | None
    copies: bool
    cut: bool
    depth: int = 0  # calls of the span's Sequential in progress

    def into(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.depth += 1

    def out_of(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.depth -= 1

    def _checked_input(self, args: tuple[Any, ...]) -> torch.Tensor:
        block = self.seen.block
        if not args:
            raise fail(
                "block", "a block whose entry takes its input positionally", block.label, "pick another block"
            )
        x = _check_input(block, args[0])
        if block.is_span and self.depth == 0:
            raise fail(
                "block",
                "a span that its Sequential runs (the model calls the Sequential, not its modules)",
                f"{block.label}: the model calls {block.start!r} itself, outside its Sequential",
                "use single modules as blocks, or the module whose forward does the calling",
            )
        return x

    def enter(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        x, calls = self._checked_input(args), self.seen.calls
        if self.swap is not None:  # swapping: only the call in progress is kept (a training run is long)
            calls[:] = [Crossing(x, args[1:], dict(kwargs))]
            return ((x.detach(), *args[1:]), kwargs) if self.cut else None
        if not self.copies:  # the real input, so gradients reach what lies below
            calls.append(Crossing(x, args[1:], dict(kwargs)))
            return None
        # Recorded: a copy the block cannot change (an in-place entry, ReLU(inplace=True), would
        # rewrite the input it was given); with alias_input, a leaf that only the block sees,
        # handed over as a copy so an in-place entry writes into that copy, not into the leaf.
        leaf = x.detach().clone().requires_grad_(self.alias_input)
        calls.append(Crossing(leaf, args[1:], dict(kwargs)))
        return ((leaf.clone(), *args[1:]), kwargs) if self.alias_input else None

    def leave(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        calls, block = self.seen.calls, self.seen.block
        if not calls or calls[-1].output is not None:
            raise fail(
                "block",
                "the block's exit run after its entry, once per call",
                block.label,
                "pick a block whose modules run in order",
            )
        tensor, rebuild = _output_tensor(block, output)
        crossing = calls[-1]
        crossing.output = tensor
        if self.swap is None:
            # The model goes on with a copy, so what is recorded (and differentiated) is the
            # block's output itself, whatever a later in-place op does to the copy.
            return rebuild(tensor.clone()) if self.copies else None
        crossing.output = self.swap(crossing.input, tensor)
        return rebuild(crossing.output)


@contextmanager
def boundaries(
    block: Block, alias_input: bool = False, swap: Swap | None = None, copies: bool = True, cut: bool = False
) -> Iterator[Boundaries]:
    """Within the body, every call of the block is recorded; `swap` replaces its output.

    copies=False records the very tensors the model passes (to follow gradients from them).
    cut=True (with swap) hands the block a detached input: the block's own backward reaches its
    parameters but not what lies below, which gets only what the swap sends."""
    hooks = _Hooks(Boundaries(block), alias_input, swap, copies, cut)
    handles = []
    if block.container is not None:
        handles += [
            block.container.register_forward_pre_hook(hooks.into),
            block.container.register_forward_hook(hooks.out_of),
        ]
    handles += [
        block.entry.register_forward_pre_hook(hooks.enter, with_kwargs=True),
        block.exit.register_forward_hook(hooks.leave),
    ]
    try:
        yield hooks.seen
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def buffers_kept(model: nn.Module) -> Iterator[None]:
    """Measuring must not change the model: its buffers (BatchNorm's running statistics, which a
    forward pass in training mode updates) are put back as they were on exit."""
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in saved:
                    b.copy_(saved[name])


@contextmanager
def same_randomness(seed: int = 0) -> Iterator[None]:
    """A private random stream from `seed`: passes run in it draw the same Dropout masks, and the
    caller's own random state is left as it was."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
