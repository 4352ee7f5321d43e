"""The zoo's small architectures: a CNN, a residual MLP, a tiny transformer encoder and a GRU.

Each model is float32, has no dropout (so train and eval modes compute the same function, but
for BatchNorm's statistics) and names its natural blocks as submodules, so that a block is a
module path such as "features.0" or "encoder.layers.1". Shapes: digits images (n, 1, 8, 8),
flat digits (n, 64), token ids (n, T) int64, float sequences (n, T, f); every model returns
logits (n, n_classes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .mlp import build_mlp
from .zoo_data import TOKEN_CLASSES, TOKEN_LENGTH, TOKEN_VOCAB, WAVE_CLASSES, WAVE_FEATURES

__all__ = [
    "conv_block",
    "DigitsCNN",
    "ResidualBlock",
    "ResidualMLP",
    "TinyTransformer",
    "GRUClassifier",
    "seeded",
    "build_zoo_mlp",
    "build_cnn",
    "build_resmlp",
    "build_transformer",
    "build_gru",
]

DIGIT_FEATURES, DIGIT_CLASSES = 64, 10


def seeded(seed: int, factory: Callable[[], nn.Module]) -> nn.Module:
    """`factory()` with its initial weights drawn from `seed`; the global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory().float()


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Conv 3×3 (same padding) → BatchNorm → ReLU: one stage, one block."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


class DigitsCNN(nn.Module):
    """Two conv stages and a 2×2 max-pool on (n, 1, 8, 8) digits, then a linear head."""

    def __init__(self, channels: tuple[int, int] = (8, 16), n_classes: int = DIGIT_CLASSES) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(conv_block(1, c1), conv_block(c1, c2), nn.MaxPool2d(2))
        # 8×8 pooled by 2 leaves 4×4 positions per channel.
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c2 * 4 * 4, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ResidualBlock(nn.Module):
    """Pre-norm residual MLP: x + mlp(norm(x)), width `width`, hidden width `hidden`."""

    def __init__(self, width: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = 2 * width if hidden is None else hidden
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class ResidualMLP(nn.Module):
    """Linear in (64 → width), `depth` residual blocks, linear head (width → classes)."""

    def __init__(
        self,
        n_features: int = DIGIT_FEATURES,
        width: int = 32,
        depth: int = 3,
        n_classes: int = DIGIT_CLASSES,
    ) -> None:
        super().__init__()
        self.inp = nn.Linear(n_features, width)
        self.layers = nn.ModuleList([ResidualBlock(width) for _ in range(depth)])
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


class TinyTransformer(nn.Module):
    """Token + learned position embeddings, a 2-layer encoder, a head on the first position.

    The first position's output classifies: the zoo's token task asks about token 0, so its
    query attending over the sequence is the natural read-out.
    """

    def __init__(self, vocab: int, length: int, n_classes: int, d_model: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Embedding(length, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model=d_model, nhead=4, dim_feedforward=2 * d_model, dropout=0.0, batch_first=True
        )
        # Nested tensors only serve padding masks, which these fixed-length sequences lack.
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.encoder(self.embed(tokens) + self.position(positions))
        return self.head(h[:, 0])


class GRUClassifier(nn.Module):
    """A one-layer GRU over (n, T, f) and a linear head on its output at the last step."""

    def __init__(self, n_features: int, n_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.gru = nn.GRU(n_features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def build_zoo_mlp(seed: int = 0) -> nn.Module:
    """The digits MLP 64-64-64-10 with ReLU (as the design notes' measurements)."""
    return build_mlp([DIGIT_FEATURES, 64, 64, DIGIT_CLASSES], "relu", seed=seed)


def build_cnn(seed: int = 0) -> nn.Module:
    return seeded(seed, DigitsCNN)


def build_resmlp(seed: int = 0) -> nn.Module:
    return seeded(seed, ResidualMLP)


def build_transformer(seed: int = 0) -> nn.Module:
    return seeded(seed, lambda: TinyTransformer(TOKEN_VOCAB, TOKEN_LENGTH, TOKEN_CLASSES))


def build_gru(seed: int = 0) -> nn.Module:
    return seeded(seed, lambda: GRUClassifier(WAVE_FEATURES, WAVE_CLASSES))
