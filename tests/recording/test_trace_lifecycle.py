"""The trace owns its hooks and its memory: removed on exit, flat over a training loop, copies kept."""

import gc

import pytest
import torch
from test_trace import encoder_case  # the TransformerEncoderLayer case
from torch import nn
from torch.nn import functional as F

import backlens


def hook_counts(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._backward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def test_hooks_removed_on_exit_and_on_exception() -> None:
    model = backlens.build_mlp([3, 4, 1], "relu", seed=0)
    before = hook_counts(model)
    with backlens.trace(model):
        assert hook_counts(model) > before
        model(torch.randn(2, 3)).sum().backward()
    assert hook_counts(model) == before
    with pytest.raises(RuntimeError, match="boom"), backlens.trace(model):
        model(torch.randn(2, 3))
        raise RuntimeError("boom")
    assert hook_counts(model) == before


def test_outputs_identical_with_and_without_trace() -> None:
    model = backlens.build_mlp([3, 4, 1], "relu", seed=0)
    x = torch.randn(5, 3)
    plain = model(x)
    with backlens.trace(model):
        traced = model(x)
    assert torch.equal(plain, traced)


def live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_memory_flat_over_1000_steps_with_store_none() -> None:
    model = backlens.build_mlp([32, 64, 64, 10], "relu", seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 32), torch.randint(0, 10, (16,))
    stats = {"calls": 0, "sq": torch.zeros(())}

    def reduce(call: backlens.Call) -> None:
        stats["calls"] += 1
        stats["sq"] += call.grad_output.square().sum() + call.output.square().sum()

    with backlens.trace(model, store=None, on_record=reduce) as rec:
        for step in range(1000):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            if step == 99:
                tensors, rss = live_tensors(), rss_bytes()
        assert live_tensors() == tensors
        assert rss_bytes() - rss < 8 * 2**20
    assert stats["calls"] == 1000 * 5 and all(not r.calls for r in rec)


@pytest.mark.parametrize("store", ["cpu", "device"])
def test_stored_values_are_detached_copies(store: str) -> None:
    model = nn.Sequential(nn.Linear(3, 3))
    x = torch.randn(2, 3)
    with backlens.trace(model, store=store) as rec:
        out = model(x)
        out.sum().backward()
    x.add_(1)
    with torch.no_grad():
        out.mul_(0)
    assert not torch.equal(rec["0"].input, x) and bool(rec["0"].output.any())
    assert not rec["0"].output.requires_grad and rec["0"].output.device.type == "cpu"


def test_hooks_autograd_still_holds_do_nothing_after_exit() -> None:
    model = backlens.build_mlp([3, 4, 2], "relu", seed=0)
    seen: list[backlens.Call] = []
    with backlens.trace(model, on_record=seen.append) as rec:
        out = model(torch.randn(2, 3))
    assert len(seen) == 3 and all(c.grad_outputs is None for c in seen)  # reported on exit
    out.sum().backward()  # the graph still carries the trace's tensor and node hooks
    assert len(seen) == 3 and rec["0"].grad_output is None
    assert hook_counts(model) == 0


def test_graph_freed_without_backward_reports_the_call() -> None:
    model = backlens.build_mlp([3, 4, 2], "relu", seed=0)
    seen: list[backlens.Call] = []
    with backlens.trace(model, store=None, on_record=seen.append):
        out = model(torch.randn(2, 3))
        assert seen == []
        del out
        assert len(seen) == 3 and all(c.grad_outputs is None for c in seen)


def test_traces_nest_and_agree() -> None:
    model, names, run = encoder_case()
    with (
        backlens.trace(model, store="cpu") as outer,
        backlens.trace(model, select=names, store="device") as inner,
    ):
        run(model)
    assert hook_counts(model) == 0
    for name in names:
        a, b = outer[name].calls[0], inner[name].calls[0]
        for field in ("input", "output", "grad_input", "grad_output"):
            assert torch.equal(getattr(a, field), getattr(b, field))
