"""How a trace keeps what it records: snapshots of forward values, gradients as autograd gave them."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from ..torch_private import lazy_clone, storage_id, version_counter

__all__ = ["Store"]


class Store:
    """Forward values are snapshots taken when recorded (a later in-place op would change them);
    gradients are kept as autograd gave them (it never writes into a gradient someone else holds),
    moved to the CPU for store="cpu". Snapshots of the last few tensors are reused: one module's
    output is usually the next one's input.

    On the CPU a snapshot is a copy-on-write clone where torch can make one (a plain contiguous
    tensor that spans its whole storage): it costs nothing unless the source is written to while
    the record holds it (an in-place activation), and then costs what `clone` costs. Elsewhere it
    is `clone()` (store="device") or a copy to the CPU (store="cpu").

    From CUDA, store="cpu" copies asynchronously into pinned memory: the copy is queued on the
    tensor's stream (so a later in-place op on that stream cannot overtake it) and an event
    marks its end; `settle()` waits for every copy still in flight, and the trace calls it
    before anything reads a record (indexing the trace, a finished call, closing). CPU tensors
    never take this path.
    """

    RECENT = 8

    def __init__(self, mode: str | None) -> None:
        self.mode = mode
        self._recent: OrderedDict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._in_flight: list[Any] = []  # CUDA events of copies to pinned memory not yet waited on

    def _to_host(self, t: torch.Tensor) -> torch.Tensor:
        """`t` copied to the CPU: from CUDA without blocking (pinned memory, settled later)."""
        if t.device.type != "cuda":
            return t.to("cpu", copy=True)
        host = torch.empty_like(t, device="cpu", pin_memory=True)
        stream = torch.cuda.current_stream(t.device)
        host.copy_(t, non_blocking=True)
        event = torch.cuda.Event()
        event.record(stream)
        self._in_flight.append(event)
        return host

    def settle(self) -> None:
        """Wait for every asynchronous copy: after this, every stored tensor holds its values."""
        for event in self._in_flight:
            event.synchronize()
        self._in_flight.clear()

    def _copy(self, t: torch.Tensor, storage_bytes: int = -1) -> torch.Tensor:
        t = t.detach()
        if t.device.type != "cpu":
            return self._to_host(t) if self.mode == "cpu" else t.clone()
        if lazy_clone is not None and _spans_its_storage(t, storage_bytes):
            try:
                return lazy_clone(t)
            except (RuntimeError, NotImplementedError):  # memory torch cannot share: clone below
                pass
        return t.clone()

    def value(self, t: torch.Tensor) -> torch.Tensor:
        """A snapshot of forward value `t`, detached."""
        if t.layout != torch.strided or t.is_inference() or t.is_meta:  # no storage or version
            return self._copy(t)
        # The cache holds the source, so its storage is not freed and reused meanwhile; a view
        # of it shares storage and version: compare the rest on a hit. (Not data_ptr(): it would
        # turn a copy-on-write source back into a copy.)
        storage = t.untyped_storage()
        key = (storage_id(storage), t.storage_offset(), version_counter(t))
        hit = self._recent.get(key)
        if hit is not None:
            source, copy = hit
            if (
                source.shape == t.shape
                and source.stride() == t.stride()
                and source.dtype == t.dtype
                and source.device == t.device
            ):
                self._recent.move_to_end(key)
                return copy
        copy = self._copy(t, storage.nbytes())
        self._recent[key] = (t.detach(), copy)  # keeps t's storage alive, not its graph
        self._recent.move_to_end(key)
        if len(self._recent) > self.RECENT:
            self._recent.popitem(last=False)
        return copy

    def grad(self, g: torch.Tensor) -> torch.Tensor:
        if self.mode != "cpu" or g.device.type == "cpu":
            return g.detach()
        return self._to_host(g.detach())

    def clear(self) -> None:
        self.settle()
        self._recent.clear()


def _spans_its_storage(t: torch.Tensor, storage_bytes: int) -> bool:
    """A plain tensor laid out exactly as `clone` would lay it out, over all of its storage
    (`storage_bytes` long, or -1 if not yet known)."""
    if type(t) is not torch.Tensor or not t.is_contiguous() or t.storage_offset() != 0:
        return False
    if storage_bytes < 0:
        storage_bytes = t.untyped_storage().nbytes()
    return storage_bytes == t.numel() * t.element_size() and not t.is_pinned()
