"""The trace records what autograd computes, call by call, wherever plain hooks break."""

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import backlens


@pytest.mark.parametrize("widths", [[3, 2, 2, 1], [8, 16, 4], [5, 5, 5, 5, 2]])
def test_records_equal_autograd(widths: list[int]) -> None:
    model = backlens.build_mlp(widths, "relu", seed=0).double()
    x = torch.randn(6, widths[0], dtype=torch.float64)
    y = torch.randn(6, widths[-1], dtype=torch.float64)
    with backlens.trace(model, select=[nn.Linear]) as rec:
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert rec.names == linears
    for name in linears:
        layer = model.get_submodule(name)
        record = rec[name]
        # dW = grad_outputᵀ · input, exactly what autograd accumulates in .grad
        torch.testing.assert_close(
            record.grad_output.T @ record.input, layer.weight.grad, rtol=1e-12, atol=1e-14
        )
        torch.testing.assert_close(
            record.output, record.input @ layer.weight.T + layer.bias, rtol=1e-12, atol=1e-14
        )
    assert rec[linears[0]].grad_input is None  # x does not require grad
    for _lower, upper in zip(linears[:-1], linears[1:], strict=True):
        # grad_input of a layer is grad_output · W, before the activation below masks it
        expected = rec[upper].grad_output @ model.get_submodule(upper).weight
        torch.testing.assert_close(rec[upper].grad_input, expected, rtol=1e-12, atol=1e-14)


def test_bad_selection_lists_close_names() -> None:
    model = backlens.build_mlp([3, 4, 1], "relu", seed=0)
    with pytest.raises(backlens.BacklensError, match="select"):
        backlens.trace(model, select=["9"])
    with pytest.raises(backlens.BacklensError, match="torch.nn.Module"):
        backlens.trace("not a model")  # type: ignore[arg-type]


# --- the complete recorder (issue 3) -------------------------------------------------------------


