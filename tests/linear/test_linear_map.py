"""LinearMap: apply, transpose, save/load (safetensors + JSON header), foreign files."""

import pytest
import torch
from safetensors.torch import save_file

from backlens import BacklensError, LinearMap, Moments


def a_map() -> LinearMap:
    g = torch.Generator().manual_seed(0)
    M = torch.randn(4, 3, generator=g, dtype=torch.float64)
    return LinearMap(
        M,
        torch.arange(3, dtype=torch.float64),
        "ridge",
        {"alpha": 0.5, "direction": "forward", "grid": [1.0, float("inf")], "n": 7},
    )


def test_apply_shapes_and_dtypes() -> None:
    lm = a_map()
    X = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(lm.apply(X), X @ lm.matrix + lm.bias)
    assert lm.apply(torch.randn(2, 5, 4)).shape == (2, 5, 3)
    assert lm.apply(X.float()).dtype == torch.float32
    assert lm(X).shape == (5, 3)
    with pytest.raises(BacklensError, match=r"X: expected shape \(\.\.\., 4\)"):
        lm.apply(torch.randn(5, 3))


def test_transpose_is_the_adjoint() -> None:
    lm = a_map()
    t = lm.transpose()
    assert torch.equal(t.matrix, lm.matrix.T) and torch.equal(t.bias, torch.zeros(4, dtype=torch.float64))
    assert t.direction == "backward" and lm.direction == "forward"
    assert torch.equal(t.transpose().matrix, lm.matrix) and t.transpose().direction == "forward"
    u, v = torch.randn(4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    assert float(u @ lm.matrix @ v) == pytest.approx(float(v @ t.matrix @ u))


def test_save_load_round_trip(tmp_path) -> None:
    lm = a_map()
    lm.save(tmp_path / "m.safetensors")
    back = LinearMap.load(tmp_path / "m.safetensors")
    assert torch.equal(back.matrix, lm.matrix) and torch.equal(back.bias, lm.bias)
    assert back.method == "ridge" and back.info["alpha"] == 0.5 and back.info["grid"] == [1.0, "inf"]
    assert "LinearMap(method='ridge'" in repr(back)


def test_foreign_and_broken_files(tmp_path) -> None:
    path = tmp_path / "x.safetensors"
    save_file({"matrix": torch.zeros(2, 2)}, str(path))  # safetensors, but not backlens
    with pytest.raises(BacklensError, match="format=None"):
        LinearMap.load(path)
    Moments(2, 2).save(path)
    with pytest.raises(BacklensError, match="backlens.LinearMap"):
        LinearMap.load(path)
    a_map().save(path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) - 8])
    with pytest.raises(BacklensError, match="unreadable"):
        LinearMap.load(path)
    path.write_text("{}")
    with pytest.raises(BacklensError, match="unreadable"):
        LinearMap.load(path)


def test_constructor_validates() -> None:
    with pytest.raises(BacklensError, match="matrix"):
        LinearMap(torch.zeros(3))
    with pytest.raises(BacklensError, match="bias"):
        LinearMap(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(BacklensError, match="finite"):
        LinearMap(torch.full((2, 2), float("nan")))
    with pytest.raises(BacklensError, match="floating"):
        LinearMap(torch.zeros(2, 2, dtype=torch.int64))
