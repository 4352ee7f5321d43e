"""Analytic maps for a block: expected-mask, mean Jacobian, weights-only, identity."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..byhand.rules import activation_rule
from ..errors import check_choice, check_positive_int, describe, fail
from .linear_map import LinearMap

__all__ = ["expected_mask", "mean_jacobian", "weights_only", "identity", "DIRECTIONS"]

# Shape convention: row vectors, X (n, d_in) → block → Y (n, d_out). A chain Linear → σ → Linear …
# has Jacobian J(x) = W_L·diag(σ'(z_{L−1}))·…·W_1, (d_out, d_in) in PyTorch weight layout.
# The backward map is grad_in ≈ grad_out·J̄, so its matrix is J̄ itself (d_out, d_in); the forward
# map is y ≈ x·J̄ᵀ + b, its transpose, with b = E[f(x)] − E[x]·J̄ᵀ, the least-squares intercept
# for that matrix on the given inputs (weights-only, which sees no data, composes the biases).
#   expected_mask: J̄ = W_L·diag(E[σ'(z_{L−1})])·…·W_1  (the notebook's M3, any depth)
#   mean_jacobian: J̄ = E[J(x)], exact; the two agree when the chain has one nonlinearity.

DIRECTIONS = ("backward", "forward")
LINEAR_RULES = ("identity", "dropout(eval)")  # rules whose σ' is 1: they add no nonlinearity
CHUNK_ROWS = 65536
JACOBIAN_BYTES = 1 << 27  # per-sample Jacobians held at once: 128 MiB

Step = tuple[str, Any, Any]  # ("linear", W (out, in), b or None) | ("act", module, rule)


def _modules(layers: Any) -> list[nn.Module]:
    if isinstance(layers, (nn.Sequential, nn.ModuleList, list, tuple)):
        return [leaf for item in layers for leaf in _modules(item)]
    if isinstance(layers, nn.Module):
        return [layers]
    raise fail(
        "layers",
        "an nn.Sequential (or list) of Linear layers and elementwise activations",
        describe(layers),
        "pass the block's layers",
    )


def _chain(layers: Any, width: int | None) -> tuple[list[Step], int, int]:
    """Parse `layers` into float64 steps, checking widths. Returns (steps, d_in, d_out)."""
    modules = _modules(layers)
    if not modules:
        raise fail("layers", "at least one layer", "an empty chain", "pass the block's layers")
    steps: list[Step] = []
    d_in = width
    for i, module in enumerate(modules):
        if isinstance(module, nn.Flatten):
            continue  # rows are already flat: (n, d) stays (n, d)
        if type(module) is nn.Linear:
            if width is None:
                d_in = width = module.in_features
            if module.in_features != width:
                raise fail(
                    f"layers[{i}]",
                    f"a Linear taking {width} features",
                    repr(module),
                    "pass consecutive layers of one block",
                )
            bias = None if module.bias is None else module.bias.detach().double().cpu()
            steps.append(("linear", module.weight.detach().double().cpu(), bias))
            width = module.out_features
            continue
        rule = activation_rule(module)
        if rule is None:
            raise fail(
                f"layers[{i}]",
                "a Linear or an elementwise activation with a rule in backlens.rules",
                repr(module),
                "use mean_jacobian (torch.func) for other modules; put dropout in eval mode",
            )
        steps.append(("act", module, rule))
    if width is None:
        raise fail(
            "layers",
            "at least one Linear layer, or X_in to set the width",
            "activations only",
            "pass X_in",
        )
    assert d_in is not None
    return steps, d_in, width


def _nonlinearities(steps: list[Step]) -> int:
    return sum(1 for kind, _, rule in steps if kind == "act" and rule.name not in LINEAR_RULES)


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
    linears = [m for m in _modules(layers) if type(m) is nn.Linear]
    return linears[0].in_features if linears else None


def _forward(steps: list[Step], x: torch.Tensor, on_act: Callable[[int, torch.Tensor], None]) -> torch.Tensor:
    """Run the chain on float64 rows, calling on_act(step index, σ'(z)) at each activation."""
    a = x
    for i, (kind, first, second) in enumerate(steps):
        if kind == "linear":
            a = a @ first.T if second is None else torch.addmm(second, a, first.T)
        else:
            on_act(i, second.derivative(a))
            a = first(a)
    return a


def _product(steps: list[Step], diags: dict[int, torch.Tensor], d_in: int) -> torch.Tensor:
    """W_L·diag(s_{L−1})·…·W_1 with the given diagonal per activation step: (d_out, d_in)."""
    J = torch.eye(d_in, dtype=torch.float64)
    for i, (kind, first, _) in enumerate(steps):
        J = first @ J if kind == "linear" else diags[i][:, None] * J
    return J


def _make(
    J: torch.Tensor,
    direction: str,
    mean_x: torch.Tensor | None,
    mean_y: torch.Tensor | None,
    method: str,
    info: dict[str, Any],
) -> LinearMap:
    info = {"direction": direction, "d_in": J.shape[1], "d_out": J.shape[0], **info}
    if direction == "backward":
        return LinearMap(J.clone(), None, method, info)
    bias = None if mean_x is None or mean_y is None else mean_y - mean_x @ J.T
    return LinearMap(J.T.clone(), bias, method, info)


def expected_mask(layers: Any, X_in: torch.Tensor, direction: str = "backward") -> LinearMap:
    """W_L·diag(E[σ'(z_{L−1})])·…·W_1 over the rows of X_in (backward), or its transpose."""
    check_choice("direction", direction, DIRECTIONS)
    X = _inputs(X_in, _first_width(layers))
    steps, d_in, _ = _chain(layers, X.shape[1])
    sums: dict[int, torch.Tensor] = {}
    sum_x = X.double().sum(dim=0)
    sum_y: torch.Tensor | None = None

    def add(i: int, s: torch.Tensor) -> None:
        sums[i] = sums[i] + s.sum(dim=0) if i in sums else s.sum(dim=0)

    for start in range(0, X.shape[0], CHUNK_ROWS):
        out = _forward(steps, X[start : start + CHUNK_ROWS].double(), add).sum(dim=0)
        sum_y = out if sum_y is None else sum_y + out
    n = X.shape[0]
    means = {i: s / n for i, s in sums.items()}
    count = _nonlinearities(steps)
    info: dict[str, Any] = {"n": n, "nonlinearities": count, "equals_mean_jacobian": count <= 1}
    if count > 1:
        info["note"] = "more than one nonlinearity: a product of mean derivatives, not the mean Jacobian"
    assert sum_y is not None
    return _make(_product(steps, means, d_in), direction, sum_x / n, sum_y / n, "expected_mask", info)


def _jacobian_sum(steps: list[Step], diags: dict[int, torch.Tensor], d_in: int, rows: int) -> torch.Tensor:
    """Σ over rows of W_L·diag(s_{L−1}(x))·…·W_1, batched; diags[i] is (rows, width)."""
    J: torch.Tensor | None = None  # None: identity; 2-D: shared by all rows; 3-D: (rows, out, d_in)
    for i, (kind, first, _) in enumerate(steps):
        if kind == "linear":
            J = first if J is None else first @ J
        else:
            s = diags[i]
            J = torch.diag_embed(s) if J is None else s[:, :, None] * J
    if J is None:
        return rows * torch.eye(d_in, dtype=torch.float64)
    return J.sum(dim=0) if J.ndim == 3 else rows * J


def _closed_form_mean_jacobian(
    steps: list[Step], X: torch.Tensor, d_in: int, d_out: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(E[J(x)], E[f(x)]): per-sample Jacobians from the thinner side, summed in chunks."""
    transpose = d_out < d_in  # build Jᵀ = W_1ᵀ·diag(s_1)·…·W_Lᵀ instead, from the output side
    thin = min(d_in, d_out)
    widest = max([d_in, d_out] + [first.shape[0] for kind, first, _ in steps if kind == "linear"])
    chunk = max(1, min(CHUNK_ROWS, JACOBIAN_BYTES // (8 * thin * widest)))
    total = torch.zeros(d_out, d_in, dtype=torch.float64)
    sum_y = torch.zeros(d_out, dtype=torch.float64)
    reverse = [
        ("linear", first.T, None) if kind == "linear" else (kind, first, second)
        for kind, first, second in reversed(steps)
    ]
    for start in range(0, X.shape[0], chunk):
        diags: dict[int, torch.Tensor] = {}
        rows = X[start : start + chunk].double()
        sum_y += _forward(steps, rows, diags.__setitem__).sum(dim=0)
        if transpose:
            last = len(steps) - 1
            total += _jacobian_sum(reverse, {last - i: s for i, s in diags.items()}, d_out, len(rows)).T
        else:
            total += _jacobian_sum(steps, diags, d_in, len(rows))
    return total / X.shape[0], sum_y / X.shape[0]


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


def _is_chain(fn: Any) -> bool:
    try:
        _chain(fn, None)
    except Exception:
        return False
    return True


def mean_jacobian(fn_or_layers: Any, X_in: torch.Tensor, direction: str = "backward") -> LinearMap:
    """The exact mean Jacobian E_x[J(x)] over the rows of X_in (backward), or its transpose.

    A chain of Linear layers and elementwise activations takes a batched closed form in float64;
    any other callable (or module) goes through torch.func (vmap of jacrev or jacfwd), a module
    on a float64 copy. `info["path"]` says which was used.
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
    if isinstance(fn_or_layers, (nn.Module, list, tuple)) and _is_chain(fn_or_layers):
        steps, d_in, d_out = _chain(fn_or_layers, X.shape[1])
        J, mean_y = _closed_form_mean_jacobian(steps, X, d_in, d_out)
        info: dict[str, Any] = {"path": "closed_form", "nonlinearities": _nonlinearities(steps)}
    else:
        if isinstance(fn_or_layers, (list, tuple)):
            fn_or_layers = nn.Sequential(*fn_or_layers)
        if isinstance(fn_or_layers, nn.Module):
            fn = copy.deepcopy(fn_or_layers).double()
            X = X.double()
        else:
            fn = fn_or_layers
        J, mean_y = _func_mean_jacobian(fn, X)
        info = {"path": "torch.func"}
    info["n"] = X.shape[0]
    return _make(J, direction, X.double().mean(dim=0), mean_y, "mean_jacobian", info)


def weights_only(layers: Any, direction: str = "backward") -> LinearMap:
    """The chain without its activations (layer folding): W_L·…·W_1; forward composes biases."""
    check_choice("direction", direction, DIRECTIONS)
    steps, d_in, d_out = _chain(layers, None)
    J = torch.eye(d_in, dtype=torch.float64)
    bias = torch.zeros(d_in, dtype=torch.float64)
    for kind, first, second in steps:
        if kind == "linear":
            J = first @ J
            bias = bias @ first.T + (0 if second is None else second)
    info = {"activations_removed": sum(1 for kind, _, _ in steps if kind == "act")}
    lm = _make(J, direction, None, None, "weights_only", info)
    return LinearMap(lm.matrix, bias, lm.method, lm.info) if direction == "forward" else lm


def identity(d: int) -> LinearMap:
    """The identity map on d features: the baseline 'the block does nothing'."""
    check_positive_int("d", d)
    return LinearMap(torch.eye(d, dtype=torch.float64), None, "identity", {"d_in": d, "d_out": d})
