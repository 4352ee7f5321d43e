"""The stand-in methods for a block: one registry, read by compare, abstract and the CLI.

Each method fits one LinearMap for a block in one direction from a training Collection, or
says why it does not apply (a `NotApplicable` value, not an exception to be parsed).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BacklensError, check_choice, fail
from ..linear import methods as names
from ..linear.analytic import DIRECTIONS, identity
from ..linear.linear_map import LinearMap
from ..linear.moments import Moments
from ..linear.ridge import EffectiveSamplesWarning, reduced_rank, ridge
from .analytic import expected_mask, mean_jacobian_parts, weights_only
from .block import Block
from .collect import Collection

__all__ = [
    "Method",
    "NotApplicable",
    "METHODS",
    "METHOD_CHOICES",
    "DEFAULT_METHODS",
    "parse_method",
    "parse_methods",
    "fit_method",
    "fit_or_explain",
]


@dataclass(frozen=True)
class Method:
    """A method as asked for: its registry name and, for reduced-rank, the rank ("reduced-rank:8")."""

    name: str
    rank: int | None = None

    @property
    def label(self) -> str:
        return self.name if self.rank is None else f"{self.name}:{self.rank}"


@dataclass(frozen=True)
class NotApplicable:
    """`method` cannot stand in for this block in this direction; `reason` says why."""

    method: str
    direction: str
    reason: str

    def error(self) -> BacklensError:
        return fail(
            "methods",
            f"a method that applies to the block ({self.method}, {self.direction})",
            self.reason,
            "drop that method for this block",
        )


Fit = Callable[[Method, Block, Collection, str], "LinearMap | NotApplicable"]


def _moments(collection: Collection, direction: str) -> Moments:
    moments = collection.forward if direction == "forward" else collection.backward
    if moments is None:
        raise fail(
            "direction",
            "a direction the collection holds",
            direction,
            "collect with direction='both' or the one you fit",
        )
    return moments


# A backward map is linear in the gradient (zero in, zero out): no intercept. Fitted with one,
# near-zero gradients of well-fit samples come back as the bias, pointing anywhere.
def _ridge(method: Method, block: Block, collection: Collection, direction: str) -> LinearMap:
    return ridge(_moments(collection, direction), alpha="gcv", intercept=direction == "forward")


PROBES = 4  # probe cotangents per input where ridge-probe is asked for and nothing else says


def _backward_only(method: Method, direction: str) -> NotApplicable | None:
    if direction == "backward":
        return None
    reason = f"{method.name} fits backward maps only (pairs at the block's output): use ridge forward"
    return NotApplicable(method.label, direction, reason)


def _backward_ridge(
    method: Method, direction: str, moments: Moments | None, missing: str, name: str, info: dict[str, Any]
) -> LinearMap | NotApplicable:
    """Backward ridge, no intercept, on pairs other than the gradients themselves."""
    if (skip := _backward_only(method, direction)) is not None:
        return skip
    if moments is None:
        return NotApplicable(method.label, direction, f"{method.name} needs {missing}")
    fitted = ridge(moments, alpha="gcv", intercept=False)
    fitted.method = name
    fitted.info.update(info)
    return fitted


def _ridge_probe(
    method: Method, block: Block, collection: Collection, direction: str
) -> LinearMap | NotApplicable:
    """Backward ridge on (v, v·J) probe pairs: an estimate of E[J] from isotropic cotangents."""
    missing = f"probe pairs: collect with probes=K (e.g. {PROBES})"
    info = {"fitted_on": "probe", "probes": collection.probes}
    return _backward_ridge(method, direction, collection.probe, missing, names.RIDGE_PROBE, info)


def _ridge_direction(
    method: Method, block: Block, collection: Collection, direction: str
) -> LinearMap | NotApplicable:
    """Backward ridge on the gradient pairs scaled by 1/‖grad_out‖: every row counts once."""
    missing = "direction-weighted pairs: collect with weighting='direction'"
    info = {"fitted_on": "backward", "weighting": "direction"}
    return _backward_ridge(method, direction, collection.weighted, missing, names.RIDGE_DIRECTION, info)


def _reduced_rank(method: Method, block: Block, collection: Collection, direction: str) -> LinearMap:
    assert method.rank is not None
    moments = _moments(collection, direction)
    return reduced_rank(moments, rank=method.rank, alpha="gcv", intercept=direction == "forward")


def _chain_only(fit: Callable[[Block, Collection, str], LinearMap]) -> Fit:
    def checked(
        method: Method, block: Block, collection: Collection, direction: str
    ) -> LinearMap | NotApplicable:
        why = block.not_a_chain()
        if why is not None:
            reason = (
                f"{method.name} needs a Linear/activation chain; block {block.label} has {why}: "
                "use mean-jacobian or ridge"
            )
            return NotApplicable(method.label, direction, reason)
        if collection.inputs.ndim > 3 or (collection.inputs.ndim == 3 and collection.positions != "shared"):
            shape = tuple(collection.inputs.shape[1:])
            reason = f"{method.name} acts on rows of the chain's features; got inputs {shape}"
            return NotApplicable(method.label, direction, reason)
        return fit(block, collection, direction)

    return checked


def _mean_jacobian(method: Method, block: Block, collection: Collection, direction: str) -> LinearMap:
    # one J̄ serves both directions: computed once per collection
    if "mean-jacobian" not in collection.cache:
        parts = mean_jacobian_parts(block, collection.inputs, collection.positions, collection.call)
        collection.cache["mean-jacobian"] = parts
    return collection.cache["mean-jacobian"].map(direction)


def _identity(
    method: Method, block: Block, collection: Collection, direction: str
) -> LinearMap | NotApplicable:
    d_in, d_out = collection.in_width, collection.out_width
    if d_in != d_out:
        reason = f"identity only for a block whose input and output widths match, got {d_in} → {d_out}"
        return NotApplicable(method.label, direction, reason)
    return identity(d_in)


METHODS: dict[str, Fit] = {
    names.RIDGE: _ridge,
    names.RIDGE_PROBE: _ridge_probe,
    names.RIDGE_DIRECTION: _ridge_direction,
    names.REDUCED_RANK: _reduced_rank,
    names.EXPECTED_MASK: _chain_only(lambda b, c, d: expected_mask(b, c.inputs, d, c.call)),
    names.MEAN_JACOBIAN: _mean_jacobian,
    names.WEIGHTS_ONLY: _chain_only(lambda b, c, d: weights_only(b, d, c.call)),
    names.IDENTITY: _identity,
}
# How each is written where a choice is made (the CLI's help is built from this).
METHOD_CHOICES = tuple(f"{n}:R" if n == names.REDUCED_RANK else n for n in METHODS)
DEFAULT_METHODS = (names.RIDGE, names.EXPECTED_MASK, names.MEAN_JACOBIAN, names.WEIGHTS_ONLY, names.IDENTITY)


def parse_method(text: str) -> Method:
    """'ridge', 'reduced-rank:8', ... checked against the registry."""
    name, _, rank = text.strip().partition(":")
    if name == names.REDUCED_RANK:
        if not rank.isdigit() or int(rank) < 1:
            raise fail(
                "methods", "reduced-rank:R with a positive rank R", repr(text), "write e.g. reduced-rank:8"
            )
        return Method(name, int(rank))
    check_choice("methods", text.strip(), [n for n in METHOD_CHOICES])
    return Method(name)


def parse_methods(methods: str | Sequence[str]) -> list[Method]:
    """'ridge,reduced-rank:8' or a list of such names."""
    texts = methods.split(",") if isinstance(methods, str) else list(methods)
    if not texts or any(not isinstance(t, str) for t in texts):
        raise fail("methods", "method names like 'ridge,reduced-rank:8'", repr(methods), "list the methods")
    return [parse_method(t) for t in texts]


def fit_or_explain(
    method: Method | str, block: Block, collection: Collection, direction: str
) -> LinearMap | NotApplicable:
    """The method's map for the block in `direction`, or why it does not apply.

    A method that fails inside torch for this block (an operation without a derivative, say)
    does not apply either: the reason carries torch's message, and other methods go on.
    """
    method = parse_method(method) if isinstance(method, str) else method
    check_choice("direction", direction, DIRECTIONS)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EffectiveSamplesWarning)
            fitted = METHODS[method.name](method, block, collection, direction)
    except RuntimeError as error:  # torch's own failures; BacklensError (a ValueError) passes
        return NotApplicable(method.label, direction, f"failed inside torch: {str(error).splitlines()[0]}")
    finally:
        _rewarn(caught, f"block {block.label}, {method.label} ({direction}): ")
    if isinstance(fitted, LinearMap):
        fitted.info.setdefault("positions", collection.positions)
    return fitted


def _rewarn(caught: list[warnings.WarningMessage], context: str) -> None:
    """Warnings from a fit, passed on; EffectiveSamplesWarning names the block, method, direction,
    so that the CLI prints one line per affected fit."""
    for w in caught:
        if issubclass(w.category, EffectiveSamplesWarning):
            warnings.warn(context + str(w.message), w.category, stacklevel=4)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def fit_method(method: Method | str, block: Block, collection: Collection, direction: str) -> LinearMap:
    """The method's map for the block in `direction`; raises BacklensError if it does not apply."""
    fitted = fit_or_explain(method, block, collection, direction)
    if isinstance(fitted, NotApplicable):
        raise fitted.error()
    return fitted
