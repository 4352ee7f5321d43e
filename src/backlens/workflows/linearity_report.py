"""The linearity profile's table and its plot over depth (`backlens linearity`, `abstract --arch`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from .plots import panels, save_figure

__all__ = ["print_linearity", "plot_linearity"]

SERIES = (
    ("fit", "fitting data", "-o"),
    ("held_out", "held-out data", "-s"),
    ("fit_residual", "fitting, residual removed", "--o"),
    ("held_out_residual", "held-out, residual removed", "--s"),
)


def print_linearity(console: Console, run: dict[str, Any]) -> None:
    from .arch_run import linearity_table

    console.print(linearity_table(run))
    for block in run["blocks"]:
        if block.get("linearity_note"):
            console.print(f"  {block['block']}: no linearity score: {block['linearity_note']}")


def plot_linearity(run: dict[str, Any], path: Path) -> Path:
    """The four scores over the blocks, in order of depth."""
    fig, (ax,) = panels(1, width=7)
    labels = [b["block"] for b in run["blocks"]]
    for key, label, style in SERIES:
        values = [(b.get("linearity") or {}).get(key) for b in run["blocks"]]
        if any(v is not None for v in values):
            ax.plot(
                range(len(labels)), [float("nan") if v is None else v for v in values], style, label=label
            )
    ax.set_xticks(range(len(labels)), labels, rotation=20)
    ax.set_xlabel("block (depth)")
    ax.set_ylabel("linearity score 1 − ‖X̃A − Ỹ‖²")
    ax.set_title(f"linearity profile: {run.get('arch', 'model')}")
    ax.set_ylim(top=1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
