"""The linearity profile of a model: for every block, how well one linear map carries its forward
pass (the score of "Your Transformer is Secretly Linear", on fitting and held-out data, with
and without the residual), computed exactly from the block's streamed Moments."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import BacklensError, check_module, fail
from ..linear.linearity import LinearityScore, linearity_score
from .block import Block
from .collect import Step, collect

__all__ = ["LinearityRow", "linearity"]


@dataclass(frozen=True)
class LinearityRow:
    """One block's linearity scores (None where not computed), or why it has none."""

    block: str
    depth: int
    positions: str
    score: LinearityScore | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        scores = self.score.as_dict() if self.score is not None else {}
        return {
            "block": self.block,
            "depth": self.depth,
            "positions": self.positions,
            "note": self.note,
            **scores,
        }


def _blocks(model: nn.Module, blocks: Sequence[Block | str] | str | None) -> list[Block]:
    if blocks is None:
        return Block.all(model)
    if isinstance(blocks, str):
        return Block.parse(model, blocks)
    return [b if isinstance(b, Block) else Block(model, b) for b in blocks]


def linearity(
    model: nn.Module,
    train_loader: Iterable,
    test_loader: Iterable | None = None,
    blocks: Sequence[Block | str] | str | None = None,
    step: Step | None = None,
    loss: str | Callable = "mse",
    positions: str | None = None,
    show_progress: bool = True,
) -> list[LinearityRow]:
    """The linearity score of each block (default: `Block.all(model)`), in order of depth.

    Forward pairs only: batches go through `step(model, batch)` or as (x, y) with `loss` (not
    differentiated). A block the score cannot be computed for gets a row with its reason.
    """
    check_module("model", model)
    chosen = _blocks(model, blocks)
    if not chosen:
        raise fail("blocks", "at least one block", "none", "pass module paths")
    options: dict[str, Any] = {"step": step, "positions": positions, "show_progress": show_progress}
    rows = []
    for depth, block in enumerate(chosen):
        train = collect(model, block, train_loader, "forward", loss, **options)
        test = (
            collect(model, block, test_loader, "forward", loss, **options)
            if test_loader is not None
            else None
        )
        assert train.forward is not None
        try:
            score = linearity_score(train.forward, test.forward if test is not None else None)
        except BacklensError as error:  # an undefined score (no variance): the row says why
            rows.append(LinearityRow(block.label, depth, train.positions, None, error.expected))
            continue
        rows.append(LinearityRow(block.label, depth, train.positions, score))
    return rows
