"""Regressions: silently wrong numbers the oracle suite found in blocks, each pinned by a test."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from inuse_cases import (  # noqa: I001 (a helper module beside the tests)
    ATOL,
    DropBN,
    ResMLP,
    built,
    loader,
)
from torch import nn

from backlens import BacklensError, Block, collect, compare, mean_jacobian, weights_only
from backlens.blocks.inuse import backward_cosine


class ResidualSequential(nn.Sequential):
    """A Sequential subclass with its own forward: x + (its children in order)(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


def test_a_sequential_subclass_with_its_own_forward_is_not_read_as_a_chain() -> None:
    model = nn.Sequential(nn.Linear(3, 3), ResidualSequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3)))
    model = model.double()
    block, X = Block(model, "1"), torch.randn(10, 3, dtype=torch.float64)
    J = torch.stack([torch.autograd.functional.jacobian(model[1], x) for x in X]).mean(0)
    torch.testing.assert_close(mean_jacobian(block, X, "backward").matrix, J, rtol=0, atol=ATOL)
    assert not block.is_linear_chain()


class Indexed(nn.Module):
    """Holds a plain Sequential but calls its children itself, with a skip between them."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.seq[0](x)
        return self.seq[2](self.seq[1](h) + h)


def test_a_span_of_a_sequential_the_model_does_not_call_is_refused() -> None:
    # The span's dataflow is the Sequential's only if the model runs the Sequential: collect sees
    # on the recorded forward that it does not; mean_jacobian, without that record, refuses too.
    model = built(Indexed)
    block = Block(model, "seq.0", "seq.2")
    X = torch.randn(10, 3, dtype=torch.float64)
    with pytest.raises(BacklensError, match="the model calls 'seq.0' itself"):
        collect(model, block, loader(), show_progress=False)
    with pytest.raises(BacklensError, match="recorded call of span"):
        mean_jacobian(block, X, "backward")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def inplace_after() -> nn.Module:
    return built(
        lambda: nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    )


def test_an_inplace_op_after_the_block_leaves_its_pairs_intact() -> None:
    model, data = inplace_after(), loader()
    col = collect(model, Block(model, "1"), data, show_progress=False)
    x, y = (torch.cat(t) for t in zip(*data, strict=True))
    a_out = model[1](model[0](x))
    (g_out,) = torch.autograd.grad(F.mse_loss(model[3](F.relu(a_out[:6])), y[:6]), a_out, retain_graph=True)
    torch.testing.assert_close(col.pairs["forward"][1], a_out.detach(), rtol=0, atol=ATOL)
    torch.testing.assert_close(col.pairs["backward"][0][:6], g_out[:6], rtol=0, atol=ATOL)


def test_backward_map_in_use_survives_an_inplace_op_after_the_block() -> None:
    model = inplace_after()
    block = Block(model, "1")
    assert backward_cosine(block, weights_only(block, "backward"), loader(), F.mse_loss) == pytest.approx(1.0)


@pytest.mark.parametrize("direction", ["forward", "both"])
def test_an_inplace_entry_module_leaves_the_block_input_intact(direction: str) -> None:
    model = built(lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2)))
    data = loader()
    col = collect(model, Block(model, "1", "2"), data, direction=direction, show_progress=False)
    x = torch.cat([b[0] for b in data])
    torch.testing.assert_close(col.pairs["forward"][0], model[0](x).detach(), rtol=0, atol=ATOL)


def test_collect_in_training_mode_leaves_batchnorm_statistics_unchanged() -> None:
    model = built(DropBN).train()
    state = copy.deepcopy(model.state_dict())
    collect(model, Block(model, "block"), loader(), show_progress=False)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_exact_map_in_use_scores_exact_with_dropout_in_training_mode(direction: str) -> None:
    model = built(ResMLP, False, True, 0.5).train()  # Dropout upstream of the linear sub-block
    block, data = Block(model, "layers.0.mlp"), loader()
    exact = weights_only(block, direction)
    if direction == "backward":
        assert backward_cosine(block, exact, data, F.mse_loss) == pytest.approx(1.0, abs=1e-10)
    else:  # compare's intact row and the exact map's row must read the same
        rows = compare(model, block, data, data, ["weights-only"], "forward", show_progress=False)
        assert rows[1].in_use == pytest.approx(rows[0].in_use, rel=1e-10), rows
