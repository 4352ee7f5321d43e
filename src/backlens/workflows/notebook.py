"""The notebook's Abstraction Experiment and forward toy, with its bugs fixed and held-out scores.

The backward block is the notebook's: Gp = ((G·W) ⊙ R)·W2 with G (b × d_in), W (d_in × hidden),
a 0/1 mask R (b × hidden) and W2 (hidden × d_in): row vectors, matrices in math layout (in × out).
A stand-in map M (d_in × d_in) is scored by ‖Gp − G·M‖ (the notebook's absolute residual) and by
‖Gp − G·M‖/‖Gp‖, on the fitting samples and on fresh samples drawn the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import check_choice, check_positive_int, fail

__all__ = [
    "ToyBlock",
    "draw_block",
    "draw_samples",
    "ridge_solve",
    "scaled_alpha",
    "abstraction_experiment",
    "sample_size_sweep",
    "forward_toy",
    "shape_mismatch_note",
]

DATA_KINDS = ("uniform", "normal")
NOTEBOOK_DELTA = 1e-9
# The data-scaled δ is this fraction of the mean eigenvalue tr(GᵀG)/d of the fitting Gram matrix.
RELATIVE_DELTA = 1e-2
SWEEP_SIZES = (64, 128, 256, 512, 1024, 2048, 4096, 8192)


@dataclass(frozen=True)
class ToyBlock:
    """The notebook's Linear → mask → Linear block, in math layout."""

    W: np.ndarray  # (d_in, hidden)
    W2: np.ndarray  # (hidden, d_in)
    kind: str


def _draw(rng: np.random.Generator, kind: str, shape: tuple[int, int]) -> np.ndarray:
    # "uniform" is the notebook's np.random.rand: all positive. "normal" is zero-mean.
    return rng.random(shape) if kind == "uniform" else rng.standard_normal(shape)


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent generators for the block, the fitting samples and the held-out samples."""
    block, fit, held_out = np.random.SeedSequence(seed).spawn(3)
    return (
        np.random.default_rng(block),
        np.random.default_rng(fit),
        np.random.default_rng(held_out),
    )


def draw_block(d_in: int, hidden: int, kind: str, rng: np.random.Generator) -> ToyBlock:
    """Random weights W (d_in × hidden) and W2 (hidden × d_in) of the given kind."""
    check_positive_int("d_in", d_in)
    check_positive_int("hidden", hidden)
    check_choice("kind", kind, DATA_KINDS)
    return ToyBlock(_draw(rng, kind, (d_in, hidden)), _draw(rng, kind, (hidden, d_in)), kind)


def draw_samples(
    block: ToyBlock, b: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """b samples: gradients G, a random 0/1 mask R (as the notebook), and Gp = ((G·W) ⊙ R)·W2."""
    check_positive_int("b", b)
    d_in, hidden = block.W.shape
    G = _draw(rng, block.kind, (b, d_in))
    R = rng.integers(0, 2, size=(b, hidden)).astype(np.float64)
    return G, R, ((G @ block.W) * R) @ block.W2


def ridge_solve(G: np.ndarray, Gp: np.ndarray, alpha: float) -> np.ndarray:
    """M = solve(GᵀG + αI, GᵀGp) in float64, the notebook's M2."""
    if G.ndim != 2 or Gp.ndim != 2 or len(G) != len(Gp):
        raise fail(
            "G, Gp",
            "2-D arrays with the same number of rows",
            f"shapes {G.shape} and {Gp.shape}",
            "pass one row per sample in both",
        )
    if not alpha >= 0:
        raise fail("alpha", "a number >= 0", repr(alpha), "pass a non-negative ridge penalty")
    G = G.astype(np.float64, copy=False)
    gram = G.T @ G
    gram[np.diag_indices_from(gram)] += alpha
    return np.linalg.solve(gram, G.T @ Gp.astype(np.float64, copy=False))


def scaled_alpha(G: np.ndarray, relative: float = RELATIVE_DELTA) -> float:
    """α scaled to the data: `relative` × tr(GᵀG)/d, so it means the same at any gradient scale."""
    return float(relative * np.einsum("ij,ij->", G, G) / G.shape[1])


def residuals(M: np.ndarray, G: np.ndarray, Gp: np.ndarray) -> tuple[float, float]:
    """(‖Gp − G·M‖, ‖Gp − G·M‖/‖Gp‖), Frobenius norms."""
    absolute = float(np.linalg.norm(Gp - G @ M))
    return absolute, absolute / float(np.linalg.norm(Gp))


