"""The trace records what autograd computes, and owns its hooks."""

import pytest
import torch
from torch import nn

import backlens


def hook_counts(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


@pytest.mark.parametrize("widths", [[3, 2, 2, 1], [8, 16, 4], [5, 5, 5, 5, 2]])
def test_records_equal_autograd(widths: list[int]) -> None:
    model = backlens.build_mlp(widths, "relu", seed=0).double()
    x = torch.randn(6, widths[0], dtype=torch.float64)
    y = torch.randn(6, widths[-1], dtype=torch.float64)
    with backlens.trace(model, select=[nn.Linear]) as rec:
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert rec.names == linears
    for name in linears:
        layer = model.get_submodule(name)
        record = rec[name]
        # dW = grad_outputᵀ · input, exactly what autograd accumulates in .grad
        torch.testing.assert_close(record.grad_output.T @ record.input, layer.weight.grad, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(record.output, record.input @ layer.weight.T + layer.bias, rtol=1e-12, atol=1e-14)
    assert rec[linears[0]].grad_input is None  # x does not require grad
    for lower, upper in zip(linears[:-1], linears[1:]):
        # grad_input of a layer is grad_output · W, before the activation below masks it
        expected = rec[upper].grad_output @ model.get_submodule(upper).weight
        torch.testing.assert_close(rec[upper].grad_input, expected, rtol=1e-12, atol=1e-14)


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


def test_bad_selection_lists_close_names() -> None:
    model = backlens.build_mlp([3, 4, 1], "relu", seed=0)
    with pytest.raises(backlens.BacklensError, match="select"):
        backlens.trace(model, select=["9"])
    with pytest.raises(backlens.BacklensError, match="torch.nn.Module"):
        backlens.trace("not a model")  # type: ignore[arg-type]
