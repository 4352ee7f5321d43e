"""Per-sample benchmark: a small CNN (two conv + two linear), batch 128, 28×28, one SGD step.

Rows: plain step; per-sample gradients of every parameter from a trace (Conv2d and Linear rules);
per-sample gradient norms from a trace (closed forms where cheaper, else one layer at a time);
Opacus GradSampleModule; BackPACK BatchGrad; torch.func vmap(grad). Every row is a full step
(forward, backward, the per-sample work, optimizer.step). Each row: median milliseconds after
warm-up, the ratio to the plain step measured alongside it (rows run round-robin, so load on the
machine hits them alike), and each per-sample row's ratio to the fastest peer.

    python -m benchmarks per_sample                          # the full run (about a minute)
    BACKLENS_BENCH_QUICK=1 python -m benchmarks per_sample   # fewer steps
"""

from __future__ import annotations

import copy
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

import backlens

from ._measure import quick

BATCH = 128
LR = 0.01
SELECT = [nn.Conv2d, nn.Linear]


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


@dataclass
class Setup:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor


def _setup() -> Setup:
    model = cnn()
    x = torch.randn(BATCH, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (BATCH,), generator=torch.Generator().manual_seed(2))
    return Setup(model, torch.optim.SGD(model.parameters(), lr=LR), x, y)


def _plain(s: Setup) -> Callable[[], None]:
    def step() -> None:
        s.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(s.model(s.x), s.y).backward()
        s.optimizer.step()

    return step


def _traced(after: Callable[[backlens.Trace], object]) -> Callable[[Setup], Callable[[], None]]:
    def make(s: Setup) -> Callable[[], None]:
        def step() -> None:
            s.optimizer.zero_grad(set_to_none=True)
            with backlens.trace(s.model, select=SELECT, store="device") as rec:
                F.cross_entropy(s.model(s.x), s.y).backward()
            after(rec)
            s.optimizer.step()

        return step

    return make


def _all_grads(rec: backlens.Trace, buffers: dict | None = None) -> dict[str, torch.Tensor]:
    """Every traced layer's per-sample gradients; Linear ones into `buffers` where given."""
    out = {}
    for record in rec:
        into = (buffers or {}).get(record.name)
        for key, g in rec.per_sample_grads(record.name, reduction="mean", out=into).items():
            out[f"{record.name}.{key}"] = g
    return out


def _grads_into_buffers(s: Setup) -> Callable[[], None]:
    """Per-sample gradients with the Linear layers' written into buffers reused every step
    (the `out=` argument): a fresh 51 MB buffer per step costs its page faults, ≈ 3 GB/s here."""
    buffers = {}
    for name, module in s.model.named_modules():
        if isinstance(module, nn.Linear):
            w = module.weight
            buffers[name] = {"weight": torch.zeros(BATCH, *w.shape), "bias": torch.zeros(BATCH, w.shape[0])}
    return _traced(lambda rec: _all_grads(rec, buffers))(s)


def _opacus(s: Setup) -> Callable[[], None]:
    from opacus import GradSampleModule

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = GradSampleModule(copy.deepcopy(s.model), loss_reduction="mean")
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.grad_sample = None
        F.cross_entropy(model(s.x), s.y).backward()
        optimizer.step()

    return step


def _backpack(s: Setup) -> Callable[[], None]:
    from backpack import backpack, extend
    from backpack.extensions import BatchGrad

    model = extend(copy.deepcopy(s.model))
    loss_fn = extend(nn.CrossEntropyLoss())
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with backpack(BatchGrad()):
            loss_fn(model(s.x), s.y).backward()
        optimizer.step()

    return step


