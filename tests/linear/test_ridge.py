"""Ridge, GCV and validation α, reduced-rank ridge: against scikit-learn and brute force."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import Ridge

from backlens import (
    AlphaAtGridEdgeWarning,
    BacklensError,
    Moments,
    SingularSystemWarning,
    reduced_rank,
    ridge,
)
from backlens.linear.ridge import DEFAULT_GRID


def data(n: int, d: int, k: int, seed: int = 0, noise: float = 0.5, shift: float = 1.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) + shift
    Y = X @ rng.standard_normal((d, k)) + noise * rng.standard_normal((n, k)) + 3.0
    return X, Y


def moments(X: np.ndarray, Y: np.ndarray, batch: int = 37) -> Moments:
    m = Moments(X.shape[1], Y.shape[1])
    for i in range(0, len(X), batch):
        m.update(torch.from_numpy(X[i : i + batch]), torch.from_numpy(Y[i : i + batch]))
    return m


def activation_like(n: int, d: int, k: int, seed: int = 0):
    """Uncentred (mean 1), singular values 1 … 1e-3: the ill-conditioned case from the issue."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    X = 1.0 + (rng.standard_normal((n, d)) * np.logspace(0, -3, d)) @ Q
    Y = X @ rng.standard_normal((d, k)) + 1e-3 * rng.standard_normal((n, k))
    return X, Y


def rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# (n, d, k, alpha, intercept): d > n (the notebook's case), k = 1, tiny and large α
SKLEARN_CASES = [
    (200, 10, 3, 1.0, True),
    (200, 10, 3, 1.0, False),
    (50, 20, 1, 1e-3, True),
    (30, 60, 5, 0.5, True),
    (30, 60, 5, 0.5, False),
    (500, 8, 8, 1e3, True),
    (100, 5, 2, 0.0, True),
]


@pytest.mark.parametrize(("n", "d", "k", "alpha", "intercept"), SKLEARN_CASES)
def test_ridge_equals_sklearn(n, d, k, alpha, intercept) -> None:
    X, Y = data(n, d, k, seed=n + d)
    lm = ridge(moments(X, Y), alpha=alpha, intercept=intercept)
    sk = Ridge(alpha=alpha, fit_intercept=intercept, solver="cholesky").fit(X, Y)
    assert rel(lm.matrix.numpy(), sk.coef_.reshape(k, d).T) < 1e-8
    assert rel(lm.bias.numpy(), np.broadcast_to(sk.intercept_, (k,))) < 1e-8
    assert lm.method == "ridge" and lm.info["alpha"] == alpha and lm.info["n"] == n
    assert lm.info["alpha_source"] == "fixed" and lm.info["condition"] >= 1


def brute_gcv(X, Y, alpha, intercept):
    n = len(X)
    if intercept:
        Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    else:
        Xc, Yc = X, Y
    H = Xc @ np.linalg.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T)
    if intercept:
        H = H + np.ones((n, n)) / n
    R = (Y if intercept else Yc) - H @ (Y if intercept else Yc)
    return n * float((R**2).sum()) / (n - np.trace(H)) ** 2


# (n, d, k, intercept): including d ≥ n, where the fit interpolates as α → 0
@pytest.mark.parametrize(
    ("n", "d", "k", "intercept"),
    [(80, 5, 2, True), (80, 5, 2, False), (40, 30, 3, True), (25, 40, 2, True), (25, 40, 2, False)],
)
def test_gcv_equals_brute_force(n, d, k, intercept) -> None:
    X, Y = data(n, d, k, seed=d, noise=2.0)
    grid = np.logspace(-4, 1, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlphaAtGridEdgeWarning)
        lm = ridge(moments(X, Y), alpha="gcv", intercept=intercept, grid=grid)
    alphas = np.array(lm.info["grid"])
    want = np.array([brute_gcv(X, Y, a, intercept) for a in alphas])
    got = np.array(lm.info["criterion"], dtype=float)
    assert np.allclose(got, want, rtol=1e-7, atol=0)
    assert lm.info["alpha"] == alphas[int(np.argmin(want))]
    scale = np.trace(moments(X, Y).cxx.numpy() if intercept else X.T @ X) / d
    assert np.allclose(alphas, grid * scale, rtol=1e-12)
    sk = Ridge(alpha=lm.info["alpha"], fit_intercept=intercept).fit(X, Y)
    assert rel(lm.matrix.numpy(), sk.coef_.T) < 1e-7


