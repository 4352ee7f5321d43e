"""`backlens check`: hand-derived backprop against autograd on one batch of a bundled dataset."""

from __future__ import annotations

from typing import Annotated

import torch
import typer
from rich.console import Console

from ..byhand.check import Report, check
from ..byhand.losses import LOSS_NAMES
from ..errors import check_choice, check_positive_int, fail
from ..workflows.datasets import DATASET_NAMES, Dataset, load_dataset
from ..workflows.mlp import ACTIVATIONS, build_mlp, parse_widths
from .main import app, console, run_or_exit

__all__ = ["check_dataset", "batch_of", "target_for"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Hidden widths when --layers is not given: the notebook's 3-2-2-1 for its data, else one of 32.
DEFAULT_HIDDEN = {"seed": [2, 2]}
LOSS_HELP = "mse, ce or bce (default: ce on classes, else mse)"
LAYERS_HELP = "Widths, first = features, last = outputs (default features,32,outputs; seed 3,2,2,1)"


def target_for(data: Dataset, loss: str, y: torch.Tensor) -> torch.Tensor:
    """The targets a loss needs: labels for ce, one-hot rows for mse/bce on classes, else values."""
    if data.task == "classification":
        if loss == "ce":
            return y
        return torch.nn.functional.one_hot(y, data.n_outputs).to(data.x.dtype)
    if loss != "mse":
        raise fail(
            "--loss",
            f"mse for the regression set {data.name!r} (ce needs class labels, bce targets in [0, 1])",
            repr(loss),
            "use --loss mse",
        )
    return y


def batch_of(data: Dataset, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `batch_size` samples of a seeded shuffle."""
    check_positive_int("--batch-size", batch_size)
    n = len(data.x)
    if batch_size > n:
        raise fail(
            "--batch-size",
            f"at most {n}, the size of {data.name!r}",
            batch_size,
            f"use --batch-size {n}",
        )
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:batch_size]
    return data.x[rows], data.y[rows]


def check_dataset(
    data: str = "seed",
    layers: str | None = None,
    activation: str = "relu",
    loss: str | None = None,
    reduction: str = "mean",
    dtype: str = "float32",
    batch_size: int = 32,
    seed: int = 0,
    bias: bool = True,
    target: str | None = None,
    console: Console | None = None,
) -> Report:
    """Build a seeded MLP for a dataset, check hand backprop on one batch, print the table."""
    check_choice("--dtype", dtype, list(DTYPES))
    check_choice("--activation", activation, list(ACTIVATIONS))
    check_choice("--reduction", reduction, ["mean", "sum"])
    dataset = load_dataset(data, dtype=DTYPES[dtype], seed=seed, target=target)
    loss = loss or ("ce" if dataset.task == "classification" else "mse")
    check_choice("--loss", loss, list(LOSS_NAMES))
    widths = (
        parse_widths(layers)
        if layers
        else [dataset.n_features, *DEFAULT_HIDDEN.get(dataset.name, [32]), dataset.n_outputs]
    )
    dataset.check_widths(widths)
    x, y = batch_of(dataset, batch_size, seed)
    y = target_for(dataset, loss, y)
    model = build_mlp(widths, activation, bias=bias, seed=seed).to(DTYPES[dtype])
    report = check(model, x, y, loss=loss, reduction=reduction)
    if console is not None:
        note = " (one-hot targets)" if dataset.task == "classification" and loss != "ce" else ""
        console.print(
            f"data {dataset.name}: batch of {len(x)} (seed {seed}); model "
            f"{'-'.join(map(str, widths))} {activation}{'' if bias else ' no bias'}; "
            f"loss {loss}{note} ({reduction}); {dtype}"
        )
        console.print(report)
        bad = report.failures
        console.print(
            f"[green]all {len(report.rows)} quantities within tolerance"
            if not bad
            else f"[red]{len(bad)} of {len(report.rows)} quantities outside tolerance: "
            + ", ".join(f"{r.layer} {r.quantity}" for r in bad)
        )
    return report


@app.command("check")
def check_command(
    data: Annotated[str, typer.Option(help=f"{', '.join(DATASET_NAMES)}, or a FILE.csv")] = "seed",
    target: Annotated[str | None, typer.Option(help="CSV column to predict")] = None,
    layers: Annotated[str | None, typer.Option(help=LAYERS_HELP)] = None,
    activation: Annotated[str, typer.Option(help=", ".join(ACTIVATIONS))] = "relu",
    loss: Annotated[str | None, typer.Option(help=LOSS_HELP)] = None,
    reduction: Annotated[str, typer.Option(help="mean or sum")] = "mean",
    dtype: Annotated[str, typer.Option(help="float32 or float64")] = "float32",
    batch_size: Annotated[int, typer.Option(help="Samples in the checked batch")] = 32,
    seed: Annotated[int, typer.Option(help="Seed for the model's weights and the batch")] = 0,
    bias: Annotated[bool, typer.Option(help="Linear layers with bias")] = True,
) -> None:
    """Check hand backprop against autograd, the trace and torch.func; exit 1 on any mismatch."""
    report = run_or_exit(
        check_dataset,
        data=data,
        layers=layers,
        activation=activation,
        loss=loss,
        reduction=reduction,
        dtype=dtype,
        batch_size=batch_size,
        seed=seed,
        bias=bias,
        target=target,
        console=console,
    )
    if not report.ok:
        raise typer.Exit(1)
