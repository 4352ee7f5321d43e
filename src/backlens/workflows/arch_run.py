"""`backlens abstract --arch` / `--model file.py:fn` and `backlens linearity`: a zoo architecture
trained on its bundled data, or a user's own model on a dataset, then every stand-in method for
each of its blocks, and the linearity profile."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import nn

from ..blocks.block import Block
from ..blocks.collect import DIRECTIONS, collect
from ..blocks.compare import compare, fit_all
from ..blocks.methods import DEFAULT_METHODS, parse_methods
from ..blocks.ranks import is_main_rank, shard_batches
from ..byhand.losses import LOSS_NAMES
from ..errors import BacklensError, check_choice, check_positive_int, check_seed, fail
from ..files import write_json
from ..linear.linearity import linearity_score
from .datasets import load_dataset
from .processes import Checkpoints, rank_console, same_model
from .run_dir import final_path, run_versions, staged_run_dir
from .train import default_loss, loader, metric_name, split_dataset, task_metric
from .user_model import load_user_model
from .zoo import ARCHITECTURES, accuracy, loaders, train_arch, zoo_data

__all__ = ["ArchOptions", "run_arch", "zoo_block", "linearity_table"]

MAX_INPUTS = 512


@dataclass
class ArchOptions:
    """Everything `backlens abstract --arch` and `backlens linearity` take."""

    arch: str = "transformer"
    epochs: int | None = None
    blocks: str = "all"
    direction: str = "both"
    methods: str = ",".join(DEFAULT_METHODS)
    seed: int = 0
    out: str | None = None
    overwrite: bool = False
    linearity_only: bool = False
    model: str | None = None  # 'path/to/file.py:build_fn': a user's model instead of --arch
    weights: str | None = None  # its safetensors weights
    data: str = "digits"  # the user model's dataset (datasets.load_dataset)
    loss: str | None = None
    checkpoint_every: int | None = None  # batches between checkpoints, at <out>.checkpoint
    resume: bool = False  # continue an interrupted run from its checkpoint


def zoo_block(model: nn.Module, path: str) -> Block:
    """A block of a zoo model; a recurrent layer's block is its output sequence (output=0)."""
    start, colon, end = path.partition(":")
    if colon:
        return Block(model, start, end)
    names = [name for name, _ in model.named_modules()]
    if start not in names:
        shown = ", ".join(n for n in names[1:9] if n)
        raise fail("blocks", f"module paths of the model (e.g. {shown})", repr(start), "pick one of those")
    module = model.get_submodule(start) if start else model
    return Block(model, start, output=0 if isinstance(module, nn.RNNBase) else None)


def _blocks(options: ArchOptions, model: nn.Module) -> list[Block]:
    if options.blocks == "all" and options.model is not None:
        return Block.all(model)
    paths = (
        ARCHITECTURES[options.arch].blocks
        if options.blocks == "all"
        else [p.strip() for p in options.blocks.split(",")]
    )
    if not paths or not all(paths):
        raise fail(
            "blocks", "'all' or comma-separated module paths", repr(options.blocks), "e.g. encoder.layers.0"
        )
    return [zoo_block(model, p) for p in paths]


def _trained(options: ArchOptions, console: Console) -> tuple[nn.Module, Any]:
    arch = ARCHITECTURES[options.arch]
    data = zoo_data(options.arch, seed=options.seed)
    model = arch.build(seed=options.seed)
    epochs = options.epochs or arch.default_epochs
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        progress.add_task(f"training {options.arch}: {epochs} epochs (seed {options.seed})", total=None)
        train_arch(options.arch, model, data, epochs=epochs, seed=options.seed)
    model.eval()
    return model, data


def _block_entry(
    options: ArchOptions,
    model: nn.Module,
    block: Block,
    train: Any,
    test: Any,
    loss: str,
    checkpoints: Checkpoints,
) -> dict[str, Any]:
    """One block's entry: every rank collects its shard; rank 0 alone scores and fits."""
    # 512 sampled inputs bound the mean Jacobian's cost: one backward pass per output coordinate
    kept = {"seed": options.seed, "max_inputs": MAX_INPUTS, "show_progress": False}
    train_col = collect(
        model, block, shard_batches(train), options.direction, loss,
        **kept, **checkpoints.options(options.seed, block.label, "train"),  # type: ignore[arg-type]
    )  # fmt: skip
    test_col = collect(
        model, block, shard_batches(test), options.direction, loss,
        **kept, **checkpoints.options(options.seed, block.label, "test"),  # type: ignore[arg-type]
    )  # fmt: skip
    if not is_main_rank():
        return {"block": block.label}
    entry: dict[str, Any] = {"block": block.label, "modules": block.names, "positions": train_col.positions}
    if train_col.forward is not None and test_col.forward is not None:
        try:
            entry["linearity"] = linearity_score(train_col.forward, test_col.forward).as_dict()
        except BacklensError as error:
            entry["linearity_note"] = error.expected
    if options.linearity_only:
        return entry
    methods = parse_methods(options.methods)
    fits = fit_all(block, train_col, methods, options.direction)
    rows = compare(
        model,
        block,
        train,
        test,
        methods,
        options.direction,
        loss,
        train=train_col,
        test=test_col,
        fitted=fits,
        distributed=False,  # rank 0 alone scores, on the whole test split
        show_progress=False,
    )
    entry["rows"] = [r.to_dict() for r in rows]
    entry["spectra"] = {
        f"{m}/{d}": torch.linalg.svdvals(lm.matrix.double()).tolist() for (m, d), lm in fits.maps.items()
    }
    return entry


