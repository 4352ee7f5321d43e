"""`backlens check`: exit 0 when all quantities match, 1 on a mismatch, 2 on bad input."""

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from backlens.byhand.rules import ACTIVATION_RULES, ActivationRule, relu
from backlens.cli import app

runner = CliRunner()

PASSING = [
    ["--data", "seed"],
    [
        "--data",
        "digits",
        "--layers",
        "64,32,10",
        "--activation",
        "tanh",
        "--loss",
        "ce",
        "--dtype",
        "float64",
        "--batch-size",
        "32",
        "--seed",
        "0",
    ],
    ["--data", "diabetes", "--layers", "10,16,16,1", "--activation", "gelu", "--reduction", "sum"],
    ["--data", "digits", "--loss", "mse", "--activation", "sigmoid", "--no-bias"],
    ["--data", "digits", "--loss", "bce", "--activation", "elu", "--batch-size", "1"],
    ["--data", "diabetes", "--activation", "leaky_relu", "--dtype", "float64", "--seed", "3"],
]


@pytest.mark.parametrize("args", PASSING, ids=lambda a: " ".join(a))
def test_check_passes_on_bundled_data(args: list[str]) -> None:
    result = runner.invoke(app, ["check", *args])
    assert result.exit_code == 0, result.output
    assert "quantities within tolerance" in result.output
    assert "δ = dL/dz" in result.output and "FAIL" not in result.output


def test_check_header_states_the_setup() -> None:
    result = runner.invoke(app, ["check", "--data", "digits", "--loss", "mse"])
    assert result.exit_code == 0, result.output
    assert "data digits: batch of 32 (seed 0); model 64-32-10 relu; loss mse (one-hot" in result.output


def test_check_exits_1_on_a_mismatch(monkeypatch: pytest.MonkeyPatch) -> None:
    flipped = ActivationRule("relu", relu, lambda z: (z <= 0).to(z.dtype))
    monkeypatch.setitem(ACTIVATION_RULES, nn.ReLU, lambda m: flipped)
    result = runner.invoke(app, ["check", "--data", "digits"])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "quantities outside tolerance" in result.output


BAD = [
    (
        ["--data", "digits", "--layers", "64,10,3"],
        "--layers: expected first width 64 and last width 10",
        "pass widths [64, 10, 10]",
    ),
    (
        ["--data", "diabetes", "--loss", "ce"],
        "--loss: expected mse for the regression set",
        "use --loss mse",
    ),
    (["--data", "mnist"], "data: expected one of seed, digits, diabetes", "Fix:"),
    (["--dtype", "float16"], "--dtype: expected one of 'float32', 'float64'", "Fix:"),
    (["--activation", "swish"], "--activation: expected one of", "Fix:"),
    (
        ["--data", "seed", "--batch-size", "500"],
        "--batch-size: expected at most 128",
        "--batch-size 128",
    ),
    (["--batch-size", "0"], "--batch-size: expected a positive integer", "Fix:"),
    (["--layers", "3,x,1"], "--layers: expected comma-separated positive ints", "Fix:"),
    (["--loss", "hinge"], "--loss: expected one of 'mse', 'ce', 'bce'", "Fix:"),
]


@pytest.mark.parametrize(("args", "message", "fix"), BAD, ids=lambda a: str(a))
def test_bad_input_exits_2_with_a_clear_error(args: list[str], message: str, fix: str) -> None:
    result = runner.invoke(app, ["check", *args])
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert message in flat and fix in flat


def test_check_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    runner.invoke(app, ["check", "--data", "seed"])
    assert torch.equal(torch.random.get_rng_state(), state)
