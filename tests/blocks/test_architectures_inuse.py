"""Blocks of real architectures in use, in training mode, with dict batches; hooks; known bugs.

Oracles: the intact model; a hand-built surrogate whose backward is the map's, made with
autograd alone — y = f(a).detach() + a·Mᵀ − (a·Mᵀ).detach() has f's value and the VJP g ↦ g·M —
so replaced(direction="backward") must give the same parameter gradients; the map applied by hand
to the block's input rows for replaced(direction="forward"). float64; tolerances 1e-12 (the
same arithmetic in another order) and 1e-10 for a cosine of exact gradients.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from inuse_cases import (  # noqa: I001 (a helper module beside the tests)
    ATOL,
    CNN,
    DropBN,
    GRUClassifier,
    ResMLP,
    built,
    cos,
    loader,
    no_hooks,
    random_map,
)
from torch import nn

from backlens import BacklensError, Block, LinearMap, collect, compare, mean_jacobian, replaced, weights_only
from backlens.blocks.inuse import backward_cosine, forward_metric

# ---- residual blocks in use: exact maps change nothing; any map equals the surrogate ---------

# (block path, the block's input a from h = inp(x), the model's output from h and the block's output)
RES_SPLITS = {
    "layers.0.mlp": (
        lambda m, h: m.layers[0].norm(h) if m.layers[0].prenorm else h,
        lambda m, h, y: m.head(m.layers[1](h + y)),
    ),
    "layers.0": (lambda m, h: h, lambda m, h, y: m.head(m.layers[1](y))),
}


def surrogate_grads(model: nn.Module, path: str, M: torch.Tensor, params: list, batch) -> list[torch.Tensor]:
    """∇θ of the loss when the block's VJP is g ↦ g·M (M: block_out × block_in), by autograd alone."""
    pre, post = RES_SPLITS[path]
    x, y = batch
    h = model.inp(x)
    a = pre(model, h)
    linear = a @ M.T
    out = post(model, h, model.get_submodule(path)(a).detach() + linear - linear.detach())
    return list(torch.autograd.grad(F.mse_loss(out, y), params))


@pytest.mark.parametrize("prenorm", [True, False], ids=["x+mlp(norm(x))", "x+mlp(x)"])
def test_exact_backward_map_of_a_linear_subblock_feeding_a_skip_is_exact_in_use(prenorm: bool) -> None:
    model = built(ResMLP, prenorm)  # mlp = Linear → Identity → Linear: weights-only is exact
    block, data = Block(model, "layers.0.mlp"), loader()
    mlp = model.layers[0].mlp
    back = weights_only(block, "backward")
    torch.testing.assert_close(back.matrix, (mlp[2].weight @ mlp[0].weight).detach(), rtol=0, atol=ATOL)
    assert backward_cosine(block, back, data, F.mse_loss) == pytest.approx(1.0, abs=1e-10)
    col = collect(model, block, data, show_progress=False)
    exact = mean_jacobian(block, col.inputs, "backward", col.positions, col.call)
    assert backward_cosine(block, exact, data, F.mse_loss) == pytest.approx(1.0, abs=1e-10)
    upstream = list(model.inp.parameters()) + (list(model.layers[0].norm.parameters()) if prenorm else [])
    for x, y in data:
        true = torch.autograd.grad(F.mse_loss(model(x), y), upstream)
        with replaced(model, block, back, direction="backward"):
            swapped = torch.autograd.grad(F.mse_loss(model(x), y), upstream)
        for t, s in zip(true, swapped, strict=True):
            torch.testing.assert_close(s, t, rtol=0, atol=ATOL)
    x = next(iter(data))[0]
    with replaced(model, block, weights_only(block, "forward")):
        forward = model(x)
    torch.testing.assert_close(forward, model(x), rtol=0, atol=ATOL)
    assert all(p.grad is None for p in model.parameters()) and no_hooks(model)


@pytest.mark.parametrize("path", list(RES_SPLITS))
@pytest.mark.parametrize("prenorm", [True, False], ids=["prenorm", "plain"])
def test_any_backward_map_in_use_equals_the_autograd_surrogate(prenorm: bool, path: str) -> None:
    model = built(ResMLP, prenorm, False)  # Tanh: nothing is exact here
    block, data = Block(model, path), loader()
    lm = random_map(4, 4, "backward")
    below = list(model.inp.parameters())  # upstream of the block's input
    below += list(model.layers[0].norm.parameters()) if path == "layers.0.mlp" and prenorm else []
    cosines = []
    for x, y in data:
        with replaced(model, block, lm, direction="backward"):
            out = model(x)
            swapped = torch.autograd.grad(F.mse_loss(out, y), below)
        oracle = surrogate_grads(model, path, lm.matrix, below, (x, y))
        for s, o in zip(swapped, oracle, strict=True):
            torch.testing.assert_close(s, o, rtol=0, atol=ATOL)
        torch.testing.assert_close(out, model(x), rtol=0, atol=0)  # the forward stays exact
        cosines.append(cos(list(torch.autograd.grad(F.mse_loss(model(x), y), below)), oracle))
    assert backward_cosine(block, lm, data, F.mse_loss) == pytest.approx(sum(cosines) / 2, abs=ATOL)


