"""The notebook's seed regression set and its shuffled DataLoader, seeded."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..errors import check_positive_int, check_seed, fail, memory_for
from .loaders import tensor_loader

__all__ = ["seed_regression", "seed_loader", "seed_target"]


def seed_target(x: torch.Tensor) -> torch.Tensor:
    """y = (x0·(cos x1 + exp(x1/3)) + x2) / 10, the notebook's target, row by row."""
    return (x[:, 0] * (torch.cos(x[:, 1]) + torch.exp(x[:, 1] / 3)) + x[:, 2]) / 10


def seed_regression(
    n: int = 128, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """The notebook's data: x = randint(-10, 10, (n, 3)) as floats, y of shape (n,)."""
    check_positive_int("n", n)
    generator = torch.Generator().manual_seed(_check_seed(seed))
    with memory_for("n", "data"):
        x = torch.randint(-10, 10, (n, 3), generator=generator).to(dtype)
    return x, seed_target(x)


def _check_seed(seed: object) -> int:
    """`seed` if it is an int seed in range, else raise."""
    return check_seed("seed", seed)


def seed_loader(
    x: torch.Tensor, y: torch.Tensor, batch_size: int = 4, seed: int = 0, shuffle: bool = True
) -> DataLoader:
    """A DataLoader over (x, y) in shuffled batches, the shuffle order fixed by `seed`."""
    check_positive_int("batch_size", batch_size)
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or len(x) != len(y):
        raise fail(
            "x, y",
            "two tensors with the same number of rows",
            f"{type(x).__name__} and {type(y).__name__}"
            + (
                f" with {len(x)} and {len(y)} rows" if hasattr(x, "__len__") and hasattr(y, "__len__") else ""
            ),
            "pass the features and targets of the same samples",
        )
    return tensor_loader(x, y, batch_size, shuffle, _check_seed(seed))
