"""Training through a linear backward, against hand computations on small float64 nets.

For each layer method the propagated δ's and every weight gradient equal the formulas with the
context's own matrices (lb.feedback): δ_prev = (δ·B) ⊙ σ'(z_prev), dW = δᵀa; dfa sends the
output error e as e·B_l; bp is plain autograd bit for bit; expected-mask uses the linear core's
map on the same masks; shadow mode leaves training bit-identical. Tolerance 1e-14 (float64, the
same products in another order).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backlens import BacklensError, Block, linear_backward
from backlens.blocks.feedback import init_bound
from backlens.linear.analytic import expected_mask

ATOL = 1e-14


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2)).double()


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(
        7, 2, generator=g, dtype=torch.float64
    )


def hand_forward(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        z1 = model[0](x)
        a1 = torch.tanh(z1)
        z2 = model[2](a1)
        a2 = F.relu(z2)
        z3 = model[4](a2)
    return {"x": x, "z1": z1, "a1": a1, "z2": z2, "a2": a2, "e": 2 * (z3 - y) / z3.numel()}


def deltas(
    method: str, model: nn.Sequential, v: dict[str, torch.Tensor], feedback: dict
) -> list[torch.Tensor]:
    """δ at the three Linear layers' outputs by the method's formula."""
    e, relu, tanh = v["e"], (v["z2"] > 0).double(), 1 - v["a1"] ** 2
    if method == "dfa":
        return [(e @ feedback["0"]) * tanh, (e @ feedback["2"]) * relu, e]
    B = {"bp": [model[2].weight.detach(), model[4].weight.detach()]}.get(method) or [
        feedback["2"],
        feedback["4"],
    ]
    d3 = e
    d2 = (d3 @ B[1]) * relu
    return [(d2 @ B[0]) * tanh, d2, d3]


@pytest.mark.parametrize("method", ["bp", "fa", "usf", "brsf", "frsf", "dfa"])
def test_weight_gradients_equal_the_hand_formulas_with_the_contexts_matrices(method: str) -> None:
    model, (x, y) = mlp(), batch()
    with linear_backward(model, method=method, seed=0) as lb:
        F.mse_loss(model(x), y).backward()
    v = hand_forward(model, x, y)
    inputs = [v["x"], v["a1"], v["a2"]]
    for layer, d, a in zip(
        (model[0], model[2], model[4]), deltas(method, model, v, lb.feedback), inputs, strict=True
    ):
        torch.testing.assert_close(layer.weight.grad, d.T @ a, rtol=0, atol=ATOL)
        torch.testing.assert_close(layer.bias.grad, d.sum(0), rtol=0, atol=ATOL)


def test_bp_is_plain_autograd_bit_for_bit() -> None:
    model, twin, (x, y) = mlp(), mlp(), batch()
    with linear_backward(model, method="bp"):
        F.mse_loss(model(x), y).backward()
    F.mse_loss(twin(x), y).backward()
    assert all(
        torch.equal(a.grad, b.grad) for a, b in zip(model.parameters(), twin.parameters(), strict=True)
    )


@pytest.mark.parametrize(
    ("method", "check"),
    [
        ("usf", lambda B, W: torch.equal(B, torch.sign(W) * init_bound(W) / 3**0.5)),
        ("brsf", lambda B, W: torch.equal(torch.sign(B), torch.sign(W))),
        ("frsf", lambda B, W: torch.equal(torch.sign(B), torch.sign(W))),
        ("fa", lambda B, W: bool((B.abs() <= init_bound(W)).all()) and not torch.equal(B, W)),
    ],
)
def test_feedback_matrices_follow_their_definitions(method: str, check) -> None:
    model, (x, y) = mlp(), batch()
    seen = []
    with linear_backward(model, method=method, seed=3) as lb:
        for _ in range(2):
            F.mse_loss(model(x), y).backward()
            seen.append({k: B.clone() for k, B in lb.feedback.items()})
    for name in ("0", "2", "4"):
        W = model.get_submodule(name).weight.detach()
        assert seen[0][name].shape == W.shape and check(seen[0][name], W)
    redrawn = not torch.equal(seen[0]["2"], seen[1]["2"])
    assert redrawn == (method == "brsf")  # fa and frsf keep their draw, usf is a function of W


def test_seeds_reproduce_and_differ() -> None:
    def run(seed: int) -> torch.Tensor:
        model, (x, y) = mlp(), batch()
        with linear_backward(model, method="fa", seed=seed):
            F.mse_loss(model(x), y).backward()
        return model[0].weight.grad

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


def test_conv_feedback_sends_the_transposed_convolution_by_B() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 2)
    )
    model = model.double()
    x, y = torch.randn(4, 2, 6, 6, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    with linear_backward(model, method="fa", seed=0) as lb:
        F.mse_loss(model(x), y).backward()
    # by hand: the output error e from the true forward, sent below the Linear as e·B, through
    # the ReLU, then the conv's own weight gradient (torch's conv2d_weight as the oracle)
    z = F.conv2d(x, model[0].weight, model[0].bias, 2, 1).detach().requires_grad_(True)
    out = F.linear(F.relu(z).flatten(1), model[3].weight, model[3].bias)
    (e,) = torch.autograd.grad(F.mse_loss(out, y), out)
    delta = (e @ lb.feedback["3"]).reshape(z.shape) * (z > 0)
    expected = torch.nn.grad.conv2d_weight(x, model[0].weight.shape, delta, 2, 1)
    torch.testing.assert_close(model[0].weight.grad, expected, rtol=0, atol=1e-12)
    # and what the conv would send below with its own B: the transposed convolution by B
    B0 = lb.feedback["0"].requires_grad_(False)
    xr = x.clone().requires_grad_(True)
    (below,) = torch.autograd.grad(F.conv2d(xr, B0, None, 2, 1), xr, delta)
    from backlens.blocks.feedback import send_below

    torch.testing.assert_close(send_below(model[0], B0, delta, x), below, rtol=0, atol=1e-12)
    assert lb.feedback["0"].shape == model[0].weight.shape


def test_expected_mask_uses_the_linear_cores_map_on_the_same_masks() -> None:
    model, (x, y) = mlp(), batch()
    with linear_backward(model, method="expected-mask", blocks=["2:4"], momentum=0.0) as lb:
        F.mse_loss(model(x), y).backward()
    a1 = torch.tanh(model[0](x)).detach()
    M = expected_mask(model[2:5], a1, "backward").matrix  # grad_in ≈ grad_out·M
    torch.testing.assert_close(lb.feedback["2:4"], M, rtol=0, atol=ATOL)
    v = hand_forward(model, x, y)
    d1 = (v["e"] @ M) * (1 - v["a1"] ** 2)  # below the block: e·M, then the tanh
    torch.testing.assert_close(model[0].weight.grad, d1.T @ x, rtol=0, atol=ATOL)
    d2 = (v["e"] @ model[4].weight.detach()) * (v["z2"] > 0)  # inside the block: exact, local
    torch.testing.assert_close(model[2].weight.grad, d2.T @ v["a1"], rtol=0, atol=ATOL)


@pytest.mark.parametrize("method", ["bp", "fa", "dfa", "expected-mask"])
def test_shadow_mode_leaves_training_bit_identical_and_bp_is_aligned(method: str) -> None:
    def train(shadow: bool) -> tuple[list[torch.Tensor], dict]:
        model = mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with linear_backward(model, method=method, seed=0, shadow=shadow) as lb:
            for step in range(3):
                x, y = batch(step)
                optimizer.zero_grad()
                F.mse_loss(model(x), y).backward()
                optimizer.step()
            angles = lb.alignment() if shadow else {}
        return [p.detach().clone() for p in model.parameters()], angles

    plain, _ = train(False)
    shadowed, angles = train(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, shadowed, strict=True))
    assert set(angles) == {"0", "2", "4"} and all(len(v) == 3 for v in angles.values())
    assert max(angles["4"]) < 1e-5  # the output layer's gradient is exact for every method
    if method == "bp":
        assert max(max(v) for v in angles.values()) < 1e-5


@pytest.mark.parametrize(
    ("make", "kwargs", "match"),
    [
        (mlp, {"method": "sgd"}, "method: expected one of"),
        (
            lambda: nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)),
            {"method": "expected-mask", "blocks": ["0:2"]},
            "Linear/activation chains",
        ),
        (
            lambda: nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten()),
            {"method": "fa"},
            "Conv1d, which has no feedback",
        ),
        (lambda: nn.Sequential(nn.LayerNorm(3)), {"method": "usf"}, "Linear or Conv2d layers"),
    ],
)
def test_bad_input_is_refused_before_any_work(make, kwargs, match: str) -> None:
    model = make()
    with pytest.raises(BacklensError, match=match):
        with linear_backward(model, **kwargs):
            pass
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_a_block_inside_a_residual_model_gets_exact_local_gradients() -> None:
    model = mlp()
    block = Block(model, "2", "4")
    x, y = batch()
    with linear_backward(model, method="expected-mask", blocks=[block], momentum=0.0):
        F.mse_loss(model(x), y).backward()
    assert model[4].weight.grad is not None and model[0].weight.grad is not None


def test_an_activation_module_reused_outside_the_block_records_only_inside_it() -> None:
    torch.manual_seed(0)
    relu = nn.ReLU()  # one module, used inside block 0:2 and again after it
    model = nn.Sequential(nn.Linear(4, 5), relu, nn.Linear(5, 3), relu, nn.Linear(3, 2)).double()
    x, y = batch()
    with linear_backward(model, method="expected-mask", blocks=["0:2"], momentum=0.0) as lb:
        F.mse_loss(model(x), y).backward()
    z1 = model[0](x).detach()
    torch.testing.assert_close(lb.derivatives["0:2"][1], (z1 > 0).double().mean(0), rtol=0, atol=ATOL)


def test_shadow_measures_listed_methods_as_their_own_runs_would_at_that_state() -> None:
    import copy
    import math

    model, (x, y) = mlp(), batch()
    start = copy.deepcopy(model)
    with linear_backward(model, method="bp", seed=5, shadow=["fa", "usf"]) as lb:
        F.mse_loss(model(x), y).backward()
    for method in ("fa", "usf"):
        other = copy.deepcopy(start)  # the oracle: that method's own context, same seed and state
        with linear_backward(other, method=method, seed=5):
            F.mse_loss(other(x), y).backward()
        for name in ("0", "2"):
            a = torch.cat([p.grad.reshape(-1) for p in other.get_submodule(name).parameters()])
            b = torch.cat([p.grad.reshape(-1) for p in model.get_submodule(name).parameters()])
            expected = math.degrees(math.acos(float(a @ b / (a.norm() * b.norm()))))
            assert lb.alignment(method)[name] == [pytest.approx(expected, abs=1e-9)]
    assert lb.alignment()["0"] == [pytest.approx(0.0, abs=1e-5)]  # bp itself
    with pytest.raises(BacklensError, match="shadowed methods"):
        lb.alignment("dfa")
    with pytest.raises(BacklensError, match="shadow: expected one of"):
        with linear_backward(mlp(), method="bp", shadow=["sgd"]):
            pass


def test_shadowing_a_list_of_methods_leaves_training_bit_identical() -> None:
    def train(shadow) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
        model = mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with linear_backward(model, method="usf", seed=0, shadow=shadow) as lb:
            for step in range(3):
                x, y = batch(step)
                optimizer.zero_grad()
                F.mse_loss(model(x), y).backward()
                optimizer.step()
        if shadow:
            assert all(len(lb.alignment(m)["0"]) == 3 for m in ("fa", "dfa", "expected-mask"))
        return [p.detach().clone() for p in model.parameters()]

    plain, shadowed = train(False), train(["fa", "dfa", "expected-mask"])
    assert all(torch.equal(a, b) for a, b in zip(plain, shadowed, strict=True))


def test_ridge_is_exact_until_its_first_fit_and_converges_to_a_linear_blocks_backward() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 6), nn.Identity(), nn.Linear(6, 3)
    ).double()
    x, y = torch.randn(64, 4, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64)

    def bp_grad() -> torch.Tensor:
        model.zero_grad()
        F.mse_loss(model(x), y).backward()
        return model[0].weight.grad.clone()

    with linear_backward(model, "ridge", blocks=["2:4"], refit_every=2, forgetting=0.5) as lb:
        state = lb.ridge["2:4"]
        first = bp_grad()  # before any fit: the exact gradient passes
        assert not state.fitted
        bp_grad()  # the second step fits
        assert state.fitted and state.fits == 1
        after = bp_grad()
    exact = (model[4].weight @ model[2].weight).detach()  # the block is linear: its backward is exact
    torch.testing.assert_close(state.matrix, exact, rtol=0, atol=1e-7)  # ridge's α is tiny, not 0
    truth = bp_grad()
    assert torch.equal(first, truth)
    torch.testing.assert_close(after, truth, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"refit_every": 0}, "refit_every"),
        ({"forgetting": 1.0}, "forgetting"),
        ({"record_every": 0}, "record_every"),
    ],
)
def test_ridge_arguments_are_checked(kwargs, match: str) -> None:
    with pytest.raises(BacklensError, match=match):
        with linear_backward(mlp(), "ridge", **kwargs):
            pass


def test_expected_mask_feedback_is_the_map_of_the_step_even_read_after_the_optimizer_step() -> None:
    # The map is applied factor by factor and formed only when read: read after optimizer.step it
    # must still be the product of the weights that backward used, not of the updated ones.
    model, (x, y) = mlp(), batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    with linear_backward(model, method="expected-mask", blocks=["2:4"], momentum=0.0) as lb:
        F.mse_loss(model(x), y).backward()
        a1 = torch.tanh(model[0](x)).detach()
        M = expected_mask(model[2:5], a1, "backward").matrix
        optimizer.step()
    assert not torch.allclose(expected_mask(model[2:5], a1, "backward").matrix, M)  # weights moved
    torch.testing.assert_close(lb.feedback["2:4"], M, rtol=0, atol=ATOL)


def test_ridge_fits_nothing_for_a_block_with_nothing_below_it() -> None:
    # Block 0:2 reads the data: nothing below wants a gradient, so no map is needed or fitted and
    # the block's own gradients are backprop's.
    model, (x, y) = mlp(), batch()
    F.mse_loss(model(x), y).backward()
    truth = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with linear_backward(model, "ridge", blocks=["0:2"], refit_every=1) as lb:
        F.mse_loss(model(x), y).backward()
    state = lb.ridge["0:2"]
    assert state.needed is False and state.fits == 0 and state.window is None
    assert all(torch.equal(p.grad, t) for p, t in zip(model.parameters(), truth, strict=True))


@pytest.mark.parametrize(
    ("record_every", "refit_every", "rows_per_fit"), [(1, 4, 4 * 7), (2, 4, 2 * 7), (3, 6, 2 * 7)]
)
def test_ridge_records_the_pairs_of_every_kth_step_and_refits_on_them(
    record_every: int, refit_every: int, rows_per_fit: int
) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    opts = {"blocks": ["2:4"], "refit_every": refit_every, "record_every": record_every}
    with linear_backward(model, "ridge", **opts) as lb:
        for step in range(2 * refit_every):
            x, y = batch(step)
            optimizer.zero_grad()
            F.mse_loss(model(x), y).backward()
            optimizer.step()
    state = lb.ridge["2:4"]
    assert state.fits == 2 and state.info["n"] == rows_per_fit  # batch() has 7 rows


@pytest.mark.parametrize("method", ["usf", "brsf", "frsf"])
def test_a_feedback_matrix_read_is_the_readers_own_not_rewritten_by_later_steps(method: str) -> None:
    # B is rebuilt in a buffer each step; what a reader took must stay that step's B (brsf's R is
    # redrawn every batch, so an aliased read would change value).
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    with linear_backward(model, method=method, seed=0) as lb:
        taken, values = [], []
        for step in range(3):
            x, y = batch(step)
            optimizer.zero_grad()
            F.mse_loss(model(x), y).backward()
            taken.append(lb.feedback["2"])
            values.append(taken[-1].clone())
            optimizer.step()
    assert all(torch.equal(t, v) for t, v in zip(taken, values, strict=True))
    assert len({t.data_ptr() for t in taken}) == len(taken)
