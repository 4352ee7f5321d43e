"""Fit benchmark: streaming Moments + ridge against scikit-learn, numpy and torch least squares.

Each method fits Y ≈ X·M + b (ridge with intercept, α = ALPHA_REL·tr(XcᵀXc)/d, or plain least
squares for the lstsq rows) on float32 data, and is scored against a float64 reference (exactly
centred, accumulated in float64). Printed: seconds; the ratio to the floors 2·N·d·(d+k) / GEMM rate
for float32 and float64 GEMM rates measured in this run; extra peak memory (VmHWM reset before
each method, minus the resident size before it); prediction error ‖Xc(M − M_ref)‖/‖Xc·M_ref‖ on
held-out rows; matrix error ‖M − M_ref‖/‖M_ref‖. The GEMM rates are measured again just before
each case, so a machine whose speed drifts during the run is compared with itself.

    python -m benchmarks fit                         # ~3 min: the slowest peers skip the large size
    BACKLENS_BENCH_FULL=1 python -m benchmarks fit   # also RidgeCV and numpy lstsq at the large
                                                     # size: ~15 min, ~13 GB peak (RidgeCV)
    BACKLENS_BENCH_QUICK=1 python -m benchmarks fit  # small sizes, ~2 min
    BACKLENS_BENCH_SKIP_SLOW=1 ...                   # skip RidgeCV and both lstsq everywhere
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

import backlens

from ._measure import flag, quick, reset_peak, status_kb

BATCH = 4096
ALPHA_REL = 1e-8
GRID_POINTS = 20
SOLVE_SECONDS: list[float] = []  # the ridge solve (after streaming) of the last backlens run
FULL_CASES = [  # (label, N, d, k, activation-like)
    ("gaussian", 100_000, 256, 256, False),
    ("gaussian", 200_000, 1024, 1024, False),
    ("activation-like", 100_000, 256, 256, True),
]
QUICK_CASES = [
    ("gaussian", 20_000, 128, 128, False),
    ("gaussian", 40_000, 384, 384, False),
    ("activation-like", 20_000, 128, 128, True),
]


LARGE_FLOPS = 1e11  # cases above 2·N·d·(d+k) flops run the SLOW_PEERS only with BACKLENS_BENCH_FULL=1
SLOW_PEERS = ("sklearn RidgeCV", "numpy")  # 9+ minutes together at N=200k, d=k=1024


# ---- measurement -------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    extra_mb: float | None
    result: tuple[np.ndarray, float]  # (M (d, k), the α it used)
    note: str = ""


def _measure(fn: Callable[[], tuple[np.ndarray, float]]) -> Run:
    base = reset_peak()
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    seconds = time.perf_counter() - start
    extra = (status_kb("VmHWM") - base) / 1024 if base is not None else None
    names = sorted({type(w.message).__name__ for w in caught})
    return Run(seconds, extra, result, ("warned: " + ", ".join(names)) if names else "")


def gemm_rates() -> dict[torch.dtype, float]:
    """GFLOP/s of Xᵀ·[X Y] at the benchmark's batch shape (d = k = 1024), float32 and float64, best of 3."""
    rates = {}
    for dtype in (torch.float32, torch.float64):
        a = torch.randn(BATCH, 1024, dtype=dtype)
        b = torch.randn(BATCH, 2048, dtype=dtype)
        a.T @ b
        best = min(_time(lambda a=a, b=b: a.T @ b) for _ in range(3))
        rates[dtype] = 2 * BATCH * 1024 * 2048 / best / 1e9
    return rates


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---- data and reference ------------------------------------------------------------------------


