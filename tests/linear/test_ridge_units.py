"""Ridge does not depend on the data's units: X and Y each scaled anywhere from 1e-50 to 1e50
give the same held-out R², the same relative map and the same relative α — by GCV, on
validation moments, fixed, and reduced-rank. Unscaled, GCV's α²·‖q‖² overflowed from about
1e40 and underflowed below 1e-45 (issue 15: R² 0.02 instead of 1.00)."""

import functools
import warnings

import numpy as np
import pytest

from backlens import Moments, reduced_rank, ridge, score
from backlens.errors import BacklensError, BacklensWarning

SCALES = [1e-50, 1e-45, 1e-20, 1e40, 1e50]
# the ends of the range and mixed units in `make test`; every scale in the slow run
UNITS = [
    pytest.param(
        sx, sy, marks=[] if (sx, sy) in {(1e-50, 1e-50), (1e50, 1e50), (1e-45, 1e40)} else [pytest.mark.slow]
    )
    for sx, sy in [(s, s) for s in SCALES] + [(1e-50, 1e50), (1e50, 1e-50), (1e-45, 1e40)]
]
# float64 scaling by a power of ten rounds once per number (2^-53): 1e-9 leaves wide room
TOL = 1e-9


def pairs(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng, fixed = np.random.default_rng(seed), np.random.default_rng(99)
    W = fixed.normal(size=(6, 2)) @ fixed.normal(size=(2, 3))  # rank 2: reduced-rank fits it too
    X = rng.normal(size=(n, 6)) + 0.5
    Y = X @ W + 0.3 + 0.05 * rng.normal(size=(n, 3))
    return X, Y


def moments(X: np.ndarray, Y: np.ndarray) -> Moments:
    return Moments(X.shape[1], Y.shape[1]).update(X, Y)


FITS = {
    "gcv": lambda m, val, sx: ridge(m, alpha="gcv"),
    "validation": lambda m, val, sx: ridge(m, alpha="validation", validation=val),
    "fixed": lambda m, val, sx: ridge(m, alpha=2.0 * sx**2),  # the same α in X's units
    "reduced-rank": lambda m, val, sx: reduced_rank(m, 2, alpha="gcv"),
}


@functools.cache
def fit_and_score(fit: str, sx: float, sy: float):
    X, Y = pairs(0, 80)
    Xv, Yv = pairs(1, 40)
    Xt, Yt = pairs(2, 60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BacklensWarning)
        lm = FITS[fit](moments(X * sx, Y * sy), moments(Xv * sx, Yv * sy), sx)
    return lm, score(lm, moments=moments(Xt * sx, Yt * sy))


@pytest.mark.parametrize("fit", list(FITS))
@pytest.mark.parametrize(("sx", "sy"), UNITS)
def test_same_fit_in_any_units(fit: str, sx: float, sy: float) -> None:
    base, base_score = fit_and_score(fit, 1.0, 1.0)
    lm, got = fit_and_score(fit, sx, sy)
    assert base_score.r2 > 0.99  # a good fit to compare against
    assert got.r2 == pytest.approx(base_score.r2, abs=TOL)
    assert got.rel_error == pytest.approx(base_score.rel_error, rel=1e-7)
    relative_map = lm.matrix.numpy() * sx / sy
    assert np.abs(relative_map - base.matrix.numpy()).max() <= TOL * np.abs(base.matrix.numpy()).max()
    assert np.abs(lm.bias.numpy() / sy - base.bias.numpy()).max() <= TOL * np.abs(base.bias.numpy()).max()
    assert lm.info["alpha_relative"] == pytest.approx(base.info["alpha_relative"], rel=TOL)


def test_squares_beyond_float64_are_refused() -> None:
    X, Y = pairs(0, 20)
    with pytest.raises(BacklensError, match="float64|finite"):
        ridge(moments(X * 1e160, Y), alpha="gcv")
