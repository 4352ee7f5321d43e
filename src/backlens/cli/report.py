"""`backlens report DIR`: one self-contained report.html for a run directory."""

from __future__ import annotations

from typing import Annotated

import typer

from .main import app, console, run_or_exit


@app.command("report")
def report_command(
    run_dir: Annotated[
        str, typer.Argument(help="The --out directory of a demo, abstract, train or linearity run")
    ],
    overwrite: Annotated[bool, typer.Option(help="Replace a report.html written before")] = False,
) -> None:
    """Write DIR/report.html: options, versions, every table, every plot and the verdicts, offline."""
    from ..report import write_report

    path = run_or_exit(write_report, run_dir, overwrite=overwrite)
    console.print(f"wrote {path}")
