"""The linearity score from Moments against the paper's recipe computed directly on the rows (numpy)."""

import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backlens.errors import BacklensError
from backlens.linear.linearity import LinearityScore, LinearityUndefinedWarning, linearity_score
from backlens.linear.moments import Moments

# Tolerances (absolute, on scores of order 1): 1e-10 for the table of cases, 1e-12 where a score
# is exactly 1 or two Moments hold the same rows. Held-out scores far below 0 (an overfit A) are
# compared relative to their size: |ours − recipe| ≤ tol·max(1, |recipe|).
TOL = 1e-10


def recipe(X, Y, Xt=None, Yt=None):
    """The paper's recipe, literally, in float64: centre, Frobenius-normalise, lstsq, 1 − ‖·‖²."""

    def norm(Z):
        Zc = Z - Z.mean(axis=0)
        return Zc / np.linalg.norm(Zc)

    Xn, Yn = norm(X), norm(Y)
    A = np.linalg.lstsq(Xn, Yn, rcond=None)[0]  # minimum-norm least squares
    fit = 1.0 - np.linalg.norm(Xn @ A - Yn) ** 2
    held = None if Xt is None else 1.0 - np.linalg.norm(norm(Xt) @ A - norm(Yt)) ** 2
    return fit, held


def dyadic(Z):
    """Z on a 2⁻²⁰ grid: Z + 1e4 is then exact in float64 (34 significant bits)."""
    return np.round(Z * 2.0**20) / 2.0**20


@dataclass
class Rows:
    """Fitting and test pairs. Moments see them shifted by `shift` (exactly: the data are dyadic),
    the recipe unshifted: its own centring of far-off data keeps rounding that Moments avoid."""

    X: np.ndarray
    Y: np.ndarray
    Xt: np.ndarray
    Yt: np.ndarray
    shift: float = 0.0

    def moments(self, batch=None, test=False):
        X, Y = (self.Xt, self.Yt) if test else (self.X, self.Y)
        return moments(X + self.shift, Y + self.shift, batch)

    def score(self, batch=None):
        return linearity_score(self.moments(batch), self.moments(test=True))

    def recipes(self):
        """(fit, held_out, fit_residual, held_out_residual); the residual ones None if d_in ≠ d_out."""
        fit, held = recipe(self.X, self.Y, self.Xt, self.Yt)
        if self.X.shape[1] != self.Y.shape[1]:
            return fit, held, None, None
        return (fit, held, *recipe(self.X, self.Y - self.X, self.Xt, self.Yt - self.Xt))


def moments(X, Y, batch=None):
    m = Moments(X.shape[1], Y.shape[1])
    step = batch or X.shape[0]
    for i in range(0, X.shape[0], step):
        m.update(torch.from_numpy(X[i : i + step]), torch.from_numpy(Y[i : i + step]))
    return m


def close(ours, ref, tol=TOL):
    if ref is None:
        return ours is None
    return ours is not None and abs(ours - ref) <= tol * max(1.0, abs(ref))


SCORES = ("fit", "held_out", "fit_residual", "held_out_residual")


# ---- the table of cases: each builds Rows from a seeded generator and a row count -------------
def linear(r, n):
    W, b = r.normal(size=(6, 6)), r.normal(size=6)
    X, Xt = r.normal(size=(n, 6)), r.normal(size=(n, 6))
    return Rows(X, X @ W + b, Xt, Xt @ W + b)


def nonlinear(r, n):
    W = 5.0 * r.normal(size=(6, 6))  # large gain: tanh saturates
    X, Xt = r.normal(size=(n, 6)), r.normal(size=(n, 6))
    return Rows(X, np.tanh(X @ W), Xt, np.tanh(Xt @ W))


def widths_differ(r, n):
    W = r.normal(size=(5, 3))
    X, Xt = r.normal(size=(n, 5)), r.normal(size=(n, 5))
    return Rows(X, np.tanh(X @ W) + 0.5 * X[:, :3], Xt, np.tanh(Xt @ W) + 0.5 * Xt[:, :3])


