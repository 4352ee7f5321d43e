"""The architectures and cases of test_architectures.py: tiny float64 models, each split by hand
into the part before the block, the block's own code and the rest, and the oracles on them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from backlens import Block, collect

ATOL = 1e-12

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
