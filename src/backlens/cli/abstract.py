"""`backlens abstract`: the command-line shell over backlens.abstract."""

from __future__ import annotations

from typing import Annotated

import typer

from ..blocks.collect import DIRECTIONS
from ..blocks.methods import METHOD_CHOICES
from ..byhand.losses import LOSS_NAMES
from ..errors import fail
from ..workflows.abstract import ABSTRACT_METHODS
from ..workflows.mlp import ACTIVATIONS
from ..workflows.user_model import is_model_spec
from ..workflows.zoo import ARCH_NAMES
from .main import app, console, run_or_exit
from .report import REPORT_HELP, check_report_flag, report_at_end


def _run_own_model(
    option: str, not_beside: dict[str, tuple[object, object]], methods: str, **fields: object
) -> None:
    """run_arch for --arch or --model file.py:fn, after refusing MLP options set beside them."""
    from ..workflows.arch_run import ArchOptions, run_arch

    given = [flag for flag, (value, default) in not_beside.items() if value != default]
    if given:
        run_or_exit(_refuse_flags, option, given)
    chosen = methods if methods != ABSTRACT_METHODS else ArchOptions.methods
    run_or_exit(run_arch, ArchOptions(methods=chosen, **fields), console=console)  # type: ignore[arg-type]


def _refuse_flags(option: str, given: list[str]) -> None:
    raise fail(
        option,
        "no MLP options beside it (it brings its own model)",
        ", ".join(given),
        f"drop those options, or drop {option}",
    )


@app.command("abstract")
def abstract_command(
    data: Annotated[str, typer.Option(help="seed, digits, diabetes, or a FILE.csv")] = "digits",
    target: Annotated[str | None, typer.Option(help="CSV column to predict")] = None,
    layers: Annotated[str, typer.Option(help="Widths, first = features, last = outputs")] = "64,128,128,10",
    activation: Annotated[str, typer.Option(help=", ".join(ACTIVATIONS))] = "relu",
    loss: Annotated[
        str | None, typer.Option(help=f"{', '.join(LOSS_NAMES)} (default: ce for classes, else mse)")
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help="Training epochs (default: 30 for an MLP, the architecture's own for --arch)"),
    ] = None,
    arch: Annotated[
        str | None, typer.Option(help="A shipped architecture on its bundled data: " + ", ".join(ARCH_NAMES))
    ] = None,
    blocks: Annotated[
        str, typer.Option(help="'all' (each Linear→act→Linear) or start:end module names")
    ] = "all",
    direction: Annotated[str, typer.Option(help=", ".join(DIRECTIONS))] = "both",
    methods: Annotated[
        str, typer.Option(help="Comma-separated, from: " + ", ".join(METHOD_CHOICES))
    ] = ABSTRACT_METHODS,
    test_size: Annotated[float, typer.Option(help="Held-out fraction")] = 0.3,
    seed: Annotated[int, typer.Option(help="Seed of the first run")] = 0,
    out: Annotated[str | None, typer.Option(help="Directory for results.json, maps, model and plots")] = None,
    model: Annotated[
        str | None,
        typer.Option(help="A model.safetensors from an earlier run, or your own: path/to/file.py:build_fn"),
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="Safetensors weights for --model file.py:build_fn")
    ] = None,
    repeat: Annotated[int, typer.Option(help="Runs with seeds seed..seed+K-1; mean ± std")] = 1,
    overwrite: Annotated[
        bool, typer.Option(help="Allow an --out directory that holds an earlier run")
    ] = False,
    report: Annotated[bool, typer.Option(help=REPORT_HELP)] = False,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(help="Checkpoint the statistics every K batches, in <out>.checkpoint (needs --out)"),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from <out>.checkpoint")] = False,
) -> None:
    """Train an MLP (or load one) and score linear stand-ins for its blocks, forward and backward.

    Under torchrun (WORLD_SIZE > 1) the ranks join one process group (gloo on CPU, nccl on
    GPU), each collects its share of the batches, and rank 0 alone fits, scores and writes.
    """
    from ..workflows.abstract import AbstractOptions, run_abstract  # its heavy imports: only when run
    from ..workflows.processes import join_torchrun

    run_or_exit(join_torchrun)
    scale = {"checkpoint_every": checkpoint_every, "resume": resume}

    check_report_flag(report, out)

    # --model file.py:fn and --arch bring their own model (and --arch its data): the MLP's
    # options must not be set beside them
    mlp = {
        "--layers": (layers, "64,128,128,10"),
        "--activation": (activation, "relu"),
        "--repeat": (repeat, 1),
    }
    if model is not None and is_model_spec(model):
        _run_own_model(
            "--model", {**mlp, "--epochs": (epochs, None), "--arch": (arch, None)},
            model=model, weights=weights, data=data, loss=loss, blocks=blocks, direction=direction, seed=seed,
            out=out, overwrite=overwrite, methods=methods, **scale,
        )  # fmt: skip
        report_at_end(report, out, overwrite)
        return
    if weights is not None:
        run_or_exit(_refuse_flags, "--weights", ["--weights without --model file.py:build_fn"])
    if arch is not None:
        data_flags = {"--data": (data, "digits"), "--target": (target, None), "--loss": (loss, None)}
        _run_own_model(
            "--arch", {**mlp, **data_flags, "--model": (model, None), "--test-size": (test_size, 0.3)},
            arch=arch, epochs=epochs, blocks=blocks, direction=direction, seed=seed, out=out,
            overwrite=overwrite, methods=methods, **scale,
        )  # fmt: skip
        report_at_end(report, out, overwrite)
        return
    options = AbstractOptions(
        data=data,
        target=target,
        layers=layers,
        activation=activation,
        loss=loss,
        epochs=30 if epochs is None else epochs,
        blocks=blocks,
        direction=direction,
        methods=methods,
        test_size=test_size,
        seed=seed,
        out=out,
        model=model,
        repeat=repeat,
        overwrite=overwrite,
        **scale,  # type: ignore[arg-type]
    )
    run_or_exit(run_abstract, options, console=console)
    report_at_end(report, out, overwrite)
