"""Ridge and reduced-rank ridge from Moments, with α fixed, by exact GCV, or on held-out Moments."""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.linalg import lapack

from ..errors import BacklensWarning, check_positive_int, describe, fail
from .linear_map import LinearMap
from .methods import REDUCED_RANK, RIDGE
from .moments import Moments
from .ridge_system import Eig, System, eigen, gcv_scores, held_out_sse, normal_system, unit_scaled

__all__ = [
    "ridge",
    "reduced_rank",
    "DEFAULT_GRID",
    "AlphaAtGridEdgeWarning",
    "SingularSystemWarning",
    "EffectiveSamplesWarning",
    "effective_samples_message",
]

# The system and its formulas: ridge_system.py.
# α is relative to tr(A)/d, the mean eigenvalue: gradients on a well-fit model are tiny, so an
# absolute α would be wrong by orders of magnitude.
DEFAULT_GRID: tuple[float, ...] = tuple(float(a) for a in np.logspace(-8, 2, 20))
ALPHA_RULES = ("gcv", "validation")


class AlphaAtGridEdgeWarning(BacklensWarning):
    """The chosen α is the smallest or largest on the grid: the best α may lie beyond it."""


class SingularSystemWarning(BacklensWarning):
    """XᵀX + αI is singular: the minimum-norm solution (pseudo-inverse) is returned."""


class EffectiveSamplesWarning(BacklensWarning):
    """The fit's effective sample size n_eff = (Σ‖x‖²)²/Σ‖x‖⁴ is below its number of input
    features d: a few samples carry XᵀX, the map can interpolate them, and its error on its own
    samples says little; judge it on held-out data."""


def effective_samples_message(n: int, n_eff: float, d: int) -> str:
    """'fitted on 1,258 samples, effectively 11 (< 128 input features): ...'."""
    return (
        f"fitted on {n:,} samples, effectively {n_eff:,.0f} (< {d:,} input features): "
        "the map can interpolate them; see held-out"
    )


def _warn_effective_samples(m: Moments) -> None:
    n_eff = m.n_eff
    if n_eff is not None and n_eff < m.d_in:
        warnings.warn(effective_samples_message(m.n, n_eff, m.d_in), EffectiveSamplesWarning, stacklevel=4)


def _check_moments(argument: str, m: Any, least: int = 1) -> Moments:
    if not isinstance(m, Moments):
        raise fail(
            argument,
            "a backlens.Moments",
            describe(m),
            "accumulate one with Moments(d_in, d_out).update(X, Y)",
        )
    if m.n < least:
        raise fail(
            argument,
            f"at least {least} sample(s)",
            f"n_samples = {m.n}",
            "update it with data first",
        )
    return m


def _grid(grid: Any) -> np.ndarray:
    try:
        values = np.asarray(DEFAULT_GRID if grid is None else grid, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        values = np.array([np.nan])  # strings, None inside, ragged lists: refused below
    if (
        isinstance(grid, (str, bytes))
        or values.size == 0
        or not np.isfinite(values).all()
        or (values <= 0).any()
    ):
        raise fail(
            "grid",
            "a non-empty sequence of positive finite numbers (relative to tr(XᵀX)/d)",
            repr(grid),
            "pass e.g. numpy.logspace(-8, 2, 20), or leave it None",
        )
    return np.unique(values)


ALPHA_EXPECTED = "a finite number >= 0, 'gcv' or 'validation'"


@dataclass
class _AlphaChoice:
    """The α to solve with, how it was chosen (for LinearMap.info), and the eigendecomposition
    that choosing it needed (None for a fixed α), so the solve can reuse it."""

    alpha: float  # in the system's units (absolute α / sx²)
    info: dict[str, Any]
    eig: Eig | None


def _resolve_alpha(s: System, alpha: Any, validation: Any, grid: Any) -> _AlphaChoice:
    """The one place α is decided: a number, 'gcv', or 'validation'."""
    if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool):
        choice = _fixed_alpha(alpha, validation, grid)
        choice.alpha /= s.sx**2
        return choice
    if alpha not in ALPHA_RULES:
        raise fail("alpha", ALPHA_EXPECTED, repr(alpha), "pass one of those")
    return _alpha_on_grid(s, alpha, validation, grid)


