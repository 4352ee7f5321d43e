"""Training through a linear backward: the model's forward untouched, its backward passing each
layer (or block) through a matrix — feedback alignment and its relatives, or the notebook's
expected-mask map — while every weight's gradient stays local (dW = δᵀa with the δ that arrived).

Built on the in-use swap of `blocks.inuse`: each layer's (block's) input is cut from its own
backward, and a custom autograd Function at its output sends grad·B below. `bp` installs nothing:
the same numbers as plain autograd, bit for bit. Feedback rules: `blocks.feedback`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..byhand.chain import ActivationStep, Chain, LinearStep, chain_leaves, read_chain
from ..errors import check_choice, check_module, check_positive_int, fail
from ..linear.analytic import derivative_product
from .block import Block
from .boundary import boundaries
from .feedback import LAYER_RULES, Feedback, feedback_matrix, fixed_part, send_below, unsupported
from .inuse import swap_backward
from .ridge_backward import RidgeState, ridge_backward
from .shadow import Shadow

__all__ = ["LinearBackward", "linear_backward", "BACKWARD_METHODS", "LAYER_METHODS", "BLOCK_METHODS"]

LAYER_METHODS = tuple(LAYER_RULES)  # fa, usf, brsf, frsf: one B per Linear/Conv2d layer
BLOCK_METHODS = ("expected-mask", "ridge")  # one map per block
BACKWARD_METHODS = ("bp", *LAYER_METHODS, "dfa", *BLOCK_METHODS)


@dataclass
class LinearBackward:
    """The state of a `linear_backward` context: the matrices used in the last backward, per layer
    (or block) name, and with shadow=True the alignment to true backprop."""

    model: nn.Module
    method: str
    seed: int
    momentum: float = 0.9
    feedback: Feedback = field(default_factory=Feedback)
    fixed: dict[str, torch.Tensor | None] = field(default_factory=dict)
    derivatives: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    ridge: dict[str, RidgeState] = field(default_factory=dict)  # per block, for method 'ridge'
    shadow: Shadow | None = None

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def alignment(self, method: str | None = None) -> dict[str, list[float]]:
        """Per layer: the angle in degrees between a method's weight update and true backprop's, at
        every measured backward: the method in use, or another one listed in shadow=[...]."""
        if self.shadow is None:
            raise fail(
                "shadow",
                "a context opened with shadow=True or a list of methods",
                "shadow=False",
                "pass shadow=True",
            )
        if method is None or method == self.method:
            return self.shadow.angles
        if method not in self.shadow.others and method not in self.shadow.twins:
            raise fail(
                "method",
                f"one of the shadowed methods {sorted(self.shadow.twins)}",
                repr(method),
                "list it in shadow=[...]",
            )
        return self.shadow.others.get(method, {})


# Layers with a weight that mixes features but no feedback rule here: a layer method refuses them
# (elementwise layers — norms, activations — pass the gradient exactly, as in biotorch).
NO_RULE = (
    nn.Conv1d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Bilinear,
    nn.RNNBase,
    nn.MultiheadAttention,
)


def _layers(model: nn.Module, method: str) -> dict[str, nn.Module]:
    for name, module in model.named_modules():
        if isinstance(module, NO_RULE):
            raise fail(
                "model",
                f"only Linear and Conv2d layers for {method!r} (elementwise layers pass gradients exactly)",
                f"{name or 'the model'!r}: {type(module).__name__}, which has no feedback rule",
                f"use 'bp', or {', '.join(BLOCK_METHODS)} on chain blocks",
            )
        why = unsupported(module) if isinstance(module, nn.Conv2d) else None
        if why is not None:
            raise fail("model", f"layers with a feedback rule for {method!r}", f"{name!r}: {why}", "use 'bp'")
    layers: dict[str, nn.Module] = {
        n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
    }
    if not layers:
        raise fail("model", f"Linear or Conv2d layers for method {method!r}", "none", "use method='bp'")
    return layers


def _layer_swap(lb: LinearBackward, name: str, layer: nn.Module):  # type: ignore[no-untyped-def]
    """A layer method's swap: B drawn or rebuilt each forward (into a buffer kept across steps:
    a fresh 1 MB tensor per step costs page faults), δ·B sent below in the backward."""
    in_use: list[torch.Tensor] = []  # B of the forward in progress
    kept: list[torch.Tensor] = []  # the buffer B is built in, where it changes with W

    def gradient_below(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return send_below(layer, in_use[0], grad, x)

    inner = swap_backward(gradient_below, local=True)

    def swap(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weight = layer.weight
        assert isinstance(weight, torch.Tensor)
        if name not in lb.fixed:
            lb.fixed[name] = fixed_part(lb.method, weight, lb.generator)
        if not kept or (kept[0].shape, kept[0].dtype, kept[0].device) != (
            weight.shape,
            weight.dtype,
            weight.device,
        ):
            kept[:] = [torch.empty_like(weight.detach())]
        B = feedback_matrix(lb.method, weight, lb.generator, lb.fixed[name], kept[0])
        in_use[:] = [B]
        if B is kept[0]:  # rewritten next step: a reader gets its own copy
            lb.feedback.defer(name, B.clone)
        else:
            lb.feedback[name] = B
        return inner(x, y)

    return swap


@contextmanager
def _derivatives_seen(block: Block, seen: dict[int, torch.Tensor]) -> Iterator[None]:
    """While open, each activation of the chain block records E[σ'(z)] over the batch from the z
    the model's own forward hands it (no replay), keyed by its step in the chain."""
    chain = read_chain(chain_leaves(block.layers()))
    assert isinstance(chain, Chain)
    inside = [False]  # an activation module reused elsewhere in the model records only in here

    def enter(module: nn.Module, args: tuple[Any, ...]) -> None:
        inside[0] = True

    def leave(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        inside[0] = False

    handles = [block.entry.register_forward_pre_hook(enter)]
    for i, step in enumerate(chain.steps):
        if isinstance(step, ActivationStep):

            def record(module: nn.Module, args: tuple[Any, ...], i: int = i, rule: Any = step.rule) -> None:
                if inside[0]:
                    z = args[0].detach()
                    seen[i] = rule.derivative(z).reshape(-1, z.shape[-1]).mean(dim=0, dtype=torch.float64)

            handles.append(step.module.register_forward_pre_hook(record))
    handles.append(block.exit.register_forward_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _snapshot(weight: torch.Tensor, kept: dict[int, torch.Tensor], i: int) -> torch.Tensor:
    """The weight as this step uses it, copied into a buffer kept from step to step: the optimizer
    then writes the weight, not the copy, and no fresh memory is touched (a new tensor, or a
    copy-on-write clone that the optimizer's write materialises, costs page faults every step)."""
    w = weight.detach()
    if i not in kept or kept[i].shape != w.shape or kept[i].dtype != w.dtype or kept[i].device != w.device:
        kept[i] = torch.empty_like(w)
    return kept[i].copy_(w)


def _block_swap(lb: LinearBackward, block: Block, seen: dict[int, torch.Tensor]):  # type: ignore[no-untyped-def]
    """expected-mask: grad_in = grad_out·W_L·diag(E σ')·…·W_1, E σ' a running mean over batches,
    applied factor by factor from the output side (as cheap as backprop through the block); the
    product itself is formed only when lb.feedback is read."""
    chain = read_chain(chain_leaves(block.layers()))
    assert isinstance(chain, Chain)
    steps = list(enumerate(chain.steps))[::-1]
    used: list[tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]] = []  # this step's factors
    kept: dict[int, torch.Tensor] = {}  # the weights' copies, rewritten each step

    def gradient_below(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        derivatives, weights = used[-1]
        g = grad.reshape(-1, grad.shape[-1])
        for i, step in steps:
            factor = weights[i] if isinstance(step, LinearStep) else derivatives[i].to(g.dtype)
            g = g @ factor if isinstance(step, LinearStep) else g * factor
        return g.reshape(x.shape)

    inner = swap_backward(gradient_below, local=True)

    def swap(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        batch = dict(seen)  # this forward's E σ' per activation, seen on the way through the block
        previous = lb.derivatives.get(block.label)
        if previous is not None:
            batch = {i: lb.momentum * previous[i] + (1 - lb.momentum) * s for i, s in batch.items()}
        lb.derivatives[block.label] = batch
        weights = {i: _snapshot(s.linear.weight, kept, i) for i, s in steps if isinstance(s, LinearStep)}
        used[:] = [(batch, weights)]
        lb.feedback.defer(block.label, lambda: derivative_product(block.layers(), batch, weights))
        return inner(x, y)

    return swap


def _chain_blocks(model: nn.Module, blocks: Sequence[Block | str] | None, chains: bool = True) -> list[Block]:
    chosen = (
        Block.all(model)
        if blocks is None
        else [b if isinstance(b, Block) else Block.parse(model, b)[0] for b in blocks]
    )
    for block in chosen if chains else []:
        why = block.not_a_chain()
        if why is not None:
            raise fail(
                "blocks",
                "Linear/activation chains for 'expected-mask'",
                f"block {block.label} has {why}",
                "pick chain blocks, or a layer method (fa, usf, brsf, frsf, dfa)",
            )
    return chosen


@contextmanager
def linear_backward(
    model: nn.Module,
    method: str = "fa",
    seed: int = 0,
    blocks: Sequence[Block | str] | None = None,
    shadow: bool | Sequence[str] = False,
    momentum: float = 0.9,
    refit_every: int = 50,
    forgetting: float = 0.9,
    record_every: int = 2,
) -> Iterator[LinearBackward]:
    """Within the body, every backward of `model` goes through the method's matrices.

    Layer methods (fa, usf, brsf, frsf): each Linear/Conv2d layer sends δ·B below instead of δ·W.
    dfa: the output error e goes to every layer's input as e·B_l (no layer sends anything below).
    expected-mask: each chain block (default `Block.all(model)`) sends grad·W_L·diag(E σ')·…·W_1.
    ridge: each block (default `Block.all(model)`) sends grad·M, M refitted by ridge on the block's
    true gradient pairs every `refit_every` steps and blended in with `forgetting`
    (`blocks.ridge_backward`); exact until the first fit (`lb.ridge[label].fitted`). The pairs
    of every `record_every`-th step are recorded: each costs the block's true backward and a
    float64 Moments update, about 40 % of a step for a 256-wide block.
    bp: nothing changes. shadow=True also measures, at every backward, the angle of each layer's
    update to true backprop's (an extra exact forward and backward; the training is unchanged);
    shadow=["fa", "dfa", ...] measures those methods too, each on a copy of the model running its
    backward from the same parameters and batch (`lb.alignment("fa")`).
    """
    check_module("model", model)
    check_choice("method", method, list(BACKWARD_METHODS))
    check_positive_int("refit_every", refit_every)
    check_positive_int("record_every", record_every)
    if isinstance(forgetting, bool) or not isinstance(forgetting, (int, float)) or not 0 <= forgetting < 1:
        raise fail("forgetting", "a number in [0, 1)", repr(forgetting), "pass e.g. 0.9")
    lb = LinearBackward(model, method, seed, momentum)
    with ExitStack() as stack:
        if method in LAYER_METHODS:
            for name, layer in _layers(model, method).items():
                stack.enter_context(
                    boundaries(Block(model, name), swap=_layer_swap(lb, name, layer), cut=True)
                )
        elif method == "dfa":
            from .direct_feedback import direct_feedback

            stack.enter_context(direct_feedback(lb, _layers(model, method)))
        elif method == "ridge":
            for block in Block.all(model) if blocks is None else _chain_blocks(model, blocks, chains=False):
                lb.ridge[block.label] = RidgeState(refit_every, forgetting, record_every)
                stack.enter_context(ridge_backward(block, lb.ridge[block.label]))
        elif method in BLOCK_METHODS:
            for block in _chain_blocks(model, blocks):
                seen: dict[int, torch.Tensor] = {}
                stack.enter_context(_derivatives_seen(block, seen))
                stack.enter_context(boundaries(block, swap=_block_swap(lb, block, seen), cut=True))
        if shadow:
            refits = {"refit_every": refit_every, "forgetting": forgetting, "record_every": record_every}
            others = _shadowed(shadow, method, seed, blocks, momentum, **refits)
            lb.shadow = stack.enter_context(Shadow.watching(model, _layer_names(model), others))
        yield lb


def _shadowed(
    shadow: bool | Sequence[str],
    method: str,
    seed: int,
    blocks: Sequence[Block | str] | None,
    momentum: float,
    **refits: Any,
) -> dict[str, Any]:
    """{other listed method: how to open it on a copy of the model}, checked before any work."""
    listed = [] if shadow is True else list(shadow)  # type: ignore[arg-type]
    for name in listed:
        check_choice("shadow", name, list(BACKWARD_METHODS))
    paths = None if blocks is None else [b.label if isinstance(b, Block) else b for b in blocks]
    return {
        name: (lambda twin, name=name: linear_backward(twin, name, seed, paths, False, momentum, **refits))
        for name in listed
        if name != method
    }


def _layer_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]


def check_method(method: Any) -> str:
    return check_choice("method", method, list(BACKWARD_METHODS))
