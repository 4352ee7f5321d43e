"""An exception from on_record never corrupts the record or hides the body's own exception."""

import pytest
import torch
from torch import nn

import backlens


class Boom(Exception):
    pass


def mlp() -> nn.Sequential:
    return backlens.build_mlp([3, 4, 4, 1], "tanh", seed=0)


def raising_on(name: str, seen: list):
    def on_record(call) -> None:
        seen.append(call)
        if call.module == name:
            raise Boom(name)

    return on_record


@pytest.mark.parametrize("failing", ["4", "2", "0"])  # the first, a middle, the last call to complete
def test_error_during_backward_keeps_every_call_s_gradients(failing: str) -> None:
    model, x = mlp(), torch.randn(5, 3)
    seen: list = []
    with backlens.trace(model, select=[nn.Linear], on_record=raising_on(failing, seen)) as rec:
        with pytest.raises(Boom):
            model(x).sum().backward()
    assert sorted(c.module for c in seen) == ["0", "2", "4"]  # each call reported once
    for name in ("0", "2", "4"):  # and each kept the backward that reached it
        assert rec[name].grad_output is not None, name
    assert rec["2"].grad_input is not None and rec["4"].grad_input is not None  # x needs no grad
    autograd = torch.autograd.grad(model(x).sum(), model[2].weight)[0]
    expected = rec["2"].grad_output.T @ rec["2"].input
    torch.testing.assert_close(expected, autograd, rtol=1e-5, atol=1e-6)


def test_error_on_exit_does_not_replace_the_body_s_exception() -> None:
    model = mlp()
    seen: list = []
    with pytest.raises(KeyError) as caught:
        with backlens.trace(model, select=[nn.Linear], on_record=raising_on("0", seen)):
            out = model(torch.randn(2, 3))  # no backward: the calls complete on exit
            raise KeyError("the body's own")
    assert "the body's own" in str(caught.value)
    assert any("on_record raised on exit too" in note for note in caught.value.__notes__)
    assert sorted(c.module for c in seen) == ["0", "2", "4"] and out is not None


@pytest.mark.parametrize("keep_graph", [True, False])  # completed on exit, or when the graph is freed
def test_error_on_exit_without_a_body_error_is_raised_and_hooks_are_gone(keep_graph: bool) -> None:
    model = mlp()
    with pytest.raises(Boom):
        with backlens.trace(model, select=[nn.Linear], on_record=raising_on("2", [])):
            out = model(torch.randn(2, 3))
            if not keep_graph:
                del out
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
