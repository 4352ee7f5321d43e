"""The CUDA path, checked and timed in one run (a few minutes on one GPU):

1. collect: forward and backward Moments of a 1,024-wide block, model and data on the GPU (the
   sums accumulate there, in float64) against the same collection on the CPU; pairs/s.
2. trace: store="cpu" (asynchronous copies into pinned memory) records what the CPU's trace
   records; its overhead over a plain forward + backward on the GPU.
3. per-sample gradients of the traced MLP against the CPU's; time per batch.
4. a training step through backlens.linear_backward (method "fa"): the parameters after a few
   steps against the CPU's; time per step against a plain backprop step.

Tolerances: the model is float32 and the GPU's kernels sum in other orders than the CPU's, so
values agree to float32 rounding grown over a few layers: 1e-4 relative to each tensor's
largest entry (2e-3 after training steps, where the differences compound). Exits 1 if any
check fails; 0 after printing that there is no GPU when there is none.

    python benchmarks/gpu_check.py
    BACKLENS_GPU_CHECK_DEVICE=cpu python benchmarks/gpu_check.py   # the same code, CPU vs CPU
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import backlens

WIDTH = 1024
TOLERANCE = 1e-4
TRAINED_TOLERANCE = 2e-3


def _device() -> torch.device | None:
    wanted = os.environ.get("BACKLENS_GPU_CHECK_DEVICE")
    if wanted:
        return torch.device(wanted)
    return torch.device("cuda") if torch.cuda.is_available() else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn: Callable[[], object], repeats: int) -> float:
    """Seconds per call: the median of `repeats` calls, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _gap(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


class Report:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def check(self, name: str, gap: float, tolerance: float) -> None:
        ok = gap <= tolerance
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: max relative gap {gap:.2e} (tolerance {tolerance:.0e})")
        if not ok:
            self.failed.append(name)


def _mlp(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )


def check_collect(device: torch.device, report: Report, width: int, batches: int) -> None:
    g = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(1024, width, generator=g), torch.randint(0, 10, (1024,), generator=g))
        for _ in range(batches)
    ]
    cpu_model, gpu_model = _mlp(width), _mlp(width).to(device)
    on_gpu = [(x.to(device), y.to(device)) for x, y in data]

    def run(model: nn.Module, loader: list) -> backlens.Collection:
        block = backlens.Block(model, "0", "2")
        return backlens.collect(model, block, loader, "both", "ce", show_progress=False)

    want, got = run(cpu_model, data), run(gpu_model, on_gpu)
    for direction in ("forward", "backward"):
        mine, theirs = getattr(got, direction), getattr(want, direction)
        for stat in ("mean_x", "cxx", "cxy"):
            gap = _gap(getattr(mine, stat), getattr(theirs, stat))
            report.check(f"collect {direction} {stat}", gap, TOLERANCE)
    seconds = _timed(device, lambda: run(gpu_model, on_gpu), 3)
    rows = 1024 * batches
    print(f"  collect both directions, {width}-wide block: {rows / seconds:,.0f} pairs/s per direction")


def check_trace(device: torch.device, report: Report, width: int) -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(512, width, generator=g), torch.randint(0, 10, (512,), generator=g)
    cpu_model, gpu_model = _mlp(width), _mlp(width).to(device)
    xd, yd = x.to(device), y.to(device)

    def traced(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor) -> backlens.Trace:
        with backlens.trace(model, store="cpu") as rec:
            F.cross_entropy(model(xs), ys).backward()
        model.zero_grad(set_to_none=True)
        return rec

    want, got = traced(cpu_model, x, y), traced(gpu_model, xd, yd)
    for name in ("0", "2", "4"):
        report.check(f"trace output of {name}", _gap(got[name].output, want[name].output), TOLERANCE)
        report.check(
            f"trace grad_output of {name}", _gap(got[name].grad_output, want[name].grad_output), TOLERANCE
        )

    def plain() -> None:
        F.cross_entropy(gpu_model(xd), yd).backward()
        gpu_model.zero_grad(set_to_none=True)

    t_plain = _timed(device, plain, 10)
    t_trace = _timed(device, lambda: traced(gpu_model, xd, yd), 10)
    print(
        f"  trace store='cpu': {t_trace * 1e3:.2f} ms vs plain fwd+bwd {t_plain * 1e3:.2f} ms "
        f"({t_trace / t_plain:.2f}×)"
    )
    check_per_sample(device, report, (cpu_model, x, y), (gpu_model, xd, yd))


def check_per_sample(device: torch.device, report: Report, cpu: tuple, gpu: tuple) -> None:
    def grads(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor) -> dict[str, torch.Tensor]:
        with backlens.trace(model, select=nn.Linear, store="device") as rec:
            F.cross_entropy(model(xs), ys).backward()
        model.zero_grad(set_to_none=True)
        return {
            f"{n}.{k}": v
            for n in ("0", "2", "4")
            for k, v in rec.per_sample_grads(n, reduction="mean").items()
        }

    want, got = grads(*cpu), grads(*gpu)
    for key in want:
        report.check(f"per-sample grads {key}", _gap(got[key], want[key]), TOLERANCE)
    seconds = _timed(device, lambda: grads(*gpu), 5)
    print(f"  per-sample gradients (batch {len(gpu[1])}, 3 Linear layers): {seconds * 1e3:.2f} ms per batch")


def check_linear_backward(device: torch.device, report: Report, width: int, steps: int) -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(256, width, generator=g), torch.randint(0, 10, (256,), generator=g)

    def train(on: torch.device, method: str, n: int) -> tuple[nn.Module, float]:
        model = _mlp(width).to(on)
        xs, ys = x.to(on), y.to(on)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

        def step() -> None:
            optimizer.zero_grad()
            F.cross_entropy(model(xs), ys).backward()
            optimizer.step()

        if method == "bp":
            return model, _timed(on, step, n)
        with backlens.linear_backward(model, method=method):
            return model, _timed(on, step, n)

    want, _ = train(torch.device("cpu"), "fa", steps)
    got, t_fa = train(device, "fa", steps)
    for (name, p), q in zip(got.named_parameters(), want.parameters(), strict=True):
        report.check(f"linear_backward fa: {name} after {steps + 1} steps", _gap(p, q), TRAINED_TOLERANCE)
    _, t_bp = train(device, "bp", steps)
    print(
        f"  training step through linear_backward('fa'): {t_fa * 1e3:.2f} ms vs bp "
        f"{t_bp * 1e3:.2f} ms ({t_fa / t_bp:.2f}×)"
    )


def main() -> int:
    device = _device()
    if device is None:
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False): nothing to check")
        return 0
    small = device.type == "cpu"  # the code paths only, quickly
    width = 128 if small else WIDTH
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_check on {name} against the CPU (torch {torch.__version__})")
    report = Report()
    start = time.perf_counter()
    check_collect(device, report, width, 4 if small else 64)
    check_trace(device, report, width)
    check_linear_backward(device, report, width, 3 if small else 20)
    print(f"done in {time.perf_counter() - start:.0f} s; {len(report.failed)} check(s) failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
