"""Ridge's normal equations from Moments, in units where the data's scale is 1, and the exact
criteria (GCV, held-out SSE) for a whole grid of α from one eigendecomposition."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import fail
from .moments import Moments

__all__ = ["System", "Eig", "normal_system", "unit_scaled", "eigen", "gcv_scores", "held_out_sse"]

# Shape convention: row vectors, Y ≈ X·M + b with M (d_in, d_out). With intercept the system is
# the centred one, A = Σ(x−μx)ᵀ(x−μx), B = Σ(x−μx)ᵀ(y−μy), b = μy − μx·M; without it, A = XᵀX,
# B = XᵀY, b = 0. Ridge: M(α) = (A + αI)⁻¹B.
#
# Every α on a grid costs O(d) after ONE eigendecomposition A = V·diag(λ)·Vᵀ, Q = VᵀB:
#   M(α)   = V·diag(1/(λ+α))·Q
#   RSS(α) = RSS₀ + Σᵢ ‖qᵢ‖²·α²/(λᵢ(λᵢ+α)²)       RSS₀ = Σ‖y−cy‖² − Σᵢ ‖qᵢ‖²/λᵢ (the OLS residual)
#   n − df(α) = (n − intercept − rank) + Σᵢ α/(λᵢ+α)
#   GCV(α) = n·RSS(α) / (n − df(α))²                (Golub, Heath & Wahba 1979)
# (sums over the numerically non-zero λᵢ). Written this way RSS and n − df are sums of positive
# terms, so GCV stays accurate as α → 0 even when d ≥ n and the fit interpolates.


@dataclass
class System:
    A: torch.Tensor  # (d, d)
    B: torch.Tensor  # (d, k)
    yy: float  # Σ‖y − cy‖²
    cx: torch.Tensor  # (d,) centre of x: μx with intercept, else 0
    cy: torch.Tensor  # (k,)
    n: int
    intercept: bool
    sx: float = 1.0  # the units the system is in: X/sx, Y/sy (see unit_scaled)
    sy: float = 1.0

    @property
    def scale(self) -> float:
        """tr(A)/d, the mean eigenvalue (1 when A is zero, where every α gives M = 0)."""
        value = float(torch.trace(self.A)) / self.A.shape[0]
        return value if value > 0 else 1.0


@dataclass
class Eig:
    lam: torch.Tensor  # (d,) eigenvalues, clipped at 0
    V: torch.Tensor  # (d, d)
    Q: torch.Tensor  # (d, k) = VᵀB
    pos: torch.Tensor  # (d,) bool: numerically non-zero eigenvalues

    @property
    def rank(self) -> int:
        return int(self.pos.sum())


def normal_system(m: Moments, intercept: bool) -> System:
    if intercept:
        return System(m.cxx, m.cxy, float(m.cyy_diag.sum()), m.mean_x, m.mean_y, m.n, True)
    zeros_x, zeros_y = (
        torch.zeros(m.d_in, dtype=torch.float64),
        torch.zeros(m.d_out, dtype=torch.float64),
    )
    return System(m.xx, m.xy, float(m.yy_diag.sum()), zeros_x, zeros_y, m.n, False)


def unit_scaled(s: System) -> System:
    """The same system in units where tr(A)/d = 1 and Σ‖y − cy‖²/(n·k) = 1, so nothing below
    depends on the data's units: eigenvalues, α², RSS and GCV stay near 1 for data at 1e-50 or
    1e50 (unscaled, GCV's α²·‖q‖² overflows float64 from about 1e40 and underflows below 1e-45).
    M and b are scaled back in _map; α in _fit."""
    if not (bool(torch.isfinite(s.A).all()) and bool(torch.isfinite(s.B).all()) and np.isfinite(s.yy)):
        raise fail(
            "moments",
            "sums of squares that fit in float64",
            "Inf in XᵀX, XᵀY or YᵀY (the data's squares overflow)",
            "rescale X and Y (e.g. divide by their largest magnitude) before Moments.update",
        )
    d, k = s.B.shape
    xx, yy = float(torch.trace(s.A)) / d, s.yy / (max(s.n, 1) * k)
    sx, sy = power_of_two_near(np.sqrt(xx)), power_of_two_near(np.sqrt(yy))
    return System(s.A / sx**2, s.B / (sx * sy), s.yy / sy**2, s.cx / sx, s.cy / sy, s.n, s.intercept, sx, sy)


def power_of_two_near(value: float) -> float:
    """A power of two within a factor √2 of `value` (1 for 0): dividing by it is exact in
    floating point, so a fit in these units rounds exactly as the same fit in unit data."""
    return math.ldexp(1.0, round(math.log2(value))) if value > 0 else 1.0


def eigen(s: System) -> Eig:
    lam, V = torch.linalg.eigh(s.A)
    top = float(lam.max().clamp_min(0))
    tol = max(s.A.shape[0], s.n) * float(torch.finfo(torch.float64).eps) * top
    return Eig(lam.clamp_min(0), V, V.T @ s.B, lam > tol)


def gcv_scores(s: System, e: Eig, alphas: np.ndarray) -> np.ndarray:
    """GCV(α) for each α, exact from the moments (formulas at the top of the module)."""
    lam = e.lam[e.pos].numpy()[None, :]
    qn = (e.Q[e.pos] ** 2).sum(dim=1).numpy()[None, :]
    a = alphas[:, None]
    rss0 = max(s.yy - float((qn / lam).sum()), 0.0)
    rss = rss0 + (qn * a**2 / (lam * (lam + a) ** 2)).sum(axis=1)
    resdof = max(s.n - int(s.intercept) - e.rank, 0) + (a / (lam + a)).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = s.n * rss / resdof**2
    return np.where(resdof > 1e-12 * s.n, scores, np.inf)


def held_out_sse(s: System, e: Eig, val: Moments, alphas: np.ndarray) -> np.ndarray:
    """Σ‖y − x·M(α) − b(α)‖² over the held-out rows, for each α, exact from their moments.

    With u = ν_x − cx, w = ν_y − cy (ν: held-out means), Sxx = Cxx' + n'uuᵀ, Sxy = Cxy' + n'uwᵀ,
    syy = tr Cyy' + n'‖w‖²: SSE = syy − 2·tr(MᵀSxy) + tr(MᵀSxxM); in the eigenbasis this is
    syy − 2·Σᵢ Dᵢ⟨qᵢ, pᵢ⟩ + DᵀHD with D = 1/(λ+α), P = VᵀSxy, H = (VᵀSxxV) ∘ (QQᵀ).
    """
    u, w = val.mean_x / s.sx - s.cx, val.mean_y / s.sy - s.cy  # in the system's units
    sxx = val.cxx / s.sx**2 + val.n * torch.outer(u, u)
    sxy = val.cxy / (s.sx * s.sy) + val.n * torch.outer(u, w)
    syy = float(val.cyy_diag.sum()) / s.sy**2 + val.n * float(w @ w)
    qp = (e.Q * (e.V.T @ sxy)).sum(dim=1).numpy()
    H = ((e.V.T @ sxx @ e.V) * (e.Q @ e.Q.T)).numpy()
    D = 1.0 / (e.lam.numpy()[None, :] + alphas[:, None])  # (grid, d)
    return syy - 2.0 * D @ qp + np.einsum("gi,ij,gj->g", D, H, D)
