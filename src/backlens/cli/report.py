"""`backlens report DIR`: one self-contained report.html for a run directory."""

from __future__ import annotations

from pathlib import Path
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


# --report on demo, abstract, train and linearity: the flag, checked before the run, and the call after it.
REPORT_HELP = "Write report.html into --out at the end of the run (as `backlens report DIR`)"


def _refuse_report_without_out() -> None:
    from ..errors import fail

    raise fail("--report", "--out DIR beside it (the report goes there)", "no --out", "add --out DIR")


def check_report_flag(report: bool, out: str | Path | None) -> None:
    """Before any work: --report needs --out."""
    if report and out is None:
        run_or_exit(_refuse_report_without_out)


def report_at_end(report: bool, out: str | Path | None, overwrite: bool) -> None:
    """After the run: write out/report.html when --report was given (under torchrun, rank 0 alone
    has written the run)."""
    from ..blocks.ranks import is_main_rank

    if report and out is not None and is_main_rank():
        from ..report import write_report

        console.print(f"wrote {run_or_exit(write_report, out, overwrite=overwrite)}")
