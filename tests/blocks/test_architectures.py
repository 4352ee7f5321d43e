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

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from backlens import BacklensError, Block, collect, compare, fit_method, mean_jacobian
from backlens.blocks.methods import DEFAULT_METHODS

ATOL = 1e-12


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: with two intra-op threads on a loaded 2-core machine each op waits on the
    # other thread, and this file runs ~70× slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- the architectures ----------------------------------------------------------------------


class ReluInForward(nn.Module):
    """fc1 → F.relu (no module) → fc2."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 5), nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class OutOfOrder(nn.Module):
    """Defined b then a, called a → tanh → b."""

    def __init__(self) -> None:
        super().__init__()
        self.b, self.a = nn.Linear(4, 2), nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


class ResBlock(nn.Module):
    """x + mlp(norm(x)) (prenorm) or x + mlp(x); mlp = Linear → Tanh (or Identity) → Linear."""

    def __init__(self, d: int, prenorm: bool, linear: bool = False) -> None:
        super().__init__()
        self.prenorm = prenorm
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 5), nn.Identity() if linear else nn.Tanh(), nn.Linear(5, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x) if self.prenorm else x)


class ResMLP(nn.Module):
    def __init__(self, prenorm: bool, linear: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.layers = nn.ModuleList([ResBlock(4, prenorm, linear) for _ in range(2)])
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


class TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 8)
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens))[:, 0])


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.head = nn.Linear(3 * 2 * 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class GRUClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru, self.head = nn.GRU(2, 4, batch_first=True), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def built(factory: Callable[[], nn.Module]) -> nn.Module:
    """float64, eval mode, with non-trivial norm parameters and running statistics."""
    torch.manual_seed(1)
    model = factory().double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def data(kind: str, n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f64 = {"dtype": torch.float64, "generator": g}
    if kind == "mlp":
        return torch.randn(n, 3, **f64), torch.randn(n, 2, **f64)
    if kind == "tokens":
        return torch.randint(0, 7, (n, 5), generator=g), torch.randint(0, 3, (n,), generator=g)
    if kind == "images":
        return torch.randn(n, 2, 4, 4, **f64), torch.randint(0, 2, (n,), generator=g)
    return torch.randn(n, 5, 2, **f64), torch.randint(0, 3, (n,), generator=g)  # sequences


def loader(kind: str, seed: int = 0) -> DataLoader:
    return DataLoader(TensorDataset(*data(kind, seed=seed)), batch_size=6)


Fn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Case:
    name: str
    factory: Callable[[], nn.Module]
    start: str
    end: str | None
    pre: Fn  # (model, x) -> block input
    block: Fn  # (model, a_in) -> block output: the block's own code, by hand
    post: Fn  # (model, x, a_out) -> model output
    kind: str
    loss: str
    positions: str | None = None
    output: int | None = None

    def make(self) -> tuple[nn.Module, Block]:
        model = built(self.factory)
        return model, Block(model, self.start, self.end, output=self.output)


ident = lambda m, x: x  # noqa: E731
same = lambda m, x, a: a  # noqa: E731
pre_res = lambda m, x: m.layers[0](m.inp(x))  # noqa: E731
res_rest = lambda m, x, a: m.head(m.layers[1](m.inp(x) + a))  # noqa: E731 (skip from x, not a_in)
cnn_rest = lambda k: lambda m, x, a: m.head(m.features[k:](a).flatten(1))  # noqa: E731
PRE, PLAIN = (lambda: ResMLP(True)), (lambda: ResMLP(False))
CASES = [
    Case("relu-whole", ReluInForward, "", None, ident, lambda m, a: m(a), same, "mlp", "mse"),
    Case(
        "relu-fc1", ReluInForward, "fc1", None, ident, lambda m, a: m.fc1(a),
        lambda m, x, a: m.fc2(F.relu(a)), "mlp", "mse",
    ),
    Case(
        "relu-fc2", ReluInForward, "fc2", None, lambda m, x: F.relu(m.fc1(x)), lambda m, a: m.fc2(a),
        same, "mlp", "mse",
    ),
    Case("order-whole", OutOfOrder, "", None, ident, lambda m, a: m(a), same, "mlp", "mse"),
    Case(
        "order-a", OutOfOrder, "a", None, ident, lambda m, a: m.a(a),
        lambda m, x, a: m.b(torch.tanh(a)), "mlp", "mse",
    ),
    Case(
        "order-b", OutOfOrder, "b", None, lambda m, x: torch.tanh(m.a(x)), lambda m, a: m.b(a),
        same, "mlp", "mse",
    ),
    Case(
        "prenorm-layer", PRE, "layers.0", None, lambda m, x: m.inp(x), lambda m, a: m.layers[0](a),
        lambda m, x, a: m.head(m.layers[1](a)), "mlp", "mse",
    ),
    Case(
        "prenorm-mlp", PRE, "layers.0.mlp", None, lambda m, x: m.layers[0].norm(m.inp(x)),
        lambda m, a: m.layers[0].mlp(a), res_rest, "mlp", "mse",
    ),
    Case(
        "prenorm-mlp-span", PRE, "layers.0.mlp.0", "layers.0.mlp.2",
        lambda m, x: m.layers[0].norm(m.inp(x)), lambda m, a: m.layers[0].mlp(a), res_rest, "mlp", "mse",
    ),
    Case(
        "plain-mlp", PLAIN, "layers.0.mlp", None, lambda m, x: m.inp(x), lambda m, a: m.layers[0].mlp(a),
        res_rest, "mlp", "mse",
    ),
    Case(
        "plain-layer1", PLAIN, "layers.1", None, pre_res, lambda m, a: m.layers[1](a),
        lambda m, x, a: m.head(a), "mlp", "mse",
    ),
    Case(
        "transformer-layer0", TinyTransformer, "encoder.layers.0", None, lambda m, x: m.embed(x),
        lambda m, a: m.encoder.layers[0](a), lambda m, x, a: m.head(m.encoder.layers[1](a)[:, 0]),
        "tokens", "ce",
    ),
    Case(
        "transformer-encoder", TinyTransformer, "encoder", None, lambda m, x: m.embed(x),
        lambda m, a: m.encoder(a), lambda m, x, a: m.head(a[:, 0]), "tokens", "ce",
    ),
    Case("cnn-conv", CNN, "features.0", None, ident, lambda m, a: m.features[0](a), cnn_rest(1),
         "images", "ce"),
    Case("cnn-conv-flat", CNN, "features.0", None, ident, lambda m, a: m.features[0](a), cnn_rest(1),
         "images", "ce", positions="flat"),
    Case("cnn-bn", CNN, "features.1", None, lambda m, x: m.features[0](x),
         lambda m, a: m.features[1](a), cnn_rest(2), "images", "ce"),
    Case("cnn-span", CNN, "features.0", "features.2", ident, lambda m, a: m.features[:3](a),
         cnn_rest(3), "images", "ce"),
    Case("cnn-span-flat", CNN, "features.0", "features.2", ident, lambda m, a: m.features[:3](a),
         cnn_rest(3), "images", "ce", positions="flat"),
    Case("gru", GRUClassifier, "gru", None, ident, lambda m, a: m.gru(a)[0],
         lambda m, x, a: m.head(a[:, -1]), "sequences", "ce", output=0),
]  # fmt: skip
IDS = [c.name for c in CASES]


# ---- oracles --------------------------------------------------------------------------------


def rows(t: torch.Tensor, positions: str) -> torch.Tensor:
    """Features per token (last axis) or per pixel (channel axis), or one row per sample."""
    if positions == "flat" or t.ndim == 2:
        return t.reshape(len(t), -1)
    return (t.movedim(1, -1) if t.ndim == 4 else t).reshape(-1, t.shape[1 if t.ndim == 4 else -1])


def hand_pairs(case: Case, model: nn.Module, positions: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Forward (a_in, a_out) and backward (g_out, g_in through the block alone), batch by batch."""
    loss_fn = {"mse": F.mse_loss, "ce": F.cross_entropy}[case.loss]
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("fx", "fy", "bx", "by")}
    for x, y in loader(case.kind):
        a_in = case.pre(model, x).detach().requires_grad_(True)
        a_out = case.block(model, a_in)
        g_out, g_in = torch.autograd.grad(loss_fn(case.post(model, x, a_out), y), [a_out, a_in])
        for key, t in zip(parts, (a_in, a_out, g_out, g_in), strict=True):
            parts[key].append(rows(t.detach(), positions))
    cat = {k: torch.cat(v) for k, v in parts.items()}
    return {"forward": (cat["fx"], cat["fy"]), "backward": (cat["bx"], cat["by"])}


