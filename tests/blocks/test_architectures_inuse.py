"""Blocks of real architectures in use, in training mode, with dict batches; hooks; known bugs.

Oracles: the intact model; a hand-built surrogate whose backward is the map's, made with
autograd alone — y = f(a).detach() + a·Mᵀ − (a·Mᵀ).detach() has f's value and the VJP g ↦ g·M —
so replaced(direction="backward") must give the same parameter gradients; the map applied by hand
to the block's input rows for replaced(direction="forward"). float64; tolerances 1e-12 (the
same arithmetic in another order) and 1e-10 for a cosine of exact gradients.
The tests marked xfail(strict=True) pin bugs found while writing them (see each reason).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from backlens import BacklensError, Block, LinearMap, collect, compare, mean_jacobian, replaced, weights_only
from backlens.blocks.inuse import backward_cosine, forward_metric

ATOL = 1e-12


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()  # tiny models: one thread is ~70× faster on a loaded machine
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ResBlock(nn.Module):
    def __init__(self, d: int, prenorm: bool, linear: bool) -> None:
        super().__init__()
        self.prenorm, self.norm = prenorm, nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 5), nn.Identity() if linear else nn.Tanh(), nn.Linear(5, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x) if self.prenorm else x)


class ResMLP(nn.Module):
    def __init__(self, prenorm: bool, linear: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.inp, self.drop, self.head = nn.Linear(3, 4), nn.Dropout(dropout), nn.Linear(4, 2)
        self.layers = nn.ModuleList([ResBlock(4, prenorm, linear) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.inp(x))
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


class GRUClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru, self.head = nn.GRU(2, 4, batch_first=True), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


class DropBN(nn.Module):
    """A block with BatchNorm and Dropout inside: its function depends on the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.head = nn.Linear(3, 4), nn.Linear(4, 2)
        self.block = nn.Sequential(
            nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Dropout(0.3), nn.Linear(5, 4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.inp(x)))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 3, 1)
        self.features = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())
        self.head = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.stem(x)).flatten(1))


def built(factory, *args) -> nn.Module:
    torch.manual_seed(1)
    model = factory(*args).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def loader(shape: tuple[int, ...] = (3,), classes: int = 0, n: int = 12, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, dtype=torch.float64, generator=g)
    y = torch.randint(0, classes, (n,), generator=g) if classes else torch.randn(n, 2, dtype=torch.float64)
    return DataLoader(TensorDataset(x, y), batch_size=6)


def random_map(d_in: int, d_out: int, direction: str, seed: int = 3) -> LinearMap:
    g = torch.Generator().manual_seed(seed)
    M, b = torch.randn(d_in, d_out, dtype=torch.float64, generator=g), torch.randn(d_out, dtype=torch.float64)
    return LinearMap(M, b if direction == "forward" else None, "random", {"direction": direction})


def no_hooks(model: nn.Module) -> bool:
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return all(not getattr(m, k) for m in model.modules() for k in kinds)


def cos(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    u, v = torch.cat([t.reshape(-1) for t in a]), torch.cat([t.reshape(-1) for t in b])
    return float(u @ v / (u.norm() * v.norm()))


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


# ---- bugs found (each xfail pins one; see its reason) -----------------------------------------


class ResidualSequential(nn.Sequential):
    """A Sequential subclass with its own forward: x + (its children in order)(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


def test_a_sequential_subclass_with_its_own_forward_is_not_read_as_a_chain() -> None:
    model = nn.Sequential(nn.Linear(3, 3), ResidualSequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3)))
    model = model.double()
    block, X = Block(model, "1"), torch.randn(10, 3, dtype=torch.float64)
    J = torch.stack([torch.autograd.functional.jacobian(model[1], x) for x in X]).mean(0)
    torch.testing.assert_close(mean_jacobian(block, X, "backward").matrix, J, rtol=0, atol=ATOL)
    assert not block.is_linear_chain()


class Indexed(nn.Module):
    """Holds a plain Sequential but calls its children itself, with a skip between them."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.seq[0](x)
        return self.seq[2](self.seq[1](h) + h)


def test_a_span_of_a_sequential_the_model_does_not_call_is_refused() -> None:
    # The span's dataflow is the Sequential's only if the model runs the Sequential: collect sees
    # on the recorded forward that it does not; mean_jacobian, without that record, refuses too.
    model = built(Indexed)
    block = Block(model, "seq.0", "seq.2")
    X = torch.randn(10, 3, dtype=torch.float64)
    with pytest.raises(BacklensError, match="the model calls 'seq.0' itself"):
        collect(model, block, loader(), show_progress=False)
    with pytest.raises(BacklensError, match="recorded call of span"):
        mean_jacobian(block, X, "backward")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def inplace_after() -> nn.Module:
    return built(
        lambda: nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    )


def test_an_inplace_op_after_the_block_leaves_its_pairs_intact() -> None:
    model, data = inplace_after(), loader()
    col = collect(model, Block(model, "1"), data, show_progress=False)
    x, y = (torch.cat(t) for t in zip(*data, strict=True))
    a_out = model[1](model[0](x))
    (g_out,) = torch.autograd.grad(F.mse_loss(model[3](F.relu(a_out[:6])), y[:6]), a_out, retain_graph=True)
    torch.testing.assert_close(col.pairs["forward"][1], a_out.detach(), rtol=0, atol=ATOL)
    torch.testing.assert_close(col.pairs["backward"][0][:6], g_out[:6], rtol=0, atol=ATOL)


def test_backward_map_in_use_survives_an_inplace_op_after_the_block() -> None:
    model = inplace_after()
    block = Block(model, "1")
    assert backward_cosine(block, weights_only(block, "backward"), loader(), F.mse_loss) == pytest.approx(1.0)


@pytest.mark.parametrize("direction", ["forward", "both"])
def test_an_inplace_entry_module_leaves_the_block_input_intact(direction: str) -> None:
    model = built(lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2)))
    data = loader()
    col = collect(model, Block(model, "1", "2"), data, direction=direction, show_progress=False)
    x = torch.cat([b[0] for b in data])
    torch.testing.assert_close(col.pairs["forward"][0], model[0](x).detach(), rtol=0, atol=ATOL)


def test_collect_in_training_mode_leaves_batchnorm_statistics_unchanged() -> None:
    model = built(DropBN).train()
    state = copy.deepcopy(model.state_dict())
    collect(model, Block(model, "block"), loader(), show_progress=False)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_exact_map_in_use_scores_exact_with_dropout_in_training_mode(direction: str) -> None:
    model = built(ResMLP, False, True, 0.5).train()  # Dropout upstream of the linear sub-block
    block, data = Block(model, "layers.0.mlp"), loader()
    exact = weights_only(block, direction)
    if direction == "backward":
        assert backward_cosine(block, exact, data, F.mse_loss) == pytest.approx(1.0, abs=1e-10)
    else:  # compare's intact row and the exact map's row must read the same
        rows = compare(model, block, data, data, ["weights-only"], "forward", show_progress=False)
        assert rows[1].in_use == pytest.approx(rows[0].in_use, rel=1e-10), rows
