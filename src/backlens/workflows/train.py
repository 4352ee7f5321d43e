"""Train an MLP on a Dataset, split it, and measure its task metric (accuracy or MSE)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..byhand.losses import get_loss, torch_loss
from ..errors import check_positive_int, check_seed, fail
from .datasets import Dataset
from .loaders import tensor_loader

__all__ = ["Split", "split_dataset", "task_metric", "metric_name", "default_loss", "train_model", "loader"]


@dataclass(frozen=True)
class Split:
    """Train and test parts of one dataset."""

    train: Dataset
    test: Dataset


def split_dataset(data: Dataset, test_size: float = 0.3, seed: int = 0) -> Split:
    """A seeded random split; `test_size` is the fraction held out."""
    check_seed("seed", seed)
    if isinstance(test_size, bool) or not isinstance(test_size, float | int) or not 0 < test_size < 1:
        raise fail("test_size", "a fraction between 0 and 1", repr(test_size), "use e.g. 0.3")
    n = len(data.x)
    n_test = max(1, round(n * test_size))
    if n - n_test < 1:
        raise fail(
            "test_size",
            "a split leaving training samples",
            f"{n} samples, {n_test} held out",
            "use a smaller test_size",
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    part = lambda idx: Dataset(data.name, data.x[idx], data.y[idx], data.task, data.n_classes)  # noqa: E731
    return Split(part(order[n_test:]), part(order[:n_test]))


def loader(data: Dataset, batch_size: int = 32, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader of (x, y) batches."""
    return tensor_loader(data.x, data.y, batch_size, shuffle, seed)


def default_loss(data: Dataset) -> str:
    """'ce' for classification, 'mse' for regression."""
    return "ce" if data.task == "classification" else "mse"


@torch.no_grad()
def task_metric(model: nn.Module, data: Dataset, loss: str | None = None, batch_size: int = 1024) -> float:
    """The loss's task metric (`byhand.losses.LOSSES`: accuracy for ce/bce, MSE for mse) over the
    dataset, per sample; `loss` defaults to the dataset's default loss."""
    metric = get_loss(loss or default_loss(data)).metric
    total, count = 0.0, 0
    for xb, yb in loader(data, batch_size):
        total += metric(model(xb), yb) * len(xb)
        count += len(xb)
    return total / count


def metric_name(data: Dataset, loss: str | None = None) -> str:
    return get_loss(loss or default_loss(data)).metric_name


def train_model(
    model: nn.Module,
    data: Dataset,
    loss: str,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Adam on mini-batches; returns the mean training loss of each epoch."""
    check_positive_int("epochs", epochs)
    loss_fn = torch_loss(loss)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    model.train()
    for epoch in range(epochs):
        total = 0.0
        for xb, yb in loader(data, batch_size, shuffle=True, seed=seed + epoch):
            optimizer.zero_grad(set_to_none=True)
            value = loss_fn(model(xb), yb)
            value.backward()
            optimizer.step()
            total += value.item() * len(xb)
        history.append(total / len(data.x))
        if progress is not None:
            progress(epoch, history[-1])
    model.eval()
    model.zero_grad(set_to_none=True)
    return history
