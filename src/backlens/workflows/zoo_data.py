"""The zoo's bundled data: digits (flat and as images) and two synthetic sequence tasks.

Everything is made offline and deterministically from a seed, with private generators, so the
global RNG is left untouched. Shapes: flat digits x (n, 64), digit images (n, 1, 8, 8), token
ids (n, T) int64, waves (n, T, 1) float32; labels y (n,) int64.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..errors import check_module, check_positive_int, describe, fail
from .datasets import load_dataset
from .train import split_dataset

__all__ = [
    "ZooData",
    "digits_flat",
    "digits_images",
    "token_task",
    "wave_task",
    "loaders",
    "accuracy",
    "torch_threads",
    "TOKEN_VOCAB",
    "TOKEN_LENGTH",
    "TOKEN_CLASSES",
    "WAVE_LENGTH",
    "WAVE_FEATURES",
    "WAVE_CLASSES",
]

DIGITS_TEST_FRACTION = 0.3
# The token task: does token 0's id come again later? With 16 ids over 11 later places the
# answer is yes with probability 1 − (15/16)^11 ≈ 0.51, so the classes are balanced.
TOKEN_VOCAB, TOKEN_LENGTH, TOKEN_CLASSES = 16, 12, 2
TOKEN_TRAIN, TOKEN_TEST = 4000, 1000
# The wave task: which of WAVE_CLASSES frequencies (1, 2, 3 … cycles per sequence) a noisy sine
# with random amplitude and phase has.
WAVE_LENGTH, WAVE_FEATURES, WAVE_CLASSES = 24, 1, 3
WAVE_TRAIN, WAVE_TEST = 3000, 1000
WAVE_NOISE = 0.3


@dataclass(frozen=True)
class ZooData:
    """Train and test sets of (x, y) for one zoo task, and what the task is."""

    name: str
    train: TensorDataset
    test: TensorDataset
    task: str  # always "classification" in the zoo
    n_classes: int
    input_shape: tuple[int, ...]  # one sample's x shape, without the batch dimension
    input_dtype: torch.dtype


def _zoo_data(
    name: str,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    n_classes: int,
) -> ZooData:
    x_train = train[0]
    return ZooData(
        name,
        TensorDataset(*train),
        TensorDataset(*test),
        "classification",
        n_classes,
        tuple(x_train.shape[1:]),
        x_train.dtype,
    )


def _digits_split(seed: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Digits x in [0, 1] (pixels / 16), split 70/30 by `seed`."""
    split = split_dataset(load_dataset("digits"), DIGITS_TEST_FRACTION, seed=seed)
    return (split.train.x, split.train.y), (split.test.x, split.test.y)


def digits_flat(seed: int = 0) -> ZooData:
    """scikit-learn's digits as rows (n, 64) in [0, 1]; 1258 train, 539 test."""
    train, test = _digits_split(seed)
    return _zoo_data("digits", train, test, 10)


def digits_images(seed: int = 0) -> ZooData:
    """The same split as digits_flat, each row an 8×8 one-channel image (n, 1, 8, 8)."""
    (x_train, y_train), (x_test, y_test) = _digits_split(seed)
    as_image = lambda x: x.reshape(-1, 1, 8, 8)  # noqa: E731 - load_digits rows are row-major 8×8
    return _zoo_data("digits-images", (as_image(x_train), y_train), (as_image(x_test), y_test), 10)


def _repeat_tokens(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n uniform token sequences (n, T) and whether token 0's id appears again (n,)."""
    tokens = torch.randint(TOKEN_VOCAB, (n, TOKEN_LENGTH), generator=generator)
    again = (tokens[:, 1:] == tokens[:, :1]).any(dim=1)
    return tokens, again.long()


def token_task(seed: int = 0) -> ZooData:
    """Token ids (n, 12) in [0, 16); label 1 when token 0's id comes again later, else 0.

    Answering needs attention: position 0 must compare its own id with every other position's.
    """
    generator = torch.Generator().manual_seed(seed)
    train = _repeat_tokens(TOKEN_TRAIN, generator)
    test = _repeat_tokens(TOKEN_TEST, generator)
    return _zoo_data("repeat-token", train, test, TOKEN_CLASSES)


def _waves(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n noisy sines (n, T, 1) and their frequency class (n,): class k has k + 1 cycles."""
    label = torch.randint(WAVE_CLASSES, (n,), generator=generator)
    amplitude = 0.5 + torch.rand(n, 1, generator=generator)  # in [0.5, 1.5)
    phase = 2 * math.pi * torch.rand(n, 1, generator=generator)
    steps = torch.arange(WAVE_LENGTH, dtype=torch.float32) / WAVE_LENGTH
    cycles = (label + 1).float().unsqueeze(1)
    clean = amplitude * torch.sin(2 * math.pi * cycles * steps + phase)
    noisy = clean + WAVE_NOISE * torch.randn(n, WAVE_LENGTH, generator=generator)
    return noisy.unsqueeze(2), label


def wave_task(seed: int = 0) -> ZooData:
    """Noisy sines (n, 24, 1) with random amplitude and phase; label: 1, 2 or 3 cycles (0, 1, 2)."""
    generator = torch.Generator().manual_seed(seed)
    train = _waves(WAVE_TRAIN, generator)
    test = _waves(WAVE_TEST, generator)
    return _zoo_data("waves", train, test, WAVE_CLASSES)


def _check_data(data: object) -> ZooData:
    if not isinstance(data, ZooData):
        raise fail("data", "a ZooData", describe(data), "make it with zoo_data(name, seed)")
    return data


def loaders(data: ZooData, batch_size: int = 64, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """(train loader, shuffled in an order fixed by `seed`; test loader, in order)."""
    _check_data(data)
    check_positive_int("batch_size", batch_size)
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(data.train, batch_size=batch_size, shuffle=True, generator=generator)
    return train, DataLoader(data.test, batch_size=batch_size, shuffle=False)


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with torch's intra-op thread count set to `num_threads` (None: unchanged).

    The zoo's matrices are tiny (≤ 64 wide), so more threads gain nothing, and when other
    processes share the cores torch's waiting threads slow a step down 10–300× (measured on
    this 2-core machine). The count is restored afterwards.
    """
    if num_threads is None:
        yield
        return
    check_positive_int("num_threads", num_threads)
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, num_threads: int | None = 1) -> float:
    """The fraction of samples whose largest logit is the label, in eval mode.

    Eval mode keeps BatchNorm from updating its running statistics on test data; the model's
    mode is restored afterwards. `num_threads`: see torch_threads.
    """
    check_module("model", model)
    was_training = model.training
    model.eval()
    try:
        with torch_threads(num_threads):
            correct, count = _count_correct(model, loader)
    finally:
        model.train(was_training)
    if count == 0:
        raise fail("loader", "at least one sample", "an empty loader", "pass a loader over data")
    return correct / count


def _count_correct(model: nn.Module, loader: DataLoader) -> tuple[int, int]:
    """(samples whose largest logit is the label, samples) over the loader."""
    correct, count = 0, 0
    for x, y in loader:
        correct += int((model(x).argmax(dim=1) == y).sum())
        count += len(y)
    return correct, count
