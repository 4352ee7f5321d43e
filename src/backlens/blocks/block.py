"""Block: a part of a model that is a clean cut of its dataflow — one module, or a span of a Sequential.

A block is either one module (any module, container or leaf: its input → its output), or a
span `start … end` of modules that one plain `nn.Sequential` (nested plain Sequentials
opened) runs one after the other. Only there does the definition order tell the execution
order and the dataflow: a Sequential passes each output to the next module and to nothing
else. A span anywhere else (inside a module whose own forward may call F.relu between two
layers, run them in another order, or add a skip connection across them) is refused with the
enclosing module to use instead: never a silently wrong block.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from torch import nn

from ..byhand.chain import NotAChain, chain_leaves, is_plain_sequential, read_chain
from ..errors import check_module, check_positive_int, fail
from ..torch_private import child_modules

__all__ = ["Block", "is_plain_sequential"]


def _units(prefix: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules a plain Sequential runs in order, nested plain Sequentials opened."""
    if not is_plain_sequential(module):
        return [(prefix, module)]
    units: list[tuple[str, nn.Module]] = []
    for key, child in child_modules(module).items():
        if child is not None:
            units += _units(f"{prefix}.{key}" if prefix else key, child)
    return units


def _module_paths(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name}


def _check_path(model: nn.Module, argument: str, path: str) -> None:
    paths = _module_paths(model)
    if path == "":  # the model itself: its input -> its output
        return
    if not isinstance(path, str) or path not in paths:
        close = difflib.get_close_matches(str(path), list(paths), n=6, cutoff=0.3)
        listing = ", ".join(close or list(paths)[:12])
        raise fail(argument, f"a module path of the model (e.g. {listing})", repr(path), "pick one of those")


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _common_container(start: str, end: str) -> str:
    a, b = start.split("."), end.split(".")
    common: list[str] = []
    for x, y in zip(a[:-1], b[:-1], strict=False):
        if x != y:
            break
        common.append(x)
    return ".".join(common)


