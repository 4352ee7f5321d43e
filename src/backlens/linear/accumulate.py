"""Moments' running sums: per-chunk shift, checks and symmetric blocked GEMMs into float64."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import check_finite, fail

__all__ = ["Sums"]

# Shape convention: row vectors; a chunk is X (b, d), Y (b, k). The sums are kept about a shift
# K = (Kx, Ky), in one float64 matrix and a vector (and YsᵀYs with yy="full"):
#   G = [Xs, 1]ᵀ·[Xs, 1, Ys]  (d+1, d+1+k),  Xs = X − Kx, Ys = Y − Ky;  syy = diag(YsᵀYs)
# Row d of G holds ΣXs, n, ΣYs. XsᵀXs is symmetric, so only its upper triangle is formed: the
# rows of [Xs, 1]ᵀ are cut into nb blocks and block j multiplies only the columns from its own
# first one on (one GEMM per block). With d = k that is (3nb+1)/(4nb) of the plain GEMM's flops
# (0.875 at nb = 2, 0.81 at nb = 4); readers take the upper triangle (`symmetric`).
#
# Checks before anything changes: a chunk's products go to a scratch matrix first, and are added
# only if the sums of squares (its diagonal, diag YsᵀYs) are finite and < HUGE: NaN or Inf
# anywhere poisons them, and by Cauchy–Schwarz no product can overflow otherwise. Only then is
# the chunk scanned for the first bad row. Where d is large next to the chunk (the scratch costs
# O(d²)), float32 input is checked instead by its sum (finite iff the input is, unless a float32
# sum overflows: then the exact test decides): shifted float32 data cannot overflow float64.

HUGE = 1e300  # a column sum of squares above this means float64 products may overflow
BLOCK_ROWS = 128  # least rows per block of the symmetric GEMM
MAX_BLOCKS = 4


def cuts(m: int) -> list[tuple[int, int]]:
    """Row blocks of an (m, ·) upper-triangular product: about BLOCK_ROWS or more rows each."""
    nb = max(1, min(MAX_BLOCKS, m // BLOCK_ROWS))
    edges = [round(j * m / nb) for j in range(nb + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def gram_(out: torch.Tensor, z: torch.Tensor, blocks: list[tuple[int, int]], beta: float) -> None:
    """out[:m] ← beta·out + upper block triangle of z[:, :m]ᵀ·z (out is (m, width of z))."""
    for lo, hi in blocks:
        out[lo:hi, lo:].addmm_(z[:, lo:hi].T, z[:, lo:], beta=beta)


def symmetric(upper: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper triangle (with the diagonal) is `upper`'s."""
    return torch.triu(upper) + torch.triu(upper, 1).T


def raise_bad(argument: str, chunk: torch.Tensor, offset: int) -> None:
    """Raise naming the first non-finite row of `chunk` (or, if none, values too large)."""
    check_finite(argument, chunk, first_row=offset)
    raise fail(
        argument,
        "values whose float64 products stay finite (|x − mean| < 1e150)",
        "values too large",
        "rescale the data",
    )


def _check_narrow(argument: str, data: torch.Tensor, offset: int) -> None:
    """Float32/16 data: finite iff its sum is, unless the sum itself overflowed."""
    if not bool(torch.isfinite(data.sum())) and not bool(torch.isfinite(data).all()):
        raise_bad(argument, data, offset)


@dataclass
class Snapshot:
    n: int
    kx: torch.Tensor
    ky: torch.Tensor
    G: torch.Tensor
    syy_diag: torch.Tensor
    syy: torch.Tensor | None
    norms: tuple[float, float] | None


