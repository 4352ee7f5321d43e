"""PNG plots of results, written atomically, drawn with matplotlib's object-oriented API.

A `Figure` made directly renders to PNG through its own canvas: no pyplot and no backend are
needed, so importing backlens never switches matplotlib's backend (a notebook keeps its inline
plots) and no figure lands in pyplot's list of open figures.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..files import atomic_write

__all__ = ["plot_sample_size_sweep", "save_figure", "panels", "style_axes"]


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Save a figure as PNG atomically and close it."""
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    finally:
        # A figure a caller made with pyplot is closed, as before. pyplot is then imported
        # already, so it is looked up, not imported: importing it would pick a backend.
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close(fig)


def panels(count: int, width: float = 6, height: float = 4.2) -> tuple[Figure, list[Axes]]:
    """A figure with `count` side-by-side panels (at least one)."""
    count = max(1, count)
    fig = Figure(figsize=(width * count, height))
    axes = fig.subplots(1, count, squeeze=False)
    return fig, list(axes[0])


def style_axes(ax: Axes, xlabel: str, ylabel: str, title: str, xlog: bool = False) -> None:
    """Log y (x too with xlog), labels, title, a light grid and a small legend."""
    if xlog:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def plot_sample_size_sweep(sweeps: list[dict], path: str | os.PathLike[str]) -> Path:
    """Relative residual against fitting samples: one panel per data kind, train solid, held-out dashed."""
    fig, axes = panels(len(sweeps), height=4.5)
    for ax, sweep in zip(axes, sweeps, strict=True):
        methods = list(dict.fromkeys(p["method"] for p in sweep["points"]))
        for i, method in enumerate(methods):
            pts = [p for p in sweep["points"] if p["method"] == method]
            b = [p["b"] for p in pts]
            color = f"C{i}"
            ax.plot(
                b,
                [max(p["train_rel"], 1e-16) for p in pts],
                "-o",
                color=color,
                label=f"{method} (fit)",
            )
            ax.plot(b, [p["test_rel"] for p in pts], "--s", color=color, label=f"{method} (held-out)")
        ax.axvline(sweep["d_in"], color="grey", lw=0.8, ls=":")
        ax.annotate(
            "b = d_in",
            (sweep["d_in"], 0.98),
            xycoords=("data", "axes fraction"),
            color="grey",
            fontsize=8,
            va="top",
        )
        ax.set_xscale("log", base=2)
        style_axes(
            ax,
            "fitting samples b",
            "‖Gp − G·M‖ / ‖Gp‖",
            f"{sweep['kind']} data, d_in={sweep['d_in']}, hidden={sweep['hidden']}",
        )
    fig.suptitle("Can one matrix stand in for ((G·W) ⊙ R)·W2? Fit vs held-out residual")
    return save_figure(fig, path)