def run_arch(options: ArchOptions, console: Console | None = None) -> dict[str, Any]:
    """Train the architecture, then score every block: tables, and into options.out results.json
    and plots (the linearity profile over depth among them)."""
    from .abstract_report import print_run, write_outputs
    from .linearity_report import plot_linearity, print_linearity

    console = rank_console(console or Console())
    _validate(options)
    checkpoints = Checkpoints(options.out, options.checkpoint_every, options.resume)
    # rank 0 alone writes the run (staged, renamed into place when complete); the checkpoint
    # lives beside it, at <out>.checkpoint, so it survives an interrupted run
    with staged_run_dir(options.out if is_main_rank() else None, options.overwrite) as out:
        run = _user_run(options) if options.model is not None else _arch_run(options, console)
        model, train, test = run.pop("model"), run.pop("train_loader"), run.pop("test_loader")
        same_model(model)
        run["blocks"] = [
            _block_entry(options, model, b, train, test, run["loss"], checkpoints)
            for b in _blocks(options, model)
        ]
        results = {"options": asdict(options), "versions": run_versions(), "runs": [run]}
        if is_main_rank():
            if not options.linearity_only:
                print_run(console, run, options)
            print_linearity(console, run)
        if out is not None:
            if options.linearity_only:
                console.print(f"wrote {final_path(write_json(out / 'results.json', results))}")
            else:
                write_outputs(console, results, out)
            console.print(f"wrote {final_path(plot_linearity(run, out / 'linearity.png'))}")
    checkpoints.finish()
    return results


def _validate(options: ArchOptions) -> None:
    """The options' types and ranges, before any model is built or trained."""
    check_seed("seed", options.seed)
    if options.epochs is not None:
        check_positive_int("epochs", options.epochs)
    check_choice("direction", options.direction, list(DIRECTIONS))
    if options.loss is not None:
        check_choice("loss", options.loss, list(LOSS_NAMES))
    parse_methods(options.methods)
    if options.model is None:
        check_choice("arch", options.arch, list(ARCHITECTURES))
        _blocks(options, ARCHITECTURES[options.arch].build(seed=options.seed))  # untrained: same paths


def _arch_run(options: ArchOptions, console: Console) -> dict[str, Any]:
    check_choice("arch", options.arch, list(ARCHITECTURES))
    model, data = _trained(options, console)
    train, test = loaders(data, batch_size=256, seed=options.seed)
    metric = {"train": accuracy(model, train), "test": accuracy(model, test), "name": "accuracy"}
    return {
        "seed": options.seed,
        "task": data.task,
        "loss": "ce",
        "arch": options.arch,
        "n_train": len(data.train),
        "n_test": len(data.test),
        "metric": metric,
        "model": model,
        "train_loader": train,
        "test_loader": test,
    }


def _user_run(options: ArchOptions) -> dict[str, Any]:
    """A user's model as built (no training), on a dataset split as abstract splits it."""
    assert options.model is not None
    model = load_user_model(options.model, options.weights)
    data = load_dataset(options.data, seed=options.seed)
    try:
        with torch.no_grad():
            model(data.x[:2])
    except RuntimeError as error:  # before any work: the model does not take these inputs
        raise fail(
            "model",
            f"a model that takes {data.name}'s inputs {tuple(data.x.shape[1:])}",
            str(error).splitlines()[0],
            "pass --data that fits the model",
        ) from None
    loss = default_loss(data) if options.loss is None else options.loss
    split = split_dataset(data, seed=options.seed)
    metric = {
        "train": task_metric(model, split.train, loss),
        "test": task_metric(model, split.test, loss),
        "name": metric_name(data, loss),
    }
    return {
        "seed": options.seed,
        "task": data.task,
        "loss": loss,
        "arch": options.model,
        "n_train": len(split.train.x),
        "n_test": len(split.test.x),
        "metric": metric,
        "model": model,
        "train_loader": loader(split.train, 256),
        "test_loader": loader(split.test, 256),
    }


def linearity_table(run: dict[str, Any]) -> Table:
    """Per block: positions, the linearity score on fitting and held-out data, with and without
    the residual."""
    table = Table(
        title=f"linearity profile ({run.get('arch', 'model')}): 1 − ‖X̃A − Ỹ‖², Razzhigaev et al. 2024"
    )
    for column in ("depth", "block", "positions", "fit", "held-out", "fit (−res.)", "held-out (−res.)"):
        table.add_column(column, justify="left" if column in ("block", "positions") else "right")
    for depth, block in enumerate(run["blocks"]):
        s = block.get("linearity") or {}
        cells = [s.get(k) for k in ("fit", "held_out", "fit_residual", "held_out_residual")]
        table.add_row(
            str(depth), block["block"], block["positions"], *("—" if v is None else f"{v:.3f}" for v in cells)
        )
    return table
