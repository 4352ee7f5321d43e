"""The models and helpers of the in-use tests (test_architectures_inuse.py, test_block_regressions.py)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from backlens import LinearMap

ATOL = 1e-12


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
