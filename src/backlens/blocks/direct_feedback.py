"""Direct feedback alignment (Nøkland 2016): the output error e = dL/d(output) goes straight to
every layer's input through a fixed random matrix, δ at hidden layer l's output = e·B_l, and no
layer sends a gradient below itself.

Shape convention: row vectors; e (n, k) flattened per sample, B_l (k × numel of the activation
that hidden layer l hands to the next layer), drawn once from U(−1/√k, 1/√k) with the context's
seeded generator (TinyDFA scales its uniform B by 1/√dim likewise).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import describe, fail

__all__ = ["direct_feedback"]


class _DirectFeedback(torch.autograd.Function):
    """The output passes unchanged; in the backward its gradient e also reaches every recorded
    layer input a_l as send(e)[l]."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, send: Callable, *inputs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.send = send
        return out.clone()

    @staticmethod
    def backward(ctx: Any, e: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        return (e, None, *ctx.send(e))


def _matrix(lb: Any, key: str, k: int, width: int, like: torch.Tensor) -> torch.Tensor:
    if key not in lb.fixed:
        draw = torch.rand(k, width, generator=lb.generator, dtype=torch.float64)
        lb.fixed[key] = ((2 * draw - 1) / math.sqrt(k)).to(like.dtype)
    B = lb.fixed[key]
    if B.shape != (k, width):
        raise fail(
            "model",
            f"the same shapes in every forward for 'dfa' ({key}: {tuple(B.shape)})",
            f"({k}, {width})",
            "keep the batch's per-sample shapes fixed",
        )
    return B


@contextmanager
def direct_feedback(lb: Any, layers: dict[str, nn.Module]) -> Iterator[None]:
    """Hooks for dfa on `lb.model`: each layer but the first of a forward gets a detached input;
    the model's output carries e to those inputs."""
    model = lb.model
    calls: list[tuple[str, torch.Tensor]] = []  # (layer name, its real input), in call order

    def start(module: nn.Module, args: tuple[Any, ...]) -> None:
        calls.clear()

    def enter(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> Any:
            x = args[0]
            calls.append((name, x))
            return None if len(calls) == 1 else (x.detach(), *args[1:])

        return hook

    def finish(module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        if not isinstance(out, torch.Tensor):
            raise fail("model", "a model returning one tensor for 'dfa'", describe(out), "use a layer method")
        k = out[0].numel()
        targets = [(calls[i - 1][0], x) for i, (_, x) in enumerate(calls) if i > 0]
        Bs = [_matrix(lb, name, k, x[0].numel(), out) for name, x in targets]
        lb.feedback.update({name: B for (name, _), B in zip(targets, Bs, strict=True)})

        def send(e: torch.Tensor) -> list[torch.Tensor]:
            flat = e.reshape(e.shape[0], -1)
            return [(flat @ B.to(e.dtype)).reshape(x.shape) for (_, x), B in zip(targets, Bs, strict=True)]

        return _DirectFeedback.apply(out, send, *[x for _, x in targets])

    handles = [model.register_forward_pre_hook(start), model.register_forward_hook(finish)]
    handles += [layer.register_forward_pre_hook(enter(name)) for name, layer in layers.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
