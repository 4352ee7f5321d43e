"""Moments: streaming, merging, precision on uncentred data, files, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import backlens
from backlens import BacklensError, Moments
from backlens.linear.moments import CHUNK_ROWS


def data(n: int, d: int, k: int, seed: int = 0, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) + shift
    Y = X @ torch.randn(d, k, generator=g, dtype=torch.float64) + torch.randn(
        n, k, generator=g, dtype=torch.float64
    )
    return X, Y


def assert_sums(m: Moments, X: torch.Tensor, Y: torch.Tensor, rtol: float = 1e-12) -> None:
    X, Y = X.double(), Y.double()
    assert m.n == len(X)
    pairs = [
        (m.sum_x, X.sum(0)),
        (m.sum_y, Y.sum(0)),
        (m.xx, X.T @ X),
        (m.xy, X.T @ Y),
        (m.yy, Y.T @ Y),
        (m.yy_diag, (Y**2).sum(0)),
    ]
    for got, want in pairs:
        torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * float(want.abs().max()))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    torch.testing.assert_close(m.cxx, Xc.T @ Xc, rtol=rtol, atol=rtol * float((Xc.T @ Xc).abs().max()))
    torch.testing.assert_close(m.cxy, Xc.T @ Yc, rtol=rtol, atol=rtol * float((Xc.T @ Yc).abs().max()))


# (n, d_in, d_out, batch sizes cycled)
CASES = [
    (1, 1, 1, [1]),
    (10, 3, 2, [1]),
    (100, 5, 7, [7, 1, 30]),
    (257, 16, 1, [64]),
    (50, 2, 9, [50]),
    (CHUNK_ROWS + 5, 4, 3, [CHUNK_ROWS + 5]),
]


@pytest.mark.parametrize(("n", "d", "k", "batches"), CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streaming_equals_direct_sums(n: int, d: int, k: int, batches: list[int], dtype: torch.dtype) -> None:
    X, Y = data(n, d, k, shift=2.0)
    X, Y = X.to(dtype), Y.to(dtype)
    m = Moments(d, k, yy="full")
    start, i = 0, 0
    while start < n:
        step = batches[i % len(batches)]
        assert m.update(X[start : start + step], Y[start : start + step]) is m
        start, i = start + step, i + 1
    assert_sums(m, X, Y)


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(0, 60), max_size=5), seed=st.integers(0, 1000))
def test_any_split_and_merge_give_the_same_moments(cuts: list[int], seed: int) -> None:
    X, Y = data(60, 3, 2, seed=seed, shift=5.0)
    bounds = [0, *sorted(cuts), 60]
    pairs = zip(bounds[:-1], bounds[1:], strict=True)
    parts = [Moments(3, 2, yy="full").update(X[a:b], Y[a:b]) for a, b in pairs]
    merged = Moments(3, 2, yy="full")
    for part in reversed(parts):
        merged.merge(part)
    assert_sums(merged, X, Y)


def test_leading_dims_are_flattened_and_numpy_accepted() -> None:
    X, Y = data(24, 4, 3)
    m = Moments(4, 3, yy="full").update(X.reshape(2, 12, 4), Y.numpy().reshape(2, 12, 3))
    assert_sums(m, X, Y)


def test_uncentred_data_keeps_precision() -> None:
    # x = 1e4 + 1e-2·z: the naive XᵀX − n·μμᵀ loses ~1e-4 relative; centred batches lose nothing.
    g = torch.Generator().manual_seed(1)
    Z = torch.randn(5000, 6, generator=g, dtype=torch.float64)
    X = 1e4 + 1e-2 * Z
    m = Moments(6, 1)
    for i in range(0, 5000, 512):
        m.update(X[i : i + 512], Z[i : i + 512, :1])
    Zc = (X - 1e4) - (X - 1e4).mean(0)  # exact: X − 1e4 is representable to ~1e-12 relative
    want = Zc.T @ Zc
    assert float((m.cxx - want).abs().max() / want.abs().max()) < 1e-9
    naive = (X.T @ X) - 5000 * torch.outer(X.mean(0), X.mean(0))
    assert float((naive - want).abs().max() / want.abs().max()) > 1e-6  # the oracle can tell


def test_diagonal_mode() -> None:
    X, Y = data(40, 3, 5, shift=1.0)
    full = Moments(3, 5, yy="full").update(X, Y)
    diag = Moments(3, 5).update(X[:15], Y[:15]).update(X[15:], Y[15:])
    torch.testing.assert_close(diag.yy_diag, full.yy_diag, rtol=1e-12, atol=0)
    torch.testing.assert_close(diag.cxy, full.cxy, rtol=1e-12, atol=1e-12)
    with pytest.raises(BacklensError, match="yy='full'"):
        _ = diag.cyy
    diag.merge(full)  # full into diagonal is fine
    assert diag.n == 80
    with pytest.raises(BacklensError, match="yy='full'"):
        full.merge(diag)


@pytest.mark.parametrize("yy", ["full", "diagonal"])
def test_save_load_round_trip(tmp_path, yy: str) -> None:
    X, Y = data(30, 4, 2, shift=3.0)
    m = Moments(4, 2, yy=yy).update(X, Y)
    m.save(tmp_path / "m.safetensors")
    back = Moments.load(tmp_path / "m.safetensors")
    assert (back.n, back.d_in, back.d_out, back.yy_mode) == (30, 4, 2, yy)
    for name in ["mean_x", "mean_y", "cxx", "cxy", "cyy_diag"]:
        assert torch.equal(getattr(back, name), getattr(m, name)), name
    back.update(X, Y)  # still usable for streaming
    assert back.n == 60


def test_partly_written_and_foreign_files_are_rejected(tmp_path) -> None:
    X, Y = data(30, 4, 2)
    path = tmp_path / "m.safetensors"
    Moments(4, 2).update(X, Y).save(path)
    blob = path.read_bytes()
    for cut in [len(blob) // 2, len(blob) - 1, 10, 0]:
        path.write_bytes(blob[:cut])
        with pytest.raises(BacklensError, match="path"):
            Moments.load(path)
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(BacklensError, match="path"):
        Moments.load(path)
    backlens.identity(3).save(tmp_path / "map.safetensors")
    with pytest.raises(BacklensError, match="Moments"):
        Moments.load(tmp_path / "map.safetensors")
    with pytest.raises(BacklensError, match="existing"):
        Moments.load(tmp_path / "missing.safetensors")


def test_killed_save_leaves_no_valid_file(tmp_path, monkeypatch) -> None:
    import backlens.tensorfile as tf

    path = tmp_path / "m.safetensors"
    good = Moments(2, 1).update(*data(5, 2, 1))
    good.save(path)

    def dying(tensors, filename, metadata=None):  # writes half a file, then the process "dies"
        with open(filename, "wb") as handle:
            handle.write(b"\x10\x00\x00\x00partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(tf, "save_file", dying)
    with pytest.raises(KeyboardInterrupt):
        Moments(2, 1).update(*data(9, 2, 1)).save(path)
    assert Moments.load(path).n == 5  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no .part left behind


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("which", ["X", "Y"])
@pytest.mark.parametrize("row", [0, 7, CHUNK_ROWS + 3])
def test_non_finite_names_array_and_row_and_changes_nothing(bad: float, which: str, row: int) -> None:
    X, Y = data(CHUNK_ROWS + 10, 2, 2)
    (X if which == "X" else Y)[row, 1] = bad
    m = Moments(2, 2).update(*data(3, 2, 2, seed=9))
    before = (m.n, m.cxx.clone(), m.mean_y.clone())
    kind = "NaN" if bad != bad else "Inf"
    with pytest.raises(BacklensError, match=rf"^{which}: .*{kind} \(first in row {row}\)"):
        m.update(X, Y)
    assert m.n == before[0] and torch.equal(m.cxx, before[1]) and torch.equal(m.mean_y, before[2])


BAD_UPDATES = [
    (torch.zeros(3, 4), torch.zeros(3, 2), "X: expected shape"),
    (torch.zeros(3, 3), torch.zeros(3, 5), "Y: expected shape"),
    (torch.zeros(3, 3), torch.zeros(4, 2), "same number of rows"),
    (torch.zeros(3, 3, dtype=torch.int64), torch.zeros(3, 2), "floating-point"),
    (torch.zeros(3), torch.zeros(3, 2), "X: expected shape"),
    ([[1.0, 2.0, 3.0]], torch.zeros(1, 2), "torch.Tensor or numpy"),
    (torch.full((2, 3), 1e200, dtype=torch.float64), torch.zeros(2, 2), "too large"),
]


@pytest.mark.parametrize(("X", "Y", "message"), BAD_UPDATES)
def test_bad_updates(X, Y, message: str) -> None:
    m = Moments(3, 2)
    if message == "too large":
        X = X.clone()
        X[0] = -1e200
    with pytest.raises(BacklensError, match=message):
        m.update(X, Y)


def test_bad_construction_and_merge() -> None:
    with pytest.raises(BacklensError, match="d_in"):
        Moments(0, 2)
    with pytest.raises(BacklensError, match="yy"):
        Moments(2, 2, yy="half")
    with pytest.raises(BacklensError, match="d_in=3, d_out=2"):
        Moments(3, 2).merge(Moments(2, 3))
    with pytest.raises(BacklensError, match="Moments"):
        Moments(3, 2).merge("not moments")


def test_copy_is_independent() -> None:
    X, Y = data(10, 2, 2)
    m = Moments(2, 2).update(X, Y)
    c = m.copy()
    c.update(X, Y)
    assert m.n == 10 and c.n == 20
    assert "n=10" in repr(m)


# The per-chunk kernels: symmetric blocked GEMMs (several blocks from d ≥ 256), and the two ways
# a chunk is checked (its own products in a scratch matrix, or, where d is large next to the
# chunk, the float32 input's sum). Oracle: float64 closed form on the same rows.
KERNEL_CASES = [  # (rows per update, d, k, dtype): scratch and input-sum checks, 1–4 blocks
    (600, 300, 130, torch.float32),  # 6·(d+1) > rows: float32 input checked by its sum
    (4096, 300, 130, torch.float32),  # scratch check, float32 input
    (700, 257, 520, torch.float64),  # scratch check, float64 input, 2 and 4 blocks
    (CHUNK_ROWS + 9, 129, 3, torch.float32),  # two internal chunks in one update
]


@pytest.mark.parametrize(("rows", "d", "k", "dtype"), KERNEL_CASES)
def test_blocked_kernels_equal_float64_closed_form(rows: int, d: int, k: int, dtype: torch.dtype) -> None:
    X, Y = data(2 * rows + 3, d, k, seed=3, shift=4.0)
    X, Y = X.to(dtype), Y.to(dtype)
    m = Moments(d, k, yy="full")
    for start in range(0, len(X), rows):
        m.update(X[start : start + rows], Y[start : start + rows])
    assert_sums(m, X, Y, rtol=1e-11)
    torch.testing.assert_close(m.cyy, (Y.double() - Y.double().mean(0)).T @ (Y.double() - Y.double().mean(0)))


@pytest.mark.parametrize(("rows", "d", "k", "dtype"), KERNEL_CASES)
@pytest.mark.parametrize("which", ["X", "Y"])
def test_kernels_name_the_bad_row_and_change_nothing(
    rows: int, d: int, k: int, dtype: torch.dtype, which: str
) -> None:
    X, Y = data(rows, d, k, seed=4)
    X, Y = X.to(dtype), Y.to(dtype)
    bad_row = rows - 2
    (X if which == "X" else Y)[bad_row, d // 2 if which == "X" else k - 1] = float("nan")
    m = Moments(d, k).update(*(t.to(dtype) for t in data(rows, d, k, seed=5)))
    before = (m.n, m.cxx.clone(), m.cxy.clone(), m.cyy_diag.clone())
    with pytest.raises(BacklensError, match=rf"^{which}: .*NaN \(first in row {bad_row}\)"):
        m.update(X, Y)
    after = (m.n, m.cxx, m.cxy, m.cyy_diag)
    assert after[0] == before[0] and all(
        torch.equal(a, b) for a, b in zip(after[1:], before[1:], strict=True)
    )


def test_too_large_float64_values_are_caught_by_the_scratch_check() -> None:
    X = torch.zeros(2000, 3, dtype=torch.float64)
    X[::2] = 1e200  # mean 5e199: shifted values ±5e199, whose squares overflow
    m = Moments(3, 2).update(torch.ones(4, 3, dtype=torch.float64), torch.ones(4, 2, dtype=torch.float64))
    with pytest.raises(BacklensError, match="too large"):
        m.update(X, torch.zeros(2000, 2, dtype=torch.float64))
    assert m.n == 4
