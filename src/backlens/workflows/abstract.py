"""`backlens abstract`: train (or load) an MLP, then score linear stand-ins for its blocks."""

from __future__ import annotations

import math
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import torch
from rich.console import Console
from rich.progress import Progress
from torch.utils.data import DataLoader, TensorDataset

from ..blocks.block import Block
from ..blocks.collect import collect
from ..blocks.compare import compare, fit_all, fit_method, parse_methods
from ..errors import fail
from ..linear.scores import score
from .datasets import load_dataset
from .mlp import build_mlp, parse_widths
from .model_io import load_model, save_model
from .train import default_loss, loader, metric_name, split_dataset, task_metric, train_model

__all__ = ["AbstractOptions", "run_abstract", "sample_size_curve"]

CURVE_SIZES = (5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass
class AbstractOptions:
    """Everything `backlens abstract` takes."""

    data: str = "digits"
    target: str | None = None
    layers: str = "64,128,128,10"
    activation: str = "relu"
    loss: str | None = None
    epochs: int = 30
    blocks: str = "all"
    direction: str = "both"
    methods: str = "ridge,expected-mask,mean-jacobian,weights-only,identity,reduced-rank:8"
    test_size: float = 0.3
    seed: int = 0
    out: str | None = None
    model: str | None = None
    repeat: int = 1
    overwrite: bool = False
    batch_size: int = 32
    lr: float = 1e-3


def map_file_name(block: str, method: str, direction: str) -> str:
    """'2:4', 'reduced-rank:8', 'forward' -> 'block2-4_reduced-rank8_forward.safetensors'."""
    return f"block{block.replace(':', '-')}_{method.replace(':', '')}_{direction}.safetensors"


def _check_out(options: AbstractOptions) -> Path | None:
    if options.out is None:
        return None
    out = Path(options.out)
    if out.exists() and any(out.iterdir()) and not options.overwrite:
        raise fail(
            "--out",
            "an empty or new directory",
            f"{out} holding an earlier run",
            "pick another directory or pass --overwrite",
        )
    return out


def _subset_loader(data_x: torch.Tensor, data_y: torch.Tensor, n: int, batch_size: int = 256) -> DataLoader:
    return DataLoader(TensorDataset(data_x[:n], data_y[:n]), batch_size=batch_size)


def sample_size_curve(
    model: torch.nn.Module,
    block: Block,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_collection: Any,
    loss: str,
    direction: str,
) -> list[dict[str, Any]]:
    """Held-out rel. error of ridge and mean-Jacobian fitted on the first n training samples."""
    points = []
    sizes = sorted({n for n in CURVE_SIZES if n < len(train_x)} | {len(train_x)})
    for n in sizes:
        col = collect(model, block, _subset_loader(train_x, train_y, n), direction, loss, show_progress=False)
        for method in ("ridge", "mean-jacobian"):
            lm = fit_method(method, block, col, direction)
            moments = test_collection.forward if direction == "forward" else test_collection.backward
            points.append(
                {
                    "n": n,
                    "method": method,
                    "direction": direction,
                    "test_rel_error": float(score(lm, moments=moments).rel_error),
                }
            )
    return points


def _one_run(
    options: AbstractOptions, seed: int, console: Console, out: Path | None, first: bool
) -> dict[str, Any]:
    data = load_dataset(options.data, seed=seed, target=options.target)
    widths = parse_widths(options.layers)
    loss = options.loss or default_loss(data)
    # The in-use metric and the targets' shape follow the task: class indices need ce,
    # real-valued targets need mse.
    if loss != default_loss(data):
        raise fail(
            "--loss",
            f"{default_loss(data)} for {data.name} ({data.task})",
            repr(loss),
            f"use --loss {default_loss(data)} or leave --loss out",
        )
    split = split_dataset(data, options.test_size, seed)
    if options.model is not None:
        model, widths, activation = load_model(options.model)
        data.check_widths(widths)
    else:
        data.check_widths(widths)
        activation = options.activation
        model = build_mlp(widths, activation, seed=seed)
        with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task(f"training {options.layers} (seed {seed})", total=options.epochs)
            train_model(
                model,
                split.train,
                loss,
                options.epochs,
                options.batch_size,
                options.lr,
                seed,
                progress=lambda epoch, value: progress.update(
                    task, advance=1, description=f"training: loss {value:.4f}"
                ),
            )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    metric = {
        "train": task_metric(model, split.train),
        "test": task_metric(model, split.test),
        "name": metric_name(data),
    }
    train_loader, test_loader = loader(split.train, 256), loader(split.test, 256)
    blocks = Block.parse(model, options.blocks)
    methods = parse_methods(options.methods)
    per_block = []
    for block in blocks:
        train_col = collect(model, block, train_loader, options.direction, loss, seed=seed)
        test_col = collect(model, block, test_loader, options.direction, loss, seed=seed + 1)
        fitted = fit_all(block, train_col, methods, options.direction)
        rows = compare(
            model,
            block,
            train_loader,
            test_loader,
            methods,
            options.direction,
            loss,
            train=train_col,
            test=test_col,
            fitted=fitted,
        )
        entry: dict[str, Any] = {
            "block": block.label,
            "modules": block.names,
            "rows": [r.to_dict() for r in rows],
        }
        if first:
            directions = ["forward", "backward"] if options.direction == "both" else [options.direction]
            entry["curve"] = [
                p
                for d in directions
                for p in sample_size_curve(model, block, split.train.x, split.train.y, test_col, loss, d)
            ]
            maps = fitted[0]
            entry["spectra"] = {
                f"{method}/{d}": torch.linalg.svdvals(lm.matrix.double()).tolist()
                for (method, d), lm in maps.items()
            }
            if out is not None:
                for (method, d), lm in maps.items():
                    lm.save(out / "maps" / map_file_name(block.label, method, d))
        per_block.append(entry)
    if first and out is not None:
        save_model(model, widths, activation, out / "model.safetensors")
    return {
        "seed": seed,
        "task": data.task,
        "loss": loss,
        "widths": widths,
        "activation": activation,
        "n_train": len(split.train.x),
        "n_test": len(split.test.x),
        "metric": metric,
        "blocks": per_block,
    }


def _aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over runs of each row's held-out error and in-use value."""
    table: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for run in runs:
        for block in run["blocks"]:
            for row in block["rows"]:
                cell = table.setdefault(
                    (row["block"], row["method"], row["direction"]),
                    {"test_rel_error": [], "in_use": []},
                )
                for key in cell:
                    if row[key] is not None and not math.isnan(row[key]):
                        cell[key].append(row[key])
    out = []
    for (block, method, direction), cell in table.items():
        stats = {
            f"{k}_{s}": (float(f(v)) if v else None)
            for k, v in cell.items()
            for s, f in (("mean", np.mean), ("std", np.std))
        }
        out.append({"block": block, "method": method, "direction": direction, **stats})
    return out


def run_abstract(options: AbstractOptions, console: Console | None = None) -> dict[str, Any]:
    """Run the whole experiment; write results.json, maps, model and plots into options.out."""
    from .abstract_report import print_run, print_summary, write_outputs

    console = console or Console()
    if options.repeat < 1:
        raise fail("--repeat", "a positive number of seeds", options.repeat, "use --repeat 1 or more")
    out = _check_out(options)
    runs = []
    for k in range(options.repeat):
        runs.append(_one_run(options, options.seed + k, console, out, first=k == 0))
        print_run(console, runs[-1], options)
    results = {
        "options": asdict(options),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
        },
        "runs": runs,
        "summary": _aggregate(runs),
    }
    print_summary(console, results)
    if out is not None:
        write_outputs(console, results, out)
    return results
