"""Block: a contiguous run of a model's modules, from `start` to `end`, and its boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..byhand.chain import NotAChain, read_chain
from ..errors import check_module, check_positive_int, fail
from ..recording.select import leaf_names

__all__ = ["Block"]


@dataclass(frozen=True)
class Block:
    """The part of `model` from module `start` to module `end` (names from `model.named_modules()`).

    Its forward map takes the activation entering `start` to the activation leaving `end`; its
    backward map takes the gradient at the block's output to the gradient at its input
    (grad_in ≈ grad_out·M, row vectors). Module order is definition order, which for
    nn.Sequential is execution order.
    """

    model: nn.Module = field(repr=False, compare=False)
    start: str
    end: str

    def __post_init__(self) -> None:
        check_module("model", self.model)
        names = leaf_names(self.model)
        listing = ", ".join(names)
        for argument, name in (("start", self.start), ("end", self.end)):
            if name not in names:
                raise fail(
                    argument,
                    f"a module of the model, in execution order: {listing}",
                    repr(name),
                    "pick names from that list",
                )
        if names.index(self.start) > names.index(self.end):
            raise fail(
                "start, end",
                f"start before end in execution order ({listing})",
                f"start={self.start!r} after end={self.end!r}",
                "swap them",
            )

    @property
    def names(self) -> list[str]:
        """The block's module names, in order."""
        names = leaf_names(self.model)
        return names[names.index(self.start) : names.index(self.end) + 1]

    @property
    def modules(self) -> list[nn.Module]:
        return [self.model.get_submodule(n) for n in self.names]

    @property
    def label(self) -> str:
        return f"{self.start}:{self.end}"

    def layers(self) -> nn.Sequential:
        """The block's modules as a Sequential sharing the model's parameters (for analytic maps)."""
        return nn.Sequential(*self.modules)

    def not_a_chain(self) -> str | None:
        """Why the block is not a Linear/activation chain (`byhand.chain`), or None if it is one."""
        chain = read_chain(list(zip(self.names, self.modules, strict=True)))
        return chain.got if isinstance(chain, NotAChain) else None

    def is_linear_chain(self) -> bool:
        """True when the block is a chain of Linear layers and elementwise activations."""
        return self.not_a_chain() is None

    @property
    def in_features(self) -> int:
        first = self.modules[0]
        if not isinstance(first, nn.Linear):
            raise fail(
                "block",
                "a block that starts with nn.Linear to read its width",
                type(first).__name__,
                "read the width from collected data instead",
            )
        return first.in_features

    @property
    def out_features(self) -> int:
        last = [m for m in self.modules if isinstance(m, nn.Linear)]
        if not last:
            raise fail(
                "block",
                "a block containing nn.Linear to read its width",
                "none",
                "read the width from collected data instead",
            )
        return last[-1].out_features

    @classmethod
    def all(cls, model: nn.Module, size: int = 2) -> list[Block]:
        """Every window of `size` consecutive Linear layers with what lies between them."""
        check_module("model", model)
        check_positive_int("size", size)
        names = leaf_names(model)
        linears = [n for n in names if isinstance(model.get_submodule(n), nn.Linear)]
        if len(linears) < size:
            raise fail(
                "size",
                f"at most the number of Linear layers ({len(linears)})",
                size,
                "pick a smaller window",
            )
        return [cls(model, linears[i], linears[i + size - 1]) for i in range(len(linears) - size + 1)]

    @classmethod
    def parse(cls, model: nn.Module, blocks: str) -> list[Block]:
        """'all' (every Linear→act→Linear window) or 'start:end' module names, comma-separated."""
        if not isinstance(blocks, str):
            raise fail(
                "blocks", "a string like 'all' or '0:2,2:4'", repr(blocks), "pass the block spec as text"
            )
        if blocks == "all":
            return cls.all(model, size=2)
        parsed = []
        for part in blocks.split(","):
            if ":" not in part:
                raise fail(
                    "blocks",
                    "'all' or start:end module names like 0:2",
                    repr(part),
                    "write the first and last module of each block, joined by ':'",
                )
            start, end = part.split(":", 1)
            parsed.append(cls(model, start.strip(), end.strip()))
        return parsed
