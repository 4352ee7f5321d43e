"""The one reading of a Linear/activation chain, shared by the hand engine, analytic maps and blocks.

A chain is, in execution order: exact `nn.Linear` layers (a subclass may override forward),
each used once, with consistent widths; elementwise activations that have a rule in
`rules.py` (Dropout only in eval mode); and `nn.Flatten(start_dim=1, end_dim=-1)`, which
flattens (n, *features) before the first Linear and is a no-op on rows after it. Nested
Sequentials, ModuleLists and lists are opened. Anything else makes it not a chain, and
`NotAChain` says where and why — a value, not an exception, so callers can choose another
path (torch.func) without catching errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import BacklensError, describe, fail
from ..torch_private import BatchNormBase, child_modules
from .rules import SUPPORTED_MODULES, ActivationRule, activation_rule

__all__ = [
    "LinearStep",
    "ActivationStep",
    "ChainLayer",
    "Chain",
    "NotAChain",
    "chain_leaves",
    "is_plain_sequential",
    "read_chain",
    "parse_chain",
]


@dataclass(frozen=True)
class LinearStep:
    """z = a·Wᵀ + b for the Linear named `name` (W in PyTorch layout, out × in)."""

    name: str
    linear: nn.Linear

    def weight64(self) -> torch.Tensor:
        return self.linear.weight.detach().double().cpu()

    def bias64(self) -> torch.Tensor | None:
        return None if self.linear.bias is None else self.linear.bias.detach().double().cpu()


@dataclass(frozen=True)
class ActivationStep:
    """a = σ(z) elementwise, σ and σ' from `rule`; `module` is the model's own module."""

    name: str
    module: nn.Module
    rule: ActivationRule


@dataclass(frozen=True)
class ChainLayer:
    """One Linear layer and the elementwise modules right after it (its activation, maybe none)."""

    name: str
    linear: nn.Linear
    rules: tuple[ActivationRule, ...] = ()
    act_names: tuple[str, ...] = ()  # the activation modules' names in the model

    @property
    def activation(self) -> str | None:
        return " → ".join(rule.name for rule in self.rules) or None


# rules whose σ' is 1: they add no nonlinearity
LINEAR_RULES = ("identity", "dropout(eval)")


@dataclass(frozen=True)
class Chain:
    """The steps of a chain in execution order (Flatten no-ops dropped)."""

    steps: tuple[LinearStep | ActivationStep, ...]
    flatten: bool = False  # an nn.Flatten before the first Linear: x may be (n, *features)

    @property
    def linears(self) -> tuple[LinearStep, ...]:
        return tuple(s for s in self.steps if isinstance(s, LinearStep))

    @property
    def in_features(self) -> int | None:
        """The first Linear's input width; None for a chain of activations only."""
        return self.linears[0].linear.in_features if self.linears else None

    @property
    def out_features(self) -> int | None:
        return self.linears[-1].linear.out_features if self.linears else None

    @property
    def prefix(self) -> tuple[ActivationRule, ...]:
        """Activations before the first Linear."""
        first = next((i for i, s in enumerate(self.steps) if isinstance(s, LinearStep)), len(self.steps))
        return tuple(s.rule for s in self.steps[:first] if isinstance(s, ActivationStep))

    @property
    def layers(self) -> tuple[ChainLayer, ...]:
        """Each Linear with the activations that follow it, as the hand engine walks them."""
        grouped: list[ChainLayer] = []
        for step in self.steps:
            if isinstance(step, LinearStep):
                grouped.append(ChainLayer(step.name, step.linear))
            elif grouped:
                last = grouped[-1]
                grouped[-1] = ChainLayer(
                    last.name, last.linear, (*last.rules, step.rule), (*last.act_names, step.name)
                )
        return tuple(grouped)

    @property
    def nonlinearities(self) -> int:
        return sum(1 for s in self.steps if isinstance(s, ActivationStep) and s.rule.name not in LINEAR_RULES)


@dataclass(frozen=True)
class NotAChain:
    """Why some modules are not a chain: the module at `position` (named `name`), and what fails."""

    position: int
    name: str
    expected: str
    got: str
    unsupported: bool = False  # True: a module kind with no rule (fix: another path)

    def error(self, argument: str, fix: str) -> BacklensError:
        return fail(argument, self.expected, self.got, fix if self.unsupported else self._fix())

    def _fix(self) -> str:
        if "eval mode" in self.expected:
            return "call model.eval() first"
        if "Flatten" in self.expected:
            return "flatten only the feature dimensions"
        if "used once" in self.expected:
            return "give every layer its own nn.Linear"
        return "pass consecutive layers of one block"


