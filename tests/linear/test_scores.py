"""Scores from data and from held-out Moments, against scikit-learn and direct formulas."""

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score

from backlens import BacklensError, LinearMap, Moments, score


def case(n: int, d: int, k: int, seed: int, shift: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) + shift
    M = torch.randn(d, k, generator=g, dtype=torch.float64)
    Y = X @ M + 0.3 * torch.randn(n, k, generator=g, dtype=torch.float64) + 1.0
    lm = LinearMap(
        M + 0.05 * torch.randn(d, k, generator=g, dtype=torch.float64),
        torch.randn(k, generator=g, dtype=torch.float64),
    )
    return X, Y, lm


CASES = [(1, 1, 1), (50, 3, 2), (400, 10, 7), (30, 5, 1)]


@pytest.mark.parametrize(("n", "d", "k"), CASES)
def test_score_from_data_matches_formulas(n, d, k) -> None:
    X, Y, lm = case(n, d, k, seed=n)
    s = score(lm, X, Y)
    P = (X @ lm.matrix + lm.bias).numpy()
    Yn = Y.numpy()
    assert s.n == n
    assert s.rel_error == pytest.approx(np.linalg.norm(Yn - P) / np.linalg.norm(Yn), rel=1e-12)
    if n > 1:
        assert s.r2 == pytest.approx(r2_score(Yn, P), rel=1e-10)
    cos = (P * Yn).sum(1) / (np.linalg.norm(P, axis=1) * np.linalg.norm(Yn, axis=1))
    assert s.cosine == pytest.approx(cos.mean(), rel=1e-12)


@pytest.mark.parametrize(("n", "d", "k"), CASES[1:])
@pytest.mark.parametrize("shift", [0.0, 100.0])
def test_score_from_moments_equals_score_from_data(n, d, k, shift) -> None:
    X, Y, lm = case(n, d, k, seed=k, shift=shift)
    m = Moments(d, k, yy="diagonal")
    for i in range(0, n, 13):
        m.update(X[i : i + 13], Y[i : i + 13])
    exact, direct = score(lm, moments=m), score(lm, X, Y)
    assert exact.cosine is None and exact.n == n
    assert exact.rel_error == pytest.approx(direct.rel_error, rel=1e-9)
    assert exact.r2 == pytest.approx(direct.r2, rel=1e-9)


def test_float32_rows_and_constant_outputs() -> None:
    X = torch.randn(20, 2)
    Y = torch.stack([X[:, 0], torch.ones(20), torch.zeros(20)], dim=1)
    lm = LinearMap(
        torch.tensor([[1.0, 0, 0], [0, 0, 0]], dtype=torch.float64),
        torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64),
    )
    s = score(lm, X, Y)
    # constant outputs: exact → 1, missed → 0, as sklearn's r2_score
    assert s.r2 == pytest.approx((1 + 1 + 0) / 3)
    P = lm.apply(X.double()).numpy()
    assert s.r2 == pytest.approx(r2_score(Y.double().numpy(), P))


def test_cosine_of_zero_rows() -> None:
    lm = LinearMap(torch.eye(2, dtype=torch.float64))
    X = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    Y = torch.tensor([[0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert score(lm, X, Y).cosine == pytest.approx(0.5)  # both zero → 1; one zero → 0
    assert score(lm, X, Y).rel_error == float("inf")
    assert score(lm, Y, Y).rel_error == 0.0


def test_tiny_gradients_score_the_same() -> None:
    X, Y, lm = case(60, 4, 3, seed=1)
    small = LinearMap(lm.matrix, lm.bias * 1e-12)
    a, b = score(lm, X, Y), score(small, X * 1e-12, Y * 1e-12)
    assert b.rel_error == pytest.approx(a.rel_error, rel=1e-9) and b.cosine == pytest.approx(
        a.cosine, rel=1e-9
    )


def test_bad_input() -> None:
    X, Y, lm = case(10, 3, 2, seed=0)
    cases = [
        (lambda: score(lm, X[:0], Y[:0]), "at least one sample"),
        (lambda: score(lm, moments=Moments(3, 2)), "n_samples = 0"),
        (lambda: score(lm, X, Y, moments=Moments(3, 2)), "either"),
        (lambda: score(lm, X), "both X and Y"),
        (lambda: score(lm, X[:, :2], Y), "X: expected shape"),
        (lambda: score(lm, X, Y[:5]), "same number of rows"),
        (lambda: score(lm, moments=Moments(2, 2).update(X[:, :2], Y)), "d_in=3, d_out=2"),
        (lambda: score("lm", X, Y), "LinearMap"),
        (lambda: score(lm, X.long(), Y), "floating-point"),
    ]
    for call, message in cases:
        with pytest.raises(BacklensError, match=message):
            call()
