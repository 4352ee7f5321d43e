"""A uniform random sample of at most `cap` rows of a stream (reservoir sampling, algorithm R)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

__all__ = ["Reservoir"]


@dataclass
class Reservoir:
    """A uniform random sample of at most `cap` rows of a stream (reservoir sampling, algorithm R)."""

    cap: int
    seed: int = 0
    seen: int = 0
    rows: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)

    def add(self, *columns: torch.Tensor) -> None:
        """Offer rows (the same row of every column goes in or out together)."""
        n = len(columns[0])
        joined = torch.cat([c.reshape(n, -1).detach().to("cpu", torch.float64) for c in columns], dim=1)
        take = min(n, max(0, self.cap - len(self.rows)))
        self.rows.extend(joined[:take])
        if take < n:  # row i replaces a uniform slot j in [0, seen + i] when j < cap
            later = torch.arange(take, n, dtype=torch.float64)
            draws = torch.rand(n - take, generator=self._generator, dtype=torch.float64)
            slots = (draws * (self.seen + later + 1)).floor().long()
            for i, j in zip(later.long().tolist(), slots.tolist(), strict=True):
                if j < self.cap:
                    self.rows[j] = joined[i]
        self.seen += n

    def columns(self, widths: Iterable[int]) -> tuple[torch.Tensor, ...]:
        """The sample split back into its columns."""
        stacked = torch.stack(self.rows) if self.rows else torch.empty(0, sum(widths), dtype=torch.float64)
        return tuple(torch.split(stacked, list(widths), dim=1))

    def rng_state(self) -> torch.Tensor:
        """The generator's state (for checkpoints)."""
        return self._generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self._generator.set_state(state)
