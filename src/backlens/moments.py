"""Streaming float64 sufficient statistics of (X, Y) pairs, exactly mergeable across shards."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._tensorfile import load_tensors, save_tensors
from .errors import check_choice, check_positive_int, describe, fail

__all__ = ["Moments", "YY_MODES"]

# Shape convention: row vectors. X is (n, d_in), Y is (n, d_out); leading dims beyond the last
# are flattened, so (batch, seq, d) activations are n = batch·seq rows.
#
# Precision: activations are uncentred and ill-conditioned, and XᵀX − n·μμᵀ then cancels
# catastrophically. So every chunk is shifted by K (the mean of the first chunk: close to the
# data's mean) while it is copied into a float64 buffer, and the sums kept are about K:
#   G = [Xs, 1]ᵀ·[Xs, 1, Ys]  (Xs = X − Kx, Ys = Y − Ky; one GEMM also yields ΣXs, ΣYs and n)
# plus diag(YsᵀYs) (and the full YsᵀYs with yy="full"). Centred statistics are read out as
# C = S − s·sᵀ/n, which loses nothing while K is near the mean. Merging combines the centred
# forms exactly (Chan, Golub & LeVeque): C = C_a + C_b + (n_a·n_b/n)·δδᵀ, δ = μ_b − μ_a.
# Per chunk: one mixed-precision subtract per array, one pass for diag and finiteness, one GEMM
# of exactly 2·b·d_in·(d_in + d_out) flops. Extra memory: O((d_in + d_out)·(d_in + d_out + chunk)).

YY_MODES = ("full", "diagonal")
KIND = "backlens.Moments"
HUGE = 1e300  # a column sum of squares above this means float64 products may overflow
CHUNK_ROWS = 8192  # rows per internal step
NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


def _rows(argument: str, value: Any, width: int) -> torch.Tensor:
    """`value` as a 2-D CPU tensor (n, width), leading dims flattened, or raise."""
    if isinstance(value, np.ndarray):
        with warnings.catch_warnings():  # a read-only array is fine: it is only read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise fail(
            argument,
            "a torch.Tensor or numpy array",
            describe(value),
            "pass torch.as_tensor(value)",
        )
    if not value.is_floating_point():
        raise fail(argument, "floating-point data", describe(value), "convert it with .double()")
    if value.ndim < 2 or value.shape[-1] != width:
        raise fail(
            argument,
            f"shape (n, {width}) (or (..., {width}))",
            describe(value),
            f"pass rows of {width} features, matching the Moments' dimensions",
        )
    value = value.detach().reshape(-1, width).cpu()
    return value if value.dtype in NUMPY_FLOATS else value.float()


def _raise_bad(argument: str, chunk: torch.Tensor, offset: int) -> None:
    bad = ~torch.isfinite(chunk)
    if bool(bad.any()):
        row = int(bad.any(dim=1).nonzero()[0, 0]) + offset
        kind = "NaN" if bool(torch.isnan(chunk).any()) else "Inf"
        raise fail(argument, "finite values", f"{kind} (first in row {row})", "clean or drop those rows")
    raise fail(
        argument,
        "values whose float64 products stay finite (|x − mean| < 1e150)",
        "values too large",
        "rescale the data",
    )


class Moments:
    """n, ΣX, ΣY, XᵀX, XᵀY, YᵀY of row pairs (x: d_in, y: d_out), streamed in float64.

    yy="diagonal" (the default) keeps diag(YᵀY): all that every estimator and score needs, and
    free. yy="full" keeps the whole YᵀY, at 2·n·d_out² more flops (+50% when d_in = d_out).
    """

    def __init__(self, d_in: int, d_out: int, *, yy: str = "diagonal") -> None:
        self.d_in = check_positive_int("d_in", d_in)
        self.d_out = check_positive_int("d_out", d_out)
        self.yy_mode = check_choice("yy", yy, YY_MODES)
        self._n = 0
        self._kx = np.zeros(d_in)
        self._ky = np.zeros(d_out)
        self._G = torch.zeros(d_in + 1, d_in + 1 + d_out, dtype=torch.float64)
        self._syy_diag = torch.zeros(d_out, dtype=torch.float64)
        self._syy = torch.zeros(d_out, d_out, dtype=torch.float64) if yy == "full" else None
        self._buffer: np.ndarray | None = None

    # ---- accumulation -------------------------------------------------------------------
    def update(self, X: Any, Y: Any) -> Moments:
        """Add the rows of X (n, d_in) and Y (n, d_out); any n, float32 or float64. Returns self.

        NaN/Inf raise BacklensError naming the array and the first bad row, and leave the
        Moments unchanged.
        """
        X = _rows("X", X, self.d_in)
        Y = _rows("Y", Y, self.d_out)
        if X.shape[0] != Y.shape[0]:
            raise fail(
                "X, Y",
                "the same number of rows",
                f"{X.shape[0]} and {Y.shape[0]}",
                "pass one Y row per X row",
            )
        starts = range(0, X.shape[0], CHUNK_ROWS)
        if len(starts) > 1:  # check every chunk first, so a bad row leaves the Moments unchanged
            for start in starts:
                for name, data in (("X", X), ("Y", Y)):
                    chunk = data[start : start + CHUNK_ROWS]
                    if not bool(torch.isfinite(chunk).all()):
                        _raise_bad(name, chunk, start)
        for start in starts:
            stop = start + CHUNK_ROWS
            self._update_chunk(X[start:stop], Y[start:stop], start)
        return self

    def _rows_buffer(self, rows: int) -> np.ndarray:
        d = self.d_in
        if self._buffer is None or self._buffer.shape[0] < rows:
            self._buffer = np.empty((rows, d + 1 + self.d_out))
            self._buffer[:, d] = 1.0  # the ones column: the GEMM's row d gives the sums and n
        return self._buffer[:rows]

    def _update_chunk(self, X: torch.Tensor, Y: torch.Tensor, offset: int) -> None:
        b, d = X.shape[0], self.d_in
        if b == 0:
            return
        xs, ys = X.numpy(), Y.numpy()
        kx, ky = self._kx, self._ky
        if self._n == 0:  # the shift: this chunk's mean
            kx, ky = xs.mean(axis=0, dtype=np.float64), ys.mean(axis=0, dtype=np.float64)
        z = self._rows_buffer(b)
        with np.errstate(invalid="ignore", over="ignore"):
            np.subtract(xs, kx, out=z[:, :d])
            np.subtract(ys, ky, out=z[:, d + 1 :])
            squares = np.einsum("ij,ij->j", z, z)  # diag of the shifted Gram; finiteness check
        if not (np.isfinite(squares).all() and squares.max() < HUGE):
            bad_x = not (np.isfinite(squares[:d]).all() and squares[:d].max() < HUGE)
            _raise_bad("X" if bad_x else "Y", X if bad_x else Y, offset)
        zt = torch.from_numpy(z)
        self._G.addmm_(zt[:, : d + 1].T, zt)
        self._syy_diag += torch.from_numpy(squares[d + 1 :])
        if self._syy is not None:
            self._syy.addmm_(zt[:, d + 1 :].T, zt[:, d + 1 :])
        self._kx, self._ky = kx, ky
        self._n += b

    # ---- centred form ---------------------------------------------------------------------
    def _centred(self) -> dict[str, torch.Tensor]:
        """n, μx, μy, Cxx, Cxy, Cyy (or None), diag Cyy, all float64 (zeros when n = 0)."""
        d, n = self.d_in, self._n
        G = self._G
        sx, sy = G[:d, d], G[d, d + 1 :]
        inv = 1.0 / n if n else 0.0
        cxx = G[:d, :d] - inv * torch.outer(sx, sx)
        out = {
            "mean_x": torch.from_numpy(self._kx) + inv * sx,
            "mean_y": torch.from_numpy(self._ky) + inv * sy,
            "cxx": (cxx + cxx.T) / 2,
            "cxy": G[:d, d + 1 :] - inv * torch.outer(sx, sy),
            "cyy_diag": self._syy_diag - inv * sy * sy,
        }
        if self._syy is not None:
            cyy = self._syy - inv * torch.outer(sy, sy)
            out["cyy"] = (cyy + cyy.T) / 2
        return out

    def _set_centred(self, n: int, c: dict[str, torch.Tensor]) -> None:
        """Store centred statistics, shifted by their own means (so the stored sums are zero)."""
        d = self.d_in
        self._n = n
        self._kx = c["mean_x"].double().numpy().copy()
        self._ky = c["mean_y"].double().numpy().copy()
        self._G.zero_()
        self._G[:d, :d] = c["cxx"]
        self._G[:d, d + 1 :] = c["cxy"]
        self._G[d, d] = float(n)
        self._syy_diag = c["cyy_diag"].double().clone()
        if self._syy is not None:
            self._syy = c["cyy"].double().clone()

    def merge(self, other: Moments) -> Moments:
        """Add another Moments' samples (exact: the same statistics as one stream). Returns self."""
        if not isinstance(other, Moments):
            raise fail("other", "a backlens.Moments", describe(other), "merge Moments with Moments")
        if (other.d_in, other.d_out) != (self.d_in, self.d_out):
            raise fail(
                "other",
                f"Moments of shape (d_in={self.d_in}, d_out={self.d_out})",
                f"(d_in={other.d_in}, d_out={other.d_out})",
                "merge statistics of the same block",
            )
        if self.yy_mode == "full" and other.yy_mode != "full":
            raise fail(
                "other",
                "Moments with yy='full' (this one keeps full YᵀY)",
                "yy='diagonal'",
                "merge into the diagonal one instead: diagonal.merge(full)",
            )
        if other._n == 0:
            return self
        b = other._centred()
        if self._n == 0:
            self._set_centred(other._n, b)
            return self
        a = self._centred()
        n_a, n_b = self._n, other._n
        n = n_a + n_b
        dx, dy = b["mean_x"] - a["mean_x"], b["mean_y"] - a["mean_y"]
        f = n_a * n_b / n
        merged = {
            "mean_x": a["mean_x"] + dx * (n_b / n),
            "mean_y": a["mean_y"] + dy * (n_b / n),
            "cxx": a["cxx"] + b["cxx"] + f * torch.outer(dx, dx),
            "cxy": a["cxy"] + b["cxy"] + f * torch.outer(dx, dy),
            "cyy_diag": a["cyy_diag"] + b["cyy_diag"] + f * dy * dy,
        }
        if self._syy is not None:
            merged["cyy"] = a["cyy"] + b["cyy"] + f * torch.outer(dy, dy)
        self._set_centred(n, merged)
        return self

    def copy(self) -> Moments:
        """An independent copy."""
        return Moments(self.d_in, self.d_out, yy=self.yy_mode).merge(self)

    # ---- statistics (float64 tensors, fresh copies) --------------------------------------
    @property
    def n(self) -> int:
        """Number of rows seen."""
        return self._n

    @property
    def mean_x(self) -> torch.Tensor:
        return self._centred()["mean_x"]

    @property
    def mean_y(self) -> torch.Tensor:
        return self._centred()["mean_y"]

    @property
    def cxx(self) -> torch.Tensor:
        """Σ(x−μx)ᵀ(x−μx), (d_in, d_in)."""
        return self._centred()["cxx"]

    @property
    def cxy(self) -> torch.Tensor:
        """Σ(x−μx)ᵀ(y−μy), (d_in, d_out)."""
        return self._centred()["cxy"]

    @property
    def cyy(self) -> torch.Tensor:
        """Σ(y−μy)ᵀ(y−μy), (d_out, d_out); needs yy='full'."""
        if self._syy is None:
            raise fail(
                "Moments.cyy",
                "Moments built with yy='full'",
                "yy='diagonal'",
                "use cyy_diag, or accumulate with Moments(d_in, d_out, yy='full')",
            )
        return self._centred()["cyy"]

    @property
    def cyy_diag(self) -> torch.Tensor:
        """diag of Σ(y−μy)ᵀ(y−μy), (d_out,)."""
        return self._centred()["cyy_diag"]

    @property
    def sum_x(self) -> torch.Tensor:
        """ΣX, (d_in,)."""
        return self.mean_x * self._n

    @property
    def sum_y(self) -> torch.Tensor:
        """ΣY, (d_out,)."""
        return self.mean_y * self._n

    @property
    def xx(self) -> torch.Tensor:
        """XᵀX, (d_in, d_in)."""
        mean = self.mean_x
        return self.cxx + self._n * torch.outer(mean, mean)

    @property
    def xy(self) -> torch.Tensor:
        """XᵀY, (d_in, d_out)."""
        return self.cxy + self._n * torch.outer(self.mean_x, self.mean_y)

    @property
    def yy(self) -> torch.Tensor:
        """YᵀY, (d_out, d_out); needs yy='full'."""
        mean = self.mean_y
        return self.cyy + self._n * torch.outer(mean, mean)

    @property
    def yy_diag(self) -> torch.Tensor:
        """diag(YᵀY), (d_out,)."""
        return self.cyy_diag + self._n * self.mean_y**2

    # ---- files ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write as safetensors (never pickle), atomically: a killed write leaves no valid file."""
        c = self._centred()
        tensors = {"n": torch.tensor([self._n], dtype=torch.int64), **c}
        meta = {"d_in": self.d_in, "d_out": self.d_out, "yy": self.yy_mode}
        return save_tensors(path, tensors, KIND, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Moments:
        """Read a file written by Moments.save; anything else raises BacklensError."""
        tensors, meta = load_tensors(path, KIND)
        try:
            d_in, d_out, yy = int(meta["d_in"]), int(meta["d_out"]), str(meta["yy"])
            out = cls(d_in, d_out, yy=yy)
            shapes = {
                "n": (1,),
                "mean_x": (d_in,),
                "mean_y": (d_out,),
                "cxx": (d_in, d_in),
                "cxy": (d_in, d_out),
                "cyy_diag": (d_out,),
            }
            if yy == "full":
                shapes["cyy"] = (d_out, d_out)
            for name, shape in shapes.items():
                if tuple(tensors[name].shape) != shape:
                    raise ValueError(f"{name} has shape {tuple(tensors[name].shape)}, not {shape}")
            n = int(tensors["n"][0])
            stats = {k: tensors[k].to(torch.float64) for k in shapes if k != "n"}
            if n < 0 or not all(bool(torch.isfinite(t).all()) for t in stats.values()):
                raise ValueError("negative n or non-finite statistics")
        except (KeyError, ValueError, TypeError) as err:
            raise fail(
                "path",
                "a consistent Moments file",
                f"{path}: {err}",
                "rewrite it with Moments.save",
            ) from None
        out._set_centred(n, stats)
        return out

    def __repr__(self) -> str:
        return f"Moments(d_in={self.d_in}, d_out={self.d_out}, n={self._n}, yy={self.yy_mode!r})"
