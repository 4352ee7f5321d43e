"""Fit every stand-in method for a block on a train split; score each on test and train, and in use."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from ..byhand.losses import Loss, get_loss
from ..errors import check_choice
from ..linear import methods as names
from ..linear.linear_map import LinearMap
from ..linear.scores import score
from . import inuse
from .block import Block
from .collect import DIRECTIONS, Collection, Step, collect
from .methods import DEFAULT_METHODS, PROBES, Method, NotApplicable, fit_or_explain, parse_methods

__all__ = ["compare", "CompareRow", "CompareRows", "Fits", "fit_all"]


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
    n: int | None = None  # rows the map was fitted on (None for maps not fitted on pairs)
    n_eff: float | None = None  # their effective sample size, (Σ‖x‖²)²/Σ‖x‖⁴ (Moments.n_eff)
    note: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def _repr_html_(self) -> str:
        from .display import compare_html

        return compare_html([self])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CompareRows(list[CompareRow]):
    """The rows of one compare: a plain list that shows itself as one table in Jupyter."""

    def _repr_html_(self) -> str:
        from .display import compare_html

        return compare_html(self)


@dataclass
class Fits:
    """What `fit_all` made: maps by (method label, direction), and those that do not apply."""

    maps: dict[tuple[str, str], LinearMap] = field(default_factory=dict)
    skipped: dict[tuple[str, str], NotApplicable] = field(default_factory=dict)


def _directions(direction: str) -> list[str]:
    return ["forward", "backward"] if direction == "both" else [direction]


def fit_all(block: Block, collection: Collection, methods: Sequence[str | Method], direction: str) -> Fits:
    """Every method in every direction asked: the maps, and for those that cannot apply, why."""
    check_choice("direction", direction, DIRECTIONS)
    fits = Fits()
    for method in parse_methods([m.label if isinstance(m, Method) else m for m in methods]):
        for d in _directions(direction):
            fitted = fit_or_explain(method, block, collection, d)
            if isinstance(fitted, NotApplicable):
                fits.skipped[(method.label, d)] = fitted
            else:
                fits.maps[(method.label, d)] = fitted
    return fits


def _scores(lm: LinearMap, collection: Collection, direction: str) -> tuple[float, float, float | None]:
    moments = collection.forward if direction == "forward" else collection.backward
    exact = score(lm, moments=moments)
    X, Y = collection.pairs[direction]
    cosine = score(lm, X, Y).cosine if len(X) else None
    return float(exact.rel_error), float(exact.r2), cosine


@dataclass(frozen=True)
class _Use:
    """How a block is measured in use: the task metric of a named loss on (x, y) batches, or,
    with `step`, the step's loss on any batch."""

    loss: Loss
    step: Step | None
    distributed: bool | None = None

    @property
    def metric_name(self) -> str:
        return "loss" if self.step is not None else self.loss.metric_name

    def forward(self, block: Block, lm: LinearMap | None, loader: Iterable) -> float:
        if self.step is not None:
            return inuse.forward_metric(block, lm, loader, step=self.step, distributed=self.distributed)
        return inuse.forward_metric(block, lm, loader, self.loss.metric, distributed=self.distributed)

    def backward(self, block: Block, lm: LinearMap, loader: Iterable) -> float | None:
        if self.step is not None:
            return inuse.backward_cosine(block, lm, loader, step=self.step, distributed=self.distributed)
        return inuse.backward_cosine(block, lm, loader, self.loss.torch_loss, distributed=self.distributed)


def _intact_row(block: Block, test_loader: Iterable, use: _Use) -> CompareRow:
    return CompareRow(
        block.label,
        "intact",
        "forward",
        test_rel_error=0.0,
        test_r2=1.0,
        test_cosine=1.0,
        in_use=use.forward(block, None, test_loader),
        in_use_metric=use.metric_name,
    )


