"""`backlens linearity`: the linearity profile of a shipped architecture, block by block."""

from __future__ import annotations

from typing import Annotated

import typer

from ..workflows.zoo import ARCH_NAMES
from .main import app, console, run_or_exit
from .report import REPORT_HELP, check_report_flag, report_at_end


@app.command("linearity")
def linearity_command(
    arch: Annotated[
        str, typer.Option(help="A shipped architecture: " + ", ".join(ARCH_NAMES))
    ] = "transformer",
    epochs: Annotated[
        int | None, typer.Option(help="Training epochs (default: the architecture's own)")
    ] = None,
    blocks: Annotated[str, typer.Option(help="'all' (the architecture's blocks) or module paths")] = "all",
    seed: Annotated[int, typer.Option(help="Seed for data, model and training")] = 0,
    out: Annotated[str | None, typer.Option(help="Directory for results.json and linearity.png")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Allow an --out directory that holds an earlier run")
    ] = False,
    report: Annotated[bool, typer.Option(help=REPORT_HELP)] = False,
) -> None:
    """Train an architecture, then score each block's linearity (Razzhigaev et al. 2024), fit and held out."""
    from ..workflows.arch_run import ArchOptions, run_arch

    check_report_flag(report, out)
    options = ArchOptions(
        arch=arch,
        epochs=epochs,
        blocks=blocks,
        direction="forward",
        seed=seed,
        out=out,
        overwrite=overwrite,
        linearity_only=True,
    )
    run_or_exit(run_arch, options, console=console)
    report_at_end(report, out, overwrite)
