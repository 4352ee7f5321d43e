"""Train an MLP on a Dataset, split it, and measure its task metric (accuracy or MSE)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..errors import check_choice, check_positive_int, fail
from .datasets import Dataset

__all__ = ["Split", "split_dataset", "task_loss", "task_metric", "train_model", "loader"]

LOSSES = ("mse", "ce", "bce")


@dataclass(frozen=True)
class Split:
    """Train and test parts of one dataset."""

    train: Dataset
    test: Dataset


def split_dataset(data: Dataset, test_size: float = 0.3, seed: int = 0) -> Split:
    """A seeded random split; `test_size` is the fraction held out."""
    if not 0 < test_size < 1:
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
    check_positive_int("batch_size", batch_size)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(data.x, data.y), batch_size=batch_size, shuffle=shuffle, generator=generator
    )


def task_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The torch loss for 'mse', 'ce' (class indices) or 'bce' (with logits), mean-reduced."""
    check_choice("loss", name, LOSSES)
    if name == "mse":
        return lambda out, y: nn.functional.mse_loss(out, y.reshape(out.shape).to(out.dtype))
    if name == "ce":
        return nn.functional.cross_entropy
    return lambda out, y: nn.functional.binary_cross_entropy_with_logits(
        out, y.reshape(out.shape).to(out.dtype)
    )


def default_loss(data: Dataset) -> str:
    """'ce' for classification, 'mse' for regression."""
    return "ce" if data.task == "classification" else "mse"


@torch.no_grad()
def task_metric(model: nn.Module, data: Dataset, batch_size: int = 1024) -> float:
    """Accuracy for classification, mean squared error for regression."""
    total, count = 0.0, 0
    for xb, yb in loader(data, batch_size):
        out = model(xb)
        if data.task == "classification":
            total += float((out.argmax(dim=1) == yb).sum())
        else:
            total += float(((out - yb.reshape(out.shape)) ** 2).mean(dim=1).sum())
        count += len(xb)
    return total / count


def metric_name(data: Dataset) -> str:
    return "accuracy" if data.task == "classification" else "mse"


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
    loss_fn = task_loss(loss)
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
