"""LinearAbstraction is a scikit-learn estimator: check_estimator, and equal to Ridge."""

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.utils.estimator_checks import parametrize_with_checks

from backlens import BacklensError
from backlens.linear.estimator import LinearAbstraction

ESTIMATORS = [
    LinearAbstraction(),
    LinearAbstraction(alpha=1.0, fit_intercept=False),
    LinearAbstraction(method="reduced-rank", rank=1, batch_size=7),
]


@pytest.mark.filterwarnings("ignore::backlens.AlphaAtGridEdgeWarning")
@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible(estimator, check) -> None:
    check(estimator)


@pytest.mark.parametrize("targets", [None, 3])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_equals_ridge(targets, fit_intercept) -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 6)) + 2
    y = X @ rng.standard_normal((6,) if targets is None else (6, targets)) + rng.standard_normal(
        (300,) if targets is None else (300, targets)
    )
    ours = LinearAbstraction(alpha=0.3, fit_intercept=fit_intercept, batch_size=64).fit(X, y)
    sk = Ridge(alpha=0.3, fit_intercept=fit_intercept).fit(X, y)
    np.testing.assert_allclose(ours.coef_, sk.coef_, rtol=1e-9)
    np.testing.assert_allclose(ours.intercept_, sk.intercept_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.predict(X), sk.predict(X), rtol=1e-9)
    assert ours.alpha_ == 0.3 and ours.score(X, y) == pytest.approx(sk.score(X, y), rel=1e-12)
    assert ours.map_.info["alpha_source"] == "fixed"


def test_gcv_sets_alpha_and_bad_params_raise() -> None:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((100, 4))
    y = X @ np.ones(4) + rng.standard_normal(100)
    est = LinearAbstraction().fit(X, y)
    assert est.alpha_ == est.map_.info["alpha"] > 0
    for bad in [
        LinearAbstraction(method="lasso"),
        LinearAbstraction(alpha="validation"),
        LinearAbstraction(batch_size=0),
        LinearAbstraction(method="reduced-rank", rank=9),
    ]:
        with pytest.raises(BacklensError):
            bad.fit(X, y)


def test_reduced_rank_needs_a_rank() -> None:
    X, y = np.random.default_rng(2).standard_normal((20, 3)), np.zeros(20)
    with pytest.raises(BacklensError, match=r"^rank: expected a positive int for method='reduced_rank'") as e:
        LinearAbstraction(method="reduced-rank").fit(X, y)
    assert e.value.got == "None" and "rank=R" in e.value.fix
    with pytest.raises(BacklensError, match="^rank: expected a positive integer"):
        LinearAbstraction(method="reduced-rank", rank=0).fit(X, y)
    with pytest.raises(BacklensError, match="^alpha: expected a number >= 0 or 'gcv'"):
        LinearAbstraction(alpha="validation").fit(X, y)
    assert LinearAbstraction(alpha=1.0).fit(X, y).map_.method == "ridge"  # ridge needs no rank
