"""`backlens trace`: the record of one training step of an MLP on a bundled dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from torch import nn

from ..errors import check_choice, check_positive_int, check_seed, fail
from ..recording.record import Trace
from ..recording.tracing import trace
from ..workflows.datasets import load_dataset
from ..workflows.mlp import ACTIVATIONS, build_mlp, parse_widths
from ..workflows.run_dir import check_output_file
from .main import app, console, run_or_exit

__all__ = ["trace_step"]

DATA = ("seed", "digits")
DEFAULT_LAYERS = {"seed": "3,2,2,1", "digits": "64,32,10"}


def trace_step(
    data: str = "seed",
    layers: str | None = None,
    activation: str = "relu",
    batch_size: int = 4,
    seed: int = 0,
    save: str | Path | None = None,
    show: bool = False,
    console: Console | None = None,
    overwrite: bool = False,
) -> Trace:
    """Trace forward and backward of one SGD step on the first shuffled batch; print the record."""
    check_choice("--data", data, list(DATA))
    check_choice("--activation", activation, list(ACTIVATIONS))
    check_positive_int("--batch-size", batch_size)
    check_seed("--seed", seed)
    if save is not None:  # before any work: the record is written last
        check_output_file("--save", save, overwrite)
    dataset = load_dataset(data, seed=seed)
    widths = parse_widths(layers or DEFAULT_LAYERS[data])
    dataset.check_widths(widths)
    if batch_size > len(dataset.x):
        raise fail(
            "--batch-size",
            f"at most {len(dataset.x)}, the size of {data!r}",
            batch_size,
            f"use --batch-size {len(dataset.x)}",
        )
    rows = torch.randperm(len(dataset.x), generator=torch.Generator().manual_seed(seed))[:batch_size]
    x, y = dataset.x[rows], dataset.y[rows]
    model = build_mlp(widths, activation, seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.functional.cross_entropy if dataset.task == "classification" else nn.functional.mse_loss
    with trace(model) as rec:
        loss = loss_fn(model(x), y)
        loss.backward()
    optimizer.step()
    console = console or Console()
    console.print(
        f"{data}: one SGD step of a {'-'.join(map(str, widths))} {activation} MLP on a batch of "
        f"{batch_size}; {'cross-entropy' if dataset.task == 'classification' else 'MSE'} "
        f"loss {loss.item():.4f}"
    )
    console.print(rec)
    if show:
        for name in rec.names:
            rec.show(name, console=console)
    if save is not None:
        path = rec.save(save)
        console.print(f"record: {path} (read it back with backlens.load_record)")
    return rec


@app.command("trace")
def trace_command(
    data: Annotated[str, typer.Option(help="Dataset: seed (the notebook's) or digits (sklearn).")] = "seed",
    layers: Annotated[str | None, typer.Option(help="Widths, e.g. 3,2,2,1 (default per dataset).")] = None,
    activation: Annotated[str, typer.Option(help="Activation between the Linear layers.")] = "relu",
    batch_size: Annotated[int, typer.Option(help="Samples in the traced batch.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed for the model and the batch.")] = 0,
    save: Annotated[
        Path | None, typer.Option(help="Write every recorded tensor to this .safetensors file.")
    ] = None,
    show: Annotated[bool, typer.Option(help="Also print every recorded tensor in full.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --save file.")] = False,
) -> None:
    """Print the record of one training step: input, output, grad_input, grad_output per module."""
    run_or_exit(
        trace_step,
        data=data,
        layers=layers,
        activation=activation,
        batch_size=batch_size,
        seed=seed,
        save=save,
        show=show,
        console=console,
        overwrite=overwrite,
    )