class Sums:
    """The running float64 sums about a shift, and the per-chunk kernels that add to them."""

    def __init__(self, d: int, k: int, full_yy: bool) -> None:
        self.d, self.k = d, k
        self.n = 0
        self.kx = torch.zeros(d, dtype=torch.float64)
        self.ky = torch.zeros(k, dtype=torch.float64)
        self.G = torch.zeros(d + 1, d + 1 + k, dtype=torch.float64)
        self.syy_diag = torch.zeros(k, dtype=torch.float64)
        self.syy = torch.zeros(k, k, dtype=torch.float64) if full_yy else None
        # Σ‖x_i‖², Σ‖x_i‖⁴ of the raw (unshifted) rows, for the effective sample size; None once
        # merged with statistics that lack them (a file written before they were kept).
        self.norms: tuple[float, float] | None = (0.0, 0.0)
        self.x_blocks, self.y_blocks = cuts(d + 1), cuts(k)
        self._buffer_rows: torch.Tensor | None = None
        self._scratch: tuple[torch.Tensor, torch.Tensor | None] | None = None

    # ---- state ---------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        syy = None if self.syy is None else self.syy.clone()
        return Snapshot(self.n, self.kx, self.ky, self.G.clone(), self.syy_diag.clone(), syy, self.norms)

    def restore(self, s: Snapshot) -> None:
        self.n, self.kx, self.ky = s.n, s.kx, s.ky
        self.G, self.syy_diag, self.syy = s.G, s.syy_diag, s.syy
        self.norms = s.norms

    def state(self) -> dict[str, torch.Tensor]:
        """The raw sums, on the CPU: loading them continues the stream bit for bit."""
        out = {"n": torch.tensor([self.n]), "kx": self.kx, "ky": self.ky, "G": self.G}
        out["syy_diag"] = self.syy_diag
        if self.syy is not None:
            out["syy"] = self.syy
        if self.norms is not None:
            out["norms"] = torch.tensor(self.norms, dtype=torch.float64)
        return {k: v.detach().cpu().clone() for k, v in out.items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Put back what `state` returned (shapes checked by the caller's file reader)."""
        device = self.G.device
        self.n = int(state["n"][0])
        self.kx, self.ky = state["kx"].double().to(device), state["ky"].double().to(device)
        self.G, self.syy_diag = state["G"].double().to(device), state["syy_diag"].double().to(device)
        if self.syy is not None:
            self.syy = state["syy"].double().to(device)
        norms = state.get("norms")
        self.norms = None if norms is None else (float(norms[0]), float(norms[1]))

    def _to_device(self, device: torch.device) -> None:
        """Move the (still empty) sums to the device of the first chunk: they stay there."""
        self.kx, self.ky, self.G = self.kx.to(device), self.ky.to(device), self.G.to(device)
        self.syy_diag = self.syy_diag.to(device)
        self.syy = None if self.syy is None else self.syy.to(device)
        self._buffer_rows, self._scratch = None, None

    def centred(self) -> dict[str, torch.Tensor]:
        """n-free centred form: mean_x, mean_y, cxx, cxy, cyy_diag (and cyy), float64, on the CPU
        (sums kept on a GPU come to the CPU only here: to fit, score or merge)."""
        d, n, G = self.d, self.n, self.G
        sx, sy = G[:d, d], G[d, d + 1 :]
        inv = 1.0 / n if n else 0.0
        out = {
            "mean_x": self.kx + inv * sx,
            "mean_y": self.ky + inv * sy,
            "cxx": symmetric(G[:d, :d]) - inv * torch.outer(sx, sx),
            "cxy": G[:d, d + 1 :] - inv * torch.outer(sx, sy),
            "cyy_diag": self.syy_diag - inv * sy * sy,
        }
        if self.syy is not None:
            out["cyy"] = symmetric(self.syy) - inv * torch.outer(sy, sy)
        return {k: v.cpu() for k, v in out.items()}

    def set_centred(
        self, n: int, c: dict[str, torch.Tensor], shift: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> None:
        """Store centred statistics as sums about `shift` (default: their own means, sums zero)."""
        d, device = self.d, self.G.device
        c = {k: v.double().to(device) for k, v in c.items()}
        kx, ky = shift if shift is not None else (c["mean_x"], c["mean_y"])
        kx, ky = kx.double().to(device).clone(), ky.double().to(device).clone()
        sx, sy = n * (c["mean_x"] - kx), n * (c["mean_y"] - ky)
        inv = 1.0 / n if n else 0.0
        G = torch.zeros_like(self.G)
        G[:d, :d] = c["cxx"] + inv * torch.outer(sx, sx)
        G[:d, d + 1 :] = c["cxy"] + inv * torch.outer(sx, sy)
        G[:d, d], G[d, d + 1 :], G[d, d] = sx, sy, float(n)
        self.n, self.kx, self.ky, self.G = n, kx, ky, G
        self.syy_diag = c["cyy_diag"] + inv * sy * sy
        if self.syy is not None:
            self.syy = c["cyy"] + inv * torch.outer(sy, sy)

    # ---- chunks ----------------------------------------------------------------------------
    def _buffer(self, rows: int) -> torch.Tensor:
        """float64 rows [Xs, 1, Ys] of width d+1+k, reused (grown on demand)."""
        buf = self._buffer_rows
        if buf is None or buf.shape[0] < rows:
            buf = torch.empty(rows, self.d + 1 + self.k, dtype=torch.float64, device=self.G.device)
            buf[:, self.d] = 1.0
            self._buffer_rows = buf
        return buf[:rows]

    def add(self, X: torch.Tensor, Y: torch.Tensor, offset: int) -> None:
        """Add one chunk (rows ≤ the caller's chunk size); raise, changing nothing, on bad data."""
        if X.shape[0] == 0:
            return
        if self.n == 0 and X.device != self.G.device:
            self._to_device(X.device)
        self._add(X.to(self.G.device), Y.to(self.G.device), offset)

    def _first_shift(self, X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n:
            return self.kx, self.ky
        return X.mean(0, dtype=torch.float64), Y.mean(0, dtype=torch.float64)

    def _scratch_products(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-chunk product matrices (zeroed once: the lower blocks stay zero)."""
        if self._scratch is None:
            syy = None if self.syy is None else torch.zeros_like(self.syy)
            self._scratch = (torch.zeros_like(self.G), syy)
        return self._scratch

    def _add(self, X: torch.Tensor, Y: torch.Tensor, offset: int) -> None:
        b, d = X.shape[0], self.d
        kx, ky = self._first_shift(X, Y)
        z = self._buffer(b)
        zx, zy = z[:, :d], z[:, d + 1 :]
        zx.copy_(X)
        squared = torch.einsum("ij,ij->i", zx, zx)  # ‖x_i‖² of the raw rows, float64
        norms = float(squared.sum()), float(squared.square().sum())
        zx.sub_(kx)
        zy.copy_(Y).sub_(ky)
        # Checking the chunk's own products costs O(d²); checking the input costs O(b·d) reads.
        narrow = X.dtype != torch.float64 and Y.dtype != torch.float64
        if narrow and 6 * (d + 1) > b:
            _check_narrow("X", X, offset)
            _check_narrow("Y", Y, offset)
            gram_(self.G, z, self.x_blocks, 1.0)
            if self.syy is not None:
                gram_(self.syy, zy, self.y_blocks, 1.0)
            self.syy_diag += torch.mv(zy.mul_(zy).T, z[:, d])  # z[:, d] is the ones column
        else:
            G, syy = self._scratch_products()
            gram_(G, z, self.x_blocks, 0.0)
            if syy is not None:
                gram_(syy, zy, self.y_blocks, 0.0)
            squares = torch.mv(zy.mul_(zy).T, z[:, d])
            # Σ of nonnegative squares: finite and < HUGE iff every product is (Cauchy–Schwarz)
            for name, total, data in (("X", torch.diagonal(G)[:d].sum(), X), ("Y", squares.sum(), Y)):
                if not float(total) < HUGE:  # also False for NaN
                    raise_bad(name, data, offset)
            self.G += G
            if self.syy is not None and syy is not None:
                self.syy += syy
            self.syy_diag += squares
        if self.norms is not None:
            self.norms = (self.norms[0] + norms[0], self.norms[1] + norms[1])
        self.kx, self.ky, self.n = kx, ky, self.n + b
