"""`backlens demo`: the seed notebook, section by section."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .main import app, console, run_or_exit
from .report import REPORT_HELP, check_report_flag, report_at_end


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Seed for data, model and experiments.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Directory for results.json and the PNG plot.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier run at --out, whole.")] = False,
    report: Annotated[bool, typer.Option(help=REPORT_HELP)] = False,
) -> None:
    """Reproduce the seed notebook section by section (a-f)."""
    from ..workflows.demo import run_demo

    check_report_flag(report, out)
    run_or_exit(run_demo, seed=seed, out=out, console=console, overwrite=overwrite)
    report_at_end(report, out, overwrite=True)  # the run has just written the directory whole
