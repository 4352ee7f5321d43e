"""`backlens demo`: the seed notebook, section by section."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .main import app, console, run_or_exit


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Seed for data, model and experiments.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Directory for results.json and the PNG plot.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier run at --out, whole.")] = False,
) -> None:
    """Reproduce the seed notebook section by section (a-f)."""
    from ..workflows.demo import run_demo

    run_or_exit(run_demo, seed=seed, out=out, console=console, overwrite=overwrite)
