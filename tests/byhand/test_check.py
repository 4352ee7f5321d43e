"""check: hand engine vs autograd, trace and torch.func; passes on right math, fails on wrong."""

import dataclasses
import importlib

import pytest
import torch
from hypothesis import given, settings
from torch import nn

import backlens
from backlens.byhand.check import TOLERANCES, compare, tolerance
from backlens.byhand.losses import LOSSES
from backlens.byhand.rules import ACTIVATION_RULES, ActivationRule, gelu_derivative, relu
from strategies import mlp_case

# the modules, not the functions of the same name that backlens exports
backprop_module = importlib.import_module("backlens.byhand.engine")
check_module = importlib.import_module("backlens.byhand.check")

CASES = [
    ([3, 2, 2, 1], "relu", "mse", "mean", torch.float32),
    ([64, 32, 10], "tanh", "ce", "mean", torch.float64),
    ([10, 16, 16, 1], "gelu", "mse", "sum", torch.float64),
    ([8, 5, 4], "sigmoid", "bce", "mean", torch.float32),
    ([8, 5, 5, 5, 5, 4], "elu", "ce", "sum", torch.float32),
    ([8, 6, 3], "gelu_tanh", "bce", "sum", torch.float64),
    ([8, 6, 3], "leaky_relu", "ce", "mean", torch.float32),
    ([8, 6, 3], "identity", "mse", "mean", torch.float64),
]


def data_for(loss: str, n: int, d: int, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, d, dtype=dtype)
    if loss == "ce":
        return x, torch.randint(0, k, (n,))
    return x, torch.rand(n, k, dtype=dtype) if loss == "bce" else torch.randn(n, k, dtype=dtype)


@pytest.mark.parametrize(("widths", "activation", "loss", "reduction", "dtype"), CASES)
def test_check_passes_on_correct_math(widths, activation, loss, reduction, dtype) -> None:
    model = backlens.build_mlp(widths, activation, seed=1).to(dtype)
    x, y = data_for(loss, 16, widths[0], widths[-1], dtype)
    report = backlens.check(model, x, y, loss=loss, reduction=reduction)
    assert report.ok, str(report)
    names = [f"{2 * i}" for i in range(len(widths) - 1)]
    quantities = {(r.layer, r.quantity) for r in report.rows}
    for name in names:
        for quantity in (
            "a (input)",
            "z (output)",
            "δ = dL/dz",
            "dW",
            "db",
            "dW per sample",
            "db per sample",
        ):
            assert (name, quantity) in quantities
    assert ("model", "loss") in quantities
    assert all(r.tol == TOLERANCES[dtype] for r in report.rows)
    assert report.rows[0].quantity == "loss"
    assert [r.layer for r in report.rows[1:]] == sorted((r.layer for r in report.rows[1:]), key=int)
    assert report.tape.loss_name == loss and report.dtype == dtype


def test_report_prints_a_table() -> None:
    model = backlens.build_mlp([3, 2, 2, 1], "relu", seed=0)
    report = backlens.check(model, torch.randn(4, 3), torch.randn(4))
    text = str(report)
    for word in (
        "layer",
        "quantity",
        "against",
        "rel err",
        "δ = dL/dz",
        "torch.func",
        "pass",
        "mse (mean)",
    ):
        assert word in text
    assert "FAIL" not in text


def test_check_leaves_parameters_grads_and_hooks_as_they_were() -> None:
    model = backlens.build_mlp([4, 5, 3], "relu", seed=0)
    model[0].weight.grad = torch.full_like(model[0].weight, 7.0)
    model[2].weight.requires_grad_(False)  # frozen: still checked, still frozen afterwards
    calls: list[str] = []
    model[0].register_forward_hook(lambda m, i, o: calls.append("forward"))
    model[0].register_full_backward_hook(lambda m, gi, go: calls.append("backward"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = backlens.check(model, torch.randn(6, 4), torch.randn(6, 3))
    assert report.ok
    assert ("2", "dW") in {(r.layer, r.quantity) for r in report.rows}
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])
    assert torch.equal(model[0].weight.grad, torch.full((5, 4), 7.0))
    assert model[0].bias.grad is None and model[2].weight.grad is None
    assert not model[2].weight.requires_grad
    assert calls == []  # the user's hooks did not fire on the copies
    assert len(model[0]._forward_hooks) == 1 and len(model[0]._backward_hooks) == 1


def test_check_handles_inplace_activations_flatten_and_dropout() -> None:
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(12, 6),
        nn.ReLU(inplace=True),
        nn.Dropout(0.3),
        nn.Linear(6, 4),
        nn.ELU(inplace=True),
        nn.Linear(4, 2),
    ).eval()
    report = backlens.check(model, torch.randn(5, 3, 4), torch.randint(0, 2, (5,)), loss="ce")
    assert report.ok, str(report)


# --- the check can fail: test doubles of a wrong hand engine ---


def flipped_relu(monkeypatch: pytest.MonkeyPatch) -> None:
    flipped = ActivationRule("relu", relu, lambda z: (z <= 0).to(z.dtype))  # mask R flipped
    monkeypatch.setitem(ACTIVATION_RULES, nn.ReLU, lambda m: flipped)