def oracle_jacobian(fn: Fn, X: torch.Tensor, positions: str) -> torch.Tensor:
    """E over samples of ∂f/∂x flattened ("flat"), or of its diagonal blocks ∂y_t/∂x_t ("shared")."""
    total = 0
    for x in X:
        J = torch.autograd.functional.jacobian(lambda v: fn(v[None])[0], x)  # (*out, *in)
        y_shape = J.shape[: J.ndim - x.ndim]
        if positions == "flat" or x.ndim == 1:
            total = total + J.reshape(y_shape.numel(), x.numel())
        elif x.ndim == 2:  # (T, d): J[t, :, t, :]
            total = total + torch.stack([J[t, :, t, :] for t in range(x.shape[0])]).mean(0)
        else:  # (C, H, W): J[:, h, w, :, h, w]
            H, W = x.shape[1:]
            total = total + torch.stack([J[:, h, w, :, h, w] for h in range(H) for w in range(W)]).mean(0)
    return total / len(X)


def collected(case: Case, seed: int = 0, **options):
    model, block = case.make()
    col = collect(
        model, block, loader(case.kind, seed), loss=case.loss, positions=case.positions,
        max_pairs=10_000, show_progress=False, **options,
    )  # fmt: skip
    return model, block, col


# ---- spans: refused unless one plain Sequential runs them ----------------------------------


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
