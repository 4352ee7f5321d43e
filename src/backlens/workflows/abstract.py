"""`backlens abstract`: train (or load) an MLP, then score linear stand-ins for its blocks."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from ..blocks.block import Block
from ..blocks.collect import DIRECTIONS, collect
from ..blocks.compare import Fits, compare, fit_all
from ..blocks.methods import DEFAULT_METHODS, PROBES, fit_method, parse_methods
from ..blocks.ranks import is_main_rank, shard_batches
from ..byhand.losses import LOSS_NAMES
from ..errors import check_choice, check_positive_int, check_positive_real, check_seed, check_seed_range, fail
from ..linear import methods as names
from ..linear.ridge import EffectiveSamplesWarning
from ..linear.scores import score
from .datasets import Dataset, load_dataset
from .loaders import tensor_loader
from .mlp import ACTIVATIONS, build_mlp, parse_widths
from .model_io import load_model, save_model
from .processes import Checkpoints, rank_console, same_model
from .run_dir import check_run_dir, run_versions, staged_run_dir
from .train import Split, default_loss, loader, metric_name, split_dataset, task_metric, train_model

__all__ = ["AbstractOptions", "run_abstract", "sample_size_curve"]

CURVE_SIZES = (5, 10, 20, 50, 100, 200, 500, 1000)
ABSTRACT_METHODS = ",".join((*DEFAULT_METHODS, names.RIDGE_PROBE, names.RIDGE_DIRECTION, "reduced-rank:8"))
# The sample-size curve's methods, per direction (ridge-probe and ridge-direction are backward only).
CURVE_METHODS = {
    "forward": (names.RIDGE, names.MEAN_JACOBIAN),
    "backward": (names.RIDGE, names.RIDGE_PROBE, names.RIDGE_DIRECTION, names.MEAN_JACOBIAN),
}


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
    methods: str = ABSTRACT_METHODS
    test_size: float = 0.3
    seed: int = 0
    out: str | None = None
    model: str | None = None
    repeat: int = 1
    overwrite: bool = False
    batch_size: int = 32
    lr: float = 1e-3
    probes: int = PROBES  # probe cotangents per training input, for ridge-probe
    checkpoint_every: int | None = None  # batches between checkpoints, at <out>.checkpoint
    resume: bool = False  # continue an interrupted run from its checkpoint


def map_file_name(block: str, method: str, direction: str) -> str:
    """'2:4', 'reduced-rank:8', 'forward' -> 'block2-4_reduced-rank8_forward.safetensors'."""
    return f"block{block.replace(':', '-')}_{method.replace(':', '')}_{direction}.safetensors"


def sample_size_curve(
    model: torch.nn.Module,
    block: Block,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_collection: Any,
    loss: str,
    direction: str,
    probes: int = PROBES,
    methods: Any = None,
) -> list[dict[str, Any]]:
    """Held-out rel. error of each CURVE_METHODS method fitted on the first n training samples,
    with the n and n_eff each fit saw (the block's table warns about small n_eff; here it is
    the point, so EffectiveSamplesWarning stays quiet). `methods`: names asked for; ridge and
    mean-jacobian are always drawn, ridge-probe and ridge-direction when asked (default: all)."""
    points = []
    asked = (
        set(CURVE_METHODS["backward"]) if methods is None else {*methods, names.RIDGE, names.MEAN_JACOBIAN}
    )
    curve_methods = [m for m in CURVE_METHODS[direction] if m in asked]
    sizes = sorted({n for n in CURVE_SIZES if n < len(train_x)} | {len(train_x)})
    backward = direction == "backward"
    for n in sizes:
        subset = tensor_loader(train_x[:n], train_y[:n], batch_size=256)
        extra: dict[str, Any] = {}
        if backward and names.RIDGE_PROBE in curve_methods:
            extra["probes"] = probes
        if backward and names.RIDGE_DIRECTION in curve_methods:
            extra["weighting"] = "direction"
        col = collect(model, block, subset, direction, loss, show_progress=False, distributed=False, **extra)
        for method in curve_methods:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", EffectiveSamplesWarning)
                lm = fit_method(method, block, col, direction)
            moments = test_collection.forward if direction == "forward" else test_collection.backward
            points.append(
                {
                    "n": n,
                    "method": method,
                    "direction": direction,
                    "test_rel_error": float(score(lm, moments=moments).rel_error),
                    "fit_n": lm.info.get("n"),
                    "fit_n_eff": lm.info.get("n_eff"),
                }
            )
    return points


def _task_loss(options: AbstractOptions, data: Dataset) -> str:
    """The loss: the task's own (class indices need ce, real-valued targets mse)."""
    loss = default_loss(data) if options.loss is None else options.loss
    if loss != default_loss(data):
        raise fail(
            "loss",
            f"{default_loss(data)} for {data.name} ({data.task})",
            repr(loss),
            f"use loss={default_loss(data)!r} or leave it out",
        )
    return loss


def _trained_model(
    options: AbstractOptions, split: Split, loss: str, seed: int, console: Console
) -> tuple[nn.Module, list[int], str]:
    """The model from options.model, or an MLP built and trained on the train split."""
    if options.model is not None:
        model, widths, activation = load_model(options.model)
        split.train.check_widths(widths)
    else:
        widths = parse_widths(options.layers)
        split.train.check_widths(widths)
        activation = options.activation
        model = build_mlp(widths, activation, seed=seed)
        with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task(f"training {options.layers} (seed {seed})", total=options.epochs)

            def advance(epoch: int, value: float) -> None:
                progress.update(task, advance=1, description=f"training: loss {value:.4f}")

            train_model(
                model,
                split.train,
                loss,
                options.epochs,
                options.batch_size,
                options.lr,
                seed,
                progress=advance,
            )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model, widths, activation


