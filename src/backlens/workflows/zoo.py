"""The shipped model zoo: small real architectures that train offline in seconds on bundled data.

`ARCHITECTURES` is the one registry: each `Arch` has a builder, its data, a loss step, its natural
blocks (module paths) and the epochs that train it well. The models live in `zoo_models`, the
data in `zoo_data`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import check_choice, check_module, check_positive_int, describe, fail
from .zoo_data import (
    ZooData,
    accuracy,
    digits_flat,
    digits_images,
    loaders,
    token_task,
    torch_threads,
    wave_task,
)
from .zoo_models import build_cnn, build_gru, build_resmlp, build_transformer, build_zoo_mlp

__all__ = [
    "Arch",
    "ARCHITECTURES",
    "ARCH_NAMES",
    "ZooData",
    "build",
    "zoo_data",
    "train_arch",
    "cross_entropy_step",
    "loaders",
    "accuracy",
    "torch_threads",
]

Batch = tuple[torch.Tensor, torch.Tensor]


def cross_entropy_step(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The scalar training loss of one (x, y) batch: cross-entropy of the logits against y."""
    x, y = batch
    return F.cross_entropy(model(x), y)


@dataclass(frozen=True)
class Arch:
    """One zoo architecture: how to build it, its data, its loss step and its natural blocks."""

    name: str
    description: str
    build: Callable[..., nn.Module]  # build(seed=0) -> a float32 model, the same for a seed
    data: Callable[..., ZooData]  # data(seed=0) -> its train and test sets
    step: Callable[[nn.Module, Batch], torch.Tensor]  # step(model, (x, y)) -> scalar loss
    blocks: tuple[str, ...]  # module paths, in forward order
    default_epochs: int
    dataset: str  # the name of the ZooData that `data` makes
    lr: float = 3e-3  # Adam's rate; 3e-3 trains every zoo model in about half the epochs of 1e-3
    batch_size: int = 64
    metric: str = "accuracy"


ARCHITECTURES: dict[str, Arch] = {
    "mlp": Arch(
        "mlp",
        "64-64-64-10 ReLU MLP on digits (n, 64)",
        build_zoo_mlp,
        digits_flat,
        cross_entropy_step,
        ("0", "1", "2", "3", "4"),
        default_epochs=30,
        dataset="digits",
    ),
    "cnn": Arch(
        "cnn",
        "two conv-BN-ReLU stages and a max-pool on digits images (n, 1, 8, 8)",
        build_cnn,
        digits_images,
        cross_entropy_step,
        ("features.0", "features.1", "features.2"),
        default_epochs=10,
        dataset="digits-images",
    ),
    "resmlp": Arch(
        "resmlp",
        "pre-LayerNorm residual MLP (width 32, 3 blocks) on digits (n, 64)",
        build_resmlp,
        digits_flat,
        cross_entropy_step,
        ("layers.0", "layers.1", "layers.2"),
        default_epochs=20,
        dataset="digits",
    ),
    "transformer": Arch(
        "transformer",
        "2-layer transformer encoder (d 32, 4 heads) on the repeat-token task (n, 12) int64",
        build_transformer,
        token_task,
        cross_entropy_step,
        ("encoder.layers.0", "encoder.layers.1"),
        default_epochs=8,
        dataset="repeat-token",
    ),
    "gru": Arch(
        "gru",
        "GRU (hidden 32) on noisy sines (n, 24, 1), read out at the last step",
        build_gru,
        wave_task,
        cross_entropy_step,
        ("gru",),
        default_epochs=8,
        dataset="waves",
    ),
}
ARCH_NAMES = tuple(ARCHITECTURES)


def _arch(name: str) -> Arch:
    return ARCHITECTURES[check_choice("name", name, ARCH_NAMES)]


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise fail("seed", "an int", describe(seed), "pass e.g. seed=0")
    return seed


def build(name: str, seed: int = 0) -> nn.Module:
    """A fresh model of the architecture `name`, its weights fixed by `seed`."""
    return _arch(name).build(seed=_check_seed(seed))


def zoo_data(name: str, seed: int = 0) -> ZooData:
    """The train and test sets of the architecture `name`, drawn (or split) by `seed`."""
    return _arch(name).data(seed=_check_seed(seed))


def train_arch(
    name: str,
    model: nn.Module,
    data: ZooData,
    epochs: int | None = None,
    seed: int = 0,
    lr: float | None = None,
    num_threads: int | None = 1,
) -> list[float]:
    """Adam on the architecture's step; returns each epoch's mean training loss; leaves eval mode.

    `epochs` and `lr` default to the architecture's; `seed` fixes the batch order of every epoch;
    `num_threads` is torch's thread count while training (see zoo_data.torch_threads; None keeps
    the current one).
    """
    arch = _arch(name)
    check_module("model", model)
    _check_data_for(arch, data)
    epochs = arch.default_epochs if epochs is None else check_positive_int("epochs", epochs)
    optimizer = torch.optim.Adam(model.parameters(), lr=arch.lr if lr is None else _check_lr(lr))
    train_loader, _ = loaders(data, arch.batch_size, seed=_check_seed(seed))
    model.train()
    try:
        with torch_threads(num_threads):
            history = [_epoch(arch, model, train_loader, optimizer) for _ in range(epochs)]
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
    return history


def _check_data_for(arch: Arch, data: object) -> ZooData:
    """`data` if it is the ZooData the architecture trains on (a mismatch would fail deep in torch)."""
    fix = f"make it with zoo_data({arch.name!r}, seed)"
    if not isinstance(data, ZooData):
        raise fail("data", "a ZooData", describe(data), fix)
    if data.name != arch.dataset:
        raise fail("data", f"the {arch.dataset!r} data of {arch.name!r}", repr(data.name), fix)
    return data


def _check_lr(lr: object) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise fail("lr", "a positive finite learning rate", describe(lr), "pass e.g. lr=3e-3")
    return float(lr)


def _epoch(
    arch: Arch, model: nn.Module, train_loader: torch.utils.data.DataLoader, optimizer: torch.optim.Optimizer
) -> float:
    """One pass over the training set; the sample-weighted mean of the batch losses."""
    total, count = 0.0, 0
    for x, y in train_loader:
        optimizer.zero_grad(set_to_none=True)
        loss = arch.step(model, (x, y))
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(y)
        count += len(y)
    return total / count
