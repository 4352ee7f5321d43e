"""Stand-ins in use: exact maps leave the model unchanged; the backward cosine is measured right."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import backlens
from backlens.blocks import inuse
from backlens.blocks.block import Block
from backlens.byhand.losses import accuracy, binary_accuracy, mean_squared_error
from backlens.linear.linear_map import LinearMap


def linear_model() -> nn.Sequential:
    # identity activations: the block 2:4 is exactly linear, so its weights-only map is exact
    return backlens.build_mlp([4, 6, 5, 3], "identity", seed=0).double()


def exact_forward_map(model: nn.Sequential) -> LinearMap:
    W1, b1, W2, b2 = model[2].weight, model[2].bias, model[4].weight, model[4].bias
    return LinearMap((W2 @ W1).T.detach(), (b1 @ W2.T + b2).detach(), "exact")


def data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(
            torch.randn(20, 4, generator=g, dtype=torch.float64),
            torch.randn(20, 3, generator=g, dtype=torch.float64),
        ),
        batch_size=8,
    )


def test_exact_map_keeps_outputs_and_removes_hooks() -> None:
    model = linear_model()
    block = Block(model, "2", "4")
    x = torch.randn(7, 4, dtype=torch.float64)
    with inuse.replaced(model, block, exact_forward_map(model)):
        swapped = model(x)
    torch.testing.assert_close(swapped, model(x), rtol=1e-12, atol=1e-12)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert inuse.forward_metric(block, exact_forward_map(model), data(), mean_squared_error) == pytest.approx(
        inuse.forward_metric(block, None, data(), mean_squared_error), rel=1e-12
    )


def test_zero_map_changes_outputs() -> None:
    model = linear_model()
    block = Block(model, "2", "4")
    zero = LinearMap(torch.zeros(6, 3, dtype=torch.float64), method="zero")
    with inuse.replaced(model, block, zero):
        out = model(torch.randn(3, 4, dtype=torch.float64))
    assert torch.equal(out, torch.zeros(3, 3, dtype=torch.float64))


def test_backward_cosine_exact_map_is_one_and_wrong_map_is_less() -> None:
    model = linear_model()
    block = Block(model, "2", "4")
    loss = nn.functional.mse_loss
    exact_backward = exact_forward_map(model).transpose()  # grad_in = grad_out · (W2 W1)
    assert inuse.backward_cosine(block, exact_backward, data(), loss) == pytest.approx(1.0, abs=1e-12)
    flipped = LinearMap(-exact_backward.matrix, method="flipped")
    assert inuse.backward_cosine(block, flipped, data(), loss) == pytest.approx(-1.0, abs=1e-12)
    assert model[0].weight.grad is None


def test_backward_cosine_none_without_parameters_below() -> None:
    model = linear_model()
    block = Block(model, "0", "2")
    lm = LinearMap(torch.zeros(5, 4, dtype=torch.float64))
    assert inuse.backward_cosine(block, lm, data(), nn.functional.mse_loss) is None


def test_task_metrics_against_hand_counts() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.7], [-3.0, 1.0]])
    assert accuracy(logits, torch.tensor([0, 0, 1])) == pytest.approx(2 / 3)
    assert binary_accuracy(logits, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])) == pytest.approx(4 / 6)
    assert mean_squared_error(logits, torch.zeros(3, 2)) == pytest.approx(float((logits**2).mean()))