def _block_entry(
    options: AbstractOptions,
    model: nn.Module,
    block: Block,
    split: Split,
    loss: str,
    seed: int,
    first: bool,
    checkpoints: Checkpoints,
) -> tuple[dict[str, Any], Fits]:
    """One block's rows (and, in the first run, its sample-size curve and spectra). Every rank
    collects its shard; rank 0 alone fits and scores."""
    train_loader, test_loader = loader(split.train, 256), loader(split.test, 256)
    asked = {m.name for m in parse_methods(options.methods)}
    backward = options.direction in ("backward", "both")
    extra = {
        "probes": options.probes if backward and names.RIDGE_PROBE in asked else 0,
        "weighting": "direction" if backward and names.RIDGE_DIRECTION in asked else None,
    }
    train_col = collect(
        model, block, shard_batches(train_loader), options.direction, loss, seed=seed,
        **extra, **checkpoints.options(seed, block.label, "train"),  # type: ignore[arg-type]
    )  # fmt: skip
    test_col = collect(
        model, block, shard_batches(test_loader), options.direction, loss, seed=seed + 1,
        **checkpoints.options(seed, block.label, "test"),  # type: ignore[arg-type]
    )  # fmt: skip
    if not is_main_rank():
        return {"block": block.label, "modules": block.names, "rows": []}, Fits()
    fits = fit_all(block, train_col, parse_methods(options.methods), options.direction)
    rows = compare(
        model,
        block,
        train_loader,
        test_loader,
        parse_methods(options.methods),
        options.direction,
        loss,
        train=train_col,
        test=test_col,
        fitted=fits,
        distributed=False,  # rank 0 alone scores, on the whole test split
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
            for p in sample_size_curve(
                model, block, split.train.x, split.train.y, test_col, loss, d, options.probes, asked
            )
        ]
        entry["spectra"] = {
            f"{method}/{d}": torch.linalg.svdvals(lm.matrix.double()).tolist()
            for (method, d), lm in fits.maps.items()
        }
    return entry, fits


def _one_run(
    options: AbstractOptions,
    seed: int,
    console: Console,
    out: Path | None,
    first: bool,
    checkpoints: Checkpoints,
) -> dict[str, Any]:
    data = load_dataset(options.data, seed=seed, target=options.target)
    loss = _task_loss(options, data)
    if options.model is None:
        data.check_widths(parse_widths(options.layers))  # before the split: fail early
    split = split_dataset(data, options.test_size, seed)
    model, widths, activation = _trained_model(options, split, loss, seed, console)
    same_model(model)
    metric = {
        "train": task_metric(model, split.train, loss),
        "test": task_metric(model, split.test, loss),
        "name": metric_name(data, loss),
    }
    per_block = []
    for block in Block.parse(model, options.blocks):
        entry, fits = _block_entry(options, model, block, split, loss, seed, first, checkpoints)
        if first and out is not None:
            for (method, d), lm in fits.maps.items():
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


def validate(options: AbstractOptions) -> None:
    """Every option's type and range, the model file or widths, the blocks on that model and the
    output directory: checked before any data is loaded or anything is trained."""
    check_positive_int("repeat", options.repeat)
    check_positive_int("epochs", options.epochs)
    check_positive_int("batch_size", options.batch_size)
    check_seed("seed", options.seed)
    check_seed_range("repeat", options.seed, options.repeat)
    check_positive_real("lr", options.lr, "pass a learning rate such as 1e-3")
    size = options.test_size
    if isinstance(size, bool) or not isinstance(size, float | int) or not 0 < size < 1:
        raise fail("test_size", "a fraction between 0 and 1", repr(options.test_size), "use e.g. 0.3")
    check_choice("direction", options.direction, list(DIRECTIONS))
    if options.loss is not None:  # None: the task's own; "" is not a loss
        check_choice("loss", options.loss, list(LOSS_NAMES))
    parse_methods(options.methods)
    if options.model is not None:
        defaults = AbstractOptions()
        beside = [f for f in ("layers", "activation") if getattr(options, f) != getattr(defaults, f)]
        if beside:
            raise fail(
                "model",
                "no layers or activation beside a model file (it holds its own)",
                ", ".join(f"{f}={getattr(options, f)!r}" for f in beside),
                "drop those options, or drop model",
            )
        model = load_model(options.model)[0]
    else:
        check_choice("activation", options.activation, list(ACTIVATIONS))
        model = build_mlp(parse_widths(options.layers), options.activation)
    Block.parse(model, options.blocks)  # on the untrained model: the same module names
    check_run_dir(options.out, options.overwrite)


def run_abstract(options: AbstractOptions, console: Console | None = None) -> dict[str, Any]:
    """Run the whole experiment; write results.json, maps, model and plots into options.out."""
    from .abstract_report import print_run, print_summary, write_outputs

    console = rank_console(console or Console())
    validate(options)
    checkpoints = Checkpoints(options.out, options.checkpoint_every, options.resume)
    # rank 0 alone writes the run (staged, renamed into place when complete); the checkpoint
    # lives beside it, at <out>.checkpoint, so it survives an interrupted run
    with staged_run_dir(options.out if is_main_rank() else None, options.overwrite) as out:
        runs = []
        for k in range(options.repeat):
            runs.append(_one_run(options, options.seed + k, console, out, k == 0, checkpoints))
            print_run(console, runs[-1], options)
        results = {
            "options": asdict(options),
            "versions": run_versions(),
            "runs": runs,
            "summary": _aggregate(runs),
        }
        print_summary(console, results)
        if out is not None:
            write_outputs(console, results, out)
    checkpoints.finish()
    return results
