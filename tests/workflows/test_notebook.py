"""The notebook's Abstraction Experiment and forward toy, bugs fixed, scored on held-out data."""

import numpy as np
import pytest

from backlens import BacklensError
from backlens.workflows import notebook


@pytest.mark.parametrize(("b", "d", "k", "alpha"), [(50, 8, 3, 0.0), (20, 40, 5, 1e-3), (128, 64, 64, 2.5)])
def test_ridge_equals_closed_form(b: int, d: int, k: int, alpha: float) -> None:
    rng = np.random.default_rng(0)
    G, Gp = rng.standard_normal((b, d)), rng.standard_normal((b, k))
    if alpha == 0.0 and b < d:
        pytest.skip("singular without a penalty")
    expected = np.linalg.inv(G.T @ G + alpha * np.eye(d)) @ G.T @ Gp
    # float64 normal equations: agreement to ~cond·eps; these are well-conditioned
    np.testing.assert_allclose(notebook.ridge_solve(G, Gp, alpha), expected, rtol=1e-8, atol=1e-10)


def test_held_out_samples_are_independent_of_fitting_samples() -> None:
    small = notebook.abstraction_experiment(b=16, d_in=8, hidden=4, kind="normal", seed=3, n_test=16)
    large = notebook.abstraction_experiment(b=16, d_in=8, hidden=4, kind="normal", seed=3, n_test=64)
    # the fitting samples (so the fit residuals) don't depend on how many held-out samples are drawn
    for a, b in zip(small["rows"], large["rows"], strict=False):
        assert a["train_abs"] == b["train_abs"]
    _, fit, held_out = notebook._streams(3)
    block = notebook.draw_block(8, 4, "normal", notebook._streams(3)[0])
    G_fit = notebook.draw_samples(block, 16, fit)[0]
    G_test = notebook.draw_samples(block, 16, held_out)[0]
    assert not np.allclose(G_fit, G_test)
    assert abs(np.corrcoef(G_fit.ravel(), G_test.ravel())[0, 1]) < 0.3


@pytest.mark.parametrize("kind", ["uniform", "normal"])
def test_ridge_interpolates_below_d_and_fails_held_out(kind: str) -> None:
    result = notebook.abstraction_experiment(b=128, d_in=512, hidden=256, kind=kind, seed=0)
    rows = {
        r["method"].split(" ")[0] + (" notebook" if "1e-9" in r["method"] else ""): r for r in result["rows"]
    }
    ridge = next(r for r in result["rows"] if "1e-9" in r["method"])
    mask = next(r for r in result["rows"] if r["method"].startswith("expected"))
    assert ridge["train_rel"] < 1e-8  # interpolation: the notebook's ≈ 0 residual
    assert ridge["test_rel"] > mask["test_rel"]  # worse than the analytic map on fresh samples
    assert rows
    assert "W alone maps into the hidden layer" in result["note"]


def test_weights_only_and_expected_mask_closed_forms() -> None:
    rng = np.random.default_rng(1)
    block = notebook.draw_block(6, 4, "normal", rng)
    G, R, Gp = notebook.draw_samples(block, 10, rng)
    np.testing.assert_allclose(
        Gp,
        G @ block.W @ np.diag(np.ones(4)) @ block.W2 - (G @ block.W * (1 - R)) @ block.W2,
        rtol=1e-12,
        atol=1e-12,
    )


def test_forward_toy_matches_notebook() -> None:
    toy = notebook.forward_toy()
    np.testing.assert_allclose(toy["M"], [[1.36, 0.88], [-1.36, -0.88]], atol=0.005)
    assert toy["residual"] == pytest.approx(3.0199337741082997, rel=1e-12)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: notebook.ridge_solve(np.ones((3, 2)), np.ones((4, 2)), 1.0),
            "same number of rows",
        ),
        (lambda: notebook.ridge_solve(np.ones((3, 2)), np.ones((3, 2)), -1.0), "non-negative"),
        (lambda: notebook.abstraction_experiment(b=0), "positive integer"),
        (lambda: notebook.abstraction_experiment(kind="poisson"), "one of"),
        (
            lambda: notebook.abstraction_experiment(d_in=512.0 / 2),
            "positive integer",
        ),  # the notebook's float shape
    ],
)
def test_bad_input(call, match: str) -> None:
    with pytest.raises(BacklensError, match=match):
        call()