@pytest.mark.parametrize("intercept", [True, False])
def test_validation_alpha_equals_brute_force(intercept) -> None:
    X, Y = data(120, 12, 3, seed=4, noise=3.0)
    Xv, Yv = data(70, 12, 3, seed=5, noise=3.0)
    grid = np.logspace(-3, 2, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlphaAtGridEdgeWarning)
        lm = ridge(
            moments(X, Y),
            alpha="validation",
            intercept=intercept,
            validation=moments(Xv, Yv),
            grid=grid,
        )
    want = []
    for a in lm.info["grid"]:
        sk = Ridge(alpha=a, fit_intercept=intercept).fit(X, Y)
        want.append(float(((Yv - sk.predict(Xv)) ** 2).sum()))
    assert np.allclose(lm.info["criterion"], want, rtol=1e-8)
    assert lm.info["alpha"] == lm.info["grid"][int(np.argmin(want))]


@pytest.mark.parametrize("scale", [1e-9, 1.0, 1e6])
def test_gcv_alpha_is_scaled_to_the_data(scale) -> None:
    # gradients are tiny on a well-fit model: at any scale the same relative α is chosen
    X, Y = data(100, 6, 2, seed=3, noise=1.0)
    base = ridge(moments(X, Y), alpha="gcv")
    lm = ridge(moments(X * scale, Y * scale), alpha="gcv")
    assert lm.info["alpha_relative"] == pytest.approx(base.info["alpha_relative"], rel=1e-9)
    assert rel(lm.matrix.numpy(), base.matrix.numpy()) < 1e-8


def test_singular_fixed_alpha_zero_warns_and_gives_min_norm() -> None:
    X, Y = data(20, 50, 3, seed=1)  # d > n: XᵀX is singular
    with pytest.warns(SingularSystemWarning, match="minimum-norm"):
        lm = ridge(moments(X, Y), alpha=0.0, intercept=False)
    want = np.linalg.lstsq(X, Y, rcond=None)[0]
    assert rel(lm.matrix.numpy(), want) < 1e-8
    assert lm.info["solver"] == "eigh" and lm.info["rank"] == 3


def test_ill_conditioned_uncentred_data_is_accurate() -> None:
    X, Y = activation_like(20000, 48, 4)
    m = Moments(48, 4)
    for i in range(0, len(X), 4096):
        m.update(torch.from_numpy(X[i : i + 4096]).float(), torch.from_numpy(Y[i : i + 4096]).float())
    Xf, Yf = X.astype(np.float32).astype(np.float64), Y.astype(np.float32).astype(np.float64)
    Xc, Yc = Xf - Xf.mean(0), Yf - Yf.mean(0)
    alpha = 1e-9 * np.trace(Xc.T @ Xc) / 48
    aug = np.vstack([Xc, np.sqrt(alpha) * np.eye(48)])  # QR-based oracle, no normal equations
    want = np.linalg.lstsq(aug, np.vstack([Yc, np.zeros((48, 4))]), rcond=None)[0]
    lm = ridge(m, alpha=alpha)
    assert rel(lm.matrix.numpy(), want) < 1e-6
    assert lm.info["condition"] > 1e5


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 30),
    d=st.integers(1, 8),
    k=st.integers(1, 4),
    alpha=st.floats(1e-3, 1e3),
    seed=st.integers(0, 99),
)
def test_ridge_matches_closed_form(n, d, k, alpha, seed) -> None:
    X, Y = data(n, d, k, seed=seed)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    want = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(d), Xc.T @ Yc)
    lm = ridge(moments(X, Y, batch=7), alpha=alpha)
    assert rel(lm.matrix.numpy(), want) < 1e-8
    assert rel(lm.bias.numpy(), Y.mean(0) - X.mean(0) @ want) < 1e-8


def brute_reduced_rank(X, Y, alpha, r, intercept=True):
    """Mukherjee & Zhu: augmented data, ridge, SVD of the augmented fitted values."""
    d = X.shape[1]
    Xc, Yc = (X - X.mean(0), Y - Y.mean(0)) if intercept else (X, Y)
    Xa = np.vstack([Xc, np.sqrt(alpha) * np.eye(d)])
    Ya = np.vstack([Yc, np.zeros((d, Y.shape[1]))])
    M = np.linalg.lstsq(Xa, Ya, rcond=None)[0]
    _, _, Vt = np.linalg.svd(Xa @ M, full_matrices=False)
    return M @ Vt[:r].T @ Vt[:r]


