"""Streaming float64 sufficient statistics of (X, Y) pairs, exactly mergeable across shards."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import check_choice, check_positive_int, describe, fail, memory_for
from ..tensorfile import load_tensors, save_tensors
from .accumulate import Sums
from .rows import as_rows

__all__ = ["Moments", "YY_MODES"]

# Shape convention: row vectors. X is (n, d_in), Y is (n, d_out); leading dims beyond the last
# are flattened, so (batch, seq, d) activations are n = batch·seq rows.
#
# Precision: activations are uncentred and ill-conditioned, and XᵀX − n·μμᵀ then cancels
# catastrophically. So every chunk is shifted by K (the mean of the first chunk: close to the
# data's mean) while it is copied into a float64 buffer, and the sums kept are about K
# (_accumulate.Sums: symmetric blocked float64 GEMMs, one pass per chunk). Centred statistics are read out
# as C = S − s·sᵀ/n, which loses nothing while K is near the mean. Merging combines the centred
# forms exactly (Chan, Golub & LeVeque): C = C_a + C_b + (n_a·n_b/n)·δδᵀ, δ = μ_b − μ_a.
# Extra memory: O((d_in + d_out)·(d_in + d_out + chunk)).
#
# Effective sample size: n_eff = (Σ‖x_i‖²)² / Σ‖x_i‖⁴, with ‖x_i‖ the Euclidean norm of the raw
# input row x_i as given (not centred, not shifted: a backward map has no intercept, so the raw
# gradient is what weighs in XᵀX). It is n when every row has the same norm and ≈ 1 when one row
# carries all of XᵀX's trace. The two scalar sums are streamed beside the rest and add on merge.
# A file written before they were kept loads with n_eff = None ("unknown"), and so does anything
# merged with it; nothing is guessed.

YY_MODES = ("full", "diagonal")
KIND = "backlens.Moments"
CHUNK_ROWS = 8192  # rows per internal step


class Moments:
    """n, ΣX, ΣY, XᵀX, XᵀY, YᵀY of row pairs (x: d_in, y: d_out), streamed into float64 sums.

    yy="diagonal" (the default) keeps diag(YᵀY): all that every estimator and score needs, and
    free. yy="full" keeps the whole YᵀY (its upper triangle: about n·d_out² more flops).
    """

    def __init__(self, d_in: int, d_out: int, *, yy: str = "diagonal") -> None:
        self.d_in = check_positive_int("d_in", d_in)
        self.d_out = check_positive_int("d_out", d_out)
        self.yy_mode = check_choice("yy", yy, YY_MODES)
        with memory_for("d_in, d_out", "float64 XᵀX and XᵀY"):
            self._sums = Sums(d_in, d_out, yy == "full")

    # ---- accumulation -------------------------------------------------------------------
    def update(self, X: Any, Y: Any) -> Moments:
        """Add the rows of X (n, d_in) and Y (n, d_out); any n, float32 or float64. Returns self.

        NaN/Inf raise BacklensError naming the array and the first bad row, and leave the
        Moments unchanged. The sums live on the device of the first rows (a GPU's, for CUDA
        data: float64 there) and come to the CPU only when read.
        """
        X = as_rows("X", X, self.d_in, "the Moments' d_in", keep_device=True)
        Y = as_rows("Y", Y, self.d_out, "the Moments' d_out", keep_device=True)
        if X.shape[0] != Y.shape[0]:
            raise fail(
                "X, Y",
                "the same number of rows",
                f"{X.shape[0]} and {Y.shape[0]}",
                "pass one Y row per X row",
            )
        starts = range(0, X.shape[0], CHUNK_ROWS)
        before = self._sums.snapshot() if len(starts) > 1 else None  # a bad row changes nothing
        try:
            for start in starts:
                stop = start + CHUNK_ROWS
                self._sums.add(X[start:stop], Y[start:stop], start)
        except BaseException:  # roll back, then re-raise: nothing is swallowed
            if before is not None:
                self._sums.restore(before)
            raise
        return self

    # ---- centred form ---------------------------------------------------------------------
    def _centred(self) -> dict[str, torch.Tensor]:
        """mean_x, mean_y, cxx, cxy, cyy_diag (and cyy), all float64 (zeros when n = 0)."""
        return self._sums.centred()

    def _set_centred(self, n: int, c: dict[str, torch.Tensor]) -> None:
        """Store centred statistics, shifted by their own means (so the stored sums are zero)."""
        self._sums.set_centred(n, c)

    @property
    def _n(self) -> int:
        return self._sums.n

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
        mine, theirs = self._sums.norms, other._sums.norms
        norms = None if mine is None or theirs is None else (mine[0] + theirs[0], mine[1] + theirs[1])
        self._merge_centred(other)
        self._sums.norms = norms
        return self

    def _merge_centred(self, other: Moments) -> None:
        b = other._centred()
        if self._n == 0:
            self._set_centred(other._n, b)
            return
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
        if "cyy" in a:
            merged["cyy"] = a["cyy"] + b["cyy"] + f * torch.outer(dy, dy)
        self._set_centred(n, merged)

    def copy(self) -> Moments:
        """An independent copy."""
        return Moments(self.d_in, self.d_out, yy=self.yy_mode).merge(self)

    # ---- statistics (float64 tensors, fresh copies) --------------------------------------
    @property
    def n(self) -> int:
        """Number of rows seen."""
        return self._n

    @property
    def n_eff(self) -> float | None:
        """Energy-weighted effective sample size of X, (Σ‖x_i‖²)² / Σ‖x_i‖⁴ on the raw rows.

        Between 1 and n: n when all rows have the same norm, near 1 when one row dominates XᵀX.
        0.0 for no rows (or all-zero rows); None when unknown (loaded from a file written before
        backlens kept these sums, or merged with such statistics).
        """
        norms = self._sums.norms
        if norms is None:
            return None
        s2, s4 = norms
        return s2 * s2 / s4 if s4 > 0 else 0.0

    @property
    def sum_sq_norms(self) -> float | None:
        """Σ‖x_i‖² over the raw rows (None when unknown, as for n_eff)."""
        return None if self._sums.norms is None else self._sums.norms[0]

    @property
    def sum_quartic_norms(self) -> float | None:
        """Σ‖x_i‖⁴ over the raw rows (None when unknown, as for n_eff)."""
        return None if self._sums.norms is None else self._sums.norms[1]

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
        if self.yy_mode != "full":
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

    # ---- raw state (checkpoints) ----------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        """The raw running sums (CPU tensors): `from_state` continues the stream bit for bit."""
        return self._sums.state()

    @classmethod
    def from_state(cls, d_in: int, d_out: int, yy: str, state: dict[str, torch.Tensor]) -> Moments:
        """Moments holding what `state()` returned (the caller checks where it came from)."""
        out = cls(d_in, d_out, yy=yy)
        width = d_in + 1 + d_out
        shapes = {"kx": (d_in,), "ky": (d_out,), "G": (d_in + 1, width), "syy_diag": (d_out,)}
        if yy == "full":
            shapes["syy"] = (d_out, d_out)
        for name, shape in shapes.items():
            if name not in state or tuple(state[name].shape) != shape:
                got = tuple(state[name].shape) if name in state else "missing"
                raise fail("state", f"{name} of shape {shape}", got, "pass what Moments.state() returned")
        out._sums.load_state(state)
        return out

    # ---- files ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write as safetensors (never pickle), atomically: a killed write leaves no valid file."""
        c = self._centred()
        tensors = {"n": torch.tensor([self._n], dtype=torch.int64), **c}
        if self._sums.norms is not None:  # absent: n_eff unknown, as it was when loaded
            tensors["x_norm_sums"] = torch.tensor(self._sums.norms, dtype=torch.float64)
        meta = {"d_in": self.d_in, "d_out": self.d_out, "yy": self.yy_mode}
        return save_tensors(path, tensors, KIND, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Moments:
        """Read a file written by Moments.save; anything else raises BacklensError. The header,
        metadata and every tensor's shape are checked before anything sized by the file is read."""
        tensors, meta = load_tensors(path, KIND, _file_shapes)
        try:
            d_in, d_out, yy = int(meta["d_in"]), int(meta["d_out"]), str(meta["yy"])
            n = int(tensors["n"][0])
            stats = {k: tensors[k].to(torch.float64) for k in _file_shapes(meta) if k != "n"}
            if n < 0 or not all(bool(torch.isfinite(t).all()) for t in stats.values()):
                raise ValueError("negative n or non-finite statistics")
            norms = None  # a file from before the effective sample size was kept: n_eff unknown
            if "x_norm_sums" in tensors:
                sums = tensors["x_norm_sums"].to(torch.float64)
                finite = bool(torch.isfinite(sums).all())
                if tuple(sums.shape) != (2,) or not finite or bool((sums < 0).any()):
                    raise ValueError(f"x_norm_sums is {sums.tolist()}, not two finite sums ≥ 0")
                norms = (float(sums[0]), float(sums[1]))
        except (KeyError, ValueError, TypeError) as err:
            raise fail(
                "path",
                "a consistent Moments file",
                f"{path}: {err}",
                "rewrite it with Moments.save",
            ) from None
        out = cls(d_in, d_out, yy=yy)
        out._set_centred(n, stats)
        out._sums.norms = norms
        return out

    def _repr_html_(self) -> str:
        from .display import moments_html

        return moments_html(self)

    def __repr__(self) -> str:
        n_eff = self.n_eff
        shown = "unknown" if n_eff is None else f"{n_eff:.4g}"
        return (
            f"Moments(d_in={self.d_in}, d_out={self.d_out}, n={self._n}, n_eff={shown}, yy={self.yy_mode!r})"
        )


def _file_shapes(meta: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shape of each tensor a Moments file must hold, from its metadata (checked first)."""
    d_in, d_out, yy = meta["d_in"], meta["d_out"], meta["yy"]
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in (d_in, d_out)):
        raise ValueError(f"d_in={d_in!r}, d_out={d_out!r}: not positive ints")
    if yy not in YY_MODES:
        raise ValueError(f"yy={yy!r}: not one of {YY_MODES}")
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
    return shapes
