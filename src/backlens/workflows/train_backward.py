"""`backlens train`: train one model per backward method (bp, fa, dfa, sign symmetry, expected-mask)
from the same initialisation and data order, per seed, and record how each learns.

Optimiser: Adam (torch.optim.Adam, default lr 1e-3) on the update each method leaves in .grad.
Per epoch: mean training loss, test loss, test metric (accuracy for classes, MSE otherwise) and
training steps/s. With shadow, the angle per layer between the method's update and true
backprop's (`blocks.shadow.Shadow`) at about SHADOW_POINTS steps an epoch (steps/s then includes
the measuring). A NaN/Inf loss stops that run before its step is taken: the run keeps the epochs
it finished, ends with the weights of the last one and says at which step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from ..blocks.linear_backward import BACKWARD_METHODS, linear_backward
from ..blocks.shadow import Shadow
from ..byhand.losses import get_loss, torch_loss
from ..errors import BacklensError, check_choice, check_positive_int, check_seed, check_seed_range, fail
from .datasets import Dataset
from .mlp import ACTIVATIONS, build_mlp, parse_widths
from .mnist import load_mnist, load_named
from .run_dir import check_run_dir, run_versions, staged_run_dir
from .train import Split, default_loss, loader, split_dataset
from .zoo import ARCHITECTURES
from .zoo_data import torch_threads

__all__ = [
    "TrainOptions",
    "TrainData",
    "Prepared",
    "run_train",
    "prepare",
    "train_one",
    "evaluate",
    "load_mnist",
    "parse_backward",
    "ARCH_CHOICES",
]

ARCH_CHOICES = ("mlp", "cnn")
TEST_SIZE = 0.2
SHADOW_POINTS = 10  # alignment measurements per epoch, evenly spaced over its steps
DEFAULT_HIDDEN = (128, 128)  # the MLP's hidden widths when no layers are given


@dataclass
class TrainOptions:
    """Everything `backlens train` takes."""

    data: str = "digits"
    target: str | None = None  # a CSV file's label column
    arch: str = "mlp"
    layers: str | None = None  # MLP widths 'in,h1,...,out'; default in,128,128,out
    activation: str = "relu"
    backward: str | None = None  # comma-separated; None: every method that applies to the model
    epochs: int = 10
    seeds: int = 1
    seed: int = 0  # the first seed; runs use seed, seed + 1, ...
    lr: float = 1e-3
    batch_size: int = 64
    shadow: bool = False
    threads: int | None = 1  # torch's intra-op threads while training (None: unchanged); see torch_threads
    out: str | None = None
    overwrite: bool = False


@dataclass(frozen=True)
class TrainData:
    """The split a run trains and tests on, and the loss its task takes."""

    split: Split
    loss: str
    metric: str  # the loss's metric name: 'accuracy' or 'mse'


def parse_backward(text: Any) -> list[str]:
    """'bp,fa,dfa' -> ['bp', 'fa', 'dfa'], each one of BACKWARD_METHODS, none twice."""
    if not isinstance(text, str) or not text.strip():
        raise fail("backward", "comma-separated methods, e.g. 'bp,fa'", repr(text), "name at least one")
    methods = [m.strip() for m in text.split(",")]
    for method in methods:
        check_choice("backward", method, list(BACKWARD_METHODS))
    twice = sorted({m for m in methods if methods.count(m) > 1})
    if twice:
        raise fail("backward", "each method once", f"{', '.join(twice)} more than once", "drop the repeats")
    return methods


def _check_lr(lr: Any) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise fail("lr", "a positive finite learning rate", repr(lr), "pass e.g. lr=1e-3")
    return float(lr)


def _dataset(options: TrainOptions) -> Dataset:
    return load_named(options.data, options.target)


def _widths(options: TrainOptions, data: Dataset) -> list[int]:
    if options.layers is None:
        return data.fitted_widths([0, *DEFAULT_HIDDEN, 0])
    widths = parse_widths(options.layers)
    data.check_widths(widths)
    return widths


@dataclass(frozen=True)
class Prepared:
    """What validation yields: the methods, the loaded dataset and the model builder."""

    methods: list[str]
    dataset: Dataset
    build: Callable[[int], nn.Module]  # build(seed): the same initial weights for every method


def prepare(options: TrainOptions) -> Prepared:
    """Validate every option, load the data and open each method's context once on a fresh model
    (so a method that cannot handle it fails now). Raises BacklensError before any training."""
    methods = None if options.backward is None else parse_backward(options.backward)
    check_choice("arch", options.arch, list(ARCH_CHOICES))
    check_positive_int("epochs", options.epochs)
    check_positive_int("seeds", options.seeds)
    check_positive_int("batch_size", options.batch_size)
    if options.threads is not None:
        check_positive_int("threads", options.threads)
    check_seed("seed", options.seed)
    check_seed_range("seeds", options.seed, options.seeds)
    _check_lr(options.lr)
    check_choice("activation", options.activation, list(ACTIVATIONS))
    check_run_dir(options.out, options.overwrite)
    if options.arch == "cnn":
        _check_cnn(options)  # before loading: the data may be large
    data = _dataset(options)
    build = _builder(options, data)
    if methods is None:
        methods = [m for m in BACKWARD_METHODS if _applies(build, m, options.seed)]
    for method in methods:  # a method that cannot handle the model says so now, not mid-run
        with linear_backward(build(options.seed), method, seed=options.seed):
            pass
    return Prepared(methods, data, build)


def _applies(build: Callable[[int], nn.Module], method: str, seed: int) -> bool:
    try:
        with linear_backward(build(seed), method, seed=seed):
            return True
    except BacklensError:
        return False


def _builder(options: TrainOptions, data: Dataset) -> Callable[[int], nn.Module]:
    if options.arch == "mlp":
        widths = _widths(options, data)
        return lambda seed: build_mlp(widths, options.activation, seed=seed)
    return lambda seed: ARCHITECTURES["cnn"].build(seed=seed)  # options checked by _check_cnn


def _check_cnn(options: TrainOptions) -> None:
    if options.data != "digits":
        raise fail(
            "arch",
            "'cnn' on digits (1×8×8 images) only",
            f"'cnn' with data {options.data!r}",
            "use data='digits' with arch='cnn', or arch='mlp'",
        )
    if options.layers is not None:
        raise fail(
            "layers", "None for arch='cnn' (widths are for the MLP)", repr(options.layers), "leave it out"
        )
    if options.activation != "relu":
        raise fail(
            "activation",
            "'relu' for arch='cnn' (its stages are conv-BN-ReLU)",
            repr(options.activation),
            "leave it out",
        )


def train_data(options: TrainOptions, data: Dataset, seed: int) -> TrainData:
    split = split_dataset(data, TEST_SIZE, seed=seed)
    if options.arch == "cnn":  # digits rows are row-major 8×8 images
        image = lambda d: Dataset(d.name, d.x.reshape(-1, 1, 8, 8), d.y, d.task, d.n_classes)  # noqa: E731
        split = Split(image(split.train), image(split.test))
    loss = default_loss(data)
    return TrainData(split, loss, get_loss(loss).metric_name)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, loss: str) -> tuple[float, float]:
    """(mean loss, task metric) over the dataset, in eval mode (BatchNorm uses its running stats);
    the model's mode is restored."""
    was_training = model.training
    model.eval()
    loss_fn, metric = torch_loss(loss), get_loss(loss).metric
    total_loss = total_metric = 0.0
    try:
        for xb, yb in loader(data, 1024):
            out = model(xb)
            total_loss += float(loss_fn(out, yb)) * len(xb)
            total_metric += metric(out, yb) * len(xb)
    finally:
        model.train(was_training)
    n = len(data.x)
    return total_loss / n, total_metric / n


