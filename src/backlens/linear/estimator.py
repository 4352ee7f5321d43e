"""LinearAbstraction: the data-fitted estimators as a scikit-learn regressor."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ..errors import check_choice, check_positive_int, fail
from .linear_map import LinearMap
from .methods import REDUCED_RANK, RIDGE
from .moments import Moments
from .ridge import reduced_rank, ridge

__all__ = ["LinearAbstraction"]

METHODS = (RIDGE, REDUCED_RANK)


class LinearAbstraction(RegressorMixin, BaseEstimator):
    """y ≈ X·coef_ᵀ + intercept_, fitted by streaming Moments and backlens.ridge / reduced_rank.

    Parameters: method ("ridge" or "reduced-rank"), alpha (a number ≥ 0 or "gcv", as in
    backlens.ridge; "validation" needs held-out moments and is not offered here), fit_intercept,
    rank (required for method="reduced-rank": a positive int ≤ min(n_features, n_targets);
    ignored by ridge), grid (relative α grid), batch_size (rows per Moments update).
    Parameters are checked in fit, as scikit-learn asks; a bad one raises BacklensError there.
    Learned: coef_ (n_targets, n_features) as scikit-learn's Ridge — the PyTorch weight layout,
    intercept_, alpha_, map_ (the backlens.LinearMap), n_features_in_.
    """

    def __init__(
        self,
        method: str = "ridge",
        alpha: float | str = "gcv",
        fit_intercept: bool = True,
        rank: int | None = None,
        grid: Any = None,
        batch_size: int = 4096,
    ) -> None:
        self.method = method
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.rank = rank
        self.grid = grid
        self.batch_size = batch_size

    def fit(self, X: Any, y: Any) -> LinearAbstraction:
        self._check_params()
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=[np.float64, np.float32])
        Y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        moments = Moments(X.shape[1], Y.shape[1], yy="diagonal")
        for start in range(0, len(X), self.batch_size):
            stop = start + self.batch_size
            moments.update(X[start:stop], Y[start:stop])
        if self.method == "ridge":
            lm = ridge(moments, self.alpha, self.fit_intercept, grid=self.grid)
        else:
            rank = check_positive_int("rank", self.rank)  # None was refused in _check_params
            lm = reduced_rank(moments, rank, self.alpha, self.fit_intercept, grid=self.grid)
        self.map_: LinearMap = lm
        coef = lm.matrix.T.numpy().copy()
        bias = lm.bias.numpy().copy()
        self.coef_ = coef[0] if y.ndim == 1 else coef
        self.intercept_ = float(bias[0]) if y.ndim == 1 else bias
        self.alpha_ = float(lm.info["alpha"])
        return self

    def _check_params(self) -> None:
        """Raise on a bad hyperparameter before any data is read (the rest: ridge/reduced_rank)."""
        check_choice("method", self.method, METHODS)
        check_positive_int("batch_size", self.batch_size)
        if self.alpha == "validation":
            raise fail(
                "alpha",
                "a number >= 0 or 'gcv' ('validation' needs held-out Moments)",
                repr(self.alpha),
                "pass alpha='gcv', or call backlens.ridge(moments, 'validation', validation=...)",
            )
        if self.method == "reduced-rank" and self.rank is None:
            raise fail(
                "rank",
                "a positive int for method='reduced_rank'",
                repr(self.rank),
                "pass rank=R, e.g. LinearAbstraction(method='reduced_rank', rank=2)",
            )

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        coef = np.atleast_2d(self.coef_)
        out = X.astype(np.float64, copy=False) @ coef.T + self.intercept_
        return out[:, 0] if np.ndim(self.coef_) == 1 else out

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
