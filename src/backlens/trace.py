"""Record what flows through selected modules: inputs, output, grad_input, grad_output per call."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .errors import BacklensError, check_choice, check_module, fail

__all__ = ["trace", "Trace", "ModuleRecord", "Call"]

Selector = str | type[nn.Module]


@dataclass
class Call:
    """One call of one module: what went in and out, forward and backward."""

    module: str
    index: int
    inputs: tuple[torch.Tensor | None, ...]
    output: Any
    grad_inputs: tuple[torch.Tensor | None, ...] | None = None
    grad_outputs: tuple[torch.Tensor | None, ...] | None = None

    @property
    def input(self) -> torch.Tensor | None:
        return _first(self.inputs)

    @property
    def grad_input(self) -> torch.Tensor | None:
        return None if self.grad_inputs is None else _first(self.grad_inputs)

    @property
    def grad_output(self) -> torch.Tensor | None:
        return None if self.grad_outputs is None else _first(self.grad_outputs)


def _first(values: Any) -> Any:
    if isinstance(values, torch.Tensor) or values is None:
        return values
    return values[0] if len(values) else None


@dataclass
class ModuleRecord:
    """Every call of one selected module, in order; single-call shortcuts for the common case."""

    name: str
    module_type: str
    calls: list[Call] = field(default_factory=list)

    def _only_call(self, what: str) -> Call:
        if len(self.calls) != 1:
            raise BacklensError(
                f"{self.name!r}.{what}: expected a module called once, got {len(self.calls)} calls. "
                f"Fix: read rec[{self.name!r}].calls[i].{what} for the call you want."
            )
        return self.calls[0]

    @property
    def input(self) -> torch.Tensor | None:
        return self._only_call("input").input

    @property
    def output(self) -> Any:
        return _first(self._only_call("output").output) if isinstance(
            self._only_call("output").output, tuple
        ) else self._only_call("output").output

    @property
    def grad_input(self) -> torch.Tensor | None:
        return self._only_call("grad_input").grad_input

    @property
    def grad_output(self) -> torch.Tensor | None:
        return self._only_call("grad_output").grad_output


class Trace:
    """The records of one `trace` context, indexed by module name."""

    def __init__(self, names: list[str], types: dict[str, str]) -> None:
        self._records = {name: ModuleRecord(name, types[name]) for name in names}
        self._order: list[str] = []

    @property
    def names(self) -> list[str]:
        """Selected module names that ran, in execution order (then those that never ran)."""
        return self._order + [n for n in self._records if n not in self._order]

    def __getitem__(self, name: str) -> ModuleRecord:
        if name not in self._records:
            raise fail("name", "a traced module name (" + ", ".join(self._records) + ")", repr(name),
                       "use one of rec.names")
        return self._records[name]

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def __iter__(self) -> Iterator[ModuleRecord]:
        return (self._records[n] for n in self.names)

    def __len__(self) -> int:
        return len(self._records)


_DETACHERS: dict[str | None, Callable[[torch.Tensor], torch.Tensor]] = {
    "cpu": lambda t: t.detach().to("cpu", copy=True),
    "device": lambda t: t.detach().clone(),
}


def _detach(value: Any, store: str | None) -> Any:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return _DETACHERS[store](value)
    if isinstance(value, (tuple, list)):
        return tuple(_detach(v, store) for v in value)
    return value


def _select(model: nn.Module, select: Sequence[Selector] | None) -> list[str]:
    named = dict(model.named_modules())
    if select is None:
        return [n for n, m in named.items() if n and not any(True for _ in m.children())] or [""]
    if isinstance(select, (str, type)):
        select = [select]
    chosen: list[str] = []
    for selector in select:
        if isinstance(selector, type) and issubclass(selector, nn.Module):
            hits = [n for n, m in named.items() if isinstance(m, selector)]
        elif isinstance(selector, str):
            hits = [n for n in named if n == selector or (n and fnmatch.fnmatchcase(n, selector))]
        else:
            raise fail("select", "module names, glob patterns or nn.Module types", repr(selector),
                       "pass e.g. ['0', 'blocks.*.mlp', nn.Linear]")
        if not hits:
            import difflib

            close = difflib.get_close_matches(str(selector), [n for n in named if n], n=5, cutoff=0.3)
            raise fail("select", "a selector matching a module", repr(selector),
                       "use one of " + ", ".join(close or [n for n in named if n][:10]))
        chosen.extend(h for h in hits if h not in chosen)
    order = list(named)
    return sorted(chosen, key=order.index)


class trace:  # noqa: N801 - used as a context manager, named like a function
    """Hook the selected modules of `model` for the body of a `with` block.

    store: "cpu" keeps detached copies on the CPU, "device" detached copies where they were,
    None keeps nothing (only `on_record` sees each call). Hooks are removed on exit, also
    when the body raises, and an enabled flag silences any that autograd still holds.
    """

    def __init__(
        self,
        model: nn.Module,
        select: Sequence[Selector] | Selector | None = None,
        store: str | None = "cpu",
        on_record: Callable[[Call], None] | None = None,
    ) -> None:
        self.model = check_module("model", model)
        check_choice("store", store, ["cpu", "device", None])
        self.store = store
        self.on_record = on_record
        self.selected = _select(model, select)  # type: ignore[arg-type]
        modules = dict(model.named_modules())
        self.record = Trace(self.selected, {n: type(modules[n]).__name__ for n in self.selected})
        self._handles: list[RemovableHandle] = []
        self._pending: dict[str, list[Call]] = {n: [] for n in self.selected}
        self._enabled = False

    def __enter__(self) -> Trace:
        modules = dict(self.model.named_modules())
        self._enabled = True
        try:
            for name in self.selected:
                module = modules[name]
                self._handles.append(module.register_forward_hook(self._forward_hook(name)))
                self._handles.append(module.register_full_backward_hook(self._backward_hook(name)))
        except BaseException:
            self._remove()
            raise
        return self.record

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def _remove(self) -> None:
        self._enabled = False
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _keep(self, value: Any) -> Any:
        return _detach(value, self.store) if self.store is not None else None

    def _forward_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if not self._enabled:
                return
            record = self.record[name]
            if name not in self.record._order:
                self.record._order.append(name)
            call = Call(name, len(record.calls), self._keep(inputs), self._keep(output))
            if self.store is not None:
                record.calls.append(call)
            if torch.is_grad_enabled() and _needs_grad(output):
                self._pending[name].append(call)
            elif self.on_record is not None:
                self.on_record(call)

        return hook

    def _backward_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, grad_input: tuple[Any, ...], grad_output: tuple[Any, ...]) -> None:
            if not self._enabled or not self._pending[name]:
                return
            # Backward visits the calls of one module in reverse order of their forward.
            call = self._pending[name].pop()
            call.grad_inputs = self._keep(grad_input) if self.store else _detach(grad_input, "device")
            call.grad_outputs = self._keep(grad_output) if self.store else _detach(grad_output, "device")
            if self.on_record is not None:
                self.on_record(call)

        return hook


def _needs_grad(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.requires_grad
    if isinstance(value, (tuple, list)):
        return any(_needs_grad(v) for v in value)
    return False


def module_names(model: nn.Module) -> Iterable[str]:
    """Names of every submodule, as `model.named_modules()` gives them."""
    return (n for n, _ in model.named_modules() if n)