def _own_parameter_layers(model: nn.Module) -> list[str]:
    """Names of the modules that hold parameters of their own (the layers shadow mode measures)."""
    return [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _final(model: nn.Module, data: Dataset, loss: str) -> float | None:
    """The task metric, or None when the model's loss is not finite (its metric would mean nothing)."""
    value, metric = evaluate(model, data, loss)
    return metric if math.isfinite(value) and math.isfinite(metric) else None


@dataclass
class _Steps:
    """What a run counts as it goes: steps, the shadow-mode angles per layer, where it stopped."""

    layers: list[str]
    every: int  # shadow mode measures every `every` steps
    shadow: bool
    step: int = 0
    angles: dict[str, list[float | None]] = field(default_factory=dict)
    shadow_steps: list[int] = field(default_factory=list)
    stopped: dict[str, Any] | None = None

    def measured(self, watch: Shadow) -> None:
        self.shadow_steps.append(self.step)
        for name in self.layers:
            self.angles.setdefault(name, []).append(_finite(watch.angles.get(name, [math.nan])[-1]))


def _epoch(model: nn.Module, optimizer: Any, loss_fn: Any, batches: Any, run: _Steps, epoch: int) -> float:
    """One epoch's steps; the summed training loss (run.stopped set at a non-finite loss)."""
    total = 0.0
    for xb, yb in batches:
        optimizer.zero_grad(set_to_none=True)
        measure = run.shadow and run.step % run.every == 0
        with Shadow.watching(model, run.layers) if measure else nullcontext() as watch:
            value = loss_fn(model(xb), yb)
            if not torch.isfinite(value):
                run.stopped = {"step": run.step, "epoch": epoch, "loss": str(value.item())}
                break
            value.backward()
        if watch is not None:
            run.measured(watch)
        optimizer.step()
        total += value.item() * len(xb)
        run.step += 1
    return total


def train_one(
    model: nn.Module,
    method: str,
    data: TrainData,
    options: TrainOptions,
    seed: int,
    advance: Any = None,
) -> dict[str, Any]:
    """Train `model` with `method`'s backward; the run's record (see the module docstring)."""
    loss_fn = torch_loss(data.loss)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    train = data.split.train
    steps_per_epoch = math.ceil(len(train.x) / options.batch_size)
    layers = _own_parameter_layers(model)
    run = _Steps(
        layers, max(1, steps_per_epoch // SHADOW_POINTS), options.shadow, angles={n: [] for n in layers}
    )
    epochs: list[dict[str, Any]] = []
    train_time = 0.0
    kept = _snapshot(model)  # the last finished epoch's weights: what a stopped run keeps
    model.train()
    with torch_threads(options.threads), linear_backward(model, method, seed=seed) as lb:
        for epoch in range(options.epochs):
            start = time.perf_counter()
            batches = loader(train, options.batch_size, shuffle=True, seed=1000 * seed + epoch)
            total = _epoch(model, optimizer, loss_fn, batches, run, epoch)
            seconds = time.perf_counter() - start
            train_time += seconds
            if run.stopped is not None:
                break
            kept = _snapshot(model)
            test_loss, test_metric = evaluate(model, data.split.test, data.loss)
            epochs.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": total / len(train.x),
                    "test_loss": _finite(test_loss),
                    "test_metric": _finite(test_metric),
                    "steps_per_s": steps_per_epoch / seconds,
                }
            )
            if advance is not None:
                advance(method, seed, epochs[-1])
    if run.stopped is not None:
        model.load_state_dict(kept)
    model.eval()
    model.zero_grad(set_to_none=True)
    with torch_threads(options.threads):
        final_train, final_test = (_final(model, part, data.loss) for part in (train, data.split.test))
    kinds = {n: type(model.get_submodule(n)).__name__ for n in layers}
    step, stopped, angles, shadow_steps = run.step, run.stopped, run.angles, run.shadow_steps
    return {
        "method": method,
        "seed": seed,
        "steps": step,
        "steps_per_s": step / train_time if train_time > 0 else None,
        "epochs": epochs,
        "final": {"train_metric": final_train, "test_metric": final_test},
        "stopped": stopped,
        # ridge: refits per block (0: the block passed the exact gradient throughout); blocks with
        # nothing below them that wants a gradient need no map and are left out
        "ridge_fits": {label: state.fits for label, state in lb.ridge.items() if state.needed} or None,
        "alignment": {"steps": shadow_steps, "layers": angles, "kinds": kinds} if options.shadow else None,
    }


