"""Analytic maps for a block: expected-mask, mean Jacobian, weights-only, identity."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..byhand.chain import ActivationStep, Chain, LinearStep, NotAChain, chain_leaves, parse_chain, read_chain
from ..errors import check_choice, check_positive_int, describe, fail
from .linear_map import LinearMap
from .methods import EXPECTED_MASK, IDENTITY, MEAN_JACOBIAN, WEIGHTS_ONLY

__all__ = [
    "expected_mask",
    "mean_jacobian",
    "weights_only",
    "identity",
    "make_map",
    "mean_derivatives",
    "derivative_product",
    "DIRECTIONS",
]

# Shape convention: row vectors, X (n, d_in) → block → Y (n, d_out). A chain Linear → σ → Linear …
# has Jacobian J(x) = W_L·diag(σ'(z_{L−1}))·…·W_1, (d_out, d_in) in PyTorch weight layout.
# The backward map is grad_in ≈ grad_out·J̄, so its matrix is J̄ itself (d_out, d_in); the forward
# map is y ≈ x·J̄ᵀ + b, its transpose, with b = E[f(x)] − E[x]·J̄ᵀ, the least-squares intercept
# for that matrix on the given inputs (weights-only, which sees no data, composes the biases).
#   expected_mask: J̄ = W_L·diag(E[σ'(z_{L−1})])·…·W_1  (the notebook's M3, any depth)
#   mean_jacobian: J̄ = E[J(x)], exact; the two agree when the chain has one nonlinearity.

DIRECTIONS = ("backward", "forward")
CHUNK_ROWS = 65536
JACOBIAN_BYTES = 1 << 27  # per-sample Jacobians held at once: 128 MiB
UNSUPPORTED_FIX = "use mean_jacobian (torch.func) for other modules; put dropout in eval mode"


@dataclass(frozen=True)
class Affine:
    """A Linear layer in float64 on the CPU: z = a·Wᵀ + b, W (out, in)."""

    weight: torch.Tensor
    bias: torch.Tensor | None


Op = Affine | ActivationStep  # one step of a chain as the analytic maps run it


@dataclass(frozen=True)
class Ops:
    """A chain's steps in float64 and its widths."""

    steps: tuple[Op, ...]
    d_in: int
    d_out: int
    nonlinearities: int


def _ops(chain: Chain, width: int | None) -> Ops:
    """The chain's float64 steps; `width` (from X_in) sets d_in for a chain without Linear layers."""
    if not chain.steps:
        raise fail("layers", "at least one layer", "an empty chain", "pass the block's layers")
    d_in = chain.in_features if chain.in_features is not None else width
    if d_in is None:
        raise fail(
            "layers",
            "at least one Linear layer, or X_in to set the width",
            "activations only",
            "pass X_in",
        )
    steps = tuple(Affine(s.weight64(), s.bias64()) if isinstance(s, LinearStep) else s for s in chain.steps)
    d_out = chain.out_features if chain.out_features is not None else d_in
    return Ops(steps, d_in, d_out, chain.nonlinearities)


def _parse(layers: Any, width: int | None) -> Ops:
    return _ops(parse_chain(chain_leaves(layers), "layers", UNSUPPORTED_FIX), width)


def _inputs(X_in: Any, d_in: int | None) -> torch.Tensor:
    if not isinstance(X_in, torch.Tensor) or not X_in.is_floating_point() or X_in.ndim != 2:
        raise fail(
            "X_in",
            "a 2-D floating-point tensor (n, d_in)",
            describe(X_in),
            "pass the block's inputs",
        )
    if X_in.shape[0] == 0:
        raise fail("X_in", "at least one row", describe(X_in), "pass some inputs")
    if d_in is not None and X_in.shape[1] != d_in:
        raise fail("X_in", f"shape (n, {d_in})", describe(X_in), "pass inputs of the block's first layer")
    if not bool(torch.isfinite(X_in).all()):
        raise fail("X_in", "finite values", "NaN or Inf", "clean the inputs")
    return X_in.detach().cpu()


def _first_width(layers: Any) -> int | None:
    linears = [m for _, m in chain_leaves(layers) if type(m) is nn.Linear]
    return linears[0].in_features if linears else None


