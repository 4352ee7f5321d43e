"""The one way workflows batch tensors: a seeded DataLoader over (x, y)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from ..errors import check_positive_int

__all__ = ["tensor_loader"]


def tensor_loader(
    x: torch.Tensor, y: torch.Tensor, batch_size: int = 32, shuffle: bool = False, seed: int = 0
) -> DataLoader:
    """Batches of (x, y) rows; with shuffle=True the order is fixed by `seed`."""
    check_positive_int("batch_size", batch_size)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=generator)