def shape_mismatch_note(G: np.ndarray, block: ToyBlock, Gp: np.ndarray) -> str:
    """The notebook's `Gp − G@W` crash, explained in one line."""
    gw = (G.shape[0], block.W.shape[1])
    return (
        f"G·W is {gw} but Gp is {Gp.shape}: W alone maps into the hidden layer, so it cannot stand "
        f"in for the block; the weights-only map is W·W2 ({block.W.shape[0]} × {block.W2.shape[1]})."
    )


@dataclass(frozen=True)
class Row:
    """One map's residuals on the fitting samples and on held-out samples."""

    data: str
    method: str
    alpha: float | None
    train_abs: float
    train_rel: float
    test_abs: float
    test_rel: float


def _maps(
    G: np.ndarray, Gp: np.ndarray, R: np.ndarray, block: ToyBlock
) -> Iterable[tuple[str, float | None, np.ndarray]]:
    yield "ridge δ=1e-9 (notebook)", NOTEBOOK_DELTA, ridge_solve(G, Gp, NOTEBOOK_DELTA)
    alpha = scaled_alpha(G)
    yield "ridge δ scaled to data", alpha, ridge_solve(G, Gp, alpha)
    # M3: the mask replaced by its mean over the fitting samples (the notebook's expected mask).
    yield "expected mask W·diag(E R)·W2", None, (block.W * R.mean(axis=0)) @ block.W2
    yield "weights only W·W2", None, block.W @ block.W2


def abstraction_experiment(
    b: int = 128,
    d_in: int = 512,
    hidden: int = 256,
    kind: str = "uniform",
    seed: int = 0,
    n_test: int | None = None,
) -> dict:
    """Fit each map on b samples and score it there and on n_test fresh samples (default b)."""
    block_rng, fit_rng, test_rng = _streams(seed)
    block = draw_block(d_in, hidden, kind, block_rng)
    G, R, Gp = draw_samples(block, b, fit_rng)
    G_test, _, Gp_test = draw_samples(block, n_test or b, test_rng)
    rows = [
        Row(kind, method, alpha, *residuals(M, G, Gp), *residuals(M, G_test, Gp_test))
        for method, alpha, M in _maps(G, Gp, R, block)
    ]
    return {
        "kind": kind,
        "b": b,
        "d_in": d_in,
        "hidden": hidden,
        "n_test": n_test or b,
        "seed": seed,
        "note": shape_mismatch_note(G, block, Gp),
        "rows": [asdict(r) for r in rows],
    }


def sample_size_sweep(
    sizes: Iterable[int] = SWEEP_SIZES,
    d_in: int = 512,
    hidden: int = 256,
    kind: str = "normal",
    seed: int = 0,
    n_test: int = 2048,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Relative residual of ridge and expected-mask against the number of fitting samples."""
    block_rng, fit_rng, test_rng = _streams(seed)
    block = draw_block(d_in, hidden, kind, block_rng)
    G_test, _, Gp_test = draw_samples(block, n_test, test_rng)
    points = []
    for b in sizes:
        G, R, Gp = draw_samples(block, b, fit_rng)
        fits = {
            "ridge δ=1e-9": ridge_solve(G, Gp, NOTEBOOK_DELTA),
            "ridge δ scaled": ridge_solve(G, Gp, scaled_alpha(G)),
            "expected mask": (block.W * R.mean(axis=0)) @ block.W2,
        }
        for method, M in fits.items():
            points.append(
                {
                    "b": b,
                    "method": method,
                    "train_rel": residuals(M, G, Gp)[1],
                    "test_rel": residuals(M, G_test, Gp_test)[1],
                }
            )
        if progress is not None:
            progress(b)
    return {
        "kind": kind,
        "d_in": d_in,
        "hidden": hidden,
        "n_test": n_test,
        "seed": seed,
        "points": points,
    }


# The notebook's forward toy: two 2-D points per column pattern, W = [[1, 1], [-1, -1]].
TOY_W = np.array([[1.0, 1.0], [-1.0, -1.0]])
TOY_X = np.array([[1.0, 2.0], [-1.0, 2.0], [2.0, -1.0], [1.0, -2.0]]).T


def forward_toy(W: np.ndarray = TOY_W, X: np.ndarray = TOY_X) -> dict:
    """Y = W·relu(X) fitted by M = Y·Xᵀ(XXᵀ)⁻¹ (columns are samples, as in the notebook)."""
    Y = W @ np.maximum(X, 0)
    M = np.linalg.solve(X @ X.T, X @ Y.T).T  # = Y Xᵀ (X Xᵀ)⁻¹ without forming the inverse
    return {
        "W": W,
        "X": X,
        "Y": Y,
        "M": M,
        "MX": M @ X,
        "residual": float(np.linalg.norm(M @ X - Y)),
    }