def is_plain_sequential(module: nn.Module) -> bool:
    """An nn.Sequential whose forward is Sequential's own: it runs its children in order, and
    nothing else (a subclass with its own forward may add a skip connection)."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def chain_leaves(layers: Any) -> list[tuple[str, nn.Module]]:
    """(name, module) leaves in execution order: a Sequential (nested Sequentials opened, names as
    in `named_modules()`, "0.1"), or a ModuleList/list/tuple of modules (names are positions).

    A module used twice appears twice; any other container is a leaf (and not a chain).
    """
    if isinstance(layers, (nn.ModuleList, list, tuple)):
        modules = child_modules(layers).values() if isinstance(layers, nn.ModuleList) else layers
        items = list(enumerate(modules))
        leaves: list[tuple[str, nn.Module]] = []
        for key, item in items:
            leaves += [(f"{key}.{n}" if n else str(key), m) for n, m in chain_leaves(item)]
        return leaves
    if is_plain_sequential(layers):
        return [
            (f"{key}.{n}" if n else key, m)
            for key, child in child_modules(layers).items()
            if child is not None
            for n, m in (chain_leaves(child) if is_plain_sequential(child) else [("", child)])
        ]
    if isinstance(layers, nn.Module):
        return [("", layers)]
    raise fail(
        "layers",
        "an nn.Sequential (or list) of Linear layers and elementwise activations",
        describe(layers),
        "pass the block's layers",
    )


def _where(module: nn.Module, position: int, name: str, kind: str | None = None) -> str:
    label = f"name {name!r}" if name else "the model itself"
    return f"{kind or type(module).__name__} at position {position} ({label})"


def _not_supported(module: nn.Module, position: int, name: str) -> NotAChain:
    where = _where(module, position, name)
    if isinstance(module, nn.Dropout) and module.training:
        return NotAChain(position, name, "Dropout in eval mode (in training mode it is random)", where)
    if isinstance(module, nn.Flatten):
        detail = f"{type(module).__name__}(start_dim={module.start_dim}, end_dim={module.end_dim})"
        got = _where(module, position, name, detail)
        return NotAChain(position, name, "nn.Flatten(start_dim=1, end_dim=-1)", got)
    batch_norm = isinstance(module, BatchNormBase)
    mode = " in training mode" if module.training and batch_norm else ""
    expected = f"only these modules: {SUPPORTED_MODULES}"
    return NotAChain(position, name, expected, where + mode, unsupported=True)


def read_chain(leaves: Sequence[tuple[str, nn.Module]]) -> Chain | NotAChain:
    """The chain these (name, module) leaves form, or why they form none."""
    steps: list[LinearStep | ActivationStep] = []
    flatten = False
    width: int | None = None
    seen: dict[int, str] = {}
    for position, (name, module) in enumerate(leaves):
        if type(module) is nn.Linear:
            if id(module) in seen:
                got = f"the Linear at position {position} (name {name!r}) is also {seen[id(module)]!r}"
                return NotAChain(position, name, "each Linear layer used once", got)
            if width is not None and module.in_features != width:
                got = _where(module, position, name, repr(module))
                return NotAChain(position, name, f"a Linear taking {width} features", got)
            seen[id(module)] = name
            steps.append(LinearStep(name, module))
            width = module.out_features
        elif type(module) is nn.Flatten and module.start_dim == 1 and module.end_dim == -1:
            flatten = flatten or width is None  # after a Linear, rows are already flat: a no-op
        elif (rule := activation_rule(module)) is not None:
            steps.append(ActivationStep(name, module, rule))
        else:
            return _not_supported(module, position, name)
    return Chain(tuple(steps), flatten)


def parse_chain(leaves: Sequence[tuple[str, nn.Module]], argument: str, fix: str) -> Chain:
    """read_chain, raising a BacklensError about `argument` (with `fix` for unsupported modules)."""
    chain = read_chain(leaves)
    if isinstance(chain, NotAChain):
        raise chain.error(argument, fix)
    return chain