def _forward(
    steps: tuple[Op, ...], x: torch.Tensor, on_act: Callable[[int, torch.Tensor], None]
) -> torch.Tensor:
    """Run the chain on float64 rows, calling on_act(step index, σ'(z)) at each activation."""
    a = x
    for i, step in enumerate(steps):
        if isinstance(step, Affine):
            a = a @ step.weight.T if step.bias is None else torch.addmm(step.bias, a, step.weight.T)
        else:
            on_act(i, step.rule.derivative(a))
            a = step.module(a)
    return a


def _product(steps: tuple[Op, ...], diags: dict[int, torch.Tensor], d_in: int) -> torch.Tensor:
    """W_L·diag(s_{L−1})·…·W_1 with the given diagonal per activation step: (d_out, d_in)."""
    J: torch.Tensor | None = None  # None: the identity, never built (it costs a d_in² product)
    for i, step in enumerate(steps):
        if isinstance(step, Affine):
            J = step.weight if J is None else step.weight @ J
        else:
            J = torch.diag(diags[i]) if J is None else diags[i][:, None] * J
    return torch.eye(d_in, dtype=torch.float64) if J is None else J.clone()


def make_map(
    J: torch.Tensor,
    direction: str,
    mean_x: torch.Tensor | None,
    mean_y: torch.Tensor | None,
    method: str,
    info: dict[str, Any],
) -> LinearMap:
    """The map of a block whose (mean) Jacobian is J (block_out, block_in), in `direction`."""
    info = {**info, "direction": direction}  # the direction asked for, whatever info held
    if direction == "backward":
        return LinearMap(J.clone(), None, method, info)
    bias = None if mean_x is None or mean_y is None else mean_y - mean_x @ J.T
    return LinearMap(J.T.clone(), bias, method, info)


def expected_mask(layers: Any, X_in: torch.Tensor, direction: str) -> LinearMap:
    """W_L·diag(E[σ'(z_{L−1})])·…·W_1 over the rows of X_in: the backward map, or its transpose."""
    check_choice("direction", direction, DIRECTIONS)
    X = _inputs(X_in, _first_width(layers))
    ops = _parse(layers, X.shape[1])
    J, mean_y = _mean_derivative_product(ops, X)
    n = X.shape[0]
    count = ops.nonlinearities
    info: dict[str, Any] = {"n": n, "nonlinearities": count, "equals_mean_jacobian": count <= 1}
    if count > 1:
        info["note"] = "more than one nonlinearity: a product of mean derivatives, not the mean Jacobian"
    return make_map(J, direction, X.double().mean(dim=0), mean_y, EXPECTED_MASK, info)


def mean_derivatives(layers: Any, X_in: torch.Tensor) -> dict[int, torch.Tensor]:
    """E[σ'(z)] over the rows of X_in for each activation step of the chain (keyed by step index):
    the part of the expected-mask map that depends on data (training keeps a running mean)."""
    X = _inputs(X_in, _first_width(layers))
    ops = _parse(layers, X.shape[1])
    sums: dict[int, torch.Tensor] = {}

    def add(i: int, s: torch.Tensor) -> None:
        sums[i] = sums[i] + s.sum(dim=0) if i in sums else s.sum(dim=0)

    for start in range(0, X.shape[0], CHUNK_ROWS):
        _forward(ops.steps, X[start : start + CHUNK_ROWS].double(), add)
    return {i: s / X.shape[0] for i, s in sums.items()}


def derivative_product(
    layers: Any, derivatives: dict[int, torch.Tensor], weights: dict[int, torch.Tensor] | None = None
) -> torch.Tensor:
    """W_L·diag(s_{L−1})·…·W_1 with the given mean derivatives: (block_out, block_in), the backward
    map's matrix (grad_in ≈ grad_out·J). The weights are the layers' current ones, or `weights`
    (keyed by step index, as the derivatives): those a training step used, kept as they were."""
    ops = _parse(layers, None)
    steps = tuple(
        Affine(weights[i].detach().double().cpu(), None) if weights and i in weights else step
        for i, step in enumerate(ops.steps)
    )
    diags = {i: s.double().cpu() for i, s in derivatives.items()}
    return _product(steps, diags, ops.d_in)