def duplicated_columns(r, n):
    # Column 4 repeats column 0 and column 5 is 4 × column 1 (exact in floats) in the fitting rows:
    # Cxx has rank 4, and only the minimum-norm A is the recipe's. The test rows break the
    # duplication, so held_out sees A's null-space part (the scaled copy makes the Jacobi-scaled
    # solution differ from the minimum-norm one until projected).
    B, Bt = r.normal(size=(n, 4)), r.normal(size=(n, 4))
    W = r.normal(size=(4, 6))
    X = np.concatenate([B, B[:, :2] * [1.0, 4.0]], axis=1)
    Xt = np.concatenate([Bt, Bt[:, :2] * [1.0, 4.0] + 0.1 * r.normal(size=(n, 2))], axis=1)
    return Rows(X, np.tanh(B @ W) + X, Xt, np.tanh(Bt @ W) + Xt)


def far_from_zero(r, n):
    # Mean 1e4, added exactly in float64: Moments must centre as if the data were at 0.
    W = r.normal(size=(6, 6))
    Z, Zt = dyadic(r.normal(size=(n, 6))), dyadic(r.normal(size=(n, 6)))
    return Rows(Z, dyadic(np.sin(Z @ W) + Z), Zt, dyadic(np.sin(Zt @ W) + Zt), shift=1e4)


def constant_column(r, n):
    # Column 2 is constant on the fitting rows (a dead unit): its cᵢᵢ = 0, its row of A is 0.
    W = r.normal(size=(5, 5))
    X, Xt = r.normal(size=(n, 5)), r.normal(size=(n, 5))
    X[:, 2] = 3.0
    return Rows(X, np.tanh(X @ W), Xt, np.tanh(Xt @ W))


def fewer_rows_than_columns(r, n):
    # 8 rows, 12 columns: the fit interpolates (score 1), held out it does not.
    W = r.normal(size=(12, 12))
    X, Xt = r.normal(size=(8, 12)), r.normal(size=(n, 12))
    return Rows(X, np.tanh(X @ W), Xt, np.tanh(Xt @ W))


def badly_scaled_columns(r, n):
    # Column scales over 6 decades (Cxx's condition ≈ 1e12): normal equations on the raw Cxx
    # miss the recipe by 2e-7 here; the Jacobi-scaled ones do not.
    scale = np.logspace(-3, 3, 6)
    W = r.normal(size=(6, 6)) / scale[:, None]
    X, Xt = r.normal(size=(n, 6)) * scale, r.normal(size=(n, 6)) * scale
    return Rows(X, np.tanh(X @ W), Xt, np.tanh(Xt @ W))