def _fixed_alpha(alpha: numbers.Real, validation: Any, grid: Any) -> _AlphaChoice:
    """A given α: finite and ≥ 0, with nothing to choose it on."""
    value = float(alpha)
    if not (np.isfinite(value) and value >= 0):
        raise fail("alpha", ALPHA_EXPECTED, repr(alpha), "pass a non-negative ridge penalty")
    if validation is not None or grid is not None:
        raise fail(
            "validation/grid",
            "None with a numeric alpha",
            "a value",
            "use alpha='validation' or alpha='gcv' to choose α on them",
        )
    return _AlphaChoice(value, {"alpha_source": "fixed"}, None)


def _alpha_on_grid(s: System, rule: str, validation: Any, grid: Any) -> _AlphaChoice:
    """The grid α with the least criterion under `rule` ('gcv' or 'validation')."""
    rel = _grid(grid)
    alphas = rel * s.scale
    e = eigen(s)
    scores = _criterion(s, e, rule, validation, alphas)
    best = _best_index(scores, rule, s.n)
    _warn_at_grid_edge(best, rel, rule)
    info = {
        "alpha_source": rule,
        "grid": (alphas * s.sx**2).tolist(),
        "grid_relative": rel.tolist(),
        # GCV and the held-out SSE are sums of squares of Y: back in the data's units
        "criterion": [float(v) * s.sy**2 if np.isfinite(v) else None for v in scores],
    }
    return _AlphaChoice(float(alphas[best]), info, e)


def _criterion(s: System, e: Eig, rule: str, validation: Any, alphas: np.ndarray) -> np.ndarray:
    """For each α: GCV(α) for 'gcv', the held-out SSE for 'validation'. Lower is better."""
    if rule == "gcv":
        if validation is not None:
            raise fail(
                "validation",
                "None with alpha='gcv'",
                describe(validation),
                "use alpha='validation'",
            )
        return gcv_scores(s, e, alphas)
    return held_out_sse(s, e, _check_validation(s, validation), alphas)


def _check_validation(s: System, validation: Any) -> Moments:
    """`validation` if it is non-empty Moments of the same shapes as the fitting ones."""
    val = _check_moments("validation", validation)
    if (val.d_in, val.d_out) != (s.A.shape[0], s.B.shape[1]):
        raise fail(
            "validation",
            f"Moments with d_in={s.A.shape[0]}, d_out={s.B.shape[1]}",
            f"d_in={val.d_in}, d_out={val.d_out}",
            "accumulate held-out pairs of the same block",
        )
    return val


def _best_index(scores: np.ndarray, rule: str, n: int) -> int:
    """Where the least finite score is; raise when no α has one (too few samples)."""
    if not np.isfinite(scores).any():
        raise fail(
            "moments",
            f"more samples than fitted degrees of freedom for alpha={rule!r}",
            f"n_samples = {n}",
            "add samples or pass a number for alpha",
        )
    return int(np.nanargmin(np.where(np.isfinite(scores), scores, np.inf)))


def _warn_at_grid_edge(best: int, rel: np.ndarray, rule: str) -> None:
    """AlphaAtGridEdgeWarning when the chosen α is the first or last of a grid of several."""
    if len(rel) > 1 and best in (0, len(rel) - 1):
        side = "smallest" if best == 0 else "largest"
        warnings.warn(
            f"alpha={rule!r} chose the {side} α on the grid ({rel[best]:g} × tr(XᵀX)/d); "
            "the best α may lie beyond it: widen `grid` to check",
            AlphaAtGridEdgeWarning,
            stacklevel=5,  # as before the split: the frame of ridge() / reduced_rank()
        )


def _solve(s: System, alpha: float, e: Eig | None) -> tuple[torch.Tensor, dict[str, Any]]:
    """M = (A + αI)⁻¹B in the system's units: by Cholesky for a fixed α, from the
    eigendecomposition when there is one."""
    d, k = s.B.shape
    if e is None:
        eye = torch.eye(d, dtype=torch.float64)
        system = s.A + alpha * eye
        L, status = torch.linalg.cholesky_ex(system)
        if int(status) == 0:
            # LAPACK's 1-norm estimate from the factor, O(d²)
            anorm = float(system.abs().sum(dim=0).max())
            rcond, _ = lapack.dpocon(np.asfortranarray(L.numpy()), anorm, uplo="L")
            cond = 1.0 / rcond if rcond > 0 else float("inf")
            info = {"condition": cond, "rank": min(d, k), "solver": "cholesky"}
            return torch.cholesky_solve(s.B, L), info
        e = eigen(s)
        warnings.warn(
            f"XᵀX + αI is singular at alpha={alpha * s.sx**2:g} (n={s.n}, d={d}); returning the minimum-norm "
            "solution from its eigendecomposition. Use alpha='gcv' or a larger alpha for a "
            "ridge fit.",
            SingularSystemWarning,
            stacklevel=3,
        )
    shifted = e.lam + alpha
    keep = e.pos if alpha == 0 else shifted > 0
    D = torch.where(keep, 1.0 / shifted.where(keep, torch.ones_like(shifted)), torch.zeros_like(shifted))
    M = e.V @ (D[:, None] * e.Q)
    low = float(shifted.min())
    cond = float(shifted.max()) / low if low > 0 else float("inf")
    return M, {"condition": cond, "rank": min(e.rank, k), "solver": "eigh"}


