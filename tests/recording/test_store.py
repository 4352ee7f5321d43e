"""Recorded forward values are snapshots: writes to the source or the snapshot never cross."""

from collections.abc import Callable

import numpy as np
import pytest
import torch

from backlens.recording.store import Store

SOURCES: dict[str, Callable[[], torch.Tensor]] = {
    "contiguous": lambda: torch.randn(4, 6),  # copy-on-write on the CPU
    "transposed": lambda: torch.randn(6, 4).t(),
    "a slice of a larger tensor": lambda: torch.randn(4, 12)[:, 2:8],
    "a view at an offset": lambda: torch.randn(30)[6:].view(4, 6),
    "from numpy": lambda: torch.from_numpy(np.random.default_rng(0).standard_normal((4, 6))),
    "a parameter": lambda: torch.nn.Parameter(torch.randn(4, 6)),
    "zero-size": lambda: torch.randn(0, 6),
}


@pytest.mark.parametrize("mode", ["device", "cpu", None])
@pytest.mark.parametrize("make", SOURCES.values(), ids=SOURCES.keys())
def test_snapshot_keeps_its_value_and_layout(make: Callable[[], torch.Tensor], mode: str | None) -> None:
    source = make()
    before = source.detach().clone()
    snap = Store(mode).value(source)
    assert not snap.requires_grad and torch.equal(snap, before)
    assert snap.stride() == source.detach().clone().stride()
    with torch.no_grad():
        source.add_(1)  # the source changes in place: the snapshot does not
    assert torch.equal(snap, before)
    snap.mul_(0)  # the snapshot changes in place: the source does not
    assert torch.equal(source.detach(), before + 1)


def test_snapshots_reused_until_the_source_changes() -> None:
    store = Store("device")
    x = torch.randn(3, 5)
    first = store.value(x)
    assert store.value(x) is first
    assert store.value(x.view(15)) is not first  # same storage and version, another shape
    x.add_(1)
    second = store.value(x)
    assert second is not first and torch.equal(second, x) and not torch.equal(first, x)


@pytest.mark.parametrize("mode", ["device", "cpu", None])
def test_cpu_tensors_never_take_the_asynchronous_path(mode: str | None) -> None:
    # store="cpu" copies from CUDA into pinned memory without blocking; CPU tensors stay as before
    store = Store(mode)
    value, grad = torch.randn(3, 4), torch.randn(3, 4)
    snap, kept = store.value(value), store.grad(grad)
    assert store._in_flight == [] and not snap.is_pinned()
    assert kept.data_ptr() == grad.data_ptr()  # gradients as autograd gave them: no copy
    assert torch.equal(snap, value) and torch.equal(kept, grad)
    store.settle()
    assert torch.equal(snap, value)
