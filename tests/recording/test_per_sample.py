"""Per-sample gradients and their norms from a trace, against torch.func and Opacus."""

import copy
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

import backlens
from backlens.recording import per_sample

TOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest error relative to the reference's largest entry."""
    return float((ours.double() - ref.double()).abs().max() / ref.double().abs().max())


class Shared(nn.Module):
    """One Linear called twice in a forward: its per-sample gradient sums both calls."""

    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.inner, self.act, self.head = nn.Linear(d, d), nn.Tanh(), nn.Linear(d, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.inner(self.act(self.inner(x)))))


def make_model(kind: str, dtype: torch.dtype, bias: bool) -> nn.Module:
    torch.manual_seed(3)
    model = {
        "mlp": lambda: backlens.build_mlp([6, 9, 7, 4], "relu", bias=bias, seed=3),
        "shared": lambda: Shared(6, 4),
    }[kind]()
    return model.to(dtype)


def batch(shape: tuple[int, ...], loss: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(*shape, 6, dtype=dtype)
    y = torch.randint(0, 4, shape) if loss == "ce" else torch.randn(*shape, 4, dtype=dtype)
    return x, y


def loss_fn(loss: str, reduction: str) -> Callable:
    if loss == "ce":
        return lambda out, y: F.cross_entropy(out.flatten(0, -2), y.flatten(), reduction=reduction)
    return lambda out, y: F.mse_loss(out, y, reduction=reduction)


def func_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fn: Callable) -> dict[str, torch.Tensor]:
    """torch.func vmap(grad) on a hook-free copy: each sample's gradient of its own loss term."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return fn(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    return vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)


def traced(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, fn: Callable, store: str = "cpu"
) -> backlens.Trace:
    with backlens.trace(model, select=[nn.Linear], store=store) as rec:
        fn(model(x), y).backward()
    return rec


CASES = [  # model, input shape (n, [t]), loss, reduction, dtype, bias
    ("mlp", (8,), "mse", "mean", torch.float64, True),
    ("mlp", (8,), "ce", "sum", torch.float64, False),
    ("mlp", (8,), "ce", "mean", torch.float32, True),
    ("mlp", (5, 3), "mse", "mean", torch.float64, True),
    ("mlp", (5, 3), "ce", "sum", torch.float32, True),
    ("mlp", (4, 20), "mse", "sum", torch.float64, True),
    ("shared", (6,), "mse", "mean", torch.float64, True),
    ("shared", (6, 2), "ce", "mean", torch.float32, True),
]


@pytest.mark.parametrize(("kind", "shape", "loss", "reduction", "dtype", "bias"), CASES, ids=str)
def test_per_sample_grads_equal_torch_func(
    kind: str, shape: tuple, loss: str, reduction: str, dtype: torch.dtype, bias: bool
) -> None:
    model = make_model(kind, dtype, bias)
    x, y = batch(shape, loss, dtype)
    fn = loss_fn(loss, reduction)
    ref = func_grads(copy.deepcopy(model), x, y, fn)
    rec = traced(model, x, y, fn)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name in linears:
        grads = rec.per_sample_grads(name, reduction=reduction)
        assert set(grads) == ({"weight", "bias"} if bias else {"weight"})
        for key, g in grads.items():
            assert g.shape == ref[f"{name}.{key}"].shape and g.dtype == dtype
            assert rel_err(g, ref[f"{name}.{key}"]) <= TOL[dtype]
        # summed over the batch (times 1/n for a mean) they are autograd's .grad
        mean = 1 / shape[0] if reduction == "mean" else 1
        torch.testing.assert_close(
            grads["weight"].sum(0) * mean,
            model.get_submodule(name).weight.grad,
            rtol=TOL[dtype] * 10,
            atol=TOL[dtype] * 10,
        )
    norms = rec.per_sample_grad_norms(reduction=reduction)
    want = sum(ref[k].flatten(1).square().sum(1) for k in ref).sqrt()
    assert norms.shape == (shape[0],) and rel_err(norms, want) <= TOL[dtype] * 10


@pytest.mark.filterwarnings("ignore::UserWarning")  # Opacus warns about its own secure-RNG settings
@pytest.mark.parametrize(
    ("kind", "shape", "loss", "reduction", "dtype", "bias"),
    [c for c in CASES if c[0] == "mlp"],
    ids=str,
)
def test_per_sample_grads_equal_opacus(
    kind: str, shape: tuple, loss: str, reduction: str, dtype: torch.dtype, bias: bool
) -> None:
    from opacus import GradSampleModule

    model = make_model(kind, dtype, bias)
    x, y = batch(shape, loss, dtype)
    fn = loss_fn(loss, reduction)
    oracle = GradSampleModule(copy.deepcopy(model), loss_reduction=reduction)
    fn(oracle(x), y).backward()
    rec = traced(model, x, y, fn, store="device")
    for name, module in oracle._module.named_modules():
        if isinstance(module, nn.Linear):
            grads = rec.per_sample_grads(name, reduction=reduction)
            for key, g in grads.items():
                assert rel_err(g, getattr(module, key).grad_sample) <= TOL[dtype]


@pytest.mark.parametrize(
    ("t", "k_in", "k_out", "calls"),
    [
        (1, 5, 3, 1),  # ‖a‖²·‖δ‖²
        (3, 16, 16, 1),  # Gram matrices
        (2, 8, 8, 3),  # several calls stack along t
        (20, 4, 5, 1),  # cheaper to build G chunk by chunk
    ],
)
def test_norms_without_building_grads_equal_built(t: int, k_in: int, k_out: int, calls: int) -> None:
    shape = (7, t) if t > 1 else (7,)
    acts = [torch.randn(*shape, k_in, dtype=torch.float64) for _ in range(calls)]
    backs = [torch.randn(*shape, k_out, dtype=torch.float64) for _ in range(calls)]
    built = per_sample.linear_grads(acts, backs, scale=7.0)
    want = built["weight"].flatten(1).square().sum(1) + built["bias"].square().sum(1)
    got = per_sample.linear_sq_norms(acts, backs, scale=7.0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 5),
    t=st.integers(1, 6),
    k_in=st.integers(1, 9),
    k_out=st.integers(1, 9),
    calls=st.integers(1, 3),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_norm_identities_any_shape(
    n: int, t: int, k_in: int, k_out: int, calls: int, bias: bool, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    acts = [torch.randn(n, t, k_in, generator=g, dtype=torch.float64) for _ in range(calls)]
    backs = [torch.randn(n, t, k_out, generator=g, dtype=torch.float64) for _ in range(calls)]
    built = per_sample.linear_grads(acts, backs, bias=bias)
    want = sum(v.flatten(1).square().sum(1) for v in built.values())
    # brute force: one sample at a time, every position of every call
    for i in range(n):
        brute = sum(backs[c][i].T @ acts[c][i] for c in range(calls))
        torch.testing.assert_close(built["weight"][i], brute, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        per_sample.linear_sq_norms(acts, backs, bias=bias), want, rtol=1e-10, atol=1e-12
    )


def test_buffers_are_reused_and_checked() -> None:
    model = make_model("mlp", torch.float32, True)
    x, y = batch((8,), "mse", torch.float32)
    rec = traced(model, x, y, loss_fn("mse", "mean"))
    out = {"weight": torch.empty(8, 9, 6), "bias": torch.empty(8, 9)}
    grads = rec.per_sample_grads("0", out=out)
    assert grads["weight"].data_ptr() == out["weight"].data_ptr()
    assert torch.equal(grads["weight"], rec.per_sample_grads("0")["weight"])
    with pytest.raises(backlens.BacklensError, match=r"out\['weight'\].*shape \(8, 9, 6\)"):
        rec.per_sample_grads("0", out={"weight": torch.empty(8, 6, 9)})


def test_bad_requests() -> None:
    model = make_model("mlp", torch.float32, True)
    x, y = batch((8,), "mse", torch.float32)
    fn = loss_fn("mse", "mean")
    with backlens.trace(model) as rec:
        fn(model(x), y).backward()
    with pytest.raises(backlens.BacklensError, match="nn.Linear.*'1', a ReLU"):
        rec.per_sample_grads("1")
    with pytest.raises(backlens.BacklensError, match="^reduction"):
        rec.per_sample_grads("0", reduction="none")
    with backlens.trace(model, store=None) as rec:
        fn(model(x), y).backward()
    with pytest.raises(backlens.BacklensError, match="store="):
        rec.per_sample_grads("0")
    with backlens.trace(model) as rec:
        model(x)
    with pytest.raises(backlens.BacklensError, match="backward"):
        rec.per_sample_grad_norms()
    model[0].requires_grad_(False)
    with backlens.trace(model) as rec:
        fn(model(x), y).backward()
    with pytest.raises(backlens.BacklensError, match="frozen"):
        rec.per_sample_grads("0")
    assert rec.per_sample_grad_norms().shape == (8,)  # over the trainable layers only
