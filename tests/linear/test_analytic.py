"""Analytic maps against torch.func, the notebook's M3, explicit products; forward = transpose."""

import pytest
import torch
from torch import nn
from torch.func import jacrev, vmap

import backlens
from backlens import BacklensError, expected_mask, identity, mean_jacobian, weights_only

ACTIVATIONS = [
    nn.ReLU,
    nn.Tanh,
    nn.Sigmoid,
    lambda: nn.LeakyReLU(0.1),
    nn.GELU,
    lambda: nn.GELU(approximate="tanh"),
    nn.ELU,
]


def chain(widths: list[int], act=nn.Tanh, seed: int = 0, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).double()


def func_mean_jacobian(net, X) -> torch.Tensor:
    return vmap(jacrev(lambda x: net(x[None])[0]))(X).mean(0)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_one_nonlinearity_expected_mask_is_the_mean_jacobian(act) -> None:
    net = chain([6, 9, 4], act)
    X = torch.randn(200, 6, dtype=torch.float64)
    em, mj = expected_mask(net, X, "backward"), mean_jacobian(net, X, "backward")
    oracle = func_mean_jacobian(net, X)
    torch.testing.assert_close(em.matrix, oracle, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mj.matrix, oracle, rtol=1e-10, atol=1e-12)
    assert em.info["equals_mean_jacobian"] and em.info["nonlinearities"] == 1
    assert mj.info["path"] == "closed_form"


def test_expected_mask_is_the_notebooks_m3() -> None:
    net = chain([5, 7, 5], nn.ReLU, seed=3)
    X = torch.randn(128, 5, dtype=torch.float64)
    W1, W2 = net[0].weight.detach(), net[2].weight.detach()
    R = (net[0](X) > 0).double()  # the mask
    M3 = W2 @ torch.diag(R.mean(0)) @ W1  # W_2·diag(E[R])·W_1, (d_out, d_in)
    lm = expected_mask(net, X, "backward")
    torch.testing.assert_close(lm.matrix, M3, rtol=1e-12, atol=1e-14)
    # it carries gradients: grad_in ≈ grad_out·M, exact on average over the masks
    G = torch.randn(128, 5, dtype=torch.float64)
    exact = ((G @ W2) * R) @ W1
    torch.testing.assert_close(lm.apply(G).mean(0), exact.mean(0), rtol=0.5, atol=10.0)  # shape/scale sanity
    assert lm.matrix.shape == (5, 5) and lm.direction == "backward"


# widths: deeper chains, both thin sides (d_in < d_out and d_in > d_out)
@pytest.mark.parametrize("widths", [[3, 8, 8, 9], [9, 6, 7, 2], [4, 5, 6, 7, 3], [2, 3, 2]])
@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU, nn.Sigmoid])
def test_mean_jacobian_closed_form_equals_torch_func(widths, act) -> None:
    net = chain(widths, act, seed=len(widths))
    X = torch.randn(150, widths[0], dtype=torch.float64)
    oracle = func_mean_jacobian(net, X)
    lm = mean_jacobian(net, X, "backward")
    torch.testing.assert_close(lm.matrix, oracle, rtol=1e-10, atol=1e-12)
    generic = mean_jacobian(lambda x: net(x), X, "backward")  # any callable: the torch.func path
    assert generic.info["path"] == "torch.func"
    torch.testing.assert_close(generic.matrix, oracle, rtol=1e-10, atol=1e-12)


def test_deeper_chains_differ_and_say_so() -> None:
    net = chain([4, 8, 8, 3], nn.Tanh, seed=1)
    X = 2 * torch.randn(300, 4, dtype=torch.float64)
    em, mj = expected_mask(net, X, "backward"), mean_jacobian(net, X, "backward")
    assert not em.info["equals_mean_jacobian"] and "not the mean Jacobian" in em.info["note"]
    assert float((em.matrix - mj.matrix).norm() / mj.matrix.norm()) > 1e-3


def test_mean_jacobian_of_other_modules_uses_torch_func_in_float64() -> None:
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Softplus(), nn.Linear(6, 3))  # float32
    X = torch.randn(40, 5)
    lm = mean_jacobian(block, X, "backward")
    assert lm.info["path"] == "torch.func" and lm.matrix.dtype == torch.float64
    ref = block.double()
    oracle = torch.stack(
        [torch.autograd.functional.jacobian(lambda x: ref(x[None])[0], x) for x in X.double()]
    ).mean(0)
    torch.testing.assert_close(lm.matrix, oracle, rtol=1e-10, atol=1e-12)
    fwd = mean_jacobian(block, X, direction="forward")
    torch.testing.assert_close(fwd.bias, ref(X.double()).mean(0) - X.double().mean(0) @ fwd.matrix)


MAKERS = {
    "expected_mask": lambda net, X, d: expected_mask(net, X, direction=d),
    "mean_jacobian": lambda net, X, d: mean_jacobian(net, X, direction=d),
    "weights_only": lambda net, X, d: weights_only(net, direction=d),
}


