"""Trace benchmark: one SGD step of an MLP 784-1024-1024-1024-10 at batch 256, traced and not.

Rows: plain; hooks keeping references (forward + full backward hooks, the cheapest recorder);
backlens.recording.tracing with store="device", "cpu" and None (+ an on_record reducer); per-sample
gradients and per-sample gradient norms from a trace; Opacus GradSampleModule; BackPACK
BatchGrad; torch.func vmap(grad). Each row: median milliseconds of a step after warm-up, the
ratio to the plain step measured alongside it (rows run round-robin, so load on the machine hits
them alike), and the extra peak resident memory of a step (VmHWM reset before, minus the
resident size before). The floor for per-sample gradients is the bytes they fill, n·Σ(out·in +
out) floats, over the write bandwidth measured in the same run.

    python -m benchmarks trace                          # the full run (about 2-4 minutes)
    BACKLENS_BENCH_QUICK=1 python -m benchmarks trace   # fewer steps
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

from ._measure import quick, reset_peak, settle, status_kb

WIDTHS = [784, 1024, 1024, 1024, 10]
BATCH = 256
LR = 0.01


# ---- the model and the variants ----------------------------------------------------------------


@dataclass
class Setup:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor


def _setup() -> Setup:
    model = backlens.build_mlp(WIDTHS, "relu", seed=0)
    x = torch.randn(BATCH, WIDTHS[0], generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, WIDTHS[-1], (BATCH,), generator=torch.Generator().manual_seed(2))
    return Setup(model, torch.optim.SGD(model.parameters(), lr=LR), x, y)


def _plain(s: Setup) -> Callable[[], None]:
    def step() -> None:
        s.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(s.model(s.x), s.y).backward()
        s.optimizer.step()

    return step


def _hooks_keeping_references(s: Setup) -> Callable[[], None]:
    kept: list[object] = []
    leaves = [m for m in s.model.modules() if not list(m.children())]

    def step() -> None:
        kept.clear()
        handles = []
        for module in leaves:
            handles.append(module.register_forward_hook(lambda m, i, o: kept.append((i, o))))
            handles.append(module.register_full_backward_hook(lambda m, gi, go: kept.append((gi, go))))
        try:
            _plain(s)()
        finally:
            for handle in handles:
                handle.remove()

    return step


def _traced(
    store: str | None,
    select: list | None = None,
    after: Callable | None = None,
    on_record: Callable | None = None,
) -> Callable[[Setup], Callable[[], None]]:
    def make(s: Setup) -> Callable[[], None]:
        def step() -> None:
            s.optimizer.zero_grad(set_to_none=True)
            with backlens.trace(s.model, select=select, store=store, on_record=on_record) as rec:
                F.cross_entropy(s.model(s.x), s.y).backward()
            if after is not None:
                after(rec)
            s.optimizer.step()

        return step

    return make


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _per_sample_grads(s: Setup) -> Callable[[], None]:
    names = _linear_names(s.model)
    buffers = {}
    for name in names:  # one buffer per layer, allocated once and reused every step
        w = s.model.get_submodule(name).weight
        buffers[name] = {
            "weight": torch.empty(BATCH, *w.shape),
            "bias": torch.empty(BATCH, w.shape[0]),
        }
    for buf in buffers.values():
        buf["weight"].fill_(0)  # fault the pages in now, not in the first timed step

    def after(rec: backlens.Trace) -> None:
        for name in names:
            rec.per_sample_grads(name, reduction="mean", out=buffers[name])

    return _traced("device", [nn.Linear], after)(s)


def _per_sample_norms(s: Setup) -> Callable[[], None]:
    return _traced("device", [nn.Linear], lambda rec: rec.per_sample_grad_norms("mean"))(s)


def _reducer() -> Callable[[backlens.Call], None]:
    sums: dict[str, torch.Tensor] = {}

    def on_record(call: backlens.Call) -> None:
        if call.grad_output is not None:
            sums[call.module] = call.grad_output.square().sum() + sums.get(call.module, 0)

    return on_record


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

    model = copy.deepcopy(s.model)  # hook-free: vmap fails on modules carrying backward hooks
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
    slow: bool = False
    peer: str | None = None  # the package a peer row needs
    times: list[float] = field(default_factory=list)
    plain: list[float] = field(default_factory=list)
    peak_mb: float | None = None
    missing: str = ""


def variants() -> list[Variant]:
    return [
        Variant("plain step", _plain),
        Variant("hooks keeping references", _hooks_keeping_references),
        Variant('trace, store="device"', _traced("device")),
        Variant('trace, store="cpu"', _traced("cpu")),
        Variant("trace, store=None + on_record", _traced(None, on_record=_reducer())),
        Variant("per-sample grad norms (trace)", _per_sample_norms),
        Variant("per-sample grads (trace)", _per_sample_grads, slow=True),
        Variant("Opacus GradSampleModule", _opacus, slow=True, peer="opacus"),
        Variant("BackPACK BatchGrad", _backpack, slow=True, peer="backpack"),
        Variant("torch.func vmap(grad)", _torch_func, slow=True, peer="torch.func"),
    ]


# ---- measurement -------------------------------------------------------------------------------


def _timed(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    with warnings.catch_warnings():
        # full backward hooks (the reference row, Opacus, BackPACK) warn on the first layer
        warnings.simplefilter("ignore", UserWarning)
        step()
    return time.perf_counter() - start


def _available(v: Variant) -> bool:
    if v.peer in ("opacus", "backpack"):
        try:
            __import__(v.peer)
        except ImportError as err:
            package = "backpack-for-pytorch" if v.peer == "backpack" else v.peer
            v.missing = f"not installed ({err}); pip install {package}"
            return False
    return True


def _peak(v: Variant, s: Setup) -> None:
    """Extra peak resident memory of setting the variant up and running two steps."""
    base = reset_peak()
    step = v.make(s)
    _timed(step)
    _timed(step)
    v.peak_mb = (status_kb("VmHWM") - base) / 1024 if base is not None else None
    del step
    settle()


def _round_robin(group: list[Variant], s: Setup, plain: Callable[[], None], warmup: int, steps: int) -> None:
    """Steps of every variant in turn, each next to a plain step: both see the same load."""
    made = [(v, v.make(s)) for v in group]
    for _ in range(warmup):
        for _, step in made:
            _timed(step)
    for _ in range(steps):
        for v, step in made:
            v.plain.append(_timed(plain))
            v.times.append(_timed(step))
    del made
    settle()


def write_bandwidth() -> tuple[float, float]:
    """GB/s filling, and copying into, a preallocated 1 GiB buffer (bytes written), best of 5."""
    buffers = {"dst": torch.zeros(2**28), "src": torch.ones(2**28)}
    gigabytes = buffers["dst"].numel() * 4 / 1e9
    fill = copy_ = 0.0
    for _ in range(5):
        fill = max(fill, gigabytes / _timed(lambda: buffers["dst"].fill_(1.0)))
        copy_ = max(copy_, gigabytes / _timed(lambda: buffers["dst"].copy_(buffers["src"])))
    buffers.clear()
    settle()
    return fill, copy_


def main() -> None:
    torch.manual_seed(0)
    fast_steps, slow_steps = (8, 2) if quick() else (25, 5)
    s = _setup()
    plain = _plain(s)
    for _ in range(3):
        plain()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
        f"MLP {'-'.join(map(str, WIDTHS))}, batch {BATCH}, SGD, cross-entropy (mean)",
        flush=True,
    )
    fill_gbs, copy_gbs = write_bandwidth()
    all_variants = variants()
    for v in all_variants:
        if _available(v):
            _peak(v, s)
    ready = [v for v in all_variants if not v.missing]
    _round_robin([v for v in ready if not v.slow], s, plain, warmup=2, steps=fast_steps)
    for v in (v for v in ready if v.slow):
        _round_robin([v], s, plain, warmup=1, steps=slow_steps)
        print(f"  measured {v.label}", flush=True)
    _report(all_variants, fill_gbs, copy_gbs, fast_steps, slow_steps)


def _report(rows: list[Variant], fill_gbs: float, copy_gbs: float, fast: int, slow: int) -> None:
    from rich.console import Console
    from rich.table import Table

    n_floats = BATCH * sum(o * i + o for i, o in zip(WIDTHS[:-1], WIDTHS[1:], strict=True))
    floor_ms = n_floats * 4 / (fill_gbs * 1e9) * 1e3
    table = Table(title=f"one training step: median of {fast} steps ({slow} for the slow rows) after warm-up")
    for column in (
        "variant",
        "median ms",
        "× plain",
        "plain ms alongside",
        "min ms",
        "min × plain min",
        "extra peak MB",
        "× floor",
    ):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for v in rows:
        if v.missing:
            table.add_row(v.label, v.missing, *[""] * 7)
            continue
        ms = statistics.median(v.times) * 1e3
        ratio = statistics.median(t / p for t, p in zip(v.times, v.plain, strict=True))
        peak = "" if v.peak_mb is None else f"{v.peak_mb:,.0f}"
        floor = f"{ms / floor_ms:.2f}" if v.slow else ""
        low = min(v.times) * 1e3
        table.add_row(
            v.label,
            f"{ms:,.1f}",
            f"{ratio:.2f}×",
            f"{statistics.median(v.plain) * 1e3:.1f}",
            f"{low:,.1f}",
            f"{low / (min(v.plain) * 1e3):.2f}×",
            peak,
            floor,
        )
    console = Console(width=130)
    console.print(table)
    console.print(
        f"write bandwidth, preallocated 1 GiB: fill {fill_gbs:.1f} GB/s, copy {copy_gbs:.1f} GB/s "
        f"(bytes written). Per-sample gradients fill {n_floats * 4 / 1e9:.2f} GB: floor "
        f"{floor_ms:,.0f} ms at the fill rate.\n"
        "× plain: median over steps of the step's time / the plain step's just before it. The min "
        "columns show the least-disturbed steps when other processes share the cores. "
        "× floor: median ms / floor ms."
    )


if __name__ == "__main__":
    main()
