"""Scale benchmark: collecting forward and backward pairs of a 1,024-wide block at scale, on one
process and on two gloo processes.

The model is Linear(1024, 1024) → ReLU → Linear(1024, 1024) (the block, "0":"2") → ReLU →
Linear(1024, 1), float32, MSE loss, batches of 1,024 rows; the data stream is SAMPLES rows (≥ 200k;
a pool of 8 seeded batches cycled, so no row costs more to make in one row than another).

1. collect(direction="both") on one process, samples/s, against a plain forward + backward pass
   over the same batches (`loss.backward()` with grads zeroed each batch): the ratio is what
   streaming two 1,025 × 2,049 float64 Gram updates per batch costs on top of training-like work.
2. The same collection on 2 gloo processes (torch.multiprocessing, 1 thread each, whole batches
   strided across the ranks, Moments merged by all_reduce) against 1 process at the same total
   thread count (2 threads) and at 1 thread. On a 2-core machine, two processes can at best
   match one 2-thread process: the cores are the same; what they buy is that each rank runs
   its own GEMMs without cross-thread waits, and what they cost is the merge and a second copy
   of the model. Expect a ratio near 1 (the cores are shared with other work: say so with the
   figures).

    python -m benchmarks scale                          # 204,800 samples (minutes)
    BACKLENS_BENCH_QUICK=1 python -m benchmarks scale   # 20,480 samples
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import backlens
from backlens.blocks.collect import collect

from ._measure import quick

WIDTH = 1024
BATCH = 1024
POOL = 8


def samples() -> int:
    return 20 * BATCH if quick() else 200 * BATCH


class Stream:
    """`batches` seeded (x, y) batches (a pool cycled); this rank's share under a process group."""

    def __init__(self, batches: int, rank: int = 0, world: int = 1) -> None:
        g = torch.Generator().manual_seed(0)
        self.pool = [
            (torch.randn(BATCH, WIDTH, generator=g), torch.randn(BATCH, 1, generator=g)) for _ in range(POOL)
        ]
        self.mine = list(range(rank, batches, world))

    def __len__(self) -> int:
        return len(self.mine)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in self.mine:
            yield self.pool[i % POOL]


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 1)
    )


def plain(net: nn.Module, stream: Stream) -> float:
    start = time.perf_counter()
    for x, y in stream:
        net.zero_grad(set_to_none=True)
        nn.functional.mse_loss(net(x), y).backward()
    return time.perf_counter() - start


def collecting(net: nn.Module, stream: Stream) -> float:
    start = time.perf_counter()
    collect(net, backlens.Block(net, "0", "2"), stream, "both", show_progress=False)
    return time.perf_counter() - start


def _rank(rank: int, world: int, init: str, batches: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        net, stream = model(), Stream(batches, rank, world)
        dist.barrier()
        seconds = collecting(net, stream)  # ends after the merge: the slowest rank's time
        if rank == 0:
            Path(out).write_text(str(seconds))
    finally:
        dist.destroy_process_group()


def two_processes(batches: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "seconds"
        mp.start_processes(
            _rank, (2, str(Path(tmp) / "store"), batches, str(out)), nprocs=2, start_method="spawn"
        )
        return float(out.read_text())


def main() -> None:
    n = samples()
    batches = n // BATCH
    threads = torch.get_num_threads()
    print(f"{n:,} samples, block {WIDTH} → {WIDTH} (forward and backward pairs), batch {BATCH}")
    print("the machine is shared with other processes: figures are indicative")
    rows = []
    for count in (2, 1):
        torch.set_num_threads(count)
        net, stream = model(), Stream(batches)
        t_plain, t_collect = plain(net, stream), collecting(net, stream)
        rows.append((count, t_plain, t_collect))
        print(
            f"1 process, {count} thread(s): plain fwd+bwd {n / t_plain:9,.0f} samples/s; "
            f"collect both {n / t_collect:9,.0f} samples/s; ratio collect/plain {t_collect / t_plain:.2f}×"
        )
    torch.set_num_threads(threads)
    t_two = two_processes(batches)
    one_two_threads, one_one_thread = rows[0][2], rows[1][2]
    print(
        f"2 gloo processes, 1 thread each: collect both {n / t_two:9,.0f} samples/s; "
        f"time vs 1 process × 2 threads {t_two / one_two_threads:.2f}×, "
        f"vs 1 process × 1 thread {t_two / one_one_thread:.2f}×"
    )


if __name__ == "__main__":
    main()
