"""Hand-derived backprop against autograd: seed model, tables of models, any MLP (hypothesis)."""

import pytest
import torch
from hypothesis import given, settings
from torch import nn
from torch.nn import functional as F

import backlens
from backlens.byhand.check import tolerance
from backlens.workflows.seed_data import seed_loader, seed_regression
from strategies import mlp_case, rel_err

# The oracle: torch's own loss functions, named here, not read from backlens' registry.
TORCH_LOSSES = {
    "mse": F.mse_loss,
    "ce": F.cross_entropy,
    "bce": F.binary_cross_entropy_with_logits,
}


def autograd_grads(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, dict[str, torch.Tensor]]:
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
    torch.testing.assert_close(
        tape.layers[-1].delta, 2 / (5 * 2) * (tape.layers[-1].z - y), rtol=0, atol=1e-15
    )


BAD = [
    ("x", lambda m: (torch.randn(4, 5), torch.randn(4)), "x: expected shape"),
    ("x", lambda m: (torch.randint(0, 3, (4, 3)), torch.randn(4)), "floating-point"),
    ("y", lambda m: (torch.randn(4, 3), torch.randn(5)), "y: expected shape"),
    ("x", lambda m: (torch.full((4, 3), float("nan")), torch.randn(4)), "NaN"),
    (
        "y",
        lambda m: (torch.randn(4, 3), torch.tensor([1.0, float("inf"), 0, 0])),
        "Inf (first in row 1)",
    ),
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


# --- any depth, every activation, every loss: hand == autograd (hypothesis) ---


@settings(max_examples=120, deadline=None)
@given(mlp_case())
def test_property_hand_equals_autograd(
    case: tuple[nn.Sequential, torch.Tensor, torch.Tensor, str, str],
) -> None:
    model, x, y, loss, reduction = case
    tol = tolerance(x.dtype)
    tape = backlens.backprop(model, x, y, loss=loss, reduction=reduction)
    model.zero_grad(set_to_none=True)
    out = model(x)
    target = y.reshape(out.shape) if loss != "ce" else y
    value = TORCH_LOSSES[loss](out, target, reduction=reduction)
    value.backward()
    assert rel_err(tape.loss, value.detach()) <= tol
    assert rel_err(tape.output, out.detach()) <= tol
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert list(tape.grads) == list(grads)  # same names, same order
    for name, grad in grads.items():
        assert tape.grads[name].shape == grad.shape and tape.grads[name].dtype == x.dtype
        assert rel_err(tape.grads[name], grad) <= tol, name
        per_sample = tape.per_sample_grads[name]
        assert per_sample.shape == (len(x), *grad.shape)
        assert rel_err(per_sample.sum(0), grad) <= tol, name


# --- what the model may contain ---


def grads_of(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse"
) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    TORCH_LOSSES[loss](out, y.reshape(out.shape) if loss != "ce" else y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


MODELS = [
    (
        "nested",
        lambda: nn.Sequential(
            nn.Sequential(nn.Linear(12, 8), nn.Tanh()),
            nn.Sequential(nn.Sequential(nn.Linear(8, 5)), nn.GELU()),
            nn.Linear(5, 3),
        ),
        (6, 12),
        ["0.0", "1.0.0", "2"],
    ),
    (
        "flatten first",
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 3)),
        (6, 3, 2, 2),
        ["1", "3"],
    ),
    (
        "flatten between",
        lambda: nn.Sequential(nn.Linear(12, 4), nn.Flatten(), nn.Sigmoid(), nn.Linear(4, 3)),
        (6, 12),
        ["0", "3"],
    ),
    (
        "dropout eval",
        lambda: nn.Sequential(
            nn.Linear(12, 6), nn.Dropout(0.5), nn.ELU(0.7), nn.Dropout(0.2), nn.Linear(6, 3)
        ).eval(),
        (6, 12),
        ["0", "4"],
    ),
    (
        "two activations",
        lambda: nn.Sequential(nn.Linear(12, 6), nn.Tanh(), nn.LeakyReLU(0.1), nn.Linear(6, 3)),
        (6, 12),
        ["0", "3"],
    ),
    (
        "activation first",
        lambda: nn.Sequential(nn.Sigmoid(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3)),
        (6, 12),
        ["1", "3"],
    ),
    (
        "shared activation",
        lambda: (lambda r: nn.Sequential(nn.Linear(12, 6), r, nn.Linear(6, 6), r, nn.Linear(6, 3)))(
            nn.Tanh()
        ),
        (6, 12),
        ["0", "2", "4"],
    ),
    (
        "no bias",
        lambda: nn.Sequential(nn.Linear(12, 6, bias=False), nn.GELU("tanh"), nn.Linear(6, 3)),
        (6, 12),
        ["0", "2"],
    ),
    (
        "activation last",
        lambda: nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3), nn.Sigmoid()),
        (6, 12),
        ["0", "2"],
    ),
    ("one layer", lambda: nn.Sequential(nn.Linear(12, 3)), (6, 12), ["0"]),
]


@pytest.mark.parametrize(("label", "make", "x_shape", "names"), MODELS, ids=[m[0] for m in MODELS])
def test_supported_models_match_autograd(
    label: str, make, x_shape: tuple[int, ...], names: list[str]
) -> None:
    model = make().double()
    x = torch.randn(*x_shape, dtype=torch.float64)
    y = torch.randn(x_shape[0], 3, dtype=torch.float64)
    tape = backlens.backprop(model, x, y)
    assert [layer.name for layer in tape.layers] == names
    grads = grads_of(model, x, y)
    assert list(tape.grads) == list(grads)
    for name, grad in grads.items():
        assert rel_err(tape.grads[name], grad) <= 1e-12, name
    assert rel_err(tape.output, model(x).detach()) <= 1e-12