def _transposed(steps: tuple[Op, ...]) -> tuple[Op, ...]:
    """The chain read from its output side: Jᵀ = W_1ᵀ·diag(s_1)·…·W_Lᵀ."""
    return tuple(Affine(s.weight.T, None) if isinstance(s, Affine) else s for s in reversed(steps))


def _jacobian_sum(
    steps: tuple[Op, ...], diags: dict[int, torch.Tensor], d_in: int, rows: int
) -> torch.Tensor:
    """Σ over rows of W_L·diag(s_{L−1}(x))·…·W_1, batched; diags[i] is (rows, width)."""
    J: torch.Tensor | None = None  # None: identity; 2-D: shared by all rows; 3-D: (rows, out, d_in)
    for i, step in enumerate(steps):
        if isinstance(step, Affine):
            J = step.weight if J is None else step.weight @ J
        else:
            s = diags[i]
            J = torch.diag_embed(s) if J is None else s[:, :, None] * J
    if J is None:
        return rows * torch.eye(d_in, dtype=torch.float64)
    return J.sum(dim=0) if J.ndim == 3 else rows * J


def _closed_form_mean_jacobian(ops: Ops, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E[J(x)], E[f(x)]). With at most one nonlinearity J(x) = A·diag(s(x))·B is linear in s, so
    E[J] = A·diag(E[s])·B (one pass, no per-sample Jacobians); otherwise per-sample Jacobians from
    the thinner side, summed in chunks."""
    if ops.nonlinearities <= 1:
        return _mean_derivative_product(ops, X)
    d_in, d_out = ops.d_in, ops.d_out
    transpose = d_out < d_in  # build Jᵀ from the output side instead
    widest = max([d_in, d_out] + [s.weight.shape[0] for s in ops.steps if isinstance(s, Affine)])
    chunk = max(1, min(CHUNK_ROWS, JACOBIAN_BYTES // (8 * min(d_in, d_out) * widest)))
    total = torch.zeros(d_out, d_in, dtype=torch.float64)
    sum_y = torch.zeros(d_out, dtype=torch.float64)
    reverse, last = _transposed(ops.steps), len(ops.steps) - 1
    for start in range(0, X.shape[0], chunk):
        diags: dict[int, torch.Tensor] = {}
        rows = X[start : start + chunk].double()
        sum_y += _forward(ops.steps, rows, diags.__setitem__).sum(dim=0)
        if transpose:
            total += _jacobian_sum(reverse, {last - i: s for i, s in diags.items()}, d_out, len(rows)).T
        else:
            total += _jacobian_sum(ops.steps, diags, d_in, len(rows))
    return total / X.shape[0], sum_y / X.shape[0]


def _mean_derivative_product(ops: Ops, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_L·diag(E[σ'])·…·W_1, E[f(x)]) in one streamed pass: the mean Jacobian when the chain
    has at most one nonlinearity (the others' σ' are 1)."""
    sums: dict[int, torch.Tensor] = {}
    sum_y = torch.zeros(ops.d_out, dtype=torch.float64)

    def add(i: int, s: torch.Tensor) -> None:
        sums[i] = sums[i] + s.sum(dim=0) if i in sums else s.sum(dim=0)

    for start in range(0, X.shape[0], CHUNK_ROWS):
        sum_y += _forward(ops.steps, X[start : start + CHUNK_ROWS].double(), add).sum(dim=0)
    n = X.shape[0]
    return _product(ops.steps, {i: s / n for i, s in sums.items()}, ops.d_in), sum_y / n


