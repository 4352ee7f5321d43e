"""Hand-derived backprop against autograd: seed model and random MLPs, float64 to 1e-12."""

import pytest
import torch
from torch import nn

import backlens
from backlens.data import seed_loader, seed_regression


def autograd_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss = nn.functional.mse_loss(out, y.reshape(out.shape))
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def test_seed_model_matches_autograd_float64() -> None:
    x, y = seed_regression(128, seed=0, dtype=torch.float64)
    xb, yb = next(iter(seed_loader(x, y, batch_size=4, seed=0)))
    model = backlens.build_mlp([3, 2, 2, 1], "relu", seed=1).double()
    tape = backlens.backprop(model, xb, yb)
    loss, grads = autograd_grads(model, xb, yb)
    assert tape.loss.item() == pytest.approx(loss, rel=1e-12)
    assert set(tape.grads) == set(grads)
    for name, grad in grads.items():
        assert max_rel(tape.grads[name], grad) <= 1e-12, name


# (widths, batch): depths 1-5, widths 1-64
CASES = [
    ([3, 1], 4),
    ([5, 7, 2], 16),
    ([3, 2, 2, 1], 4),
    ([16, 64, 32, 8, 3], 32),
    ([8, 1, 8, 1, 8, 4], 9),
    ([64, 64, 64, 64, 64, 10], 64),
]


@pytest.mark.parametrize(("widths", "batch"), CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_random_mlps_match_autograd_float64(widths: list[int], batch: int, bias: bool) -> None:
    model = backlens.build_mlp(widths, "relu", bias=bias, seed=len(widths)).double()
    x = torch.randn(batch, widths[0], dtype=torch.float64)
    y = torch.randn(batch, widths[-1], dtype=torch.float64)
    tape = backlens.backprop(model, x, y)
    loss, grads = autograd_grads(model, x, y)
    assert tape.loss.item() == pytest.approx(loss, rel=1e-12)
    for name, grad in grads.items():
        # float64: 1e-12 relative to the largest entry (a few hundred ulps of accumulated sums)
        assert max_rel(tape.grads[name], grad) <= 1e-12, name
    # per-sample gradients sum to the batch gradient
    for name, per_sample in tape.per_sample_grads.items():
        assert max_rel(per_sample.sum(0), grads[name]) <= 1e-12, name


def test_delta_of_last_layer_is_mse_derivative() -> None:
    model = backlens.build_mlp([4, 3, 2], "relu", seed=0).double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    tape = backlens.backprop(model, x, y)
    torch.testing.assert_close(tape.layers[-1].delta, 2 / (5 * 2) * (tape.layers[-1].z - y), rtol=0, atol=1e-15)


BAD = [
    ("x", lambda m: (torch.randn(4, 5), torch.randn(4)), "x: expected shape"),
    ("x", lambda m: (torch.randint(0, 3, (4, 3)), torch.randn(4)), "floating-point"),
    ("y", lambda m: (torch.randn(4, 3), torch.randn(5)), "y: expected shape"),
    ("x", lambda m: (torch.full((4, 3), float("nan")), torch.randn(4)), "NaN"),
    ("y", lambda m: (torch.randn(4, 3), torch.tensor([1.0, float("inf"), 0, 0])), "Inf (first in row 1)"),
    ("x", lambda m: (torch.randn(0, 3), torch.randn(0)), "non-empty"),
    ("x", lambda m: ([[1.0, 2.0, 3.0]], torch.randn(1)), "torch.Tensor"),
]


@pytest.mark.parametrize(("argument", "make", "message"), BAD)
def test_bad_input_raises_clear_error(argument: str, make, message: str) -> None:
    model = backlens.build_mlp([3, 2, 2, 1], "relu", seed=0)
    x, y = make(model)
    with pytest.raises(backlens.BacklensError, match="Fix:") as info:
        backlens.backprop(model, x, y)
    assert message in str(info.value)
    assert argument in str(info.value)


def test_unsupported_module_is_named() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Conv1d(1, 1, 1))
    with pytest.raises(backlens.BacklensError, match="Conv1d at position 1"):
        backlens.backprop(model, torch.randn(2, 3), torch.randn(2, 2))