@dataclass(frozen=True)
class Block:
    """The part of `model` from the input of module `start` to the output of module `end`.

    `Block(model, "encoder.layers.0")`: one module. `Block(model, "0", "4")`: a span of a
    plain nn.Sequential. Its forward map takes the activation entering the block to the one
    leaving it; its backward map takes the gradient at the block's output to the gradient at
    its input through the block alone (grad_in ≈ grad_out·M, row vectors). `output` picks one
    element when the module returns a tuple (a GRU's (output, h_n)).
    """

    model: nn.Module = field(repr=False, compare=False)
    start: str
    end: str | None = None
    output: int | None = None

    def __post_init__(self) -> None:
        check_module("model", self.model)
        _check_path(self.model, "start", self.start)
        if self.end is not None and self.end != self.start:
            _check_path(self.model, "end", self.end)
            self._check_span()
        if self.output is not None and (isinstance(self.output, bool) or not isinstance(self.output, int)):
            raise fail(
                "output", "an int index into the module's tuple output", repr(self.output), "pass 0 or 1"
            )

    def _check_span(self) -> None:
        assert self.end is not None
        container = _common_container(self.start, self.end)
        for part in (self.start, self.end):
            for step in _ancestors(container, _parent(part)):
                module = self.model.get_submodule(step) if step else self.model
                if not is_plain_sequential(module):
                    raise fail(
                        "start, end",
                        "a span of modules run one after the other by one plain nn.Sequential",
                        f"{self.start!r}…{self.end!r} inside {step or 'the model'!r} "
                        f"({type(module).__name__}, whose own forward decides order and dataflow)",
                        f"use the enclosing module, Block(model, {_callable_ancestor(self.model, step)!r}) "
                        "('' is the whole model), or one module per block",
                    )
        names = [n for n, _ in self._span_units()]
        if not names:
            raise fail(
                "start, end",
                "start before end in execution order",
                f"{self.start!r} after {self.end!r}",
                "swap them",
            )

    def _span_units(self) -> list[tuple[str, nn.Module]]:
        assert self.end is not None
        container = _common_container(self.start, self.end)
        units = _units(container, self.model.get_submodule(container) if container else self.model)
        inside = lambda name, path: name == path or name.startswith(path + ".")  # noqa: E731
        first = next(
            (i for i, (n, _) in enumerate(units) if inside(n, self.start) or inside(self.start, n)), None
        )
        last = max(
            (i for i, (n, _) in enumerate(units) if inside(n, self.end) or inside(self.end, n)), default=None
        )
        if first is None or last is None or first > last:
            return []
        return units[first : last + 1]

    @property
    def container(self) -> nn.Module | None:
        """For a span, the plain Sequential that runs it (the model itself for top-level spans)."""
        if not self.is_span:
            return None
        assert self.end is not None
        path = _common_container(self.start, self.end)
        return self.model.get_submodule(path) if path else self.model

    @property
    def is_span(self) -> bool:
        return self.end is not None and self.end != self.start

    @property
    def names(self) -> list[str]:
        """The block's modules in execution order: the span's units, or the one module."""
        return [n for n, _ in self._span_units()] if self.is_span else [self.start]

    @property
    def modules(self) -> list[nn.Module]:
        return [self.model.get_submodule(n) for n in self.names]

    @property
    def entry(self) -> nn.Module:
        """The module whose input is the block's input."""
        return self.modules[0]

    @property
    def exit(self) -> nn.Module:
        """The module whose output is the block's output."""
        return self.modules[-1]

    @property
    def label(self) -> str:
        return self.start if self.end is None else f"{self.start}:{self.end}"

    def layers(self) -> nn.Module:
        """The block's own code as one module sharing the model's parameters: the module itself,
        or a Sequential of the span's modules (what the enclosing Sequentials run)."""
        return self.modules[0] if not self.is_span else nn.Sequential(*self.modules)

    def not_a_chain(self) -> str | None:
        """Why the block is not a Linear/activation chain (`byhand.chain`), or None if it is one."""
        if self.is_span:
            leaves = list(zip(self.names, self.modules, strict=True))
        else:  # named by their paths in the model
            leaves = [(".".join(p for p in (self.start, n) if p), m) for n, m in chain_leaves(self.layers())]
        chain = read_chain(leaves)
        return chain.got if isinstance(chain, NotAChain) else None

    def is_linear_chain(self) -> bool:
        """True when the block is a chain of Linear layers and elementwise activations."""
        return self.not_a_chain() is None

    @property
    def in_features(self) -> int:
        first = chain_leaves(self.layers())[0][1]
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
        last = [m for _, m in chain_leaves(self.layers()) if isinstance(m, nn.Linear)]
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
        """The natural blocks: for a Sequential MLP, every window of `size` consecutive Linear
        layers; otherwise each layer of every ModuleList/Sequential stack (transformer layers,
        residual blocks, conv stages), else each top-level child with parameters."""
        check_module("model", model)
        check_positive_int("size", size)
        units = _units("", model)
        linears = [n for n, m in units if type(m) is nn.Linear]
        if is_plain_sequential(model) and len(linears) >= 2:
            if len(linears) < size:
                raise fail(
                    "size",
                    f"at most the number of Linear layers ({len(linears)})",
                    size,
                    "pick a smaller window",
                )
            return [cls(model, linears[i], linears[i + size - 1]) for i in range(len(linears) - size + 1)]
        return [cls(model, path) for path in _stack_layers(model)]

    @classmethod
    def parse(cls, model: nn.Module, blocks: str) -> list[Block]:
        """'all', or comma-separated module paths ('encoder.layers.0') and spans ('0:2')."""
        if not isinstance(blocks, str):
            raise fail(
                "blocks",
                "a string like 'all', 'encoder.layers.0' or '0:2,2:4'",
                repr(blocks),
                "pass the block spec as text",
            )
        if blocks.strip() == "all":
            return cls.all(model, size=2)
        parsed = []
        for part in blocks.split(","):
            start, colon, end = part.strip().partition(":")
            if not start or (colon and not end.strip()):
                raise fail(
                    "blocks",
                    "module paths or start:end spans, comma-separated",
                    repr(part),
                    "write e.g. encoder.layers.0 or 0:2",
                )
            parsed.append(cls(model, start.strip(), end.strip() if colon else None))
        return parsed


def _callable_ancestor(model: nn.Module, path: str) -> str:
    """`path`, or its nearest ancestor that has a forward (a ModuleList or ModuleDict has none)."""
    while path and isinstance(model.get_submodule(path), (nn.ModuleList, nn.ModuleDict)):
        path = _parent(path)
    return path


def _ancestors(container: str, parent: str) -> list[str]:
    """Paths from `container` down to `parent` (both included), `parent` inside `container`."""
    steps = [container]
    rest = parent[len(container) :].lstrip(".") if container else parent
    current = container
    for part in [p for p in rest.split(".") if p]:
        current = f"{current}.{part}" if current else part
        steps.append(current)
    return steps


def _stack_layers(model: nn.Module) -> list[str]:
    """Children of ModuleLists and Sequentials that are themselves containers (the layers of a
    stack), outermost stacks first; failing those, the top-level children with parameters."""
    found: list[str] = []
    for path, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        if any(path == f or path.startswith(f + ".") for f in found if f):
            continue  # a stack inside a layer already listed
        for key, child in child_modules(module).items():
            if child is not None and any(True for _ in child.children()):
                found.append(f"{path}.{key}" if path else key)
    if found:
        return found
    return [name for name, child in model.named_children() if any(True for _ in child.parameters())]
