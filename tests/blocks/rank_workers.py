"""Workers for the multi-process tests: each rank joins a gloo group (file store), runs one case
and leaves what it got (or the BacklensError it raised) in a file for the test to read."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

import backlens
from backlens.blocks.block import Block
from backlens.blocks.collect import collect
from backlens.blocks.compare import compare
from backlens.blocks.linearity import linearity
from backlens.blocks.methods import fit_method
from backlens.errors import BacklensError
from backlens.linear.distributed import all_reduce_moments
from backlens.linear.moments import Moments

BATCH = 10
METHODS = ("ridge", "reduced-rank:2", "ridge-direction", "mean-jacobian")


def problem(dtype: torch.dtype = torch.float64) -> tuple[torch.nn.Module, TensorDataset]:
    """The seeded model and data every rank (and the single-process oracle) builds alike."""
    model = backlens.build_mlp([5, 7, 6, 3], "tanh", seed=0).to(dtype)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(200, 5, generator=g, dtype=dtype), torch.randn(200, 3, generator=g, dtype=dtype)
    return model, TensorDataset(x, y)


def collected(model: torch.nn.Module, loader: Any, **options: Any) -> dict[str, Any]:
    """Moments' statistics and fitted maps of block 2:4, as plain tensors."""
    block = Block(model, "2", "4")
    col = collect(model, block, loader, "both", show_progress=False, weighting="direction", **options)
    out: dict[str, Any] = {"n_samples": col.n_samples}
    for name in ("forward", "backward", "weighted"):
        m = getattr(col, name)
        out[name] = {"n": m.n, "mean_x": m.mean_x, "mean_y": m.mean_y, "cxx": m.cxx, "cxy": m.cxy}
        out[name]["cyy_diag"] = m.cyy_diag
        out[name]["n_eff"] = m.n_eff
    for method in METHODS:
        for direction in ("forward", "backward"):
            if method == "ridge-direction" and direction == "forward":
                continue
            out[f"{method}/{direction}"] = fit_method(method, block, col, direction).matrix.double()
    return out


def scored(model: torch.nn.Module, train: Any, test: Any) -> dict[str, float | None]:
    """compare's held-out errors and in-use figures, and linearity's scores, for block 2:4."""
    block = Block(model, "2", "4")
    rows = compare(model, block, train, test, ["ridge", "mean-jacobian"], "both", show_progress=False)
    out = {f"{r.method}/{r.direction} {k}": getattr(r, k) for r in rows for k in ("test_rel_error", "in_use")}
    (line,) = linearity(model, train, test, blocks=[block], show_progress=False)
    out.update({f"linearity {k}": v for k, v in line.score.as_dict().items()})
    return out


def _join(rank: int, world: int, init: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)


def ranks_worker(
    rank: int, world: int, init: str, out: str, shardings: dict[str, list[list[int]]], cases: list[str]
) -> None:
    """For each sharding, rank r streams the whole batches listed for it (unequal sizes); then for
    each case rank 1 differs from rank 0 and every rank records the error it raised (after one,
    the group still works: the ranks raised together, past the same collective)."""
    torch.set_num_threads(1)
    _join(rank, world, init)
    try:
        model, data = problem()
        for name, batches in shardings.items():
            mine = [list(range(b * BATCH, (b + 1) * BATCH)) for b in batches[rank]]
            torch.save(
                collected(model, DataLoader(data, batch_sampler=mine)), Path(out) / f"{name}.{rank}.pt"
            )
        mine = [list(range(b * BATCH, (b + 1) * BATCH)) for b in shardings["70-and-130-samples"][rank]]
        loader = DataLoader(data, batch_sampler=mine)
        torch.save(scored(model, loader, loader), Path(out) / f"scored.{rank}.pt")
        for case in cases:
            (Path(out) / f"{case}.{rank}.txt").write_text(_disagree(rank, case))
    finally:
        dist.destroy_process_group()


def _disagree(rank: int, case: str) -> str:
    try:
        if case == "moments shape":
            all_reduce_moments(Moments(3 + rank, 2).update(torch.randn(4, 3 + rank), torch.randn(4, 2)))
        else:
            model, data = problem(torch.float64 if rank == 0 or case != "dtype" else torch.float32)
            end = "4" if rank == 0 or case != "block" else "3"
            loader = DataLoader(data, batch_size=BATCH)
            collect(model, Block(model, "2", end), loader, "forward", show_progress=False)
    except BacklensError as error:
        return str(error)
    return "no error"


def launch(worker: Any, args: tuple[Any, ...], tmp: Path, world: int = 2, timeout: float = 60.0) -> None:
    """Run `worker(rank, world, init_file, tmp, *args)` on `world` spawned ranks; a rank still
    running after `timeout` seconds fails the test (a hang must not block the suite)."""
    init = tmp / "store"
    context = mp.start_processes(
        worker, (world, str(init), str(tmp), *args), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"ranks still running after {timeout} s: a hang")