def _torch_func(s: Setup) -> Callable[[], None]:
    from torch.func import functional_call, grad, vmap

    model = copy.deepcopy(s.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)

    def one(params: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, params, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    per_sample = vmap(grad(one), in_dims=(None, 0, 0))

    def step() -> None:
        params = {k: v.detach() for k, v in model.named_parameters()}
        grads = per_sample(params, s.x, s.y)
        for name, p in model.named_parameters():
            p.grad = grads[name].mean(0)
        optimizer.step()

    return step


@dataclass
class Variant:
    label: str
    make: Callable[[Setup], Callable[[], None]]
    kind: str = ""  # "grads" for a per-sample-gradient row, "peer" for a peer's
    peer: str | None = None
    times: list[float] = field(default_factory=list)
    plain: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # process CPU seconds (all threads)
    plain_cpu: list[float] = field(default_factory=list)
    missing: str = ""


def variants() -> list[Variant]:
    return [
        Variant("plain step", _plain),
        Variant("per-sample grad norms (trace)", _traced(lambda rec: rec.per_sample_grad_norms("mean"))),
        Variant("per-sample grads (trace)", _traced(_all_grads), kind="grads"),
        Variant("per-sample grads (trace, out= buffers)", _grads_into_buffers, kind="grads"),
        Variant("Opacus GradSampleModule", _opacus, kind="peer", peer="opacus"),
        Variant("BackPACK BatchGrad", _backpack, kind="peer", peer="backpack"),
        Variant("torch.func vmap(grad)", _torch_func, kind="peer"),
    ]


def _timed(step: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one step."""
    start, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the peers' full backward hooks warn
        step()
    return time.perf_counter() - start, time.process_time() - cpu


def _available(v: Variant) -> bool:
    if v.peer is not None:
        try:
            __import__(v.peer)
        except ImportError as err:
            package = "backpack-for-pytorch" if v.peer == "backpack" else v.peer
            v.missing = f"not installed ({err}); pip install {package}"
            return False
    return True


def check_agreement(s: Setup) -> float:
    """Largest relative difference of the trace's per-sample gradients from torch.func's."""
    from torch.func import functional_call, grad, vmap

    model = copy.deepcopy(s.model)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    ref = vmap(grad(one), in_dims=(None, 0, 0))(params, s.x, s.y)
    with backlens.trace(s.model, select=SELECT, store="device") as rec:
        F.cross_entropy(s.model(s.x), s.y).backward()
    s.model.zero_grad(set_to_none=True)
    ours = _all_grads(rec)
    return max(float((ours[k] - ref[k]).abs().max() / ref[k].abs().max()) for k in ref)


def main() -> None:
    steps, warmup = (3, 1) if quick() else (15, 3)
    s = _setup()
    plain = _plain(s)
    for _ in range(2):
        plain()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
        f"CNN conv(1→16)-pool-conv(16→32)-pool-linear(1568→64)-linear(64→10), batch {BATCH}, "
        f"28×28, SGD, cross-entropy (mean)",
        flush=True,
    )
    agreement = check_agreement(s)
    rows = variants()
    ready = [v for v in rows if _available(v)]
    made = [(v, v.make(s)) for v in ready]
    for _ in range(warmup):
        for _, step in made:
            _timed(step)
    for _ in range(steps):
        for v, step in made:
            wall, cpu = _timed(plain)
            v.plain.append(wall)
            v.plain_cpu.append(cpu)
            wall, cpu = _timed(step)
            v.times.append(wall)
            v.cpu.append(cpu)
    _report(rows, steps, agreement)


def _report(rows: list[Variant], steps: int, agreement: float) -> None:
    from rich.console import Console
    from rich.table import Table

    peers = [v for v in rows if v.kind == "peer" and v.times]
    best = min(statistics.median(v.times) for v in peers) if peers else None
    best_cpu = min(statistics.median(v.cpu) for v in peers) if peers else None
    table = Table(title=f"one training step: median of {steps} steps after warm-up")
    columns = (
        "variant",
        "median ms",
        "× plain",
        "× fastest peer",
        "CPU ms",
        "CPU × plain",
        "CPU × fastest peer",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "variant" else "right")
    for v in rows:
        if v.missing:
            table.add_row(v.label, v.missing, *[""] * 5)
            continue
        ms, cpu_ms = statistics.median(v.times), statistics.median(v.cpu)
        ratio = statistics.median(t / p for t, p in zip(v.times, v.plain, strict=True))
        cpu_ratio = statistics.median(t / p for t, p in zip(v.cpu, v.plain_cpu, strict=True))
        compared = best is not None and best_cpu is not None and v.kind in ("grads", "peer")
        table.add_row(
            v.label,
            f"{ms * 1e3:,.1f}",
            f"{ratio:.2f}×",
            f"{ms / best:.2f}×" if compared and best else "",
            f"{cpu_ms * 1e3:,.1f}",
            f"{cpu_ratio:.2f}×",
            f"{cpu_ms / best_cpu:.2f}×" if compared and best_cpu else "",
        )
    console = Console(width=150)
    console.print(table)
    console.print(
        f"trace per-sample grads vs torch.func: largest relative difference {agreement:.1e}.\n"
        "× plain: median over steps of the step's time / the plain step's just before it. "
        "× fastest peer: median / the fastest of Opacus, BackPACK and torch.func's. CPU: the "
        "process's CPU time (all threads), which other processes sharing the cores disturb less."
    )


if __name__ == "__main__":
    main()
