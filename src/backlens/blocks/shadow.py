"""Shadow mode: while training with one backward method, the angle of each layer's update to the
true backprop gradient (Lillicrap's alignment), without changing the training.

At every backward, the model's forward is replayed on a hook-free copy taken just before it
(same parameters, buffers and random state), and the true gradients for the same output error
e = dL/d(output) are compared, once the backward has finished, with what the method left in
each parameter's .grad during it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..torch_private import queue_callback

__all__ = ["Shadow"]

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hook_free_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose hook dicts start empty: the memo maps each of the model's hook dicts to a
    fresh one, so the hooks (and whatever state they hold) are never copied."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for hooks in HOOK_DICTS:
            memo[id(getattr(module, hooks))] = type(getattr(module, hooks))()
    return copy.deepcopy(model, memo)


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    denom = float(a.norm() * b.norm())
    if denom == 0:
        return math.nan
    return math.degrees(math.acos(max(-1.0, min(1.0, float(a @ b) / denom))))


class _Tap(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, on_error: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.on_error = on_error
        return out.clone()

    @staticmethod
    def backward(ctx: Any, e: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        ctx.on_error(e)
        return e, None


@dataclass
class Shadow:
    """Angles in degrees per layer name, one per measured backward: of the method in use
    (`angles`), and of each other listed method (`others[method]`), computed on a copy of the
    model that runs that method's backward from the same parameters, batch and output error."""

    model: nn.Module
    names: list[str]
    angles: dict[str, list[float]] = field(default_factory=dict)
    others: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    twins: dict[str, nn.Module] = field(default_factory=dict)

    def _own(self, module: nn.Module) -> list[nn.Parameter]:
        return [p for p in module.parameters(recurse=False) if p.requires_grad]

    def _measure(
        self, twin: nn.Module, inputs: tuple[Any, dict], rng: torch.Tensor, before: dict, e: torch.Tensor
    ) -> None:
        args, kwargs = inputs
        current = torch.get_rng_state()
        torch.set_rng_state(rng)  # the replay draws what the forward drew
        with torch.enable_grad():
            out = twin(*args, **kwargs)
            params = [p for n in self.names for p in self._own(twin.get_submodule(n))]
            true = torch.autograd.grad(out, params, e, allow_unused=True)
        truth = dict(zip(map(id, params), true, strict=True))
        twins = {n: self._own(twin.get_submodule(n)) for n in self.names}
        want_by_layer = {n: self._flat([truth[id(q)] for q in twins[n]], twins[n]) for n in self.names}
        for method, other in self.twins.items():
            torch.set_rng_state(rng)
            self._measure_other(method, other, inputs, e, want_by_layer)
        torch.set_rng_state(current)

        def compare() -> None:  # after the backward: .grad holds what the method sent
            for name in self.names:
                own = self._own(self.model.get_submodule(name))
                got = [
                    (p.grad - before.get(id(p), 0)).reshape(-1)
                    if p.grad is not None
                    else torch.zeros(p.numel())
                    for p in own
                ]
                want = [
                    (truth[id(t)] if truth[id(t)] is not None else torch.zeros_like(t)).reshape(-1)
                    for t in twins[name]
                ]
                if got:
                    self.angles.setdefault(name, []).append(
                        _angle(torch.cat(got).double(), torch.cat(want).double())
                    )

        queue_callback(compare)

    @staticmethod
    def _flat(grads: list[torch.Tensor | None], like: list[nn.Parameter]) -> torch.Tensor:
        parts = [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, like, strict=True)
        ]
        return torch.cat(parts).double() if parts else torch.zeros(0, dtype=torch.float64)

    def _measure_other(
        self, method: str, twin: nn.Module, inputs: tuple[Any, dict], e: torch.Tensor, want: dict
    ) -> None:
        """`method`'s update for the same batch and output error, against backprop's, per layer."""
        args, kwargs = inputs
        with torch.enable_grad():
            out = twin(*args, **kwargs)
            own = {n: self._own(twin.get_submodule(n)) for n in self.names}
            params = [p for n in self.names for p in own[n]]
            grads = dict(
                zip(map(id, params), torch.autograd.grad(out, params, e, allow_unused=True), strict=True)
            )
        angles = self.others.setdefault(method, {})
        for name in self.names:
            if own[name]:
                got = self._flat([grads[id(p)] for p in own[name]], own[name])
                angles.setdefault(name, []).append(_angle(got, want[name]))

    @classmethod
    @contextmanager
    def watching(
        cls, model: nn.Module, names: list[str], others: dict[str, Any] | None = None
    ) -> Iterator[Shadow]:
        """`others`: {method: a function opening that method's linear_backward on a given model}."""
        shadow = cls(model, names)
        pending: dict[str, Any] = {}
        stack = ExitStack()
        for method, open_on in (others or {}).items():
            twin = _hook_free_copy(model)
            stack.enter_context(open_on(twin))
            shadow.twins[method] = twin

        def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            for twin in shadow.twins.values():  # each method's copy starts from the model's state
                with torch.no_grad():
                    twin.load_state_dict(model.state_dict())
            pending.update(
                twin=_hook_free_copy(model),
                inputs=(args, kwargs),
                rng=torch.get_rng_state(),
                before={id(p): p.grad.detach().clone() for p in model.parameters() if p.grad is not None},
            )

        def after(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
            state = dict(pending)
            return _Tap.apply(
                out,
                lambda e: shadow._measure(state["twin"], state["inputs"], state["rng"], state["before"], e),
            )

        handles = [
            model.register_forward_pre_hook(before, with_kwargs=True),
            model.register_forward_hook(after, with_kwargs=True),
        ]
        try:
            with stack:
                yield shadow
        finally:
            for handle in handles:
                handle.remove()
