"""The summary over seeds, the table, results.json and PNG plots of `backlens train`: learning
curves per method and, with shadow mode, each layer's alignment angle to true backprop over training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator
from rich.console import Console
from rich.table import Table

from ..files import write_json
from .plots import panels, save_figure, style_axes
from .run_dir import final_path

__all__ = [
    "summarize",
    "print_summary",
    "write_outputs",
    "plot_learning_curves",
    "plot_alignment",
    "mean_std",
]


def _stat(values: list[float | None]) -> tuple[float | None, float | None]:
    kept = [v for v in values if v is not None]
    return (float(np.mean(kept)), float(np.std(kept))) if kept else (None, None)


def summarize(runs: list[dict[str, Any]], methods: list[str], metric: str) -> list[dict[str, Any]]:
    """Per method: mean and std over seeds of the final train and test metric and of steps/s."""
    rows = []
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        row: dict[str, Any] = {"method": method, "metric": metric, "seeds": len(mine)}
        for key in ("train_metric", "test_metric"):
            row[f"{key}_mean"], row[f"{key}_std"] = _stat([r["final"][key] for r in mine])
        if metric == "accuracy" and row["test_metric_mean"] is not None:
            row["test_error_mean"] = 1 - row["test_metric_mean"]
            row["test_error_std"] = row["test_metric_std"]
        row["steps_per_s_mean"], row["steps_per_s_std"] = _stat([r["steps_per_s"] for r in mine])
        row["stopped"] = [{"seed": r["seed"], **r["stopped"]} for r in mine if r["stopped"] is not None]
        rows.append(row)
    return rows


def _pm(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def print_summary(console: Console, results: dict[str, Any]) -> None:
    """One row per method: final train and test metric and steps/s, mean ± std over seeds."""
    metric = results["metric"]
    seeds = results["options"]["seeds"]
    table = Table(
        title=f"backward methods — {results['options']['data']}, {results['options']['arch']}, "
        f"{results['options']['epochs']} epochs, {seeds} seed(s), {results['optimizer']}"
    )
    table.add_column("method")
    table.add_column(f"train {metric}", justify="right")
    table.add_column(f"test {metric}", justify="right")
    if metric == "accuracy":
        table.add_column("test error %", justify="right")
    table.add_column("steps/s", justify="right")
    table.add_column("stopped", justify="left")
    for row in results["summary"]:
        cells = [
            row["method"],
            _pm(row["train_metric_mean"], row["train_metric_std"]),
            _pm(row["test_metric_mean"], row["test_metric_std"]),
        ]
        if metric == "accuracy":
            err = row.get("test_error_mean")
            cells.append(
                _pm(
                    None if err is None else 100 * err,
                    None if err is None else 100 * row["test_error_std"],
                    2,
                )
            )
        cells.append(_pm(row["steps_per_s_mean"], row["steps_per_s_std"], 1))
        cells.append(
            ", ".join(f"seed {s['seed']} at step {s['step']} (loss {s['loss']})" for s in row["stopped"])
            or "—"
        )
        table.add_row(*cells)
    console.print(table)


def mean_std(series: list[list[float | None]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions, mean and std over the series (runs) at each position, skipping missing values
    (None: a NaN or a run that stopped); positions with no value are left out."""
    length = max((len(s) for s in series), default=0)
    xs, means, stds = [], [], []
    for i in range(length):
        kept = [v for s in series if i < len(s) and (v := s[i]) is not None]
        if kept:
            xs.append(i)
            means.append(float(np.mean(kept)))
            stds.append(float(np.std(kept)))
    return np.array(xs, dtype=int), np.array(means), np.array(stds)


def _band(
    ax: Axes, x: np.ndarray, mean: np.ndarray, std: np.ndarray, label: str, color: str, marker: str = "o"
) -> None:
    ax.plot(x, mean, "-", marker=marker, ms=3, lw=1.2, color=color, label=label)
    if len(x) and std.any():
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15, lw=0)


def plot_learning_curves(results: dict[str, Any], path: Path) -> Path:
    """Test metric, test loss and training loss per epoch; one line per method (mean ± std over seeds)."""
    fig, axes = panels(3)
    metric = results["metric"]
    for i, method in enumerate(results["methods"]):
        runs = [r for r in results["runs"] if r["method"] == method]
        for ax, key in zip(axes, ("test_metric", "test_loss", "train_loss"), strict=True):
            x, mean, std = mean_std([[e[key] for e in r["epochs"]] for r in runs])
            if len(x):
                _band(ax, x + 1, mean, std, method, f"C{i}")
    titles = (f"test {metric}", "test loss", "training loss")
    for ax, title in zip(axes, titles, strict=True):
        style_axes(ax, "epoch", title, f"{title} per epoch")
    axes[0].set_yscale("linear")  # accuracy: differences near 1 read better on a linear scale
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    o = results["options"]
    fig.suptitle(f"Learning curves — {o['data']}, {o['arch']}, mean ± std over {o['seeds']} seed(s)", y=1.02)
    return save_figure(fig, path)


def plot_alignment(results: dict[str, Any], path: Path) -> Path | None:
    """Per layer, the angle between each method's update and true backprop's over training steps
    (mean ± std over seeds); None when no run measured it."""
    measured = [r for r in results["runs"] if r.get("alignment")]
    if not measured:
        return None
    layers = list(measured[0]["alignment"]["layers"])
    fig, axes = panels(len(layers), width=4.2, height=3.6)
    for i, method in enumerate(results["methods"]):
        runs = [r for r in measured if r["method"] == method]
        if not runs:
            continue
        steps = max((r["alignment"]["steps"] for r in runs), key=len)
        for ax, layer in zip(axes, layers, strict=True):
            x, mean, std = mean_std([r["alignment"]["layers"][layer] for r in runs])
            if len(x):
                _band(ax, np.array(steps)[x], mean, std, method, f"C{i}", marker="")
    kinds = measured[0]["alignment"].get("kinds", {})
    for k, (ax, layer) in enumerate(zip(axes, layers, strict=True)):
        kind = f" ({kinds[layer]})" if layer in kinds else ""
        style_axes(ax, "training step", "angle to backprop (°)" if k == 0 else "", f"layer {layer}{kind}")
        ax.set_yscale("linear")
        ax.set_ylim(-4, 135)  # bp sits at 0°: keep its line off the axis
        ax.axhline(90, color="grey", lw=0.8, ls=":")
        legend = ax.get_legend()
        if k > 0 and legend is not None:
            legend.remove()  # one legend, on the first panel
    o = results["options"]
    fig.suptitle(
        f"Alignment of each method's update with the true gradient — {o['data']}, {o['arch']}, "
        f"mean ± std over {o['seeds']} seed(s) (0° = backprop, 90° = orthogonal)",
        y=1.03,
    )
    return save_figure(fig, path)


def write_outputs(console: Console, results: dict[str, Any], out: Path) -> dict[str, Path]:
    """results.json, learning_curves.png and (with shadow) alignment.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = {"results": write_json(out / "results.json", results)}
    written["learning_curves"] = plot_learning_curves(results, out / "learning_curves.png")
    alignment = plot_alignment(results, out / "alignment.png")
    if alignment is not None:
        written["alignment"] = alignment
    console.print("wrote " + ", ".join(str(final_path(p)) for p in written.values()))
    return written