def test_layer_tape_holds_every_intermediate() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 2, (5,))
    tape = backlens.backprop(model, x, y, loss="ce", reduction="sum")
    first, last = tape.layers
    assert (first.name, first.activation, last.activation, last.act_derivative) == (
        "0",
        "tanh",
        None,
        None,
    )
    torch.testing.assert_close(first.a, x)
    torch.testing.assert_close(first.z, x @ model[0].weight.T + model[0].bias)
    torch.testing.assert_close(first.act_derivative, 1 - torch.tanh(first.z) ** 2)
    torch.testing.assert_close(last.a, torch.tanh(first.z))
    torch.testing.assert_close(last.delta, torch.softmax(last.z, 1) - nn.functional.one_hot(y, 2))
    torch.testing.assert_close(first.delta, (last.delta @ model[2].weight) * first.act_derivative)
    assert (tape.loss_name, tape.reduction) == ("ce", "sum")


def test_backprop_leaves_the_model_alone() -> None:
    model = backlens.build_mlp([3, 4, 2], "relu", seed=0)
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    backlens.backprop(model, torch.randn(5, 3), torch.randn(5, 2))
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])
    assert torch.equal(model[0].weight.grad, torch.ones(4, 3)) and model[2].weight.grad is None


# --- bad input ---


class Custom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


UNSUPPORTED = [
    (
        nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Conv2d(1, 1, 1)),
        "Conv2d at position 2 (name '2')",
    ),
    (
        nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)),
        "BatchNorm1d at position 1 (name '1') in training mode",
    ),
    (
        nn.Sequential(nn.Sequential(nn.Linear(3, 4), Custom()), nn.Linear(4, 2)),
        "Custom at position 1 (name '0.1')",
    ),
    (nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1), nn.Linear(4, 2)), "Softmax at position 1"),
    (Custom(), "Custom at position 0 (the model itself)"),
]


@pytest.mark.parametrize(("model", "message"), UNSUPPORTED)
def test_unsupported_modules_are_named_with_position_and_supported_list(
    model: nn.Module, message: str
) -> None:
    with pytest.raises(backlens.BacklensError, match="Fix:") as info:
        backlens.backprop(model, torch.randn(2, 3), torch.randn(2, 2))
    text = str(info.value)
    assert message in text
    assert "ReLU, LeakyReLU, Tanh, Sigmoid, GELU" in text  # the supported list


MISUSE = [
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.Dropout(), nn.Linear(4, 2)), "call model.eval()"),
    (
        lambda: (lambda lin: nn.Sequential(nn.Linear(3, 4), lin, nn.ReLU(), lin))(nn.Linear(4, 4)),
        "each Linear layer used once",
    ),
    (
        lambda: nn.Sequential(nn.Flatten(0), nn.Linear(3, 2)),
        "Flatten(start_dim=0, end_dim=-1) at position 0",
    ),
    (lambda: nn.Sequential(nn.ReLU()), "at least one nn.Linear"),
    (lambda: nn.Sequential(nn.Linear(3, 2)).half(), "float32 or float64 parameters"),
]


@pytest.mark.parametrize(("make", "message"), MISUSE)
def test_misused_models_get_a_clear_error(make, message: str) -> None:
    with pytest.raises(backlens.BacklensError, match="Fix:") as info:
        backlens.backprop(make(), torch.randn(2, 3), torch.randn(2, 2))
    assert message in str(info.value)


BAD_DATA = [
    (
        "mse",
        torch.randn(4, 3, dtype=torch.float64),
        torch.randn(4, 2),
        "x: expected dtype torch.float32",
    ),
    (
        "mse",
        torch.randn(4, 3),
        torch.randn(4, 2).long(),
        "y: expected floating-point targets for loss 'mse'",
    ),
    ("ce", torch.randn(4, 3), torch.randn(4), "y: expected int64 class indices of shape (4,)"),
    ("ce", torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), "labels from 0 to 2"),
    (
        "bce",
        torch.randn(4, 3),
        torch.randn(4, 2) + 5,
        "y: expected values in [0, 1] for loss 'bce'",
    ),
    ("bce", torch.randn(4, 3), torch.rand(4, 3), "y: expected shape (4, 2)"),
    (
        "ce",
        torch.randn(4, 3),
        torch.tensor([0, 1, 1, 0])[:0],
        "y: expected int64 class indices of shape (4,)",
    ),
    (
        "mse",
        torch.randn(4, 3),
        torch.tensor([[0.0, float("nan")]] * 4),
        "y: expected finite values, got NaN",
    ),
    (
        "mse",
        torch.tensor([[0.0, 1.0, float("-inf")]] * 4),
        torch.randn(4, 2),
        "x: expected finite values, got Inf",
    ),
    ("ce", torch.randn(0, 3), torch.zeros(0, dtype=torch.long), "x: expected a non-empty batch"),
    ("mse", torch.randn(3), torch.randn(3, 2), "x: expected a 2-D tensor"),
]


@pytest.mark.parametrize(("loss", "x", "y", "message"), BAD_DATA)
def test_data_that_does_not_fit_gets_a_clear_error(
    loss: str, x: torch.Tensor, y: torch.Tensor, message: str
) -> None:
    model = backlens.build_mlp([3, 4, 2], "tanh", seed=0)
    with pytest.raises(backlens.BacklensError, match="Fix:") as info:
        backlens.backprop(model, x, y, loss=loss)
    assert message in str(info.value)


def test_flatten_model_checks_features_per_sample() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(backlens.BacklensError, match="12 features per sample"):
        backlens.backprop(model, torch.randn(4, 5, 2), torch.randn(4, 2))