def apply_rows(lm: LinearMap, a: torch.Tensor) -> torch.Tensor:
    """The map on each position's features (tokens: last axis), by hand."""
    return a @ lm.matrix + lm.bias


def test_forward_map_in_use_equals_the_model_with_the_map_by_hand_and_restores_it() -> None:
    model = built(ResMLP, False, False)
    block, data = Block(model, "layers.0.mlp"), loader()
    lm = random_map(4, 4, "forward")
    metric = lambda out, y: F.mse_loss(out, y).item()  # noqa: E731
    with torch.no_grad():
        oracle = sum(metric(model.head(model.layers[1](model.inp(x) + apply_rows(lm, model.inp(x)))), y)
                     * len(x) for x, y in data) / 12  # fmt: skip
    assert forward_metric(block, lm, data, metric) == pytest.approx(oracle, rel=ATOL)
    assert forward_metric(block, None, data, metric) == pytest.approx(
        sum(metric(model(x), y) * len(x) for x, y in data) / 12, rel=ATOL
    )


@pytest.mark.parametrize("positions", ["shared", "flat"])
def test_conv_block_maps_in_use_act_along_channels_or_on_the_flat_sample(positions: str) -> None:
    model, data = built(CNN), loader((2, 4, 4), 2)
    block, x, y = Block(model, "features"), *next(iter(data))
    d_in, d_out = (3, 3) if positions == "shared" else (3 * 16, 3 * 16)

    def by_hand(t: torch.Tensor, M: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # rows·M + b
        if positions == "flat":
            return (t.reshape(len(t), -1) @ M + b).reshape(t.shape)
        return (t.movedim(1, -1) @ M + b).movedim(-1, 1)

    fwd, back = random_map(d_in, d_out, "forward"), random_map(d_out, d_in, "backward", seed=4)
    with replaced(model, block, fwd, positions=positions):
        got = model(x)
    torch.testing.assert_close(got, model.head(by_hand(model.stem(x), fwd.matrix, fwd.bias).flatten(1)),
                               rtol=0, atol=ATOL)  # fmt: skip
    stem = list(model.stem.parameters())
    with replaced(model, block, back, direction="backward", positions=positions):
        swapped = torch.autograd.grad(F.cross_entropy(model(x), y), stem)
    a = model.stem(x)
    linear = by_hand(a, back.matrix.T, torch.zeros(d_in, dtype=torch.float64))  # a·Mᵀ per row
    out = model.head((model.features(a).detach() + linear - linear.detach()).flatten(1))
    for s, o in zip(swapped, torch.autograd.grad(F.cross_entropy(out, y), stem), strict=True):
        torch.testing.assert_close(s, o, rtol=0, atol=ATOL)


# ---- a GRU: a tuple output, chosen with output=0 ----------------------------------------------


def test_gru_needs_output_and_its_forward_map_in_use_runs_and_restores_the_model() -> None:
    model, data = built(GRUClassifier), loader((5, 2), classes=3)
    with pytest.raises(BacklensError, match=r"output=0") as error:
        collect(model, Block(model, "gru"), data, loss="ce", show_progress=False)
    assert "GRU" in str(error.value) and "tuple" in str(error.value)
    block = Block(model, "gru", output=0)
    col = collect(model, block, data, loss="ce", show_progress=False)
    assert col.positions == "shared" and col.pairs["forward"][1].shape == (12 * 5, 4)
    lm = random_map(2, 4, "forward")
    x = next(iter(data))[0]
    before = model(x)
    with replaced(model, block, lm):
        inside = model(x)
    after = model(x)
    torch.testing.assert_close(inside, model.head(apply_rows(lm, x)[:, -1]), rtol=0, atol=ATOL)
    assert not torch.allclose(inside, before) and torch.equal(after, before) and no_hooks(model)
    assert backward_cosine(block, lm.transpose(), data, F.cross_entropy) is None  # nothing upstream
    rows = compare(model, block, data, loader((5, 2), 3, seed=1), loss="ce", show_progress=False)
    assert {r.method for r in rows if r.test_rel_error is not None} >= {"ridge", "mean-jacobian"}


# ---- training mode: Dropout and BatchNorm ----------------------------------------------------


@pytest.mark.filterwarnings("ignore::backlens.AlphaAtGridEdgeWarning")
def test_training_mode_maps_say_they_used_eval_mode_and_equal_the_eval_jacobian() -> None:
    model = built(DropBN).train()
    block, data = Block(model, "block"), loader()
    X = torch.randn(10, 4, dtype=torch.float64)
    lm = mean_jacobian(block, X, "backward")
    assert "eval" in lm.info["note"] and "training mode" in lm.info["note"]
    twin = copy.deepcopy(model.block).eval()
    J = torch.stack([torch.autograd.functional.jacobian(lambda v: twin(v[None])[0], x) for x in X]).mean(0)
    torch.testing.assert_close(lm.matrix, J, rtol=0, atol=ATOL)
    rows = compare(model, block, data, loader(seed=1), show_progress=False)
    assert all(m.training for m in model.modules())  # the model's mode is left as it was
    for row in rows:
        assert row.test_rel_error is not None or row.note, row
    mj = [r for r in rows if r.method == "mean-jacobian"]
    assert len(mj) == 2 and all("eval" in r.info["note"] for r in mj)
    cnn = built(CNN).train()
    rows = compare(cnn, Block(cnn, "features"), loader((2, 4, 4), 2), loader((2, 4, 4), 2, seed=1),
                   loss="ce", show_progress=False)  # fmt: skip
    assert [r.note for r in rows if r.method == "mean-jacobian"] == ["", ""]
    assert all(r.in_use is not None for r in rows if r.method == "mean-jacobian")


# ---- hooks: none left, also after an exception ------------------------------------------------


class Boom(Exception):
    pass


@pytest.mark.filterwarnings("ignore::backlens.AlphaAtGridEdgeWarning")
def test_no_hook_is_left_after_any_context_even_after_an_exception() -> None:
    model, data = built(ResMLP, True), loader()
    block, lm = Block(model, "layers.0.mlp"), random_map(4, 4, "forward")
    x = next(iter(data))[0]
    before = model(x)

    def boom_step(m, batch):
        m(batch[0])
        raise Boom

    def boom_loader():
        yield next(iter(data))
        raise Boom

    for direction, used in (("forward", lm), ("backward", lm.transpose())):
        with pytest.raises(Boom), replaced(model, block, used, direction=direction):
            model(x)
            raise Boom
        assert no_hooks(model)
    for run in (
        lambda: collect(model, block, data, step=boom_step, show_progress=False),
        lambda: collect(model, block, boom_loader(), show_progress=False),
        lambda: collect(model, block, data, direction="forward", step=boom_step, show_progress=False),
        lambda: forward_metric(block, lm, data, step=boom_step),
        lambda: backward_cosine(block, lm.transpose(), data, step=boom_step),
    ):
        with pytest.raises(Boom):
            run()
        assert no_hooks(model)
    compare(model, block, data, data, methods=["ridge", "mean-jacobian"], show_progress=False)
    assert no_hooks(model) and torch.equal(model(x), before)


# ---- step= with dict batches ----------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::backlens.AlphaAtGridEdgeWarning")
def test_step_with_dict_batches_equals_the_named_loss_on_tuples() -> None:
    model, data = built(ResMLP, False), loader()
    block = Block(model, "layers.0.mlp")
    dicts = [{"inputs": x, "target": y} for x, y in data]

    def step(m: nn.Module, batch: dict) -> torch.Tensor:
        return F.mse_loss(m(batch["inputs"]), batch["target"])

    by_step = collect(model, block, dicts, step=step, show_progress=False)
    by_loss = collect(model, block, data, loss="mse", show_progress=False)
    for d in ("forward", "backward"):
        for a, b in zip(by_step.pairs[d], by_loss.pairs[d], strict=True):
            assert torch.equal(a, b)
    rows = compare(model, block, dicts, dicts, step=step, show_progress=False)
    intact = next(r for r in rows if r.method == "intact")
    assert intact.in_use_metric == "loss"
    assert intact.in_use == pytest.approx(sum(step(model, b).item() * 6 for b in dicts) / 12, rel=ATOL)
    exact = next(r for r in rows if (r.method, r.direction) == ("weights-only", "backward"))
    assert exact.in_use == pytest.approx(1.0, abs=1e-10) and exact.in_use_metric == "grad cosine"
