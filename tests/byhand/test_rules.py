"""Activation and loss rules against autograd and torch.nn.functional, kinks and extremes."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from backlens import BacklensError
from backlens.byhand.losses import LOSS_NAMES, loss_rule
from backlens.byhand.rules import ActivationRule, activation_rule

# The oracle: torch's own loss functions, named here, not read from backlens' registry.
TORCH_LOSSES = {
    "mse": F.mse_loss,
    "ce": F.cross_entropy,
    "bce": F.binary_cross_entropy_with_logits,
}

DTYPES = [torch.float32, torch.float64]
# float64: a few ulps; float32: a few ulps of unit-scale values
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}

MODULES = [
    ("relu", nn.ReLU()),
    ("relu", nn.ReLU(inplace=True)),
    ("leaky_relu(0.01)", nn.LeakyReLU()),
    ("leaky_relu(0.3)", nn.LeakyReLU(0.3)),
    ("leaky_relu(-1.5)", nn.LeakyReLU(-1.5)),
    ("tanh", nn.Tanh()),
    ("sigmoid", nn.Sigmoid()),
    ("gelu", nn.GELU()),
    ("gelu_tanh", nn.GELU(approximate="tanh")),
    ("elu(1)", nn.ELU()),
    ("elu(0.5)", nn.ELU(alpha=0.5)),
    ("elu(2.5)", nn.ELU(alpha=2.5)),
    ("identity", nn.Identity()),
    ("dropout(eval)", nn.Dropout(0.5).eval()),
]


def grid(dtype: torch.dtype) -> torch.Tensor:
    """Kinks (0, ±tiny), unit-scale values and saturating extremes, as a (batch, features) block."""
    special = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 30.0, -30.0, 80.0, -80.0], dtype=dtype)
    values = torch.cat([special, torch.linspace(-6, 6, 190, dtype=dtype)])
    return values.reshape(20, 10)


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "module"), MODULES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(MODULES)])
def test_activation_forward_and_derivative_match_autograd(
    name: str, module: nn.Module, dtype: torch.dtype
) -> None:
    rule = activation_rule(module)
    assert isinstance(rule, ActivationRule) and rule.name == name
    z = grid(dtype)
    leaf = z.clone().requires_grad_(True)
    out = module(leaf.clone())  # clone: in-place modules may not modify a leaf
    (derivative,) = torch.autograd.grad(out, leaf, torch.ones_like(out))
    assert max_rel(rule.forward(z), out.detach()) <= RTOL[dtype]
    assert max_rel(rule.derivative(z), derivative) <= RTOL[dtype]
    assert rule.derivative(z).shape == z.shape and rule.derivative(z).dtype == dtype


@pytest.mark.parametrize(
    ("module", "derivative_at_zero"),
    [
        (nn.ReLU(), 0.0),
        (nn.LeakyReLU(0.2), 0.2),
        (nn.ELU(alpha=0.5), 0.5),
    ],
)
def test_kinks_take_autograds_value(module: nn.Module, derivative_at_zero: float) -> None:
    rule = activation_rule(module)
    assert rule is not None
    assert float(rule.derivative(torch.zeros(1, 1, dtype=torch.float64))) == derivative_at_zero


class MyReLU(nn.ReLU):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * 2


@pytest.mark.parametrize(
    "module",
    [
        nn.Dropout(0.5).train(),
        nn.Softmax(dim=1),
        nn.Conv1d(1, 1, 1),
        nn.BatchNorm1d(3),
        MyReLU(),
        nn.Linear(2, 2),
    ],
)
def test_modules_without_an_elementwise_rule_get_none(module: nn.Module) -> None:
    assert activation_rule(module) is None


def make_target(loss: str, n: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    if loss == "ce":
        return torch.randint(0, k, (n,))
    if loss == "bce":
        return torch.rand(n, k, dtype=dtype)
    return torch.randn(n, k, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", LOSS_NAMES)
@pytest.mark.parametrize(("n", "k", "scale"), [(1, 1, 1.0), (7, 3, 1.0), (16, 10, 30.0), (5, 1, 100.0)])
def test_loss_value_and_gradient_match_torch(
    loss: str, reduction: str, dtype: torch.dtype, n: int, k: int, scale: float
) -> None:
    rule = loss_rule(loss, reduction)
    z = torch.randn(n, k, dtype=dtype) * scale  # scale: large logits test the stable forms
    y = rule.target(make_target(loss, n, k, dtype), (n, k), dtype)
    leaf = z.clone().requires_grad_(True)
    value = TORCH_LOSSES[loss](leaf, y, reduction=reduction)
    (gradient,) = torch.autograd.grad(value, leaf)
    assert max_rel(rule.value(z, y), value.detach()) <= RTOL[dtype] * 10
    assert max_rel(rule.gradient(z, y), gradient) <= RTOL[dtype] * 10


def test_mse_gradient_is_the_notebooks_two_over_b() -> None:
    z, y = torch.randn(4, 1, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    torch.testing.assert_close(loss_rule("mse").gradient(z, y), 2 / 4 * (z - y), rtol=0, atol=0)


def test_ce_gradient_is_softmax_minus_onehot() -> None:
    z = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([1])
    torch.testing.assert_close(
        loss_rule("ce", "sum").gradient(z, y), torch.tensor([[0.5, -0.5]], dtype=torch.float64)
    )
    torch.testing.assert_close(F.cross_entropy(z, y), loss_rule("ce").value(z, y))


BAD_TARGETS = [
    ("mse", torch.randint(0, 3, (4, 2)), "floating-point targets for loss 'mse'"),
    ("mse", torch.randn(4, 3), "shape (4, 2) for loss 'mse'"),
    ("ce", torch.randn(4), "int64 class indices of shape (4,) with values 0..1"),
    ("ce", torch.zeros(4, 1, dtype=torch.long), "y.squeeze(1)"),
    ("ce", torch.tensor([0, 1, 2, 1]), "labels from 0 to 2"),
    ("ce", torch.tensor([0, -1, 1, 1]), "labels from -1 to 1"),
    ("bce", torch.tensor([[0, 1]] * 4), "floating-point targets for loss 'bce'"),
    ("bce", torch.full((4, 2), 2.0), "values in [0, 1] for loss 'bce'"),
    ("bce", torch.rand(4), "shape (4, 2) for loss 'bce'"),
]


@pytest.mark.parametrize(("loss", "y", "message"), BAD_TARGETS)
def test_targets_that_do_not_fit_the_loss_say_what_it_expects(
    loss: str, y: torch.Tensor, message: str
) -> None:
    with pytest.raises(BacklensError, match="Fix:") as info:
        loss_rule(loss).target(y, (4, 2), torch.float32)
    assert message in str(info.value)
    assert str(info.value).startswith("y: expected")


def test_one_column_targets_may_be_one_dimensional() -> None:
    y = loss_rule("mse").target(torch.randn(5, dtype=torch.float64), (5, 1), torch.float32)
    assert y.shape == (5, 1) and y.dtype == torch.float32


@pytest.mark.parametrize(
    ("loss", "reduction", "message"),
    [
        ("cross_entropy", "mean", "loss: expected one of 'mse', 'ce', 'bce'"),
        ("mse", "none", "reduction: expected one of 'mean', 'sum'"),
    ],
)
def test_unknown_loss_or_reduction(loss: str, reduction: str, message: str) -> None:
    with pytest.raises(BacklensError, match="Fix:") as info:
        loss_rule(loss, reduction)
    assert message in str(info.value)