def run_train(options: TrainOptions, console: Console | None = None) -> dict[str, Any]:
    """Validate, train every (seed, method) pair, print the table, write results.json and plots."""
    from .train_backward_report import print_summary, summarize, write_outputs

    console = console or Console()
    prepared = prepare(options)
    methods = prepared.methods
    with staged_run_dir(options.out, options.overwrite) as out:
        seeds = [options.seed + k for k in range(options.seeds)]
        runs = []
        total = len(seeds) * len(methods) * options.epochs
        with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task("training", total=total)

            def advance(method: str, seed: int, epoch: dict[str, Any]) -> None:
                progress.update(
                    task,
                    advance=1,
                    description=f"{method} seed {seed} epoch {epoch['epoch']}: "
                    f"loss {epoch['train_loss']:.4f}",
                )

            for seed in seeds:
                split = train_data(options, prepared.dataset, seed)
                for method in methods:
                    runs.append(train_one(prepared.build(seed), method, split, options, seed, advance))
                    unfitted = [b for b, fits in (runs[-1]["ridge_fits"] or {}).items() if fits == 0]
                    if unfitted:
                        console.print(
                            f"[yellow]{method} seed {seed}: blocks {', '.join(unfitted)} were never refitted "
                            f"in {runs[-1]['steps']} steps: they passed the exact gradient[/yellow]"
                        )
                    if runs[-1]["stopped"] is not None:
                        s, kept = runs[-1]["stopped"], len(runs[-1]["epochs"])
                        console.print(
                            f"[yellow]{method} seed {seed}: loss {s['loss']} at step {s['step']} "
                            f"(epoch {s['epoch'] + 1}); stopped, keeping {kept} finished epochs[/yellow]"
                        )
        metric = get_loss(default_loss(prepared.dataset)).metric_name
        results = {
            "options": asdict(options),
            "optimizer": f"Adam(lr={options.lr})",
            "batch_size": options.batch_size,
            "test_size": TEST_SIZE,
            "metric": metric,
            "methods": methods,
            "versions": run_versions(),
            "runs": runs,
            "summary": summarize(runs, methods, metric),
        }
        print_summary(console, results)
        if out is not None:
            write_outputs(console, results, out)
    return results