def exact_gelu_for_tanh_gelu(monkeypatch: pytest.MonkeyPatch) -> None:
    original = ACTIVATION_RULES[nn.GELU]

    def rule(m: nn.Module) -> ActivationRule:  # a subtle bug: the exact GELU's derivative
        good = original(m)
        return ActivationRule(good.name, good.forward, gelu_derivative)

    monkeypatch.setitem(ACTIVATION_RULES, nn.GELU, rule)


def mse_without_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    # forgets the 1/(n·k) of the mean
    wrong = dataclasses.replace(LOSSES["mse"], gradient=lambda z, y, reduction: 2 * (z - y))
    monkeypatch.setitem(LOSSES, "mse", wrong)


def per_sample_unscaled(monkeypatch: pytest.MonkeyPatch) -> None:
    original = backprop_module.run_chain

    def engine(chain, x, y, rule):  # per-sample gradients without the 1/n share
        tape = original(chain, x, y, rule)
        tape.per_sample_grads = {k: v * len(x) for k, v in tape.per_sample_grads.items()}
        return tape

    monkeypatch.setattr(check_module, "run_chain", engine)


def bias_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backprop_module, "_linear", lambda a, linear: a @ linear.weight.detach().T)


WRONG = [
    (
        flipped_relu,
        "relu",
        "mse",
        {("0", "σ'(z) relu"), ("0", "δ = dL/dz"), ("0", "dW"), ("2", "δ = dL/dz")},
    ),
    (exact_gelu_for_tanh_gelu, "gelu_tanh", "mse", {("0", "σ'(z) gelu_tanh"), ("0", "dW")}),
    (mse_without_mean, "tanh", "mse", {("4", "δ = dL/dz"), ("4", "dW"), ("0", "db per sample")}),
    (per_sample_unscaled, "tanh", "ce", {("0", "dW per sample"), ("4", "db per sample")}),
    (
        bias_forgotten,
        "sigmoid",
        "bce",
        {("model", "loss"), ("0", "z (output)"), ("2", "a (input)")},
    ),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("corrupt", "activation", "loss", "must_fail"), WRONG, ids=[w[0].__name__ for w in WRONG]
)
def test_check_fails_when_the_hand_engine_is_wrong(
    monkeypatch, corrupt, activation, loss, must_fail, dtype
) -> None:
    model = backlens.build_mlp([6, 8, 8, 3], activation, seed=2).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # keep biases well away from zero
    x, y = data_for(loss, 16, 6, 3, dtype)
    corrupt(monkeypatch)
    report = backlens.check(model, x, y, loss=loss)
    assert not report.ok
    failed = {(r.layer, r.quantity) for r in report.failures}
    assert must_fail <= failed, failed
    assert "FAIL" in str(report)


def test_rows_fail_when_a_reference_is_missing_or_misshapen() -> None:
    assert not compare("0", "dW", ".grad", torch.ones(2), None, 1e-4).ok
    assert not compare("0", "dW", ".grad", torch.ones(2), torch.ones(3), 1e-4).ok
    assert not compare("0", "dW", ".grad", torch.tensor([float("nan")]), torch.ones(1), 1e-4).ok
    row = compare(
        "0",
        "dW",
        ".grad",
        torch.tensor([1.0, 2.0], dtype=torch.float64),
        torch.tensor([1.0, 2.0 + 2e-4], dtype=torch.float64),
        1e-4,
    )
    assert row.max_abs == pytest.approx(2e-4) and row.max_rel == pytest.approx(1e-4, rel=1e-3)
    assert compare("0", "db", ".grad", torch.zeros(3), torch.zeros(3), 1e-10).ok


def test_tolerances_are_stated_per_dtype_and_can_be_overridden() -> None:
    assert tolerance(torch.float64) == 1e-10 and tolerance(torch.float32) == 1e-4
    with pytest.raises(backlens.BacklensError, match="float32 or torch.float64"):
        tolerance(torch.float16)
    model = backlens.build_mlp([3, 4, 1], "tanh", seed=0)
    report = backlens.check(model, torch.randn(4, 3), torch.randn(4), rtol=1e-3)
    assert report.ok and {r.tol for r in report.rows} == {1e-3}


def test_check_validates_like_backprop() -> None:
    model = backlens.build_mlp([3, 4, 2], "relu", seed=0)
    with pytest.raises(backlens.BacklensError, match="x: expected finite values, got NaN"):
        backlens.check(model, torch.full((2, 3), float("nan")), torch.randn(2, 2))
    with pytest.raises(backlens.BacklensError, match="Conv1d at position 1"):
        backlens.check(
            nn.Sequential(nn.Linear(3, 2), nn.Conv1d(1, 1, 1)), torch.randn(2, 3), torch.randn(2, 2)
        )


@settings(max_examples=40, deadline=None)
@given(mlp_case())
def test_property_check_passes_on_any_supported_mlp(case) -> None:
    model, x, y, loss, reduction = case
    report = backlens.check(model, x, y, loss=loss, reduction=reduction)
    assert report.ok, str(report)
