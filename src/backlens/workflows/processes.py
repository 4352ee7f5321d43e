"""What a workflow needs to run on many processes and to survive an interruption: joining the
process group torchrun describes, one model on every rank, and the run's checkpoint directory.

Checkpoints live beside the run directory, at `<out>.checkpoint/`, never inside it (a run
directory is written whole at the end, so nothing inside it survives an interruption); one
file per collection (and per rank), removed after the run succeeds.
"""

from __future__ import annotations

import atexit
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from torch import nn

from ..blocks.ranks import is_main_rank
from ..errors import check_positive_int, fail
from ..linear.distributed import world

__all__ = ["join_torchrun", "same_model", "Checkpoints", "rank_console"]


def join_torchrun() -> bool:
    """Join the process group when started by torchrun (WORLD_SIZE > 1 in the environment):
    nccl where CUDA is available, else gloo. True when this call initialised it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or world() is not None:
        return False
    if torch.cuda.is_available():  # one GPU per rank, as torchrun numbers them
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    atexit.register(dist.destroy_process_group)
    return True


def rank_console(console: Console) -> Console:
    """The console on rank 0 (or alone); a silent one on the other ranks (errors still print)."""
    return console if is_main_rank() else Console(quiet=True)


def same_model(model: nn.Module) -> None:
    """Every rank takes rank 0's parameters and buffers (training may differ in the last bits
    with the number of threads; the ranks must stream one model)."""
    if world() is None:
        return
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    with torch.no_grad():
        for tensor in model.state_dict().values():
            moved = tensor if device is None else tensor.to(device)
            dist.broadcast(moved, src=0)
            if moved is not tensor:
                tensor.copy_(moved)


class Checkpoints:
    """The run's checkpoint directory `<out>.checkpoint` (or none without --checkpoint-every)."""

    def __init__(self, out: str | None, every: int | None, resume: bool) -> None:
        self.every = every
        self.path: Path | None = None
        if every is None and not resume:
            return
        if out is None:
            argument = "checkpoint_every" if every is not None else "resume"
            raise fail(
                argument,
                "an out directory (the checkpoint sits beside it)",
                "out=None",
                "pass out=DIR (--out)",
            )
        self.every = check_positive_int("checkpoint_every", every if every is not None else 1)
        self.path = Path(f"{Path(out)}.checkpoint")
        if resume and not self.path.is_dir():
            raise fail("resume", f"a checkpoint at {self.path}", "none", "run without resume (--resume)")
        if not resume and self.path.exists():
            raise fail(
                "checkpoint_every",
                "no checkpoint of an interrupted run beside out",
                f"{self.path} exists",
                "pass resume=True (--resume) to continue that run, or delete it to start afresh",
            )

    def options(self, seed: int, block: str, split: str) -> dict[str, Any]:
        """collect's checkpoint options for one collection (none without checkpoints)."""
        if self.path is None:
            return {}
        name = f"seed{seed}_block{block.replace(':', '-')}_{split}.safetensors"
        return {"checkpoint": self.path / name, "every": self.every}

    def finish(self) -> None:
        """After a successful run: every rank is done with its checkpoints; rank 0 removes them."""
        if self.path is None:
            return
        if world() is not None:
            dist.barrier()
        if is_main_rank():
            shutil.rmtree(self.path, ignore_errors=True)
