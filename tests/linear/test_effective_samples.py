"""Moments.n_eff against a direct computation (streamed, merged, saved and loaded), and the
EffectiveSamplesWarning ridge raises when n_eff < d_in."""

from __future__ import annotations

import warnings

import pytest
import torch

import backlens
from backlens import EffectiveSamplesWarning, Moments, reduced_rank, ridge
from backlens.tensorfile import load_tensors, save_tensors


def direct_n_eff(X: torch.Tensor) -> float:
    sq = (X.double() ** 2).sum(dim=1)
    return float(sq.sum() ** 2 / (sq**2).sum())


def heavy_rows(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(3 * torch.randn(n, 1, generator=g, dtype=torch.float64))  # a few rows dominate
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * scale + 0.5
    return X, X @ torch.randn(d, 3, generator=g, dtype=torch.float64)


def test_n_eff_matches_direct_computation_in_chunks_and_float32():
    X, Y = heavy_rows(500, 7)
    m = Moments(7, 3)
    for start in range(0, 500, 37):
        m.update(X[start : start + 37], Y[start : start + 37])
    assert m.n_eff == pytest.approx(direct_n_eff(X), rel=1e-12)
    assert 1 <= m.n_eff <= m.n
    m32 = Moments(7, 3).update(X.float(), Y.float())
    assert m32.n_eff == pytest.approx(direct_n_eff(X.float()), rel=1e-9)
    assert m.sum_sq_norms == pytest.approx(float((X**2).sum()), rel=1e-12)


def test_equal_norms_give_n_and_empty_gives_zero():
    X = torch.eye(5, dtype=torch.float64).repeat(4, 1) * 3.0
    assert Moments(5, 5).update(X, X).n_eff == pytest.approx(20.0)
    assert Moments(5, 5).n_eff == 0.0


def test_n_eff_exact_after_merge_copy_and_large_update():
    X, Y = heavy_rows(900, 6, seed=1)
    a, b = Moments(6, 3).update(X[:300], Y[:300]), Moments(6, 3).update(X[300:], Y[300:])
    merged = a.copy().merge(b)
    assert merged.n_eff == pytest.approx(direct_n_eff(X), rel=1e-12)
    assert Moments(6, 3).merge(merged).n_eff == pytest.approx(direct_n_eff(X), rel=1e-12)
    big = torch.cat([X] * 20)  # more rows than one internal chunk
    assert Moments(6, 3).update(big, torch.cat([Y] * 20)).n_eff == pytest.approx(direct_n_eff(big), rel=1e-10)


def test_bad_rows_leave_n_eff_unchanged():
    X, Y = heavy_rows(50, 4)
    m = Moments(4, 3).update(X, Y)
    before = m.n_eff
    bad = X.clone()
    bad[7, 1] = float("nan")
    with pytest.raises(backlens.BacklensError):
        m.update(bad, Y)
    assert m.n_eff == before


def test_n_eff_saved_and_loaded(tmp_path):
    X, Y = heavy_rows(200, 5)
    m = Moments(5, 3).update(X, Y)
    loaded = Moments.load(m.save(tmp_path / "m.safetensors"))
    assert loaded.n_eff == pytest.approx(direct_n_eff(X), rel=1e-12)
    loaded.update(X, Y)
    assert loaded.n_eff == pytest.approx(direct_n_eff(torch.cat([X, X])), rel=1e-12)


def test_old_file_without_norm_sums_loads_with_n_eff_unknown(tmp_path):
    X, Y = heavy_rows(200, 5)
    path = Moments(5, 3).update(X, Y).save(tmp_path / "m.safetensors")
    tensors, meta = load_tensors(path, "backlens.Moments")
    del tensors["x_norm_sums"]
    save_tensors(tmp_path / "old.safetensors", tensors, "backlens.Moments", meta)
    old = Moments.load(tmp_path / "old.safetensors")
    assert old.n == 200 and old.n_eff is None and "unknown" in repr(old)
    assert old.copy().merge(Moments(5, 3).update(X, Y)).n_eff is None  # unknown stays unknown
    assert Moments.load(old.save(tmp_path / "again.safetensors")).n_eff is None
    assert ridge(old, alpha=1.0).info["n_eff"] is None


def test_ridge_records_n_and_n_eff_and_warns_when_below_d():
    X, Y = heavy_rows(400, 40)
    m = Moments(40, 3).update(X, Y)
    assert m.n_eff < 40 < m.n
    with pytest.warns(EffectiveSamplesWarning) as record:
        fitted = ridge(m, alpha="gcv", intercept=False)
    text = str(record[0].message)
    assert "400 samples" in text and f"effectively {m.n_eff:.0f}" in text and "40 input features" in text
    assert fitted.info["n"] == 400 and fitted.info["n_eff"] == pytest.approx(m.n_eff)
    with pytest.warns(EffectiveSamplesWarning):
        reduced_rank(m, rank=2, alpha=1.0)


def test_no_warning_when_n_eff_reaches_d():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(400, 10, generator=g, dtype=torch.float64)
    m = Moments(10, 2).update(X, X[:, :2])
    assert m.n_eff > 10
    with warnings.catch_warnings():
        warnings.simplefilter("error", EffectiveSamplesWarning)
        ridge(m, alpha=1.0)