@pytest.mark.parametrize(
    ("n", "d", "k", "r", "alpha", "intercept"),
    [
        (100, 8, 5, 2, 0.5, True),
        (100, 8, 5, 1, 10.0, False),
        (30, 40, 6, 3, 2.0, True),
        (60, 4, 9, 4, 0.1, True),
    ],
)
def test_reduced_rank_equals_augmented_svd(n, d, k, r, alpha, intercept) -> None:
    X, Y = data(n, d, k, seed=r)
    lm = reduced_rank(moments(X, Y), rank=r, alpha=alpha, intercept=intercept)
    want = brute_reduced_rank(X, Y, alpha, r, intercept)
    assert rel(lm.matrix.numpy(), want) < 1e-7
    assert np.linalg.matrix_rank(lm.matrix.numpy(), tol=1e-9 * np.abs(want).max()) == r
    assert lm.method == "reduced-rank" and lm.info["rank"] == r and 0 < lm.info["retained"] <= 1
    full = reduced_rank(moments(X, Y), rank=min(d, k), alpha=alpha, intercept=intercept)
    assert (
        rel(
            full.matrix.numpy(),
            ridge(moments(X, Y), alpha=alpha, intercept=intercept).matrix.numpy(),
        )
        < 1e-8
    )


def test_reduced_rank_gcv_uses_the_ridge_alpha() -> None:
    X, Y = data(100, 8, 5, seed=2, noise=2.0)
    m = moments(X, Y)
    assert reduced_rank(m, 2).info["alpha"] == ridge(m).info["alpha"]


def test_grid_edge_warns() -> None:
    X, Y = data(200, 4, 2, seed=0, noise=1e-6)  # almost noise-free: the smallest α wins
    with pytest.warns(AlphaAtGridEdgeWarning, match="smallest"):
        ridge(moments(X, Y), alpha="gcv", grid=[1e-6, 1e-3, 1.0])


def test_default_grid() -> None:
    assert (
        len(DEFAULT_GRID) == 20
        and DEFAULT_GRID[0] == pytest.approx(1e-8)
        and DEFAULT_GRID[-1] == pytest.approx(1e2)
    )


def test_bad_input() -> None:
    X, Y = data(20, 4, 3)
    m = moments(X, Y)
    cases = [
        (lambda: ridge(m, alpha=-1.0), "alpha: expected a finite number >= 0"),
        (lambda: ridge(m, alpha=float("nan")), "alpha"),
        (lambda: ridge(m, alpha="auto"), "alpha"),
        (lambda: ridge(m, alpha=True), "alpha"),
        (lambda: ridge(m, alpha="validation"), "validation: expected a backlens.Moments"),
        (
            lambda: ridge(
                m,
                alpha="validation",
                validation=Moments(3, 3).update(torch.ones(2, 3), torch.ones(2, 3)),
            ),
            "d_in=4, d_out=3",
        ),
        (lambda: ridge(m, alpha="validation", validation=Moments(4, 3)), "n_samples = 0"),
        (lambda: ridge(m, alpha=1.0, validation=m), "validation/grid"),
        (lambda: ridge(m, alpha="gcv", validation=m), "alpha='validation'"),
        (lambda: ridge(m, grid=[1.0, -1.0]), "grid"),
        (lambda: ridge(m, grid=[]), "grid"),
        (lambda: ridge(Moments(4, 3)), "n_samples = 0"),
        (lambda: ridge("moments"), "Moments"),
        (lambda: ridge(m, intercept=1), "intercept"),
        (lambda: reduced_rank(m, rank=4), r"rank: expected an int in 1..min\(d_in, d_out\) = 1..3"),
        (lambda: reduced_rank(m, rank=0), "rank"),
        (lambda: ridge(Moments(4, 3).update(torch.ones(1, 4), torch.ones(1, 3))), "n_samples = 1"),
    ]
    for call, message in cases:
        with pytest.raises(BacklensError, match=message):
            call()