def _method_row(
    block: Block,
    label: str,
    direction: str,
    lm: LinearMap,
    train: Collection,
    test: Collection,
    test_loader: Iterable,
    use: _Use,
) -> CompareRow:
    row = CompareRow(block.label, label, direction)
    row.test_rel_error, row.test_r2, row.test_cosine = _scores(lm, test, direction)
    row.train_rel_error, row.train_r2, row.train_cosine = _scores(lm, train, direction)
    row.info = {k: v for k, v in lm.info.items() if isinstance(v, (int, float, str, type(None)))}
    if "n_eff" in lm.info:  # fitted on pairs (ridge and its kind): how many, and how many in effect
        row.n, row.n_eff = lm.info.get("n"), lm.info["n_eff"]
    try:
        if direction == "forward":
            row.in_use, row.in_use_metric = use.forward(block, lm, test_loader), use.metric_name
        else:
            row.in_use, row.in_use_metric = use.backward(block, lm, test_loader), "grad cosine"
    except RuntimeError as error:  # torch failed for this block in use: say so, keep the table
        row.note = f"in use failed inside torch: {str(error).splitlines()[0]}"
    return row


def _consistency(fits: Fits, method: str) -> float | None:
    """‖M_backward − M_forwardᵀ‖ / ‖M_forward‖: 0 when the two maps are exact adjoints."""
    forward, backward = fits.maps.get((method, "forward")), fits.maps.get((method, "backward"))
    if forward is None or backward is None:
        return None
    forward_matrix = forward.matrix.double()
    gap = (backward.matrix.double() - forward_matrix.T).norm()
    return float(gap / forward_matrix.norm().clamp_min(1e-300))


def compare(
    model: nn.Module,
    block: Block,
    train_loader: Iterable,
    test_loader: Iterable,
    methods: Sequence[str | Method] = DEFAULT_METHODS,
    direction: str = "both",
    loss: str = "mse",
    show_progress: bool = True,
    train: Collection | None = None,
    test: Collection | None = None,
    fitted: Fits | None = None,
    step: Step | None = None,
    positions: str | None = None,
    probes: int | None = None,
    distributed: bool | None = None,
) -> CompareRows:
    """Fit each method on the train split, score it on test and train, and measure it in use.

    In use, forward: the loss's task metric (`byhand.losses.LOSSES`: accuracy for 'ce' and
    'bce', MSE for 'mse') with the block replaced; the intact model gets a row of its own
    (method 'intact'). In use, backward: the mean cosine between true parameter gradients below
    the block and those through the backward map. `train`, `test` and `fitted` (from `fit_all`)
    skip collecting or fitting again. A method that does not apply gets a row with its reason
    in `note` and no scores. `step(model, batch) -> loss` runs batches of any form (then the
    forward in-use figure is that loss); `positions` as in `collect`. `probes`: probe cotangents
    per training input for ridge-probe (default PROBES = 4 when it is asked for, else none).
    Every row fitted on pairs carries n and n_eff; a fit with n_eff below its input width warns
    (EffectiveSamplesWarning, naming block, method, n, n_eff and d). In an initialised process
    group (`distributed=None`: detected; False: this process alone) every rank passes its own
    shards: collections are merged and in-use means are over every rank's test batches.
    """
    check_choice("direction", direction, DIRECTIONS)
    parsed = parse_methods([m.label if isinstance(m, Method) else m for m in methods])
    use = _Use(get_loss(loss), step, distributed)
    options = {
        "show_progress": show_progress,
        "step": step,
        "positions": positions,
        "distributed": distributed,
    }
    wanted = {m.name for m in parsed}
    backward = direction in ("backward", "both")
    extra = {
        "probes": (PROBES if probes is None else probes) if backward and names.RIDGE_PROBE in wanted else 0,
        "weighting": "direction" if backward and names.RIDGE_DIRECTION in wanted else None,
    }
    train = train or collect(model, block, train_loader, direction, loss, **options, **extra)  # type: ignore[arg-type]
    test = test or collect(model, block, test_loader, direction, loss, **options)  # type: ignore[arg-type]
    fits = fitted or fit_all(block, train, parsed, direction)
    rows = [_intact_row(block, test_loader, use)] if direction in ("forward", "both") else []
    for method in parsed:
        for d in _directions(direction):
            key = (method.label, d)
            if key in fits.maps:
                rows.append(
                    _method_row(block, method.label, d, fits.maps[key], train, test, test_loader, use)
                )
            else:
                skipped = fits.skipped.get(key)
                rows.append(CompareRow(block.label, method.label, d, note=skipped.reason if skipped else ""))
    for row in rows:
        row.consistency = _consistency(fits, row.method)
    return CompareRows(rows)
