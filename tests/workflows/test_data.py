"""Seed data, its loader and the MLP builder."""

import pytest
import torch
from torch import nn

import backlens
from backlens.workflows.mlp import parse_widths
from backlens.workflows.seed_data import seed_target


def test_seed_regression_formula_and_determinism() -> None:
    x, y = backlens.seed_regression(128, seed=5)
    assert x.shape == (128, 3) and y.shape == (128,)
    assert x.min() >= -10 and x.max() <= 9 and torch.equal(x, x.round())
    expected = (x[:, 0] * (torch.cos(x[:, 1]) + torch.exp(x[:, 1] / 3)) + x[:, 2]) / 10
    torch.testing.assert_close(y, expected)
    assert torch.equal(backlens.seed_regression(128, seed=5)[0], x)
    assert not torch.equal(backlens.seed_regression(128, seed=6)[0], x)
    assert torch.equal(seed_target(x), y)


def test_loader_batches_shuffled_and_seeded() -> None:
    x, y = backlens.seed_regression(16, seed=0)
    first = [b[0] for b in backlens.seed_loader(x, y, batch_size=4, seed=1)]
    again = [b[0] for b in backlens.seed_loader(x, y, batch_size=4, seed=1)]
    assert len(first) == 4 and all(b.shape == (4, 3) for b in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=False))
    assert not torch.equal(torch.cat(first), x)  # shuffled
    assert torch.equal(torch.cat(first).sort(0).values, x.sort(0).values)


def test_build_mlp_is_the_notebook_model() -> None:
    model = backlens.build_mlp([3, 2, 2, 1], "relu")
    kinds = [type(m) for m in model]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)] == [
        (3, 2),
        (2, 2),
        (2, 1),
    ]


@pytest.mark.parametrize(
    ("widths", "activation", "match"),
    [
        ([3], "relu", "at least two"),
        ([3, 0, 1], "relu", "positive ints"),
        ([3, 2.5, 1], "relu", "positive ints"),
        ([3, 2, 1], "swish", "activation"),
    ],
)
def test_build_mlp_bad_input(widths, activation, match) -> None:
    with pytest.raises(backlens.BacklensError, match=match):
        backlens.build_mlp(widths, activation)


def test_loader_bad_input() -> None:
    with pytest.raises(backlens.BacklensError, match="same number of rows"):
        backlens.seed_loader(torch.zeros(3, 3), torch.zeros(4))
    with pytest.raises(backlens.BacklensError, match="batch_size"):
        backlens.seed_loader(torch.zeros(3, 3), torch.zeros(3), batch_size=0)
    with pytest.raises(backlens.BacklensError, match="seed: expected an int"):
        backlens.seed_loader(torch.zeros(3, 3), torch.zeros(3), seed=1.5)


@pytest.mark.parametrize(("text", "widths"), [("3,2,2,1", [3, 2, 2, 1]), (" 64, 32 ,10 ", [64, 32, 10])])
def test_parse_widths(text: str, widths: list[int]) -> None:
    assert parse_widths(text) == widths


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3,x,1", "comma-separated positive ints"),
        ("3,,1", "comma-separated positive ints"),  # an empty part is an error, not skipped
        ("3,2,", "comma-separated positive ints"),
        ("", "comma-separated positive ints"),
        ("3", "at least two positive ints"),
        ("3,0,1", "at least two positive ints"),
        ([3, 2, 1], "a str"),
    ],
)
def test_parse_widths_errors_name_the_python_argument(text: object, expected: str) -> None:
    with pytest.raises(backlens.BacklensError, match=f"^text: expected {expected}") as caught:
        parse_widths(text)  # type: ignore[arg-type]
    assert caught.value.argument == "text" and "--" not in str(caught.value)
