"""A collect run that checkpoints every batch and streams slowly, for the kill -9 test:
`python checkpoint_run.py CHECKPOINT` (killed by the test mid-run)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from backlens.blocks.block import Block
from backlens.blocks.collect import Collection, collect
from backlens.workflows.mlp import build_mlp

BATCHES = 20


class SlowLoader:
    """The batches of `loader`, each after `delay` seconds (a dataset that takes hours to stream)."""

    def __init__(self, loader: DataLoader, delay: float) -> None:
        self.loader, self.delay = loader, delay

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            time.sleep(self.delay)
            yield batch


def problem() -> tuple[torch.nn.Module, DataLoader]:
    model = build_mlp([6, 9, 8, 3], "tanh", seed=2).double()
    g = torch.Generator().manual_seed(3)
    x, y = (
        torch.randn(10 * BATCHES, 6, generator=g).double(),
        torch.randn(10 * BATCHES, 3, generator=g).double(),
    )
    return model, DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=10)


def run(checkpoint: str | None, delay: float = 0.0, **options: Any) -> Collection:
    torch.set_num_threads(1)
    model, loader = problem()
    data = SlowLoader(loader, delay) if delay else loader
    block = Block(model, "1", "3")
    return collect(model, block, data, show_progress=False, checkpoint=checkpoint, max_pairs=64, **options)


if __name__ == "__main__":
    run(sys.argv[1], delay=0.25, every=1, probes=2, weighting="direction")
