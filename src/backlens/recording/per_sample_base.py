"""What every per-sample rule shares: the loss scale, a call's recorded data, the rule's type.

Convention (every rule): n samples first on every recorded tensor (batch_first for attention);
the recorded grad_output δ is the gradient of the batch loss L, so sample i's own gradient is
s·(the part of ∂L/∂θ that flows through sample i), with s = n for a mean loss and 1 for a sum
(as Opacus's loss_reduction). A rule returns {parameter name relative to its module: (n, *shape)}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import BacklensWarning, fail
from .nested import tensors_in

__all__ = [
    "REDUCTIONS",
    "CallData",
    "Rule",
    "PartialNormWarning",
    "loss_scale",
    "first_pairs",
    "sq_norms_by_building",
    "out_grad_pairs",
]

REDUCTIONS = ("mean", "sum")  # as torch.nn.functional names them


class PartialNormWarning(BacklensWarning):
    """per_sample_grad_norms(allow_partial=True) left out parameters it has no rule for.

    `left_out` lists them as "name (why)"; the norms cover every other parameter.
    """

    def __init__(self, left_out: Sequence[str]) -> None:
        self.left_out = list(left_out)
        super().__init__(
            "per-sample gradient norms leave out "
            f"{len(self.left_out)} parameter(s) that received a gradient: " + "; ".join(self.left_out)
        )


def loss_scale(reduction: str, n: int) -> float:
    """s: n for a mean loss over n samples (reduction "mean"), 1 for a sum ("sum")."""
    if reduction not in REDUCTIONS:
        raise fail(
            "reduction",
            "'mean' or 'sum'",
            repr(reduction),
            "pass the reduction of the loss that was backpropagated",
        )
    return float(n) if reduction == "mean" else 1.0


@dataclass(frozen=True)
class CallData:
    """One recorded call as a rule reads it: positional inputs, outputs, grads at the outputs.

    where: how the user would name the call (rec['conv'].calls[0]), for error messages.
    """

    where: str
    inputs: tuple[Any, ...]
    outputs: tuple[Any, ...]
    grad_outputs: tuple[Any, ...]

    @property
    def input(self) -> torch.Tensor:
        found = tensors_in(self.inputs)
        if not found:
            raise fail(self.where, "a call with a tensor input", "none", "check the module's call")
        return found[0]

    @property
    def grad_output(self) -> torch.Tensor:
        for value, grad in out_grad_pairs(self.outputs, self.grad_outputs):
            if grad is not None:
                return grad.to(value.device)
            break
        raise fail(
            self.where,
            "a gradient at the call's first output",
            "none (the output did not reach the loss)",
            "backpropagate a loss that depends on this output inside the trace",
        )


def out_grad_pairs(values: Any, grads: Any) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(tensor, its gradient or None) for every tensor in `values`, in tensors_in order."""
    if isinstance(values, torch.Tensor):
        return [(values, grads if isinstance(grads, torch.Tensor) else None)]
    if isinstance(values, (tuple, list)):
        items = list(grads) if isinstance(grads, (tuple, list)) else [None] * len(values)
        return [p for v, g in zip(values, items, strict=False) for p in out_grad_pairs(v, g)]
    if isinstance(values, dict):
        keyed = grads if isinstance(grads, dict) else {}
        return [p for k, v in values.items() for p in out_grad_pairs(v, keyed.get(k))]
    return []


def first_pairs(calls: Sequence[CallData]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(activations, backprops): each call's first input and the gradient at its first output."""
    acts = [c.input for c in calls]
    backs = [c.grad_output.to(a.device) for c, a in zip(calls, acts, strict=True)]
    return acts, backs


GradsFn = Callable[[nn.Module | None, Sequence[CallData], float, frozenset[str]], dict[str, torch.Tensor]]
NormsFn = Callable[[nn.Module | None, Sequence[CallData], float, frozenset[str]], torch.Tensor]


@dataclass(frozen=True)
class Rule:
    """How the per-sample gradients of one module type come from its recorded calls.

    grads(module, calls, s, names) -> {name: (n, *shape)} for the parameters in `names`;
    sq_norms(...) -> (n,) the squared norm over them without building them, or None (then the
    gradients are built, one module at a time, and squared). covers_children: the rule also
    gives the parameters of submodules (attention's out_proj, which is never called as a
    module). needs_module: the rule reads the module (hyperparameters or weights), so a record
    loaded from a file, which has no model, cannot use it. method: one line for the docs.
    params: the parameter names the rule gives (None: any, the torch.func route); a module
    carrying others (weight_norm's weight_g and weight_v on a Linear) is not covered by it.
    """

    grads: GradsFn
    sq_norms: NormsFn | None = None
    covers_children: bool = False
    needs_module: bool = True
    method: str = ""
    params: frozenset[str] | None = frozenset({"weight", "bias"})
    recomputes: bool = False  # calls the module again (torch.func): only once the trace has closed

    def gives(self, name: str) -> bool:
        """Whether the rule gives parameter `name` (relative to its module)."""
        return self.params is None or name in self.params


def sq_norms_by_building(
    rule: Rule, module: nn.Module | None, calls: Sequence[CallData], scale: float, names: frozenset[str]
) -> torch.Tensor:
    """(n,) Σ over the parameters of ‖G_i‖², from the rule's closed form or by building G."""
    if rule.sq_norms is not None:
        return rule.sq_norms(module, calls, scale, names)
    grads = rule.grads(module, calls, scale, names)
    total: torch.Tensor | None = None
    for g in grads.values():
        sq = g.flatten(1).square().sum(1)
        total = sq if total is None else total + sq
    assert total is not None
    return total
