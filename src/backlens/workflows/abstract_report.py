"""Tables, verdicts, JSON and PNG plots for `backlens abstract`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..files import write_json
from .plots import panels, save_figure, style_axes
from .run_dir import final_path

__all__ = ["print_run", "print_summary", "write_outputs", "verdict", "fits_its_data_only", "OVERFIT_RATIO"]

# "Won on fitting data only": a method whose held-out error is more than OVERFIT_RATIO times its
# error on the samples it was fitted on. Such a method learned those samples, not the block; when
# it is also the best on fitting data while another method wins held out, the verdict says so.
OVERFIT_RATIO = 2.0


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _count(value: float | None) -> str:
    """An effective sample size: whole from 100 on (1232), three digits below (10.8)."""
    if value is None:
        return "—"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def fits_its_data_only(row: dict[str, Any]) -> bool:
    """Held-out rel. error > OVERFIT_RATIO × fitting rel. error (both known)."""
    test, train = row.get("test_rel_error"), row.get("train_rel_error")
    return test is not None and train is not None and test > OVERFIT_RATIO * train


def _fitting_only_note(scored: list[dict[str, Any]], best: dict[str, Any]) -> str:
    """'; ridge won on fitting data only (0.0271 fitting vs 0.185 held-out, n_eff 11 of 1,258)'."""
    fitted = [r for r in scored if r.get("train_rel_error") is not None]
    if not fitted:
        return ""
    top = min(fitted, key=lambda r: r["train_rel_error"])
    if top["method"] == best["method"] or not fits_its_data_only(top):
        return ""
    seen = ""
    if top.get("n_eff") is not None and top.get("n") is not None:
        seen = f", n_eff {top['n_eff']:,.0f} of {top['n']:,}"
    return (
        f"; {top['method']} won on fitting data only "
        f"({top['train_rel_error']:.3g} fitting vs {top['test_rel_error']:.3g} held-out{seen})"
    )


def verdict(rows: list[dict[str, Any]], direction: str) -> str:
    """One line: which method has the least held-out relative error in this direction, and, if
    the method best on fitting data is another whose held-out error exceeds OVERFIT_RATIO × its
    fitting error, that it won on fitting data only."""
    scored = [
        r
        for r in rows
        if r["direction"] == direction and r["method"] != "intact" and r["test_rel_error"] is not None
    ]
    if not scored:
        return f"{direction}: no method applied"
    best = min(scored, key=lambda r: r["test_rel_error"])
    ranked = sorted(scored, key=lambda r: r["test_rel_error"])
    # Maps equal to rounding (expected-mask and mean-Jacobian with one nonlinearity) tie.
    tied = [
        r["method"]
        for r in ranked[1:]
        if abs(r["test_rel_error"] - best["test_rel_error"]) <= 1e-9 * best["test_rel_error"]
    ]
    runner = [r for r in ranked[1:] if r["method"] not in tied][:1]
    against = f", tied with {', '.join(tied)}" if tied else ""
    if runner:
        against += f" (next: {runner[0]['method']} {runner[0]['test_rel_error']:.3g})"
    error = best["test_rel_error"]
    note = _fitting_only_note(scored, best)
    return f"{direction}: {best['method']} wins on held-out data, rel. error {error:.3g}{against}{note}"


def print_run(console: Console, run: dict[str, Any], options: Any) -> None:
    metric = run["metric"]
    console.print(
        f"[bold]seed {run['seed']}[/]: {run['task']} with loss {run['loss']}, "
        f"{run['n_train']} train / {run['n_test']} test samples; intact model {metric['name']}: "
        f"train {metric['train']:.4f}, test {metric['test']:.4f}"
    )
    for block in run["blocks"]:
        table = Table(
            title=f"block {block['block']} ({' → '.join(block['modules'])}): held-out | fitting data"
        )
        for column in (
            "method",
            "dir",
            "rel.err",
            "R²",
            "cos",
            "| rel.err",
            "R²",
            "cos",
            "in use",
            "‖Mb−Mfᵀ‖",
            "n",
            "n_eff",
        ):
            table.add_column(column, justify="left" if column in ("method", "dir") else "right")
        notes: dict[tuple[str, str], list[str]] = {}  # (method, reason) -> directions
        for r in block["rows"]:
            short = "fwd" if r["direction"] == "forward" else "bwd"
            if r["note"]:
                notes.setdefault((r["method"], r["note"]), []).append(short)
                continue
            labels = {"accuracy": "acc", "mse": "mse", "grad cosine": "cos"}
            in_use = "—" if r["in_use"] is None else f"{labels[r['in_use_metric']]} {r['in_use']:.3f}"
            table.add_row(
                r["method"],
                short,
                _num(r["test_rel_error"]),
                _num(r["test_r2"]),
                _num(r["test_cosine"]),
                _num(r["train_rel_error"]),
                _num(r["train_r2"]),
                _num(r["train_cosine"]),
                in_use,
                _num(r["consistency"], 2),
                "—" if r.get("n") is None else str(r["n"]),
                _count(r.get("n_eff")),
            )
        console.print(table)
        for (method, reason), directions in notes.items():
            console.print(f"  {method} ({', '.join(directions)}) n/a: {reason}")
        for direction in ("forward", "backward"):
            if any(r["direction"] == direction for r in block["rows"]):
                console.print("  verdict — " + verdict(block["rows"], direction))


def _plot_errors(results: dict[str, Any], path: Path) -> Path:
    run = results["runs"][0]
    directions = sorted({r["direction"] for b in run["blocks"] for r in b["rows"] if r["method"] != "intact"})
    fig, axes = panels(len(directions), width=7)
    for ax, direction in zip(axes, directions, strict=False):
        methods = list(
            dict.fromkeys(r["method"] for b in run["blocks"] for r in b["rows"] if r["method"] != "intact")
        )
        width = 0.8 / max(1, len(methods))
        for i, method in enumerate(methods):
            values = []
            for b in run["blocks"]:
                row = next(
                    (r for r in b["rows"] if r["method"] == method and r["direction"] == direction),
                    None,
                )
                values.append(
                    row["test_rel_error"] if row and row["test_rel_error"] is not None else float("nan")
                )
            if any(v == v for v in values):  # methods that applied nowhere get no legend entry
                ax.bar([j + i * width for j in range(len(run["blocks"]))], values, width, label=method)
        ax.set_xticks(
            [j + 0.4 - width / 2 for j in range(len(run["blocks"]))],
            [b["block"] for b in run["blocks"]],
        )
        style_axes(ax, "block", "held-out relative error", f"{direction} maps")
    return save_figure(fig, path)


def _plot_curve(results: dict[str, Any], path: Path) -> Path:
    blocks = [b for b in results["runs"][0]["blocks"] if b.get("curve")]
    fig, axes = panels(len(blocks))
    for ax, block in zip(axes, blocks, strict=False):
        keys = list(dict.fromkeys((p["method"], p["direction"]) for p in block["curve"]))
        colours = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(m for m, _ in keys))}  # one per method
        for method, direction in keys:
            pts = [p for p in block["curve"] if p["method"] == method and p["direction"] == direction]
            style = "-o" if direction == "forward" else "--s"
            x, y = [p["n"] for p in pts], [p["test_rel_error"] for p in pts]
            ax.plot(x, y, style, color=colours[method], label=f"{method} ({direction})", markersize=4)
        style_axes(
            ax,
            "training samples used to fit",
            "held-out relative error",
            f"block {block['block']}",
            xlog=True,
        )
    return save_figure(fig, path)


def _plot_spectra(results: dict[str, Any], path: Path) -> Path:
    blocks = [b for b in results["runs"][0]["blocks"] if b.get("spectra")]
    fig, axes = panels(len(blocks))
    for ax, block in zip(axes, blocks, strict=False):
        for key, values in block["spectra"].items():
            style = "-" if key.endswith("forward") else "--"
            ax.plot(range(1, len(values) + 1), [max(v, 1e-16) for v in values], style, label=key)
        style_axes(ax, "index", "singular value", f"block {block['block']}: spectrum of each map")
    return save_figure(fig, path)


def _mean_std(summary: dict[str, Any], key: str) -> str:
    mean, std = summary[f"{key}_mean"], summary[f"{key}_std"]
    return "—" if mean is None else f"{mean:.3g} ± {std:.2g}"


def print_summary(console: Console, results: dict[str, Any]) -> None:
    """Mean ± std over seeds of each row's held-out error and in-use value (for --repeat > 1)."""
    if len(results["runs"]) > 1:
        table = Table(title=f"mean ± std over {len(results['runs'])} seeds")
        for column in ("block", "method", "dir", "test rel.err", "in use"):
            table.add_column(column)
        for s in results["summary"]:
            cells = [_mean_std(s, key) for key in ("test_rel_error", "in_use")]
            table.add_row(s["block"], s["method"], s["direction"], *cells)
        console.print(table)


def write_outputs(console: Console, results: dict[str, Any], out: Path) -> None:
    """results.json and the three plots; maps and model were written during the run."""
    blocks = results["runs"][0]["blocks"]
    paths = [write_json(out / "results.json", results), _plot_errors(results, out / "heldout_error.png")]
    if any(b.get("curve") for b in blocks):  # a plot with nothing in it is not written
        paths.append(_plot_curve(results, out / "error_vs_samples.png"))
    if any(b.get("spectra") for b in blocks):
        paths.append(_plot_spectra(results, out / "spectra.png"))
    for path in paths:
        console.print(f"wrote {final_path(path)}")