CASES = [
    linear,
    nonlinear,
    widths_differ,
    duplicated_columns,
    far_from_zero,
    constant_column,
    fewer_rows_than_columns,
    badly_scaled_columns,
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_matches_the_recipe(case) -> None:
    rows = case(np.random.default_rng(0), 300)
    s = rows.score()
    for key, ref in zip(SCORES, rows.recipes(), strict=True):
        assert close(getattr(s, key), ref), (key, getattr(s, key), ref)
    assert (s.n_fit, s.n_held_out) == (rows.X.shape[0], rows.Xt.shape[0])
    assert s.rank == np.linalg.matrix_rank(rows.X - rows.X.mean(axis=0))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_streamed_and_merged_equal_one_stream(case) -> None:
    rows = case(np.random.default_rng(5), 240)
    one = rows.score()
    parts = np.array_split(np.arange(rows.X.shape[0]), 3)  # shards of uneven sizes, one streamed
    shards = [moments(rows.X[p] + rows.shift, rows.Y[p] + rows.shift, batch=11) for p in parts]
    merged = shards[0].copy()
    for shard in shards[1:]:
        merged.merge(shard)
    for other in (rows.score(batch=7), linearity_score(merged, rows.moments(test=True))):
        assert other.rank == one.rank and other.n_fit == one.n_fit
        for key in SCORES:
            assert close(getattr(other, key), getattr(one, key), tol=1e-12), key


def gain(X, W):
    Xc = X - X.mean(axis=0)
    return np.linalg.norm(Xc @ W) / np.linalg.norm(Xc)


def test_a_linear_map_scores_one_on_the_fit_and_one_minus_gain_mismatch_held_out() -> None:
    # Held out, the test's own norms rescale: Y = XW + b scores 1 − (ρ − 1)², ρ = g_test/g_fit.
    r = np.random.default_rng(1)
    W, b = r.normal(size=(6, 6)), r.normal(size=6)
    X, Xt = r.normal(size=(200, 6)), r.normal(size=(150, 6))
    s = linearity_score(moments(X, X @ W + b), moments(Xt, Xt @ W + b))
    assert s.fit == pytest.approx(1.0, abs=1e-12) and s.fit_residual == pytest.approx(1.0, abs=1e-12)
    for value, M in ((s.held_out, W), (s.held_out_residual, W - np.eye(6))):
        rho = gain(Xt, M) / gain(X, M)
        assert value == pytest.approx(1.0 - (rho - 1.0) ** 2, abs=1e-12)
        assert value < 1.0 - 1e-6  # the mismatch is real, not rounding


def test_a_scaled_rotation_scores_one_held_out() -> None:
    r = np.random.default_rng(11)
    W = 3.0 * np.linalg.qr(r.normal(size=(6, 6)))[0]  # a constant gain: ρ = 1
    X, Xt = r.normal(size=(200, 6)) + 5.0, r.normal(size=(150, 6))
    s = linearity_score(moments(X, X @ W - 1.0), moments(Xt, Xt @ W - 1.0))
    assert s.fit == pytest.approx(1.0, abs=1e-12) and s.held_out == pytest.approx(1.0, abs=1e-12)


def test_a_saturated_map_scores_well_below_one() -> None:
    s = nonlinear(np.random.default_rng(2), 400).score()
    assert s.fit < 0.7 and s.held_out is not None and s.held_out < s.fit


def test_widths_differ_give_no_residual_score() -> None:
    s = widths_differ(np.random.default_rng(3), 50).score()
    assert s.fit_residual is None and s.held_out_residual is None


def test_few_rows_interpolate() -> None:
    s = fewer_rows_than_columns(np.random.default_rng(4), 100).score()
    assert s.rank == 7 and s.fit == pytest.approx(1.0, abs=1e-12) and s.held_out < 0.5


def test_without_test_moments_and_as_dict() -> None:
    rows = nonlinear(np.random.default_rng(6), 80)
    s = linearity_score(rows.moments())
    assert isinstance(s, LinearityScore)
    assert s.held_out is None and s.held_out_residual is None and s.n_held_out is None
    assert s.fit_residual is not None
    assert s.as_dict() == {
        "fit": s.fit,
        "held_out": None,
        "fit_residual": s.fit_residual,
        "held_out_residual": None,
        "n_fit": 80,
        "n_held_out": None,
        "rank": 6,
    }


def test_float32_rows_score_like_their_float64_values() -> None:
    rows = nonlinear(np.random.default_rng(7), 100)
    X32, Y32 = rows.X.astype(np.float32), rows.Y.astype(np.float32)
    s = linearity_score(moments(X32, Y32))
    assert close(s.fit, recipe(X32.astype(np.float64), Y32.astype(np.float64))[0])


@pytest.mark.parametrize("on", ["fitting", "test"])
def test_y_equal_to_x_plus_a_constant_has_no_residual_score(on) -> None:
    r = np.random.default_rng(8)
    X, Xt = r.normal(size=(50, 4)) + 3.0, r.normal(size=(50, 4))
    Y = X + 2.5 if on == "fitting" else np.tanh(X)
    Yt = Xt + 2.5 if on == "test" else np.tanh(Xt)
    with pytest.warns(LinearityUndefinedWarning, match=on):
        s = linearity_score(moments(X, Y), moments(Xt, Yt))
    assert s.held_out_residual is None
    assert (s.fit_residual is None) == (on == "fitting")
    assert close(s.fit, recipe(X, Y)[0])


def test_no_warning_when_defined() -> None:
    rows = nonlinear(np.random.default_rng(9), 60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows.score()


# ---- random shapes ---------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(3, 40),
    n_test=st.integers(2, 30),
    d_in=st.integers(1, 7),
    d_out=st.integers(1, 7),
    same_width=st.booleans(),
    scale=st.floats(0.1, 5.0),
    shift=st.sampled_from([0.0, 1.0, 1e4]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_shapes_match_the_recipe(n, n_test, d_in, d_out, same_width, scale, shift, seed) -> None:
    d_out = d_in if same_width else d_out
    r = np.random.default_rng(seed)
    W = scale * r.normal(size=(d_in, d_out))
    X, Xt = dyadic(r.normal(size=(n, d_in))), dyadic(r.normal(size=(n_test, d_in)))
    Y = dyadic(np.sin(X @ W) + 0.3 * r.normal(size=(n, d_out)))  # the noise keeps Y varying
    Yt = dyadic(np.sin(Xt @ W) + 0.3 * r.normal(size=(n_test, d_out)))
    rows = Rows(X, Y, Xt, Yt, shift)
    s = rows.score(batch=5)
    for key, ref in zip(SCORES, rows.recipes(), strict=True):
        # n ≈ d_in makes X_c ill-conditioned, and held_out then large: one decade looser.
        assert close(getattr(s, key), ref, tol=1e-9), (key, getattr(s, key), ref)
    assert s.rank == np.linalg.matrix_rank(X - X.mean(axis=0))


# ---- bad input -------------------------------------------------------------------------------
GOOD = np.random.default_rng(10).normal(size=(20, 3))


def _m(X, Y=None):
    X = np.asarray(X, dtype=np.float64)
    return moments(X, X[:, :2] ** 2 + X[:, :1] if Y is None else np.asarray(Y, dtype=np.float64))


BAD = [
    ("not moments", lambda: (torch.zeros(3, 3), None), "train_moments"),
    ("test not moments", lambda: (_m(GOOD), {"n": 3}), "test_moments"),
    ("empty", lambda: (Moments(3, 2), None), "train_moments"),
    ("one row", lambda: (_m(GOOD[:1]), None), "train_moments"),
    ("one test row", lambda: (_m(GOOD), _m(GOOD[:1])), "test_moments"),
    ("test d_in", lambda: (_m(GOOD), _m(GOOD[:, :2])), "test_moments"),
    ("test d_out", lambda: (_m(GOOD), moments(GOOD, GOOD)), "test_moments"),
    ("same moments", lambda: (lambda m: (m, m))(_m(GOOD)), "test_moments"),
    ("constant Y", lambda: (_m(GOOD, np.ones((20, 2))), None), "train_moments"),
    ("constant X", lambda: (_m(np.ones((20, 3)), GOOD[:, :2]), None), "train_moments"),
    ("constant test Y", lambda: (_m(GOOD), _m(GOOD, np.ones((20, 2)))), "test_moments"),
    ("constant test X", lambda: (_m(GOOD), _m(np.ones((20, 3)), GOOD[:, :2])), "test_moments"),
]


@pytest.mark.parametrize(("make", "argument"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises(make, argument) -> None:
    train, test = make()
    with pytest.raises(BacklensError) as err:
        linearity_score(train, test)
    assert err.value.argument == argument and err.value.fix


def test_constant_y_says_undefined() -> None:
    with pytest.raises(BacklensError, match="undefined"):
        linearity_score(_m(GOOD, np.full((20, 2), 7.0)))
