"""Blocks benchmark: collecting a block's boundary pairs, and a block's mean Jacobian, against peers.

1. collect: `backlens.collect(model, Block(model, "encoder.layers.0"), train, ...)` on the zoo
   transformer (batch 256), against one plain pass over the same loader: direction="both" against
   `F.cross_entropy(model(x), y).backward()` per batch (a training step without the optimizer
   update, grads zeroed each batch), direction="forward" against a plain no-grad forward pass.
   Target: both ≤ 1.5× the plain step.
2. mean_jacobian: `backlens.mean_jacobian(Block(model, "0", "<last>"), X, "backward")` over N
   samples of a D-wide block, against `y = block(X); y.backward(torch.randn_like(y))` on the same
   samples (float32, as the model is; and on a float64 copy, the precision backlens computes in),
   and torch.func's `vmap(jacrev(block))(X).mean(0)` (in chunks of JAC_CHUNK samples). Two cases:
   a Linear-ReLU-Linear chain (the batched closed form) and LayerNorm-Linear-GELU-Linear, which is
   not a chain (the autograd path: one backward pass per output coordinate, so a miss of the 3×
   target is expected there). Target: ≤ 3× the float32 forward + backward.

Rows are measured round-robin (every variant of a group once per round, the peers first), so load
from other processes hits them alike; a row under 0.1 s repeats within its turn (up to 10 times)
and the round keeps the median of those repeats. "×" is the median over rounds of the row's time /
the peer's in the same round; "min × min" is the least-disturbed call over the least-disturbed
call of the peer.

    python -m benchmarks blocks                           # the full run (about 1-2 minutes)
    BACKLENS_BENCH_QUICK=1 python -m benchmarks blocks    # smaller sizes (about 10 s)
    BACKLENS_BENCH_THREADS=2 python -m benchmarks blocks  # torch's thread count (default 1; 0: torch's own)

One thread by default: the matrices are small, and on a 2-core machine shared with other processes
torch's waiting threads make millisecond-sized calls 50-100× slower (measured: a 1 ms float32
forward + backward took 80 ms at 2 threads under load), which would flatter every ratio against
the fast peers.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

import backlens

from ._measure import quick, settle

COLLECT_TARGET = 1.5
JACOBIAN_TARGET = 3.0
REP_SECONDS = 0.1  # rows faster than this repeat within a round
MAX_REPS = 10
JAC_CHUNK = 250  # samples per vmap(jacrev) call: bounds the peer's (chunk, D, D) Jacobians


@dataclass
class Timed:
    label: str
    fn: Callable[[], object]
    times: list[float] = field(default_factory=list)  # per round: the median of its repeats
    every: list[float] = field(default_factory=list)  # every repeat
    reps: int = 1


@dataclass
class Ratio:
    label: str
    num: str  # Timed labels
    den: str
    target: float | None = None


@dataclass
class Group:
    title: str
    rows: list[Timed]
    ratios: list[Ratio]
    notes: list[str] = field(default_factory=list)

    def row(self, label: str) -> Timed:
        return next(r for r in self.rows if r.label == label)


def _once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _run(group: Group, warmup: int, rounds: int) -> None:
    """Warm-up calls, then `rounds` rounds of every row in turn; a row faster than REP_SECONDS
    repeats within a round (up to MAX_REPS) and the round keeps the median of its repeats."""
    for _ in range(warmup):
        for r in group.rows:
            seconds = _once(r.fn)
            r.reps = max(1, min(MAX_REPS, int(REP_SECONDS / max(seconds, 1e-6))))
    for _ in range(rounds):
        for r in group.rows:
            these = [_once(r.fn) for _ in range(r.reps)]
            r.every.extend(these)
            r.times.append(statistics.median(these))
    settle()


def _figures(group: Group, ratio: Ratio) -> tuple[float, float]:
    num, den = group.row(ratio.num), group.row(ratio.den)
    per_round = statistics.median(a / b for a, b in zip(num.times, den.times, strict=True))
    return per_round, min(num.every) / min(den.every)


# ---- 1. collect on the zoo transformer -------------------------------------------------------------


def collect_group(batch_size: int) -> Group:
    from backlens.workflows.zoo import ARCHITECTURES, loaders, zoo_data

    model = ARCHITECTURES["transformer"].build(seed=0)
    data = zoo_data("transformer")
    train, _ = loaders(data, batch_size=batch_size)
    block = backlens.Block(model, "encoder.layers.0")

    def collect(direction: str) -> Callable[[], object]:
        return lambda: backlens.collect(
            model, block, train, direction=direction, loss="ce", show_progress=False
        )

    def plain_step() -> None:
        for x, y in train:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
        model.zero_grad(set_to_none=True)

    def plain_forward() -> None:
        with torch.no_grad():
            for x, _ in train:
                model(x)

    n = len(train.dataset)  # type: ignore[arg-type]
    return Group(
        f'collect: zoo transformer (d 32, 4 heads, 2 layers), block "encoder.layers.0", '
        f"{n} samples × 12 tokens, batch {batch_size} ({len(train)} batches)",
        [
            Timed("plain step (fwd + bwd, grads zeroed)", plain_step),
            Timed('collect direction="both"', collect("both")),
            Timed("plain no-grad forward", plain_forward),
            Timed('collect direction="forward"', collect("forward")),
        ],
        [
            Ratio(
                'collect "both" / plain step',
                'collect direction="both"',
                "plain step (fwd + bwd, grads zeroed)",
                COLLECT_TARGET,
            ),
            Ratio(
                'collect "forward" / plain forward', 'collect direction="forward"', "plain no-grad forward"
            ),
        ],
    )


# ---- 2. mean_jacobian of a D-wide block ----------------------------------------------------------


def jacobian_group(case: str, width: int, n: int) -> Group:
    torch.manual_seed(0)
    if case == "chain":
        model: nn.Module = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        title = f"mean_jacobian, chain Linear-ReLU-Linear (closed form): D {width}, N {n}"
    else:
        model = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width)
        )
        title = f"mean_jacobian, LayerNorm-Linear-GELU-Linear (not a chain: autograd path): D {width}, N {n}"
    block = backlens.Block(model, "0", str(len(model) - 1))
    X = torch.randn(n, width, generator=torch.Generator().manual_seed(1))
    twin = copy.deepcopy(model).double()
    X64 = X.double()
    frozen = copy.deepcopy(model).requires_grad_(False)  # torch.func's best case: no parameter graph
    frozen64 = copy.deepcopy(twin).requires_grad_(False)

    def fwd_bwd(m: nn.Module, inputs: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            m.zero_grad(set_to_none=True)
            x = inputs.clone().requires_grad_(True)
            y = m(x)
            y.backward(torch.randn_like(y))

        return run

    def func(m: nn.Module, inputs: torch.Tensor) -> Callable[[], torch.Tensor]:
        from torch.func import jacrev, vmap

        jac = vmap(jacrev(lambda x: m(x[None])[0]))

        def run() -> torch.Tensor:
            total = torch.zeros(width, width, dtype=torch.float64)
            for start in range(0, len(inputs), JAC_CHUNK):
                total += jac(inputs[start : start + JAC_CHUNK]).double().sum(dim=0)
            return total / len(inputs)

        return run

    lm = backlens.mean_jacobian(block, X, "backward")
    peer = func(frozen64, X64)()
    error = float((lm.matrix - peer).abs().max() / peer.abs().max())
    notes = [
        f"{case}: backlens path {lm.info.get('path')!r}, |J̄ − torch.func float64 J̄|max / |J̄|max = {error:.1e}"
    ]
    plain = "plain fwd + bwd, float32"
    bl = "backlens.mean_jacobian"
    f32 = "torch.func vmap(jacrev), float32"
    f64 = "torch.func vmap(jacrev), float64"
    return Group(
        title,
        [
            Timed(plain, fwd_bwd(model, X)),
            Timed("plain fwd + bwd, float64", fwd_bwd(twin, X64)),
            Timed(bl, lambda: backlens.mean_jacobian(block, X, "backward")),
            Timed(f32, func(frozen, X)),
            Timed(f64, func(frozen64, X64)),
        ],
        [
            Ratio("backlens / plain fwd+bwd f32", bl, plain, JACOBIAN_TARGET),
            Ratio("backlens / plain fwd+bwd f64", bl, "plain fwd + bwd, float64"),
            Ratio("backlens / torch.func f32", bl, f32),
            Ratio("backlens / torch.func f64", bl, f64),
            Ratio("torch.func f32 / plain fwd+bwd f32", f32, plain),
        ],
        notes,
    )


# ---- report --------------------------------------------------------------------------------------


def _report(groups: list[Group], rounds: dict[str, int]) -> dict[str, dict[str, float]]:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=130)
    figures: dict[str, dict[str, float]] = {}
    for group in groups:
        times = Table(title=group.title, title_justify="left")
        for column in ("row", "median ms", "min ms", "calls"):
            times.add_column(column, justify="left" if column == "row" else "right")
        for r in group.rows:
            times.add_row(
                r.label,
                f"{statistics.median(r.times) * 1e3:,.1f}",
                f"{min(r.every) * 1e3:,.1f}",
                f"{len(r.times)}×{r.reps}",
            )
        ratios = Table()
        for column in ("ratio", "× (median of per-round ratios)", "min × min", "target", "met"):
            ratios.add_column(column, justify="left" if column == "ratio" else "right")
        for ratio in group.ratios:
            median, least = _figures(group, ratio)
            figures[f"{group.title} | {ratio.label}"] = {"median": median, "min_over_min": least}
            target = "" if ratio.target is None else f"≤ {ratio.target:g}×"
            met = "" if ratio.target is None else ("yes" if median <= ratio.target else "NO")
            ratios.add_row(ratio.label, f"{median:,.2f}×", f"{least:,.2f}×", target, met)
        console.print(times)
        console.print(ratios)
        for note in group.notes:
            console.print(note)
        console.print(f"({rounds[group.title]} timed rounds after warm-up)\n")
    console.print(
        "× : median over rounds of the row's time / the peer's time in the same round (rows run "
        "round-robin; a row under 0.1 s repeats within a round and counts the median of its repeats; "
        "calls: rounds × repeats). min × min: the least-disturbed call of each, for a machine shared "
        "with other processes. backlens's mean_jacobian works in float64 on a copy of the block; the "
        "torch.func rows run on copies whose parameters do not require grad (their best case)."
    )
    return figures


def main() -> dict[str, dict[str, float]]:
    threads = int(os.environ.get("BACKLENS_BENCH_THREADS", "1") or "1")
    if threads > 0:
        torch.set_num_threads(threads)
    small = quick()
    width, n = (128, 250) if small else (256, 1000)
    collect_rounds, chain_rounds, other_rounds = (3, 2, 2) if small else (7, 5, 3)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
        f"{'QUICK' if small else 'full'} sizes: collect batch 256; mean_jacobian D {width}, N {n}",
        flush=True,
    )
    groups, rounds = [], {}
    for make, count in (
        (lambda: collect_group(256), collect_rounds),
        (lambda: jacobian_group("chain", width, n), chain_rounds),
        (lambda: jacobian_group("layernorm", width, n), other_rounds),
    ):
        group = make()
        _run(group, warmup=1, rounds=count)
        print(f"  measured {group.title}", flush=True)
        groups.append(group)
        rounds[group.title] = count
    return _report(groups, rounds)


if __name__ == "__main__":
    main()
