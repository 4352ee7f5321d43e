"""Resumable collection: what `collect` has streamed so far, written atomically every K batches,
and read back so that a killed run continues where its last checkpoint stood.

A checkpoint holds the raw float64 sums of every Moments (so the resumed stream is bit for bit
the uninterrupted one), the capped samples with their generators' states, the probes'
generator, the number of batches done, and a fingerprint of the run: the model's parameter
and buffer shapes and a hash of their values, collect's options, the process-group layout,
and a chained hash of every batch consumed. Resuming checks model and options before any
batch, then re-reads (without computing) the batches already done and checks their hash: a
resume against a different run is refused, naming what changed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import fail
from ..linear.moments import Moments
from ..tensorfile import load_tensors, save_tensors

if TYPE_CHECKING:
    from .collect import Streams
    from .reservoir import Reservoir

__all__ = ["Checkpointer", "model_fingerprint", "checkpoint_path", "KIND"]

KIND = "backlens.CollectCheckpoint"


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """Parameter and buffer shapes by name, and one SHA-256 of all their values."""
    digest = hashlib.sha256()
    shapes = {}
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        shapes[name] = [*tensor.shape]
        digest.update(name.encode())
        _hash_tensor(digest, tensor)
    return {"model parameter shapes": shapes, "model values": digest.hexdigest()}


def _hash_tensor(digest: Any, tensor: torch.Tensor) -> None:
    data = tensor.detach().cpu().contiguous()
    digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())


def _hash_batch(digest: Any, batch: Any) -> None:
    """Tensors by their bytes, containers element by element, anything else by repr."""
    if isinstance(batch, torch.Tensor):
        _hash_tensor(digest, batch)
    elif isinstance(batch, dict):
        for key in sorted(batch, key=repr):
            digest.update(repr(key).encode())
            _hash_batch(digest, batch[key])
    elif isinstance(batch, (list, tuple)):
        digest.update(f"{type(batch).__name__}{len(batch)}".encode())
        for item in batch:
            _hash_batch(digest, item)
    else:
        digest.update(repr(batch).encode())


def _reservoir_tensors(prefix: str, reservoir: Reservoir) -> dict[str, torch.Tensor]:
    rows = torch.stack(reservoir.rows) if reservoir.rows else torch.zeros(0, 0, dtype=torch.float64)
    return {f"{prefix}.rows": rows, f"{prefix}.rng": reservoir.rng_state()}


def _load_reservoir(prefix: str, reservoir: Reservoir, tensors: dict[str, torch.Tensor], seen: int) -> None:
    reservoir.rows = list(tensors[f"{prefix}.rows"])
    reservoir.seen = seen
    reservoir.set_rng_state(tensors[f"{prefix}.rng"])


@dataclass
class Checkpointer:
    """The checkpoint of one collect call: where, how often, and the run it belongs to."""

    path: Path
    every: int
    fingerprint: dict[str, Any]
    data_hash: str = ""
    batches: int = 0
    expected: tuple[int, str] = (0, "")  # batches and data hash of the checkpoint resumed

    def see(self, batch: Any) -> None:
        """Chain one more batch into the data hash."""
        digest = hashlib.sha256(self.data_hash.encode())
        _hash_batch(digest, batch)
        self.data_hash, self.batches = digest.hexdigest(), self.batches + 1

    def due(self) -> bool:
        return self.batches % self.every == 0

    def save(self, streams: Streams, draws: torch.Generator) -> Path:
        """Write everything streamed so far (atomically: a kill leaves the previous checkpoint)."""
        tensors: dict[str, torch.Tensor] = {"draws.rng": draws.get_state()}
        moments = {}
        for direction, m in streams.moments.items():
            tensors.update({f"moments.{direction}.{k}": v for k, v in m.state().items()})
            moments[direction] = [m.d_in, m.d_out, m.yy_mode]
        tensors.update(_reservoir_tensors("inputs", streams.inputs))
        for direction, reservoir in streams.samples.items():
            tensors.update(_reservoir_tensors(f"samples.{direction}", reservoir))
        meta = {
            "fingerprint": self.fingerprint,
            "data": self.data_hash,
            "batches": self.batches,
            "moments": moments,
            "widths": streams.widths,
            "seen": {"inputs": streams.inputs.seen, **{d: r.seen for d, r in streams.samples.items()}},
            "n_samples": streams.n_samples,
            "positions": streams.positions,
            "shapes": streams.shapes,
            "dtype": streams.dtype,
        }
        return save_tensors(self.path, tensors, KIND, meta)

    def resume(self, streams: Streams, draws: torch.Generator) -> int:
        """Load the checkpoint into `streams` (none yet: 0); the batches it covers."""
        if not self.path.exists():
            return 0
        tensors, meta = load_tensors(self.path, KIND)
        self._check_fingerprint(meta.get("fingerprint", {}))
        try:
            for direction, (d_in, d_out, yy) in meta["moments"].items():
                prefix = f"moments.{direction}."
                state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
                streams.moments[direction] = Moments.from_state(d_in, d_out, yy, state)
            streams.widths = {d: (int(a), int(b)) for d, (a, b) in meta["widths"].items()}
            _load_reservoir("inputs", streams.inputs, tensors, meta["seen"]["inputs"])
            for direction, reservoir in streams.samples.items():
                _load_reservoir(f"samples.{direction}", reservoir, tensors, meta["seen"][direction])
            draws.set_state(tensors["draws.rng"])
            streams.n_samples, streams.positions = int(meta["n_samples"]), meta["positions"]
            streams.shapes = (tuple(meta["shapes"][0]), tuple(meta["shapes"][1]))
            streams.dtype = meta["dtype"]
            self.expected = (int(meta["batches"]), str(meta["data"]))
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise fail(
                "checkpoint", "a complete collect checkpoint", f"{self.path}: {err!r}", "delete it and rerun"
            ) from None
        return self.expected[0]

    def _check_fingerprint(self, stored: dict[str, Any]) -> None:
        changed = [key for key in self.fingerprint if stored.get(key) != self.fingerprint[key]]
        if changed:
            detail = "; ".join(_change(key, stored.get(key), self.fingerprint[key]) for key in changed)
            raise fail(
                "checkpoint",
                "a checkpoint of this run (same model, data and options)",
                f"{self.path} from another run: {detail}",
                "resume the run it belongs to, or delete it to start afresh",
            )

    def check_data(self) -> None:
        """After re-reading the batches a resumed checkpoint covers: the same batches?"""
        batches, data = self.expected
        if self.batches < batches:
            got = f"the loader now ends after {self.batches} batches; the checkpoint covers {batches}"
        elif self.data_hash != data:
            got = f"the data changed: the first {batches} batches differ from those checkpointed"
        else:
            return
        raise fail(
            "checkpoint",
            "a checkpoint of this run (same model, data and options)",
            f"{self.path}: {got}",
            "resume with the same data in the same order, or delete the checkpoint",
        )


def _change(key: str, before: Any, now: Any) -> str:
    if isinstance(before, dict) and isinstance(now, dict):
        keys = [k for k in dict.fromkeys([*before, *now]) if before.get(k) != now.get(k)]
        shown = ", ".join(f"{k}: {before.get(k)!r} → {now.get(k)!r}" for k in keys[:4])
        return f"{key} changed ({shown})"
    if key == "model values":
        return "model values changed (same shapes, other weights)"
    return f"{key} changed ({before!r} → {now!r})"


def checkpoint_path(path: str | os.PathLike[str], placed: tuple[int, int] | None) -> Path:
    """Each rank of a process group keeps its own checkpoint: `<stem>.rank<r>-of-<world><suffix>`."""
    target = Path(path)
    if placed is None:
        return target
    return target.with_name(f"{target.stem}.rank{placed[0]}-of-{placed[1]}{target.suffix}")
