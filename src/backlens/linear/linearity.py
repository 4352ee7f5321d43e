"""Linearity score (Razzhigaev et al., ACL 2024), exact from Moments: fit, held out, residual removed."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..errors import BacklensWarning, describe, fail
from .moments import Moments

__all__ = ["LinearityScore", "LinearityUndefinedWarning", "linearity_score"]

# Shape convention: row vectors; X (n, d_in), Y (n, d_out). The recipe ("Your Transformer is
# Secretly Linear", code AIRI-Institute/LLM-Microscope; DESIGN.md, "Facts from the field"):
#   X̃ = X_c/‖X_c‖_F,  Ỹ = Y_c/‖Y_c‖_F        (X_c: X less its column means)
#   A = argmin_A ‖X̃A − Ỹ‖_F                  (plain least squares, minimum-norm)
#   score = 1 − ‖X̃A − Ỹ‖²_F
# From centred moments Cxx = X_cᵀX_c, Cxy = X_cᵀY_c and tr Cyy = Σ cyy_diag, with ‖X_c‖²_F = tr Cxx,
# ‖Y_c‖²_F = tr Cyy, and G a generalised inverse of Cxx (see _basis; A is made minimum-norm):
#   A     = √(tr Cxx / tr Cyy)·G·Cxy                         (A is in normalised units)
#   fit   = tr(CxyᵀGCxy)/tr Cyy = Σᵢ ‖qᵢ‖²/λᵢ / tr Cyy      (positive terms: no cancellation)
# where G = S·V·diag(1/λ)·Vᵀ·S over the kept eigenpairs of S·Cxx·S = V·diag(λ)·Vᵀ, S = diag(Cxx)^(−½),
# and Q = VᵀS·Cxy (any generalised inverse gives the same fit: X_cGCxy projects Y_c onto X_c's span).
# Held out, on test moments (primes) with the test's own centring and norms:
#   held_out = 1 − [tr(AᵀC'xxA)/tr C'xx − 2·tr(AᵀC'xy)/√(tr C'xx·tr C'yy) + 1]
# which equals `fit` when the test moments are the fitting ones. The test's own norms make an
# exactly linear map Y = XW + b score 1 − (ρ − 1)² held out, not 1: ρ = g'/g, the ratio of the
# gains g = ‖X_cW‖_F/‖X_c‖_F on test and fitting rows (1 when W is a scaled rotation, → 1 as both
# samples grow). Residual removed (d_in = d_out): the scores of the pairs (X, Y − X), from the
# same moments:
#   C_{x,y−x} = Cxy − Cxx,   tr C_{y−x} = tr Cyy − 2·tr Cxy + tr Cxx.
# That trace cancels when Y ≈ X (the residual stream): the residual scores' absolute rounding error
# is about eps·(tr Cxx + tr Cyy)/tr C_{y−x}; where tr C_{y−x} is below the moments' rounding floor
# (Y is X plus a constant), the score is undefined: None, with a LinearityUndefinedWarning.
#
# Undefined scores: X̃ or Ỹ is 0/0 when X or Y has no variance (tr Cxx = 0 or tr Cyy = 0). For the
# scores asked for directly this raises BacklensError; for the derived residual scores it warns and
# gives None, so a block that only adds a constant still gets its plain scores.

EPS = float(torch.finfo(torch.float64).eps)


class LinearityUndefinedWarning(BacklensWarning):
    """A residual-removed linearity score is undefined (Y − X has no variance): it is None."""


@dataclass(frozen=True)
class LinearityScore:
    """Linearity scores: on the fitting moments, held out, and with the residual removed.

    fit, held_out: 1 − ‖X̃A − Ỹ‖²_F on the fitting / test moments (A fitted on the fitting ones;
    held_out is None without test moments, and may be negative: A can be worse than nothing there).
    fit_residual, held_out_residual: the same for (X, Y − X); None unless d_in == d_out (or where
    Y − X has no variance, with a LinearityUndefinedWarning). n_fit, n_held_out: rows seen.
    rank: numerical rank of the fitting Cxx that the least-squares solution used (decided with its
    columns scaled to unit variance, relative cutoff max(d_in, n)·eps).
    """

    fit: float
    held_out: float | None
    fit_residual: float | None
    held_out_residual: float | None
    n_fit: int
    n_held_out: int | None
    rank: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Pair:
    """Centred statistics of one set of (X, Y) pairs: all the formulas above read."""

    n: int
    cxx: torch.Tensor  # (d_in, d_in)
    cxy: torch.Tensor  # (d_in, d_out)
    txx: float  # tr Cxx = ‖X_c‖²_F
    tyy: float  # tr Cyy = ‖Y_c‖²_F


@dataclass(frozen=True)
class _Basis:
    """A generalised inverse of the fitting Cxx, G = U·diag(1/λ)·Uᵀ, and its null space N."""

    U: torch.Tensor  # (d_in, rank): S·V_kept (S, V: see _basis)
    lam: torch.Tensor  # (rank,)
    N: torch.Tensor  # (d_in, d_in − rank), orthonormal columns spanning the dropped directions


def _pair(m: Moments) -> _Pair:
    cxx = m.cxx
    return _Pair(m.n, cxx, m.cxy, float(torch.trace(cxx)), float(m.cyy_diag.sum()))


def _floor(p: _Pair) -> float:
    """Relative rounding floor of float64 moments: max(d_in, n)·eps.

    The factor is numpy lstsq's (rcond = eps·max(M, N)) and the ridge module's rank rule. It is
    applied to eigenvalues of a Gram matrix, not to singular values of X: a Gram's own rounding
    floor is a few eps·λ_max (measured up to 3.3·eps·λ_max at d_in = 2), so pinv's d·eps on it
    would keep noise directions for small d_in, and lstsq's rule squared would sit far below it.
    """
    return max(p.cxx.shape[0], p.n) * EPS


def _basis(p: _Pair) -> _Basis:
    # Float64 symmetric eigendecomposition (never a float32 product, never torch.linalg.lstsq's
    # CPU default, which truncates rank) of the Jacobi-scaled R = S·Cxx·S, S = diag(Cxx)^(−1/2):
    # Cxx's rounding is relative to each entry's √(cᵢᵢcⱼⱼ), so R resolves columns of very different
    # scale (activations) to eps·κ(R), not eps·κ(Cxx) — measured 2e-7 → 1e-15 off the recipe with
    # column scales over 6 decades. Keep λ > λ_max·max(d_in, n)·eps (_floor); a constant column
    # (cᵢᵢ = 0: its row and column of Cxx are 0) gets S = 1 and a zero eigenvalue.
    c = torch.diagonal(p.cxx)
    s = torch.where(c > 0, c.clamp_min(torch.finfo(torch.float64).tiny).rsqrt(), torch.ones_like(c))
    lam, V = torch.linalg.eigh(s[:, None] * p.cxx * s[None, :])
    keep = lam > float(lam.max()) * _floor(p)
    # S·V_dropped spans Cxx's null space; orthonormalised, it turns any solution into the
    # minimum-norm one (the recipe's lstsq solution): G is a generalised inverse, not Cxx⁺.
    N = torch.linalg.qr(s[:, None] * V[:, ~keep]).Q
    return _Basis(s[:, None] * V[:, keep], lam[keep], N)


def _fit(b: _Basis, p: _Pair) -> tuple[float, torch.Tensor]:
    """The fit score and the minimum-norm A (normalised units) on the fitting pairs."""
    Q = b.U.T @ p.cxy  # (rank, d_out)
    W = Q / b.lam[:, None]
    explained = float((Q * W).sum()) / p.tyy  # tr(CxyᵀGCxy)/tr Cyy = Σᵢ ‖qᵢ‖²/λᵢ / tr Cyy
    A = b.U @ W
    A = math.sqrt(p.txx / p.tyy) * (A - b.N @ (b.N.T @ A))
    # The residual ‖X̃A − Ỹ‖² = 1 − explained is ≥ 0: a value past 1 is rounding only.
    return 1.0 - max(1.0 - explained, 0.0), A


def _held_out(A: torch.Tensor, t: _Pair) -> float:
    """1 − ‖X̃'A − Ỹ'‖²_F on test pairs, expanded into traces of their moments (exact)."""
    quad = float(((t.cxx @ A) * A).sum()) / t.txx  # tr(AᵀC'xxA)/tr C'xx
    cross = float((A * t.cxy).sum()) / math.sqrt(t.txx * t.tyy)  # tr(AᵀC'xy)/(‖X'_c‖‖Y'_c‖)
    return 1.0 - max(quad - 2.0 * cross + 1.0, 0.0)  # the squared norm is ≥ 0: rounding only


def _residual(p: _Pair, which: str) -> _Pair | None:
    """The pairs (X, Y − X) from the same moments; None (warned) where Y − X has no variance."""
    txy = float(torch.trace(p.cxy))
    tyy = p.tyy - 2.0 * txy + p.txx
    if tyy <= _floor(p) * (p.tyy + 2.0 * abs(txy) + p.txx):  # at the cancellation's rounding floor
        warnings.warn(
            f"the residual-removed score on the {which} moments is undefined: Y − X has no variance "
            "(Y is X plus a constant, to float64 precision); it is None",
            LinearityUndefinedWarning,
            stacklevel=3,
        )
        return None
    return _Pair(p.n, p.cxx, p.cxy - p.cxx, p.txx, tyy)


def _check_moments(argument: str, m: Any) -> Moments:
    if not isinstance(m, Moments):
        raise fail(argument, "a backlens.Moments", describe(m), "accumulate the pairs with Moments.update")
    if m.n < 2:
        raise fail(
            argument,
            "Moments of at least 2 rows (the score centres the data)",
            f"n = {m.n}",
            "update them with more pairs",
        )
    return m


def _check_variance(argument: str, p: _Pair) -> _Pair:
    for name, total in (("X", p.txx), ("Y", p.tyy)):
        if not total > 0:
            raise fail(
                argument,
                f"pairs whose {name} varies (the score divides by ‖{name} − mean‖_F)",
                f"{name} constant over all {p.n} rows (its centred norm is 0): the score is 0/0, undefined",
                f"score a block whose {name} varies, or pass more varied samples",
            )
    return p


def _check_test(train: Moments, test: Any) -> Moments:
    test = _check_moments("test_moments", test)
    if test is train:
        raise fail(
            "test_moments",
            "Moments of other rows than the fitting ones",
            "the fitting Moments themselves",
            "accumulate held-out pairs into their own Moments (the fit score is `fit`)",
        )
    if (test.d_in, test.d_out) != (train.d_in, train.d_out):
        raise fail(
            "test_moments",
            f"Moments of the fitting shape (d_in={train.d_in}, d_out={train.d_out})",
            f"(d_in={test.d_in}, d_out={test.d_out})",
            "score held-out pairs of the same block",
        )
    return test


def linearity_score(train_moments: Moments, test_moments: Moments | None = None) -> LinearityScore:
    """Linearity score of the pairs in `train_moments`, and held out on `test_moments` if given.

    A is fitted by least squares on the centred, Frobenius-normalised fitting pairs; every score is
    1 − ‖X̃A − Ỹ‖²_F, exact from the moments (formulas at the top of the module).
    """
    train = _check_moments("train_moments", train_moments)
    test = None if test_moments is None else _check_test(train, test_moments)
    p = _check_variance("train_moments", _pair(train))
    t = None if test is None else _check_variance("test_moments", _pair(test))
    basis = _basis(p)
    fit, A = _fit(basis, p)
    fit_r = held_r = None
    if train.d_in == train.d_out:
        pr = _residual(p, "fitting")
        if pr is not None:
            fit_r, Ar = _fit(basis, pr)  # same Cxx: the same eigendecomposition
            tr = None if t is None else _residual(t, "test")
            held_r = None if tr is None else _held_out(Ar, tr)
    return LinearityScore(
        fit=fit,
        held_out=None if t is None else _held_out(A, t),
        fit_residual=fit_r,
        held_out_residual=held_r,
        n_fit=p.n,
        n_held_out=None if t is None else t.n,
        rank=int(basis.lam.numel()),
    )
