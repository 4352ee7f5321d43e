"""compare: every method fitted on train, scored on test and train, exactly as direct computation."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import backlens
from backlens.blocks.block import Block
from backlens.blocks.collect import collect
from backlens.blocks.compare import compare
from backlens.blocks.methods import fit_method, parse_methods
from backlens.linear.scores import score
from backlens.workflows.datasets import load_dataset
from backlens.workflows.train import loader, split_dataset, task_metric, train_model

METHODS = ["ridge", "expected-mask", "mean-jacobian", "weights-only", "identity", "reduced-rank:3"]


@pytest.fixture(scope="module")
def trained():
    split = split_dataset(load_dataset("diabetes", dtype=torch.float64), 0.3, seed=0)
    model = backlens.build_mlp([10, 16, 16, 1], "tanh", seed=0).double()
    train_model(model, split.train, "mse", epochs=5, seed=0)
    return model, split


def test_rows_cover_every_method_and_direction(trained) -> None:
    model, split = trained
    block = Block(model, "0", "2")
    rows = compare(model, block, loader(split.train, 64), loader(split.test, 64), METHODS, "both", "mse")
    keys = {(r.method, r.direction) for r in rows}
    assert keys == {("intact", "forward")} | {(m, d) for m in METHODS for d in ("forward", "backward")}
    intact = next(r for r in rows if r.method == "intact")
    assert intact.in_use == pytest.approx(task_metric(model, split.test), rel=1e-9)
    identity = [r for r in rows if r.method == "identity"]
    assert all("identity only for a block whose input and output widths match" in r.note for r in identity)
    by = {(r.method, r.direction): r for r in rows}
    # the analytic maps are exact transposes; ridge's two fits are not
    for method in ("expected-mask", "mean-jacobian", "weights-only"):
        assert by[(method, "forward")].consistency < 1e-12
    assert by[("ridge", "forward")].consistency > 1e-6
    # least squares on the fitting data beats every analytic map there
    assert by[("ridge", "forward")].train_rel_error <= min(
        by[(m, "forward")].train_rel_error for m in ("expected-mask", "mean-jacobian")
    )
    for r in rows:
        if not r.note and r.method != "intact":
            assert r.test_r2 <= 1 and r.test_rel_error >= 0 and -1 <= r.test_cosine <= 1
            if r.direction == "backward":
                assert r.in_use_metric == "grad cosine" and r.in_use is None  # nothing below block 0:2


def test_scores_equal_direct_computation_on_raw_pairs(trained) -> None:
    model, split = trained
    block = Block(model, "2", "4")
    train = collect(model, block, loader(split.train, 64), "both", "mse", show_progress=False)
    test = collect(model, block, loader(split.test, 64), "both", "mse", show_progress=False)
    rows = compare(
        model, block, None, loader(split.test, 64), ["ridge"], "both", "mse", train=train, test=test
    )
    for direction in ("forward", "backward"):
        lm = fit_method("ridge", block, train, direction)
        X, Y = test.pairs[direction]  # all test rows: under the reservoir cap
        direct = score(lm, X, Y)
        row = next(r for r in rows if r.method == "ridge" and r.direction == direction)
        assert row.test_rel_error == pytest.approx(float(direct.rel_error), rel=1e-8)
        assert row.test_r2 == pytest.approx(float(direct.r2), rel=1e-8, abs=1e-10)
    backward = next(r for r in rows if r.method == "ridge" and r.direction == "backward")
    assert -1 <= backward.in_use <= 1  # parameters of layer 0 lie below block 2:4


def test_expected_mask_equals_mean_jacobian_for_one_nonlinearity(trained) -> None:
    model, split = trained
    block = Block(model, "0", "2")
    col = collect(model, block, loader(split.train, 64), "forward", "mse", show_progress=False)
    a = fit_method("expected-mask", block, col, "forward")
    b = fit_method("mean-jacobian", block, col, "forward")
    torch.testing.assert_close(a.matrix, b.matrix, rtol=1e-10, atol=1e-12)


def test_non_chain_block_reports_which_methods_apply() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 3)).double()
    data = DataLoader(
        TensorDataset(torch.randn(30, 3, dtype=torch.float64), torch.randn(30, 3, dtype=torch.float64)),
        batch_size=10,
    )
    rows = compare(model, Block(model, "0", "2"), data, data, ["ridge", "expected-mask"], "forward", "mse")
    mask = next(r for r in rows if r.method == "expected-mask")
    assert "mean-jacobian or ridge" in mask.note
    ridge = next(r for r in rows if r.method == "ridge")
    assert ridge.test_rel_error is not None and not ridge.note


@pytest.mark.parametrize(
    ("methods", "match"),
    [
        ("ridge,lasso", "methods"),
        ("reduced-rank", "reduced-rank:8"),
        ("reduced-rank:0", "positive rank"),
    ],
)
def test_bad_methods(methods: str, match: str) -> None:
    with pytest.raises(backlens.BacklensError, match=match):
        parse_methods(methods)