def full_hook_record(model: nn.Module, names: list[str], run: Callable[[nn.Module], None]) -> dict:
    """The oracle: forward hooks plus full backward hooks, on a model they work on."""
    calls: dict[str, list[dict]] = {n: [] for n in names}
    modules = dict(model.named_modules())
    handles = []
    for name in names:

        def forward(m: nn.Module, i: tuple, o: object, name: str = name) -> None:
            calls[name].append({"inputs": i, "output": o})

        def backward(m: nn.Module, gi: tuple, go: tuple, name: str = name) -> None:
            [c for c in calls[name] if "gi" not in c][-1].update(gi=gi, go=go)  # reverse order

        handles += [
            modules[name].register_forward_hook(forward),
            modules[name].register_full_backward_hook(backward),
        ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(model)
    for handle in handles:
        handle.remove()
    return calls


def same(ours: torch.Tensor | None, ref: torch.Tensor | None) -> bool:
    """Equal to float64 rounding; ours None where the oracle has None or zeros (it wraps all)."""
    if ours is None:
        return ref is None or not bool(ref.any())
    return ref is not None and torch.allclose(ours, ref, rtol=1e-10, atol=1e-12)


class TwoOut(nn.Module):
    """Several inputs, a tuple output, and a non-tensor argument."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 6)

    def forward(self, a: torch.Tensor, b: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.lin(a * b)
        return h[:, :3] * k, torch.tanh(h[:, 3:]) + a[:, :3]


def mlp_case() -> tuple[nn.Module, list[str], Callable]:
    model = backlens.build_mlp([5, 7, 6, 3], "tanh", seed=0).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    return model, ["0", "1", "2", "3", "4"], lambda m: m(x).square().sum().backward()


def mlp_3d_case() -> tuple[nn.Module, list[str], Callable]:
    model = backlens.build_mlp([5, 7, 3], "gelu", seed=0).double()
    x = torch.randn(4, 6, 5, dtype=torch.float64, requires_grad=True)
    return (
        model,
        ["0", "1", "2"],
        lambda m: F.mse_loss(m(x), torch.ones(4, 6, 3, dtype=torch.float64)).backward(),
    )


def encoder_case() -> tuple[nn.Module, list[str], Callable]:
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    names = ["linear1", "linear2", "norm1", "norm2", "dropout1"]
    return layer, names, lambda m: m(x).square().sum().backward()


def attention_case() -> tuple[nn.Module, list[str], Callable]:
    mha = nn.MultiheadAttention(8, 2, batch_first=True).double()
    q, k, v = (torch.randn(3, n, 8, dtype=torch.float64, requires_grad=True) for n in (5, 4, 4))

    def run(m: nn.Module) -> None:
        out, weights = m(q, k, v)
        (out.square().sum() + (weights * torch.arange(4.0, dtype=torch.float64)).sum()).backward()

    return mha, [""], run


def two_out_case() -> tuple[nn.Module, list[str], Callable]:
    model = TwoOut().double()
    a = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 4, dtype=torch.float64)
    return model, ["", "lin"], lambda m: sum(o.square().sum() for o in m(a, b, 3)).backward()


def shared_case() -> tuple[nn.Module, list[str], Callable]:
    lin = nn.Linear(4, 4).double()
    model = nn.Sequential(lin, nn.Tanh(), lin, nn.Tanh(), lin)  # one module, three calls
    x = torch.randn(3, 4, dtype=torch.float64)
    return model, ["0", "1"], lambda m: m(x).square().sum().backward()


CASES = {
    "mlp": mlp_case,
    "mlp 3-D": mlp_3d_case,
    "encoder layer": encoder_case,
    "attention": attention_case,
    "tuple output": two_out_case,
    "called 3 times": shared_case,
}


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_every_call_equals_full_backward_hooks(case: Callable) -> None:
    model, names, run = case()
    ref = full_hook_record(copy.deepcopy(model), names, run)
    with backlens.trace(model, select=names) as rec:
        run(model)
    for name in names:
        calls = rec[name].calls
        assert len(calls) == len(ref[name]) > 0
        for call, want in zip(calls, ref[name], strict=True):
            given = [w for w in want["inputs"] if isinstance(w, torch.Tensor)]
            ours = backlens.recording.nested.tensors_in(call.inputs)
            assert all(same(o, w) for o, w in zip(ours, given, strict=True))
            assert len(call.grad_inputs) == len(want["gi"]) and len(call.grad_outputs) == len(want["go"])
            assert all(same(g, w) for g, w in zip(call.grad_inputs, want["gi"], strict=True))
            assert all(same(g, w) for g, w in zip(call.grad_outputs, want["go"], strict=True))


def test_one_tensor_at_several_inputs_gets_its_total_gradient_at_each() -> None:
    # self-attention passes x as query, key and value: the trace records the gradient the call
    # sends back to x (the three parts a full backward hook separates, summed) at each position
    layer, _, run = encoder_case()
    ref = full_hook_record(copy.deepcopy(layer), ["self_attn"], run)["self_attn"][0]
    with backlens.trace(layer, select=["self_attn"]) as rec:
        run(layer)
    grads = rec["self_attn"].calls[0].grad_inputs
    assert grads[0] is grads[1] is grads[2]
    torch.testing.assert_close(grads[0], sum(ref["gi"]), rtol=1e-10, atol=1e-12)


def inplace_models() -> dict[str, tuple[nn.Module, nn.Module]]:
    """(in-place model, the same model with out-of-place activations) pairs."""

    class FunctionalInPlace(nn.Module):
        def __init__(self, inplace: bool) -> None:
            super().__init__()
            self.lin, self.out, self.inplace = nn.Linear(5, 6), nn.Linear(6, 2), inplace

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(F.relu(self.lin(x), inplace=self.inplace))

    def seq(inplace: bool) -> nn.Module:
        torch.manual_seed(1)
        return nn.Sequential(
            nn.Linear(5, 6),
            nn.ReLU(inplace=inplace),
            nn.Linear(6, 6),
            nn.LeakyReLU(0.1, inplace=inplace),
            nn.Dropout(0.0, inplace=inplace),
            nn.Linear(6, 2),
        ).double()

    def functional(inplace: bool) -> nn.Module:
        torch.manual_seed(1)
        return FunctionalInPlace(inplace).double()

    return {"modules": (seq(True), seq(False)), "functional": (functional(True), functional(False))}


INPLACE_CASES = [
    ("modules", None),
    ("modules", [nn.Linear]),
    ("modules", ["1", "3", "4"]),
    ("functional", None),
    ("functional", ["lin"]),
    ("functional", ["", "lin", "out"]),
]


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(("kind", "select"), INPLACE_CASES, ids=str)
def test_in_place_activations_recorded_as_out_of_place(kind: str, select: list | None) -> None:
    model, twin = inplace_models()[kind]
    names = backlens.recording.select.select_modules(model, select)
    x = torch.randn(4, 5, dtype=torch.float64)

    def run(m: nn.Module) -> None:
        m(x).square().sum().backward()

    # full backward hooks break on the in-place model (pytorch#61519); the trace does not
    with pytest.raises(RuntimeError, match="inplace|in-place"):
        full_hook_record(copy.deepcopy(model), names, run)
    ref = full_hook_record(twin, names, run)
    with backlens.trace(model, select=select) as rec:
        run(model)
    for name in names:
        call, want = rec[name].calls[0], ref[name][0]
        assert same(call.input, want["inputs"][0]) and same(call.output, want["output"])
        assert same(call.grad_input, want["gi"][0]) and same(call.grad_output, want["go"][0])
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)


def test_frozen_parameters_and_first_layer() -> None:
    model = backlens.build_mlp([3, 4, 4, 2], "relu", seed=0).double()
    model[2].weight.requires_grad_(False)
    x = torch.randn(5, 3, dtype=torch.float64)
    with backlens.trace(model, select=[nn.Linear]) as rec:
        model(x).sum().backward()
    assert model[2].weight.grad is None and model[2].bias.grad is not None
    assert rec["0"].grad_input is None  # x does not require grad
    assert rec["2"].params == {"weight": False, "bias": True}
    torch.testing.assert_close(rec["2"].grad_output.sum(0), model[2].bias.grad)
    torch.testing.assert_close(rec["0"].grad_output.T @ rec["0"].input, model[0].weight.grad)
    # a frozen first layer: nothing before it needs grad, so no backward reaches it
    model[0].requires_grad_(False)
    with backlens.trace(model, select=[nn.Linear]) as rec:
        model(x).sum().backward()
    assert rec["0"].calls[0].grad_outputs is None and rec["2"].grad_output is not None


def test_no_grad_forward_is_recorded_and_reported_at_once() -> None:
    model = backlens.build_mlp([3, 4, 2], "relu", seed=0)
    seen: list[backlens.Call] = []
    with backlens.trace(model, on_record=seen.append) as rec, torch.no_grad():
        out = model(torch.randn(2, 3))
        assert len(seen) == 3  # reported during the forward: no backward can come
    assert torch.equal(rec["2"].output, out)
    assert all(c.grad_inputs is None and c.grad_outputs is None for c in seen)
    assert rec["0"].grad_output is None


def test_calls_matched_to_their_gradients() -> None:
    lin = nn.Linear(3, 3).double()
    xs = [torch.randn(2, 3, dtype=torch.float64) for _ in range(3)]
    with backlens.trace(lin, select=[""]) as rec:
        outs = [lin(x) for x in xs]
        sum((k + 1) * o.sum() for k, o in enumerate(outs)).backward()
    assert [c.index for c in rec[""].calls] == [0, 1, 2]
    for k, (call, x) in enumerate(zip(rec[""].calls, xs, strict=True)):
        assert torch.equal(call.input, x)
        torch.testing.assert_close(call.grad_output, torch.full((2, 3), k + 1.0, dtype=torch.float64))
    with pytest.raises(backlens.BacklensError, match=r"3 calls.*calls\[i\]\.input"):
        _ = rec[""].input


def module_state(model: nn.Module) -> list[dict]:
    return [
        {k: (v if isinstance(v, (bool, int, float, str, type(None))) else id(v)) for k, v in vars(m).items()}
        | {"hooks": [len(getattr(m, h)) for h in vars(m) if h.endswith("hooks")]}
        for m in model.modules()
    ]


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("store", ["cpu", "device", None])
@pytest.mark.parametrize(
    "case",
    [encoder_case, mlp_3d_case, lambda: (inplace_models()["modules"][0], None, None)],
    ids=["encoder layer", "mlp 3-D", "in-place"],
)
def test_outputs_and_grads_bit_identical_nothing_written(case: Callable, store: str | None) -> None:
    model, _, _ = case()
    model.train()
    if isinstance(model, nn.TransformerEncoderLayer):
        model.dropout.p = model.dropout1.p = 0.3  # the trace must not change the random stream
    twin = copy.deepcopy(model)
    x = torch.randn(3, 5, next(model.parameters()).shape[-1], dtype=torch.float64)
    before = module_state(model)

    def step(m: nn.Module) -> torch.Tensor:
        torch.manual_seed(7)
        out = m(x)
        out.square().mean().backward()
        return out.detach()

    plain = step(twin)
    with backlens.trace(model, store=store, on_record=lambda c: None):
        traced = step(model)
    assert torch.equal(plain, traced)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    assert module_state(model) == before


def test_grad_input_of_a_leaf_input_with_autograd_grad() -> None:
    model = backlens.build_mlp([3, 4, 2], "tanh", seed=0).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    with backlens.trace(model, select=["0"]) as rec:
        (gx,) = torch.autograd.grad(model(x).sum(), [x])
    torch.testing.assert_close(rec["0"].grad_input, gx)
    assert x.grad is None


def test_table_and_show() -> None:
    model = backlens.build_mlp([3, 4, 2], "relu", seed=0)
    with backlens.trace(model) as rec:
        model(torch.randn(6, 3)).sum().backward()
    text = str(rec)
    for word in ("module", "Linear", "ReLU", "6×3", "6×4", "grad_output", "None", "‖"):
        assert word in text
    assert len(text.splitlines()) == 3 + 4 + 1  # title, header and rules, 3 rows
    from rich.console import Console

    console = Console(record=True, width=200)
    rec.show("2", console=console)
    shown = console.export_text()
    assert "grad_outputs[0] = [[1. 1.]" in shown  # d(sum)/d(out) = 1 everywhere
    with pytest.raises(backlens.BacklensError, match="call"):
        rec.show("2", call=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"select": ["linear"]}, "select.*Fix: use one of"),
        ({"select": ["blocks.*.mlp"]}, "select"),
        ({"select": [nn.Conv2d]}, "nn.Linear"),
        ({"select": [3]}, "module names, glob patterns or nn.Module types"),
        ({"store": "gpu"}, "store"),
        ({"on_record": 5}, "on_record"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with pytest.raises(backlens.BacklensError, match=match):
        backlens.trace(model, **kwargs)


def test_glob_and_type_selection() -> None:
    model = nn.Sequential(
        nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    )
    assert backlens.trace(model, select=["*.0"]).selected == ["0.0", "1.0"]
    assert backlens.trace(model, select=[nn.ReLU, "0"]).selected == ["0", "0.1", "1.1"]
    with pytest.raises(backlens.BacklensError, match="got '0.2'. Fix: use one of 0.0, 1.0"):
        with backlens.trace(model, select=["*.0"]) as rec:
            rec["0.2"]
