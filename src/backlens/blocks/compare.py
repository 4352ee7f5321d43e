"""Fit every stand-in method for a block on a train split; score each on test and train, and in use."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from ..errors import BacklensError, check_choice, fail
from ..linear.analytic import expected_mask, identity, mean_jacobian, weights_only
from ..linear.linear_map import LinearMap
from ..linear.ridge import reduced_rank, ridge
from ..linear.scores import score
from ..workflows.train import task_loss
from . import inuse
from .block import Block
from .collect import Collection, collect

__all__ = ["compare", "CompareRow", "fit_all", "fit_method", "parse_methods", "METHODS"]

METHODS = ("ridge", "reduced-rank:R", "expected-mask", "mean-jacobian", "weights-only", "identity")
CHAIN_ONLY = ("expected-mask", "weights-only")
# The task metric with the block replaced, by loss: class indices, 0/1 targets, real values.
IN_USE_METRICS: dict[str, tuple[str, Callable]] = {
    "ce": ("accuracy", inuse.accuracy),
    "bce": ("accuracy", inuse.binary_accuracy),
    "mse": ("mse", inuse.mse),
}


@dataclass
class CompareRow:
    """One method in one direction for one block: held-out and fitting scores, and in use."""

    block: str
    method: str
    direction: str
    test_rel_error: float | None = None
    test_r2: float | None = None
    test_cosine: float | None = None
    train_rel_error: float | None = None
    train_r2: float | None = None
    train_cosine: float | None = None
    in_use: float | None = None
    in_use_metric: str = ""
    consistency: float | None = None
    note: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_methods(methods: str | Sequence[str]) -> list[str]:
    """'ridge,reduced-rank:8' or a list; each checked against METHODS."""
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    for name in names:
        base = name.split(":")[0]
        if base == "reduced-rank":
            if not name.partition(":")[2].isdigit() or int(name.partition(":")[2]) < 1:
                raise fail(
                    "methods",
                    "reduced-rank:R with a positive rank R",
                    repr(name),
                    "write e.g. reduced-rank:8",
                )
        else:
            check_choice("methods", name, [m for m in METHODS if m != "reduced-rank:R"] + ["reduced-rank:R"])
    return names


def fit_method(method: str, block: Block, collection: Collection, direction: str) -> LinearMap:
    """Fit one method from a training Collection for one direction."""
    moments = collection.forward if direction == "forward" else collection.backward
    if moments is None:
        raise fail(
            "direction",
            "a direction the collection holds",
            direction,
            "collect with direction='both' or the one you fit",
        )
    # A backward map is linear in the gradient (zero in, zero out): no intercept. Fitted with
    # one, near-zero gradients of well-fit samples come back as the bias, pointing anywhere.
    intercept = direction == "forward"
    if method == "ridge":
        return ridge(moments, alpha="gcv", intercept=intercept)
    if method.startswith("reduced-rank"):
        return reduced_rank(moments, rank=int(method.split(":")[1]), alpha="gcv", intercept=intercept)
    if method in CHAIN_ONLY and not block.is_linear_chain():
        raise fail(
            "methods",
            "mean-jacobian or ridge for a block that is not a Linear/activation chain",
            f"{method} for block {block.label}",
            "drop that method for this block",
        )
    layers = block.layers()
    if method == "expected-mask":
        return expected_mask(layers, collection.inputs, direction=direction)
    if method == "mean-jacobian":
        return mean_jacobian(layers, collection.inputs, direction=direction)
    if method == "weights-only":
        return weights_only(layers, direction=direction)
    if method == "identity":
        d_in, d_out = collection.inputs.shape[1], _out_width(collection)
        if d_in != d_out:
            raise fail(
                "methods",
                "identity only for a block whose input and output widths match",
                f"{d_in} → {d_out}",
                "drop identity for this block",
            )
        return identity(d_in)
    raise fail("methods", "one of " + ", ".join(METHODS), repr(method), "pick a listed method")


def _out_width(collection: Collection) -> int:
    moments = collection.forward or collection.backward
    assert moments is not None
    return moments.d_out if collection.forward is not None else moments.d_in


def _scores(lm: LinearMap, collection: Collection, direction: str) -> tuple[float, float, float | None]:
    moments = collection.forward if direction == "forward" else collection.backward
    exact = score(lm, moments=moments)
    X, Y = collection.pairs[direction]
    cosine = score(lm, X, Y).cosine if len(X) else None
    return float(exact.rel_error), float(exact.r2), cosine


def compare(
    model: nn.Module,
    block: Block,
    train_loader: Iterable,
    test_loader: Iterable,
    methods: Sequence[str] = (
        "ridge",
        "expected-mask",
        "mean-jacobian",
        "weights-only",
        "identity",
    ),
    direction: str = "both",
    loss: str = "mse",
    show_progress: bool = False,
    train: Collection | None = None,
    test: Collection | None = None,
    fitted: tuple[dict[tuple[str, str], LinearMap], dict[tuple[str, str], str]] | None = None,
) -> list[CompareRow]:
    """Fit each method on the train split, score it on test and train, and measure it in use.

    In use, forward: the task metric (accuracy for 'ce' and 'bce', MSE for 'mse') with the block replaced;
    the intact model gets a row of its own (method 'intact'). In use, backward: the mean cosine
    between true parameter gradients below the block and those through the backward map.
    `train`, `test` and `fitted` (from `fit_all`) skip collecting or fitting again.
    """
    check_choice("direction", direction, ("forward", "backward", "both"))
    methods = parse_methods(methods)
    train = train or collect(model, block, train_loader, direction, loss, show_progress=show_progress)
    test = test or collect(model, block, test_loader, direction, loss, show_progress=show_progress)
    directions = ["forward", "backward"] if direction == "both" else [direction]
    loss_fn = task_loss(loss)
    metric_name, metric = IN_USE_METRICS[loss]
    rows: list[CompareRow] = []
    if "forward" in directions:
        rows.append(
            CompareRow(
                block.label,
                "intact",
                "forward",
                test_rel_error=0.0,
                test_r2=1.0,
                test_cosine=1.0,
                in_use=inuse.forward_metric(block, None, test_loader, metric),
                in_use_metric=metric_name,
            )
        )
    maps, notes = fitted or fit_all(block, train, methods, direction)
    for method in methods:
        for d in directions:
            row = CompareRow(block.label, method, d, note=notes.get((method, d), ""))
            if (method, d) not in maps:
                rows.append(row)
                continue
            lm = maps[(method, d)]
            row.test_rel_error, row.test_r2, row.test_cosine = _scores(lm, test, d)
            row.train_rel_error, row.train_r2, row.train_cosine = _scores(lm, train, d)
            row.info = {k: v for k, v in lm.info.items() if isinstance(v, (int, float, str, type(None)))}
            if d == "forward":
                row.in_use, row.in_use_metric = (
                    inuse.forward_metric(block, lm, test_loader, metric),
                    metric_name,
                )
            else:
                row.in_use, row.in_use_metric = (
                    inuse.backward_cosine(block, lm, test_loader, loss_fn),
                    "grad cosine",
                )
            rows.append(row)
    for row in rows:
        pair = (maps.get((row.method, "forward")), maps.get((row.method, "backward")))
        if pair[0] is not None and pair[1] is not None:
            forward_matrix = pair[0].matrix.double()
            row.consistency = float(
                (pair[1].matrix.double() - forward_matrix.T).norm() / forward_matrix.norm().clamp_min(1e-300)
            )
    return rows


def fit_all(
    block: Block, collection: Collection, methods: Sequence[str], direction: str
) -> tuple[dict[tuple[str, str], LinearMap], dict[tuple[str, str], str]]:
    """Every method in every direction asked: the maps, and for those that cannot apply, why."""
    maps: dict[tuple[str, str], LinearMap] = {}
    notes: dict[tuple[str, str], str] = {}
    for method in parse_methods(methods):
        for d in ["forward", "backward"] if direction == "both" else [direction]:
            try:
                maps[(method, d)] = fit_method(method, block, collection, d)
            except BacklensError as error:  # a method that cannot apply is reported, not dropped
                notes[(method, d)] = str(error).split(". Fix:")[0].removeprefix("methods: expected ")
    return maps, notes