def _fit(
    moments: Any, alpha: Any, intercept: Any, validation: Any, grid: Any
) -> tuple[System, torch.Tensor, float, dict[str, Any]]:
    m = _check_moments("moments", moments)
    if not isinstance(intercept, bool):
        raise fail("intercept", "True or False", repr(intercept), "pass a bool")
    s = unit_scaled(normal_system(m, intercept))
    _warn_effective_samples(m)
    choice = _resolve_alpha(s, alpha, validation, grid)
    alpha_value, info = choice.alpha, choice.info
    M, solve_info = _solve(s, alpha_value, choice.eig)
    info.update(solve_info)
    info.update(
        {
            "alpha": alpha_value * s.sx**2,
            "alpha_relative": alpha_value / s.scale,
            "n": s.n,
            "n_eff": m.n_eff,  # (Σ‖x‖²)²/Σ‖x‖⁴ of the fitting rows; None when unknown
            "intercept": intercept,
            "d_in": m.d_in,
            "d_out": m.d_out,
        }
    )
    return s, M, alpha_value, info


def _map(s: System, M: torch.Tensor, method: str, info: dict[str, Any]) -> LinearMap:
    """The map in the data's units, from M in the system's (X/sx, Y/sy)."""
    bias = (s.cy - s.cx @ M) * s.sy  # zero without intercept
    return LinearMap(M * (s.sy / s.sx), bias, method, info)


def ridge(
    moments: Moments,
    alpha: float | str = "gcv",
    intercept: bool = True,
    *,
    validation: Moments | None = None,
    grid: Any = None,
) -> LinearMap:
    """Ridge map M = (XcᵀXc + αI)⁻¹XcᵀYc (centred when intercept=True), from the moments alone.

    alpha: a number ≥ 0 (absolute); "gcv" (generalized cross-validation, exact from the moments,
    one eigendecomposition for the whole grid); or "validation" (least error on the held-out
    `validation` Moments, also exact). grid: α values relative to tr(XᵀX)/d (default
    DEFAULT_GRID, 20 points from 1e-8 to 1e2). Equals scikit-learn's Ridge(alpha, fit_intercept).
    info records n and n_eff, the effective sample size of the fitting rows (`Moments.n_eff`);
    EffectiveSamplesWarning when n_eff < d_in.
    """
    s, M, _, info = _fit(moments, alpha, intercept, validation, grid)
    return _map(s, M, RIDGE, info)


def reduced_rank(
    moments: Moments,
    rank: int,
    alpha: float | str = "gcv",
    intercept: bool = True,
    *,
    validation: Moments | None = None,
    grid: Any = None,
) -> LinearMap:
    """Reduced-rank ridge: the ridge fit projected on the top-`rank` directions of its fit.

    With X* = [Xc; √α·I], the fitted values X*·M have Gram Mᵀ(XcᵀXc + αI)M; its top-r
    eigenvectors U_r give M_r = M·U_r·U_rᵀ, the best rank-r fit of the augmented problem
    (Mukherjee & Zhu 2011). α is chosen (or given) for the full-rank ridge fit.
    """
    m = _check_moments("moments", moments)
    r = check_positive_int("rank", rank)
    if r > min(m.d_in, m.d_out):
        raise fail(
            "rank",
            f"an int in 1..min(d_in, d_out) = 1..{min(m.d_in, m.d_out)}",
            repr(rank),
            "pass a smaller rank (full rank is plain ridge)",
        )
    s, M, alpha_value, info = _fit(m, alpha, intercept, validation, grid)  # in the system's units
    gram = M.T @ (s.A @ M + alpha_value * M)
    gram = (gram + gram.T) / 2
    values, U = torch.linalg.eigh(gram)  # ascending
    Ur = U[:, -r:]
    total = float(values.clamp_min(0).sum())
    info.update({"rank": r, "retained": float(values[-r:].clamp_min(0).sum()) / total if total > 0 else 1.0})
    return _map(s, M @ Ur @ Ur.T, REDUCED_RANK, info)
