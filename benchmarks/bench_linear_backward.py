"""A training step through a linear backward against a bp step of the same model and batch.

Targets (issue "Train through a linear backward"): fa, dfa, usf ≤ 1.10× a bp step; expected-mask
≤ 1.15×; ridge (refit every 50 steps) ≤ 1.3×; shadow mode ≤ 3× on the steps it measures.
Model 784-256-256-10 ReLU MLP, batch 256, SGD; one torch thread, timed by the process's CPU time
(on a shared machine other processes then slow a step without being counted in it); the fastest
of rounds run round-robin, as interference (the neighbours' use of the caches and the memory
bus, which CPU time still counts) only ever slows a round: one 256×784 GEMM here varies by ±20 %
from round to round.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from backlens import linear_backward

from ._measure import quick

# label -> (method, linear_backward options); ridge at its defaults (refit every 50 steps, pairs
# of every 2nd step recorded), and with every step's pairs recorded
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    **{m: (m, {}) for m in ("bp", "fa", "dfa", "usf", "brsf", "frsf", "expected-mask", "ridge")},
    "ridge, every step": ("ridge", {"record_every": 1}),
    "bp+shadow": ("bp", {"shadow": True}),
    "fa+shadow": ("fa", {"shadow": True}),
}
METHODS = tuple(VARIANTS)
TARGETS = {"fa": 1.10, "dfa": 1.10, "usf": 1.10, "expected-mask": 1.15, "ridge": 1.3}
TARGETS.update({"bp+shadow": 3.0, "fa+shadow": 3.0})


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def _step_time(label: str, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    method, options = VARIANTS[label]
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with linear_backward(model, method=method, **options):  # type: ignore[arg-type]
        for _ in range(2):  # warm-up
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        start = time.process_time()
        for _ in range(steps):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    return (time.process_time() - start) / steps


def main() -> dict[str, float]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batch, steps, rounds = (64, 5, 3) if quick() else (256, 30, 11)
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(batch, 784, generator=g), torch.randint(0, 10, (batch,), generator=g)
        times: dict[str, list[float]] = {m: [] for m in METHODS}
        for _ in range(rounds):
            for label in METHODS:
                times[label].append(_step_time(label, x, y, steps))
    finally:
        torch.set_num_threads(threads)
    bp = min(times["bp"])
    print(
        f"torch {torch.__version__}, 1 thread, CPU time; 784-256-256-10 MLP, batch {batch}; "
        f"fastest of {rounds} rounds"
    )
    ratios = {}
    for label in METHODS:
        t = min(times[label])
        ratios[label] = t / bp
        target = TARGETS.get(label)
        verdict = (
            ""
            if target is None
            else f"  target ≤ {target:.2f}×: {'met' if ratios[label] <= target else 'MISSED'}"
        )
        print(f"  {label:18} {t * 1e3:7.2f} ms  {ratios[label]:5.2f}× a bp step{verdict}")
    return ratios
