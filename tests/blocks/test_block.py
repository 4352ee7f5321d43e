"""Block boundaries: names in execution order, windows, and errors that list the modules."""

import pytest
from torch import nn

import backlens
from backlens.blocks.block import Block


@pytest.fixture
def model() -> nn.Sequential:
    return backlens.build_mlp([4, 8, 8, 3], "relu", seed=0)


def test_names_and_widths(model: nn.Sequential) -> None:
    block = Block(model, "0", "2")
    assert block.names == ["0", "1", "2"] and block.label == "0:2"
    assert block.in_features == 4 and block.out_features == 8
    assert block.is_linear_chain()
    assert all(a is b for a, b in zip(block.layers(), [model[0], model[1], model[2]], strict=False))


def test_all_windows(model: nn.Sequential) -> None:
    assert [b.label for b in Block.all(model)] == ["0:2", "2:4"]
    assert [b.label for b in Block.all(model, size=3)] == ["0:4"]
    assert [b.label for b in Block.parse(model, "all")] == ["0:2", "2:4"]
    assert [b.label for b in Block.parse(model, "1:3,2:2")] == ["1:3", "2:2"]


def test_nested_names() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Tanh(), nn.Linear(4, 2)))
    assert Block(model, "0", "1.1").names == ["0", "1.0", "1.1"]


def test_non_chain_block_is_detected() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    assert not Block(model, "0", "2").is_linear_chain()


@pytest.mark.parametrize(
    ("start", "end", "match"),
    [
        ("0", "9", "end: expected a module path of the model"),
        ("x", "2", "start: expected a module"),
        ("2", "0", "start before end"),
    ],
)
def test_bad_blocks_list_module_names(model: nn.Sequential, start: str, end: str, match: str) -> None:
    with pytest.raises(backlens.BacklensError, match=match):
        Block(model, start, end)


def test_bad_parse(model: nn.Sequential) -> None:
    with pytest.raises(backlens.BacklensError, match="start: expected a module path"):
        Block.parse(model, "0-2")
    with pytest.raises(backlens.BacklensError, match="module paths or start:end spans"):
        Block.parse(model, "0:")
    with pytest.raises(backlens.BacklensError, match="at most the number of Linear layers"):
        Block.all(model, size=4)
