"""Honest scores of a LinearMap: relative error, R², mean cosine — from data or held-out Moments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import describe, fail
from .linear_map import LinearMap
from .moments import Moments
from .rows import as_rows

__all__ = ["Score", "score"]

# Shape convention: row vectors; X (n, d_in), Y (n, d_out), prediction P = X·M + b.
#   rel_error = ‖Y − P‖_F / ‖Y‖_F
#   r2        = mean over outputs j of 1 − SSE_j/SST_j (scikit-learn's r2_score, uniform average;
#               a constant output scores 1 if predicted exactly, else 0)
#   cosine    = mean over rows of ⟨p, y⟩/(‖p‖‖y‖) (a zero row: 1 if both are zero, else 0)
# From Moments (ν: their means) every sum is exact: SSE_j = (Cyy)_jj − 2(MᵀCxy)_jj + (MᵀCxxM)_jj
# + n·(ν_y − ν_x·M − b)_j². The per-sample cosine is not a function of the moments: it is None.

CHUNK_ROWS = 65536


@dataclass(frozen=True)
class Score:
    """How well a map predicts: rel_error, r2, cosine (None from moments), n rows."""

    rel_error: float
    r2: float
    cosine: float | None
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"rel_error": self.rel_error, "r2": self.r2, "cosine": self.cosine, "n": self.n}


def _r2(sse: np.ndarray, sst: np.ndarray) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.where(sse <= 0, 1.0, 0.0))
    return float(per.mean())


def _rel(sse_total: float, norm2: float) -> float:
    if norm2 > 0:
        return float(np.sqrt(max(sse_total, 0.0) / norm2))
    return 0.0 if sse_total <= 0 else float("inf")


def _from_data(lm: LinearMap, X: Any, Y: Any) -> Score:
    X, Y = as_rows("X", X, lm.d_in, "the map's input"), as_rows("Y", Y, lm.d_out, "the map's output")
    n = X.shape[0]
    if n != Y.shape[0]:
        raise fail("X, Y", "the same number of rows", f"{n} and {Y.shape[0]}", "pass one Y row per X row")
    if n == 0:
        raise fail("X", "at least one sample", "0 rows", "score on some held-out data")
    M, b = lm.matrix.double().cpu(), lm.bias.double().cpu()
    mean_y = Y.double().mean(dim=0)
    sse = torch.zeros(lm.d_out, dtype=torch.float64)
    sst = torch.zeros(lm.d_out, dtype=torch.float64)
    norm2, cos_sum = 0.0, 0.0
    for start in range(0, n, CHUNK_ROWS):
        x = X[start : start + CHUNK_ROWS].double()
        y = Y[start : start + CHUNK_ROWS].double()
        p = x @ M + b
        sse += ((y - p) ** 2).sum(dim=0)
        sst += ((y - mean_y) ** 2).sum(dim=0)
        norm2 += float((y**2).sum())
        py, pn, yn = (p * y).sum(dim=1), p.norm(dim=1), y.norm(dim=1)
        both = (pn > 0) & (yn > 0)
        cos = torch.where(
            both, py / (pn * yn).where(both, torch.ones_like(pn)), ((pn == 0) & (yn == 0)).double()
        )
        cos_sum += float(cos.sum())
    if not np.isfinite(norm2) or not bool(torch.isfinite(sse).all()):
        raise fail("X, Y", "finite values", "NaN, Inf or an overflow", "clean the data")
    return Score(_rel(float(sse.sum()), norm2), _r2(sse.numpy(), sst.numpy()), cos_sum / n, n)


def _from_moments(lm: LinearMap, m: Any) -> Score:
    if not isinstance(m, Moments):
        raise fail("moments", "a backlens.Moments", describe(m), "pass held-out Moments")
    if (m.d_in, m.d_out) != (lm.d_in, lm.d_out):
        raise fail(
            "moments",
            f"Moments with d_in={lm.d_in}, d_out={lm.d_out}",
            f"d_in={m.d_in}, d_out={m.d_out}",
            "score on pairs of the map's shape",
        )
    if m.n == 0:
        raise fail("moments", "at least one sample", "n_samples = 0", "update them with held-out data")
    M, b = lm.matrix.double().cpu(), lm.bias.double().cpu()
    cyy = m.cyy_diag
    e = m.mean_y - m.mean_x @ M - b
    sse = cyy - 2 * (M * m.cxy).sum(dim=0) + ((m.cxx @ M) * M).sum(dim=0) + m.n * e**2
    sse = sse.clamp_min(0)
    norm2 = float(cyy.sum()) + m.n * float(m.mean_y @ m.mean_y)
    return Score(_rel(float(sse.sum()), norm2), _r2(sse.numpy(), cyy.numpy()), None, m.n)


def score(lm: LinearMap, X: Any = None, Y: Any = None, *, moments: Moments | None = None) -> Score:
    """Score `lm` on rows (X, Y), or exactly on held-out `moments` (no cosine there)."""
    if not isinstance(lm, LinearMap):
        raise fail("lm", "a backlens.LinearMap", describe(lm), "pass the map returned by an estimator")
    if moments is not None:
        if X is not None or Y is not None:
            raise fail("X, Y, moments", "either X and Y, or moments", "both", "pass one of them")
        return _from_moments(lm, moments)
    if X is None or Y is None:
        raise fail("X, Y", "both X and Y (or moments=)", "only one or none", "pass held-out rows")
    return _from_data(lm, X, Y)