def _func_mean_jacobian(
    fn: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(E[J(x)], E[f(x)]) for any callable on rows: torch.func vmap of jacrev or jacfwd."""
    from torch.func import jacfwd, jacrev, vmap

    with torch.no_grad():
        probe = fn(X[:1])
    if not isinstance(probe, torch.Tensor) or probe.ndim != 2 or probe.shape[0] != 1:
        raise fail(
            "fn_or_layers",
            "a function of rows (n, d_in) -> (n, d_out)",
            describe(probe),
            "wrap the block so it maps a batch of rows to a batch of rows",
        )
    d_in, d_out = X.shape[1], probe.shape[1]

    def one(x: torch.Tensor) -> torch.Tensor:
        return fn(x[None])[0]

    jac = vmap(jacrev(one) if d_out <= d_in else jacfwd(one))
    chunk = max(1, min(CHUNK_ROWS, JACOBIAN_BYTES // (8 * d_in * d_out)))
    total = torch.zeros(d_out, d_in, dtype=torch.float64)
    sum_y = torch.zeros(d_out, dtype=torch.float64)
    for start in range(0, X.shape[0], chunk):
        rows = X[start : start + chunk]
        total += jac(rows).double().sum(dim=0)
        with torch.no_grad():
            sum_y += fn(rows).double().sum(dim=0)
    return total / X.shape[0], sum_y / X.shape[0]


def mean_jacobian(fn_or_layers: Any, X_in: torch.Tensor, direction: str) -> LinearMap:
    """The exact mean Jacobian E_x[J(x)] over the rows of X_in: the backward map, or its transpose.

    A chain of Linear layers and elementwise activations (`byhand.chain`) takes a batched closed
    form in float64; any other callable or module goes through torch.func (vmap of jacrev or
    jacfwd), a module on a float64 copy. `info["path"]` says which was used and, for torch.func
    on modules, `info["not_a_chain"]` why the closed form did not apply.
    """
    check_choice("direction", direction, DIRECTIONS)
    if not callable(fn_or_layers) and not isinstance(fn_or_layers, (list, tuple)):
        raise fail(
            "fn_or_layers",
            "a module, a list of layers, or a callable on rows",
            describe(fn_or_layers),
            "pass the block",
        )
    X = _inputs(X_in, None)
    is_modules = isinstance(fn_or_layers, (nn.Module, list, tuple))
    chain = read_chain(chain_leaves(fn_or_layers)) if is_modules else None
    info: dict[str, Any]
    if isinstance(chain, Chain) and chain.steps:
        ops = _ops(chain, X.shape[1])
        J, mean_y = _closed_form_mean_jacobian(ops, X)
        info = {"path": "closed_form", "nonlinearities": ops.nonlinearities}
    else:
        info = {"path": "torch.func"}
        if isinstance(chain, NotAChain):
            info["not_a_chain"] = f"{chain.got}: expected {chain.expected}"
        J, mean_y = _func_mean_jacobian(_as_function(fn_or_layers), X.double())
    info["n"] = X.shape[0]
    return make_map(J, direction, X.double().mean(dim=0), mean_y, MEAN_JACOBIAN, info)


def _as_function(fn_or_layers: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """A float64 copy of a module (or list of them), or the callable itself."""
    if isinstance(fn_or_layers, (list, tuple)):
        fn_or_layers = nn.Sequential(*fn_or_layers)
    if isinstance(fn_or_layers, nn.Module):
        return copy.deepcopy(fn_or_layers).double()
    return fn_or_layers


def weights_only(layers: Any, direction: str) -> LinearMap:
    """The chain without its activations (layer folding): W_L·…·W_1; forward composes biases."""
    check_choice("direction", direction, DIRECTIONS)
    ops = _parse(layers, None)
    J = torch.eye(ops.d_in, dtype=torch.float64)
    bias = torch.zeros(ops.d_in, dtype=torch.float64)
    for step in ops.steps:
        if isinstance(step, Affine):
            J = step.weight @ J
            bias = bias @ step.weight.T + (0 if step.bias is None else step.bias)
    info = {"activations_removed": sum(1 for s in ops.steps if isinstance(s, ActivationStep))}
    lm = make_map(J, direction, None, None, WEIGHTS_ONLY, info)
    return LinearMap(lm.matrix, bias, lm.method, lm.info) if direction == "forward" else lm


def identity(d: int) -> LinearMap:
    """The identity map on d features: the baseline 'the block does nothing'."""
    check_positive_int("d", d)
    return LinearMap(torch.eye(d, dtype=torch.float64), None, IDENTITY)
