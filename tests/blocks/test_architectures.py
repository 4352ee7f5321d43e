"""Blocks of real architectures against oracles: pairs, mean Jacobians, ridge and compare's scores.

Every case is a tiny float64 model in eval mode with a hand-written split into the part before
the block (`pre`), the block's own code (`block`) and the rest (`post`, which sees the data x
for skip connections). The oracles are a hand-run forward with torch.autograd.grad at the
block's boundaries (the gradient at the block's input through the block alone), per-sample
torch.autograd.functional.jacobian averaged over samples (diagonal blocks for "shared"),
scikit-learn's Ridge / r2_score, and numpy-style scores computed on the raw pairs.
Tolerances: 1e-12 for pairs and Jacobians (float64 round-off of the same arithmetic), 1e-8
relative for ridge (a solve), 1e-6 absolute for scores read from Moments (they subtract sums
of squares, so they keep about half of float64's digits).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from architecture_cases import (  # noqa: I001 (a helper module beside the tests)
    ATOL,
    CASES,
    CNN,
    IDS,
    PLAIN,
    PRE,
    Case,
    OutOfOrder,
    ReluInForward,
    TinyTransformer,
    built,
    collected,
    data,
    hand_pairs,
    loader,
    oracle_jacobian,
    rows,
)

from backlens import BacklensError, Block, collect, compare, fit_method, mean_jacobian
from backlens.blocks.methods import DEFAULT_METHODS


@pytest.mark.parametrize(
    ("factory", "start", "end", "enclosing"),
    [
        (ReluInForward, "fc1", "fc2", ""),
        (OutOfOrder, "a", "b", ""),
        (OutOfOrder, "b", "a", ""),
        (PRE, "layers.0.norm", "layers.0.mlp", "layers.0"),  # crosses the skip
        (PLAIN, "layers.0.mlp.2", "layers.1.mlp.0", ""),  # crosses the skip and a ModuleList
        (PRE, "layers.0", "layers.1", ""),  # a ModuleList has no forward: the model encloses it
        (PRE, "inp", "layers.0", ""),
        (TinyTransformer, "encoder.layers.0.linear1", "encoder.layers.0.linear2", "encoder.layers.0"),
        (CNN, "features.0", "head", ""),
    ],
)
def test_span_not_run_by_a_plain_sequential_is_refused(factory, start, end, enclosing) -> None:
    model = built(factory)
    with pytest.raises(BacklensError, match="plain nn.Sequential") as error:
        Block(model, start, end)
    assert f"Block(model, {enclosing!r})" in str(error.value)


def test_spans_of_plain_sequentials_are_accepted_in_execution_order() -> None:
    assert Block(built(PRE), "layers.0.mlp.0", "layers.0.mlp.2").names == [
        "layers.0.mlp.0", "layers.0.mlp.1", "layers.0.mlp.2"
    ]  # fmt: skip
    assert Block(built(CNN), "features.1", "features.3").names == ["features.1", "features.2", "features.3"]
    with pytest.raises(BacklensError, match="swap them"):
        Block(built(CNN), "features.2", "features.0")


# ---- pairs, mean Jacobians, ridge ------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_pairs_equal_a_hand_run_forward_and_backward(case: Case) -> None:
    model, block, col = collected(case)
    positions = case.positions or "shared"
    assert col.positions == positions
    oracle = hand_pairs(case, model, positions)
    for direction, moments in (("forward", col.forward), ("backward", col.backward)):
        X, Y = oracle[direction]
        got_X, got_Y = col.pairs[direction]  # every row, in stream order (rows ≤ max_pairs)
        torch.testing.assert_close(got_X, X, rtol=0, atol=ATOL)
        torch.testing.assert_close(got_Y, Y, rtol=0, atol=ATOL)
        assert moments.n == len(X)
        torch.testing.assert_close(moments.mean_x, X.mean(0), rtol=0, atol=ATOL)
        Xc, Yc = X - X.mean(0), Y - Y.mean(0)
        torch.testing.assert_close(moments.cxy, Xc.T @ Yc, rtol=1e-10, atol=1e-10)
    forward_only = collected(case, direction="forward")[2]  # under no_grad: fused paths may run
    for got, want in zip(forward_only.pairs["forward"], oracle["forward"], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
    assert forward_only.backward is None and "backward" not in forward_only.pairs
    if case.kind == "images":  # along channels: rows n·H·W, width C; flat: one row of C·H·W
        (fx, fy), n_rows = col.pairs["forward"], 12 * 4 * 4 if positions == "shared" else 12
        c_in, pixels = col.inputs.shape[1], 1 if positions == "shared" else 4 * 4
        assert fx.shape == (n_rows, c_in * pixels) and fy.shape == (n_rows, 3 * pixels)
    assert col.inputs.shape == (12, *case.pre(model, data(case.kind)[0]).shape[1:])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_mean_jacobian_equals_autograd_per_sample(case: Case) -> None:
    model, block, col = collected(case, direction="forward")
    positions = col.positions
    J = oracle_jacobian(lambda a: case.block(model, a), col.inputs, positions)
    back = mean_jacobian(block, col.inputs, "backward", positions, col.call)
    torch.testing.assert_close(back.matrix, J, rtol=0, atol=ATOL)
    fwd = mean_jacobian(block, col.inputs, "forward", positions, col.call)
    torch.testing.assert_close(fwd.matrix, J.T, rtol=0, atol=ATOL)
    torch.testing.assert_close(fwd.jacobian, J, rtol=0, atol=ATOL)
    with torch.no_grad():
        a_out = case.block(model, col.inputs)
    mean_x, mean_y = rows(col.inputs, positions).mean(0), rows(a_out, positions).mean(0)
    torch.testing.assert_close(fwd.bias, mean_y - mean_x @ J.T, rtol=0, atol=ATOL)
    assert fwd.info["positions"] == positions and "note" not in fwd.info  # eval mode: no note


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.filterwarnings("ignore::backlens.AlphaAtGridEdgeWarning")
def test_ridge_from_moments_equals_sklearn_on_the_same_pairs(case: Case) -> None:
    from sklearn.linear_model import Ridge

    _, block, col = collected(case)
    for direction, intercept in (("forward", True), ("backward", False)):
        lm = fit_method("ridge", block, col, direction)
        assert lm.info["intercept"] is intercept  # a backward map is linear in the gradient
        X, Y = (t.numpy() for t in col.pairs[direction])
        sk = Ridge(alpha=lm.info["alpha"], fit_intercept=intercept, solver="cholesky").fit(X, Y)
        scale = float(abs(sk.coef_).max()) + float(abs(sk.intercept_).max() if intercept else 0) + 1e-300
        # two solves of the same system agree to about cond(XᵀX + αI)·eps
        tol = max(1e-10, 100 * lm.info["condition"] * 2.2e-16) * scale
        assert float(abs(lm.matrix.numpy() - sk.coef_.T).max()) <= tol
        expected_bias = sk.intercept_ if intercept else 0.0
        assert float(abs(lm.bias.numpy() - expected_bias).max()) <= tol


def test_whole_model_and_single_module_blocks_of_a_custom_forward_are_not_chains() -> None:
    # F.relu between two Linears is invisible to the module tree: the chain methods must not apply
    model = built(ReluInForward)
    assert not Block(model, "").is_linear_chain()
    col = collect(model, Block(model, ""), loader("mlp"), show_progress=False)
    for method in ("expected-mask", "weights-only"):
        with pytest.raises(BacklensError, match="Linear/activation chain"):
            fit_method(method, Block(model, ""), col, "backward")


# ---- compare: rows for every method, scores equal to those computed on the raw pairs ---------


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.filterwarnings("ignore::backlens.AlphaAtGridEdgeWarning")
def test_compare_rows_and_scores_match_the_raw_pairs(case: Case) -> None:
    from sklearn.metrics import r2_score

    model, block, train = collected(case)
    test = collected(case, seed=1)[2]
    table = compare(
        model, block, loader(case.kind), loader(case.kind, seed=1), loss=case.loss, train=train,
        test=test, show_progress=False, positions=case.positions,
    )  # fmt: skip
    methods = {(r.method, r.direction) for r in table}
    assert ("intact", "forward") in methods and len(table) == 1 + 2 * len(DEFAULT_METHODS)
    for row in table:
        if row.method == "intact":
            continue
        if row.test_rel_error is None:
            assert row.note, row  # a method that does not apply says why
            continue
        lm = fit_method(row.method, block, train, row.direction)
        X, Y = test.pairs[row.direction]
        P = lm.apply(X)
        rel = float((Y - P).norm() / Y.norm())
        assert row.test_rel_error == pytest.approx(rel, abs=1e-6)
        assert row.test_r2 == pytest.approx(r2_score(Y.numpy(), P.numpy()), abs=1e-6)
        cos = F.cosine_similarity(P, Y, dim=1)  # a zero row: 1 if both are zero (scores' convention)
        cos = torch.where((P.norm(dim=1) == 0) & (Y.norm(dim=1) == 0), 1.0, cos)
        assert row.test_cosine == pytest.approx(float(cos.mean()), abs=1e-10)
    mj = [r for r in table if r.method == "mean-jacobian"]
    assert all(r.test_rel_error is not None and not r.note for r in mj), mj


# ---- the zoo (if present): its natural blocks, collected and differentiated -----------------


@pytest.mark.parametrize("name", ["mlp", "cnn", "resmlp", "transformer", "gru"])
def test_zoo_first_block_mean_jacobian_equals_autograd(name: str) -> None:
    zoo = pytest.importorskip("backlens.workflows.zoo")
    arch = zoo.ARCHITECTURES[name]
    model = arch.build(0).double().eval()
    x, y = arch.data(0).train[:8]
    x = x.double() if x.is_floating_point() else x
    output = 0 if name == "gru" else None
    block = Block(model, arch.blocks[0], output=output)
    col = collect(model, block, [(x, y)], step=arch.step, direction="forward", show_progress=False)
    module = model.get_submodule(arch.blocks[0])
    fn = (lambda a: module(a)[0]) if name == "gru" else module
    lm = mean_jacobian(block, col.inputs, "backward", col.positions, col.call)
    torch.testing.assert_close(lm.matrix, oracle_jacobian(fn, col.inputs, col.positions), rtol=0, atol=1e-10)