def make_data(N: int, d: int, k: int, activation_like: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if activation_like:  # mean 1, singular values 1 … 1e-3 (the ill-conditioned case)
        Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        scales = torch.logspace(0, -3, d, dtype=torch.float64)
        X = torch.empty(N, d, dtype=torch.float32)
        for i in range(0, N, 16384):
            Z = torch.randn(min(16384, N - i), d, generator=g, dtype=torch.float64)
            X[i : i + 16384] = (1.0 + (Z * scales) @ Q).float()
    else:
        X = torch.randn(N, d, generator=g)
    W = torch.randn(d, k, generator=g) / d**0.5
    Y = X @ W + 0.1 * torch.randn(N, k, generator=g)
    return X, Y


@dataclass
class Reference:
    """Float64 ridge for any α: exact global centring, float64 chunks, one eigendecomposition."""

    lam: torch.Tensor
    V: torch.Tensor
    Q: torch.Tensor
    mx: torch.Tensor
    my: torch.Tensor
    scale: float  # tr(XcᵀXc)/d

    def matrix(self, alpha: float) -> np.ndarray:
        return (self.V @ (self.Q / (self.lam.clamp_min(0) + alpha)[:, None])).numpy()


def reference(X: torch.Tensor, Y: torch.Tensor) -> Reference:
    mx, my = X.double().mean(0), Y.double().mean(0)
    d, k = X.shape[1], Y.shape[1]
    A = torch.zeros(d, d, dtype=torch.float64)
    B = torch.zeros(d, k, dtype=torch.float64)
    for i in range(0, len(X), 16384):
        xc = X[i : i + 16384].double() - mx
        A.addmm_(xc.T, xc)
        B.addmm_(xc.T, Y[i : i + 16384].double() - my)
    lam, V = torch.linalg.eigh(A)
    return Reference(lam, V, V.T @ B, mx, my, float(torch.trace(A)) / d)


# ---- methods -----------------------------------------------------------------------------------


def backlens_fit(X, Y, alpha, yy="diagonal", gcv=False):
    def run():
        m = backlens.Moments(X.shape[1], Y.shape[1], yy=yy)
        for i in range(0, len(X), BATCH):
            m.update(X[i : i + BATCH], Y[i : i + BATCH])
        start = time.perf_counter()
        lm = backlens.ridge(m, alpha="gcv" if gcv else alpha)
        SOLVE_SECONDS.append(time.perf_counter() - start)
        return lm.matrix.numpy(), lm.info["alpha"]

    return run


def sklearn_ridge(X, Y, alpha):
    from sklearn.linear_model import Ridge

    def run():
        model = Ridge(alpha=alpha, solver="cholesky").fit(X.numpy(), Y.numpy())
        return model.coef_.T.astype(np.float64), alpha

    return run


def sklearn_ridgecv(X, Y, scale):
    from sklearn.linear_model import RidgeCV

    def run():
        grid = scale * np.logspace(-8, 2, GRID_POINTS)
        model = RidgeCV(alphas=grid).fit(X.numpy(), Y.numpy())
        return model.coef_.T.astype(np.float64), float(model.alpha_)

    return run


def numpy_lstsq(X, Y):
    def run():
        x, y = X.numpy(), Y.numpy()
        mx, my = x.mean(0), y.mean(0)
        M = np.linalg.lstsq(x - mx, y - my, rcond=None)[0].astype(np.float64)
        return M, 0.0

    return run


def torch_lstsq(X, Y):
    def run():
        mx, my = X.mean(0), Y.mean(0)
        M = torch.linalg.lstsq(X - mx, Y - my).solution  # CPU default driver: gelsy
        return M.double().numpy(), 0.0

    return run


# ---- table -------------------------------------------------------------------------------------


def errors(result, ref: Reference, X_test: torch.Tensor) -> tuple[float, float]:
    M, alpha = result  # compared with the float64 reference at the α the method used
    ref_M = ref.matrix(alpha)
    xc = X_test.double().numpy()
    xc = xc - xc.mean(0)
    pred = float(np.linalg.norm(xc @ (M - ref_M)) / np.linalg.norm(xc @ ref_M))
    return pred, float(np.linalg.norm(M - ref_M) / np.linalg.norm(ref_M))


def run_case(label, N, d, k, act, skip_slow: bool) -> list[str]:
    X, Y = make_data(N, d, k, act)
    rates = gemm_rates()
    ref = reference(X, Y)
    scale = ref.scale
    alpha = ALPHA_REL * scale
    X_test = make_data(min(N, 10_000), d, k, act, seed=1)[0]
    flops = 2 * N * d * (d + k)
    floor32, floor64 = flops / rates[torch.float32] / 1e9, flops / rates[torch.float64] / 1e9
    methods = [
        ("backlens f64 stream + ridge", backlens_fit(X, Y, alpha)),
        ("  same, yy='full' (all of YᵀY)", backlens_fit(X, Y, alpha, yy="full")),
        (f"  same + GCV ({GRID_POINTS} α)", backlens_fit(X, Y, alpha, gcv=True)),
        ("sklearn Ridge(cholesky)", sklearn_ridge(X, Y, alpha)),
        (f"sklearn RidgeCV ({GRID_POINTS} α)", sklearn_ridgecv(X, Y, scale)),
        ("numpy.linalg.lstsq", numpy_lstsq(X, Y)),
        ("torch.linalg.lstsq (gelsy)", torch_lstsq(X, Y)),
    ]
    title = (
        f"{label} N={N:,} d={d} k={k}: floors f32 {floor32:.2f} s, f64 {floor64:.2f} s "
        f"(GEMM f32 {rates[torch.float32]:.0f}, f64 {rates[torch.float64]:.0f} GFLOP/s, "
        f"load {os.getloadavg()[0]:.1f})"
    )
    lines = [title]
    large = flops > LARGE_FLOPS and not flag("BACKLENS_BENCH_FULL")
    for name, fn in methods:
        if skip_slow and name.startswith(("sklearn RidgeCV", "numpy", "torch")):
            lines.append(f"  {name:<30} skipped (BACKLENS_BENCH_SKIP_SLOW)")
            continue
        if large and name.startswith(SLOW_PEERS):
            lines.append(f"  {name:<30} skipped (large size, minutes: set BACKLENS_BENCH_FULL=1)")
            print(lines[-1], flush=True)
            continue
        try:
            run = _measure(fn)
        except Exception as err:  # a method that fails on this data is a result too
            lines.append(f"  {name:<30} failed: {type(err).__name__}: {str(err)[:60]}")
            continue
        pred, mat = errors(run.result, ref, X_test)
        if name.startswith(("backlens", "  same")) and SOLVE_SECONDS:
            run.note = f"solve {SOLVE_SECONDS.pop():.3f} s {run.note}"
        mem = f"{run.extra_mb:8.0f}" if run.extra_mb is not None else "       ?"
        lines.append(
            f"  {name:<30} {run.seconds:8.2f} {run.seconds / floor32:7.2f}"
            f" {run.seconds / floor64:7.2f} {mem} {pred:10.2e} {mat:10.2e}  {run.note}"
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    cases = QUICK_CASES if quick() else FULL_CASES
    skip_slow = flag("BACKLENS_BENCH_SKIP_SLOW")
    print(
        f"threads={torch.get_num_threads()}; batches of {BATCH}; "
        f"α = {ALPHA_REL:g}·tr(XcᵀXc)/d; load {os.getloadavg()[0]:.1f}"
        f"{'; QUICK sizes' if quick() else ''}",
        flush=True,
    )
    header = (
        f"  {'method':<30} {'s':>8} {'×f32fl':>7} {'×f64fl':>7} {'extraMB':>8}"
        f" {'pred err':>10} {'M err':>10}  note"
    )
    table = []
    for case in cases:
        print(f"-- {case[0]} N={case[1]:,} d={case[2]} k={case[3]}", flush=True)
        table.append(run_case(*case, skip_slow))
    load = os.getloadavg()[0]
    print(f"\n== fit benchmark table (load at end {load:.1f} on {os.cpu_count()} cores) ==")
    print(header)
    for lines in table:
        for line in lines:
            print(line if line.startswith("  ") else line)


if __name__ == "__main__":
    main()