@pytest.mark.parametrize("name", list(MAKERS))
@pytest.mark.parametrize("widths", [[5, 7, 3], [3, 6, 6, 4]])
def test_forward_is_the_transpose_of_backward(name, widths) -> None:
    net = chain(widths, nn.ReLU, seed=2)
    X = torch.randn(64, widths[0], dtype=torch.float64) + 0.5
    back, fwd = MAKERS[name](net, X, "backward"), MAKERS[name](net, X, "forward")
    assert back.matrix.shape == (widths[-1], widths[0]) and fwd.matrix.shape == (
        widths[0],
        widths[-1],
    )
    torch.testing.assert_close(fwd.matrix, back.matrix.T, rtol=0, atol=0)
    torch.testing.assert_close(back.transpose().matrix, fwd.matrix, rtol=0, atol=0)
    assert torch.equal(back.bias, torch.zeros(widths[0], dtype=torch.float64))
    assert (back.direction, fwd.direction) == ("backward", "forward")
    if name != "weights_only":  # the data-matched intercept: mean prediction = mean output
        torch.testing.assert_close(fwd.apply(X).mean(0), net(X).mean(0), rtol=1e-10, atol=1e-12)


def test_identity_transpose() -> None:
    lm = identity(4)
    assert torch.equal(lm.matrix, torch.eye(4, dtype=torch.float64)) and torch.equal(
        lm.transpose().matrix, lm.matrix
    )


def test_weights_only_is_the_folded_chain() -> None:
    net = chain([4, 6, 5, 3], nn.ReLU, seed=5)
    X = torch.randn(10, 4, dtype=torch.float64)
    folded = X
    for layer in net:
        if isinstance(layer, nn.Linear):
            folded = layer(folded)
    torch.testing.assert_close(weights_only(net, "forward").apply(X), folded, rtol=1e-12, atol=1e-12)
    assert weights_only(net, "backward").info["activations_removed"] == 2
    nobias = chain([4, 6, 3], nn.ReLU, bias=False)
    assert torch.equal(weights_only(nobias, "forward").bias, torch.zeros(3, dtype=torch.float64))


def test_chains_with_identity_flatten_dropout_and_lists() -> None:
    torch.manual_seed(0)
    net = (
        nn.Sequential(
            nn.Flatten(),
            nn.Linear(4, 6),
            nn.Dropout(0.5),
            nn.ReLU(),
            nn.Identity(),
            nn.Sequential(nn.Linear(6, 2)),
        )
        .double()
        .eval()
    )
    X = torch.randn(50, 4, dtype=torch.float64)
    em = expected_mask(list(net), X, "backward")
    assert em.info["nonlinearities"] == 1
    torch.testing.assert_close(em.matrix, func_mean_jacobian(net, X), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mean_jacobian(net, X, "backward").matrix, em.matrix, rtol=1e-10, atol=1e-12)


def test_the_seed_model() -> None:
    model = backlens.build_mlp([3, 2, 2, 1], "relu", seed=1).double()
    X = torch.randn(128, 3, dtype=torch.float64) * 5
    torch.testing.assert_close(
        mean_jacobian(model, X, "backward").matrix, func_mean_jacobian(model, X), rtol=1e-10, atol=1e-12
    )


def test_bad_input() -> None:
    net = chain([3, 4, 2])
    X = torch.randn(10, 3, dtype=torch.float64)
    cases = [
        (
            lambda: expected_mask(
                nn.Sequential(nn.Linear(3, 4), nn.Softplus(), nn.Linear(4, 2)), X, "backward"
            ),
            "Softplus at position 1.*use mean_jacobian",
        ),
        (
            lambda: expected_mask(
                nn.Sequential(nn.Linear(3, 4), nn.Dropout().train(), nn.Linear(4, 2)), X, "backward"
            ),
            "eval mode",
        ),
        (
            lambda: expected_mask(nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2)), X, "backward"),
            "taking 4 features.*at position 1",
        ),
        (lambda: expected_mask(net, torch.randn(10, 4), "backward"), r"X_in: expected shape \(n, 3\)"),
        (lambda: expected_mask(net, X, direction="sideways"), "direction"),
        (lambda: expected_mask(net, X[:0], "backward"), "at least one row"),
        (lambda: expected_mask(net, torch.full((2, 3), float("nan")), "backward"), "finite"),
        (lambda: expected_mask("net", X, "backward"), "layers"),
        (lambda: mean_jacobian(net, X.long(), "backward"), "floating-point"),
        (lambda: mean_jacobian(42, X, "backward"), "fn_or_layers"),
        (lambda: mean_jacobian(lambda x: x.sum(), X, "backward"), "rows"),
        (lambda: weights_only(nn.Sequential(), "backward"), "at least one layer"),
        (lambda: identity(0), "d"),
    ]
    for call, message in cases:
        with pytest.raises(BacklensError, match=message):
            call()
