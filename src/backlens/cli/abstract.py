"""`backlens abstract`: the command-line shell over backlens.abstract."""

from __future__ import annotations

from typing import Annotated

import typer

from ..blocks.collect import DIRECTIONS
from ..blocks.methods import METHOD_CHOICES
from ..byhand.losses import LOSS_NAMES
from ..workflows.abstract import ABSTRACT_METHODS
from ..workflows.mlp import ACTIVATIONS
from .main import app, console, run_or_exit


@app.command("abstract")
def abstract_command(
    data: Annotated[str, typer.Option(help="seed, digits, diabetes, or a FILE.csv")] = "digits",
    target: Annotated[str | None, typer.Option(help="CSV column to predict")] = None,
    layers: Annotated[str, typer.Option(help="Widths, first = features, last = outputs")] = "64,128,128,10",
    activation: Annotated[str, typer.Option(help=", ".join(ACTIVATIONS))] = "relu",
    loss: Annotated[
        str | None, typer.Option(help=f"{', '.join(LOSS_NAMES)} (default: ce for classes, else mse)")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs")] = 30,
    blocks: Annotated[
        str, typer.Option(help="'all' (each Linear→act→Linear) or start:end module names")
    ] = "all",
    direction: Annotated[str, typer.Option(help=", ".join(DIRECTIONS))] = "both",
    methods: Annotated[
        str, typer.Option(help="Comma-separated, from: " + ", ".join(METHOD_CHOICES))
    ] = ABSTRACT_METHODS,
    test_size: Annotated[float, typer.Option(help="Held-out fraction")] = 0.3,
    seed: Annotated[int, typer.Option(help="Seed of the first run")] = 0,
    out: Annotated[str | None, typer.Option(help="Directory for results.json, maps, model and plots")] = None,
    model: Annotated[
        str | None, typer.Option(help="A model.safetensors from an earlier run (skips training)")
    ] = None,
    repeat: Annotated[int, typer.Option(help="Runs with seeds seed..seed+K-1; mean ± std")] = 1,
    overwrite: Annotated[
        bool, typer.Option(help="Allow an --out directory that holds an earlier run")
    ] = False,
) -> None:
    """Train an MLP (or load one) and score linear stand-ins for its blocks, forward and backward."""
    from ..workflows.abstract import AbstractOptions, run_abstract  # its heavy imports: only when run

    options = AbstractOptions(
        data=data,
        target=target,
        layers=layers,
        activation=activation,
        loss=loss,
        epochs=epochs,
        blocks=blocks,
        direction=direction,
        methods=methods,
        test_size=test_size,
        seed=seed,
        out=out,
        model=model,
        repeat=repeat,
        overwrite=overwrite,
    )
    run_or_exit(run_abstract, options, console=console)
