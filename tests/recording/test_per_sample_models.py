"""Per-sample norms of whole models equal torch.func's; what is not covered raises or warns by name."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from per_sample_oracles import TOL, func_grads, mse, norms_of, rel_err, traced_step
from torch import nn
from torch.nn import functional as F

import backlens
from backlens.recording.per_sample import RULES, PartialNormWarning, rule_for
from backlens.recording.per_sample_base import CallData
from backlens.recording.per_sample_conv import conv_grads_by_unfold


class TinyTransformer(nn.Module):
    """Embedding + one TransformerEncoderLayer (dropout 0) + a Linear head, token logits."""

    def __init__(self, vocab: int = 11, d: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)
        self.block = nn.TransformerEncoderLayer(d, 2, dim_feedforward=24, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.emb(x)))


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2, groups=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


def ce(reduction: str):  # noqa: ANN201 - a loss over tokens or samples
    return lambda out, y: F.cross_entropy(out.flatten(0, -2), y.flatten(), reduction=reduction)


TRANSFORMER_SELECT = [nn.Embedding, nn.MultiheadAttention, nn.Linear, nn.LayerNorm]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_transformer_norms_equal_torch_func(dtype: torch.dtype, reduction: str) -> None:
    model = TinyTransformer().to(dtype)
    x = torch.randint(0, 11, (4, 5))
    x[0, -2:] = 0  # padding tokens
    y = torch.randint(0, 11, (4, 5))
    ref = func_grads(model, x, y, ce(reduction))
    rec = traced_step(model, x, y, ce(reduction), select=TRANSFORMER_SELECT)
    norms = rec.per_sample_grad_norms(reduction=reduction)
    assert rel_err(norms, norms_of(ref)) <= TOL[dtype]
    attn = rec.per_sample_grads("block.self_attn", reduction=reduction)
    assert rel_err(attn["out_proj.weight"], ref["block.self_attn.out_proj.weight"]) <= TOL[dtype]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_cnn_norms_equal_torch_func(dtype: torch.dtype, reduction: str) -> None:
    model = tiny_cnn().to(dtype)
    x = torch.randn(6, 1, 10, 10, dtype=dtype)
    y = torch.randint(0, 3, (6,))
    ref = func_grads(model, x, y, ce(reduction))
    rec = traced_step(model, x, y, ce(reduction))  # every leaf
    assert rel_err(rec.per_sample_grad_norms(reduction=reduction), norms_of(ref)) <= TOL[dtype]


def test_an_uncovered_parameter_raises_by_name_or_warns_with_allow_partial() -> None:
    model = TinyTransformer().double()
    x, y = torch.randint(0, 11, (3, 4)), torch.randint(0, 11, (3, 4))
    rec = traced_step(model, x, y, ce("mean"))  # leaves only: the attention itself is not traced
    with pytest.raises(backlens.BacklensError, match=r"block\.self_attn\.in_proj_weight.*not traced"):
        rec.per_sample_grad_norms()
    with pytest.warns(PartialNormWarning, match="in_proj_bias") as caught:
        partial = rec.per_sample_grad_norms(allow_partial=True)
    left = caught[0].message.left_out  # type: ignore[union-attr]
    attn = "block.self_attn."
    assert {s.split(" ")[0] for s in left} == {
        attn + k for k in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
    }
    assert any("out_proj.weight (NonDynamicallyQuantizableLinear: never called" in s for s in left)
    ref = func_grads(model, x, y, ce("mean"))
    rest = {k: v for k, v in ref.items() if not k.startswith(attn)}
    assert rel_err(partial, norms_of(rest)) <= 1e-12  # exactly the rest
    assert issubclass(PartialNormWarning, backlens.BacklensWarning)


def test_untraced_layers_and_explicit_names() -> None:
    model = tiny_cnn().double()
    x, y = torch.randn(4, 1, 10, 10, dtype=torch.float64), torch.randint(0, 3, (4,))
    rec = traced_step(model, x, y, ce("sum"), select=[nn.Linear])  # the old, silently partial case
    with pytest.raises(backlens.BacklensError, match=r"0\.weight .*'0' is not traced.*allow_partial=True"):
        rec.per_sample_grad_norms()
    ref = func_grads(model, x, y, ce("sum"))
    linears = {k: v for k, v in ref.items() if k.startswith(("7.", "9."))}
    got = rec.per_sample_grad_norms(reduction="sum", names=["7", "9"])  # explicit: no check
    assert rel_err(got, norms_of(linears)) <= 1e-12


class Scale(nn.Module):
    """A module no rule knows: y = x ⊙ w."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


class Doubled(nn.Linear):
    """A Linear subclass with its own forward: the Linear rule would be silently wrong."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


@pytest.mark.parametrize("odd", [lambda: Scale(5), lambda: Doubled(5, 5), lambda: nn.PReLU(5)])
def test_func_fallback_is_explicit_and_exact(odd) -> None:  # noqa: ANN001
    model = nn.Sequential(nn.Linear(4, 5), odd(), nn.Tanh(), nn.Linear(5, 2)).double()
    assert rule_for(model[1], type(model[1]).__name__) is None
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    rec = traced_step(model, x, y, mse("mean"))
    with pytest.raises(backlens.BacklensError, match=r"1\.\w+ .*fallback='func'"):
        rec.per_sample_grad_norms()
    with pytest.raises(backlens.BacklensError, match="fallback='func'"):
        rec.per_sample_grads("1")
    ref = func_grads(model, x, y, mse("mean"))
    grads = rec.per_sample_grads("1", fallback="func")
    for key, g in grads.items():
        assert rel_err(g, ref[f"1.{key}"]) <= 1e-12
    assert rel_err(rec.per_sample_grad_norms(fallback="func"), norms_of(ref)) <= 1e-12
    with pytest.raises(backlens.BacklensError, match="^fallback"):
        rec.per_sample_grad_norms(fallback="vmap")


def test_func_fallback_refuses_what_it_cannot_recompute() -> None:
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(4, 1, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1)
            return self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]  # a keyword mask

    model = Masked().double()
    x = torch.randn(3, 4, 4, dtype=torch.float64)
    rec = traced_step(model, x, torch.randn_like(x), mse("mean"), select=[nn.MultiheadAttention])
    with pytest.raises(backlens.BacklensError, match="keyword arguments are not recorded"):
        rec.per_sample_grads("attn")
    drop = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), Scale(4)).double().train()
    x = torch.randn(8, 4, dtype=torch.float64)
    rec = traced_step(drop, x, torch.randn_like(x), mse("mean"), select=["2"])
    assert rec.per_sample_grads("2", fallback="func")  # the dropout is outside the module: fine
    drop2 = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Dropout(0.5), Scale(4))).double().train()
    rec = traced_step(drop2, x, torch.randn_like(x), mse("mean"), select=["1"])
    with pytest.raises(backlens.BacklensError, match="dropout"):
        rec.per_sample_grads("1", fallback="func")


def test_tied_parameters_are_named_not_summed_silently() -> None:
    model = nn.Sequential(nn.Embedding(6, 4), nn.Linear(4, 6, bias=False)).double()
    model[1].weight = model[0].weight
    x, y = torch.randint(0, 6, (3, 2)), torch.randint(0, 6, (3, 2))
    rec = traced_step(model, x, y, ce("mean"))
    with pytest.raises(backlens.BacklensError, match=r"0\.weight \(shared by 0\.weight, 1\.weight"):
        rec.per_sample_grad_norms()


def test_registry_is_the_one_list() -> None:
    """Every type the issue names has a rule, and per_sample_grads' error lists the registry."""
    for kind in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Embedding, nn.LayerNorm):
        assert kind in RULES
    for kind in (nn.GroupNorm, nn.RMSNorm, nn.MultiheadAttention, nn.Linear):
        assert kind in RULES
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    rec = traced_step(model, torch.randn(4, 3), torch.randn(4, 3), mse("mean"))
    with pytest.raises(backlens.BacklensError, match="nn.Conv2d.*nn.MultiheadAttention.*'1', a BatchNorm1d"):
        rec.per_sample_grads("1")


def _conv_layer(dims: int, c_in: int, c_out: int, kernel: int, **kw: object) -> nn.Module:
    conv = [nn.Conv1d, nn.Conv2d, nn.Conv3d][dims - 1]
    return conv(c_in, c_out, kernel, **kw)  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None)
@given(
    dims=st.integers(1, 3),
    groups=st.integers(1, 2),
    c_in=st.integers(1, 2),
    c_out=st.integers(1, 3),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    pad=st.sampled_from([0, 1, 2, "same", "valid"]),
    n=st.integers(1, 3),
    transposed=st.booleans(),
)
def test_conv_hyperparameters(
    dims: int,
    groups: int,
    c_in: int,
    c_out: int,
    kernel: int,
    stride: int,
    dilation: int,
    pad: object,
    n: int,
    transposed: bool,
) -> None:
    if pad == "same" and (stride > 1 or transposed):
        stride = 1
    if transposed:
        kinds = [nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d]
        layer = kinds[dims - 1](
            c_in * groups,
            c_out * groups,
            kernel,
            stride=stride,
            padding=pad if isinstance(pad, int) else 0,
            dilation=dilation,
            groups=groups,
        )
    else:
        layer = _conv_layer(
            dims,
            c_in * groups,
            c_out * groups,
            kernel,
            stride=stride,
            padding=pad,
            dilation=dilation,
            groups=groups,
        )
    layer = layer.double()
    size = [7, 6, 5][:dims]
    x = torch.randn(n, c_in * groups, *size, dtype=torch.float64)
    with torch.no_grad():
        y = torch.randn_like(layer(x))
    ref = func_grads(layer, x, y, mse("mean"))
    rec = traced_step(layer, x, y, mse("mean"))
    grads = rec.per_sample_grads("")
    for key, g in grads.items():
        assert rel_err(g, ref[key]) <= 1e-12, key
    assert rel_err(rec.per_sample_grad_norms(), norms_of(ref)) <= 1e-12
    if not transposed:  # the unfold + einsum form equals the grouped-convolution one
        calls = [CallData("c", c.inputs, c.outputs, c.grad_outputs) for c in rec[""].calls]
        unfolded = conv_grads_by_unfold(layer, calls, float(n), frozenset(grads))
        for key, g in grads.items():
            assert rel_err(unfolded[key], g) <= 1e-12, key


def test_a_loaded_record_covers_its_linear_layers_and_names_the_rest(tmp_path) -> None:  # noqa: ANN001
    model = tiny_cnn().double()
    x, y = torch.randn(3, 1, 10, 10, dtype=torch.float64), torch.randint(0, 3, (3,))
    rec = traced_step(model, x, y, ce("mean"))
    loaded = backlens.load_record(rec.save(tmp_path / "rec.safetensors"))
    assert loaded.model is None
    with pytest.raises(backlens.BacklensError, match=r"0\.weight \(Conv2d: a loaded record keeps no model"):
        loaded.per_sample_grad_norms()
    ref = func_grads(model, x, y, ce("mean"))
    got = loaded.per_sample_grad_norms(names=["7", "9"])
    assert rel_err(got, norms_of({k: v for k, v in ref.items() if k[0] in "79"})) <= 1e-12


def test_a_reparametrized_layer_is_not_covered_silently() -> None:
    """weight_norm puts weight_g and weight_v on the Linear: its rule knows only weight and bias."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated, but in use: the old hook form
        torch.nn.utils.weight_norm(model[0])
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    rec = traced_step(model, x, y, mse("mean"))
    with pytest.raises(backlens.BacklensError, match=r"0\.weight_g .*does not know this parameter"):
        rec.per_sample_grad_norms()
    with pytest.raises(backlens.BacklensError, match="weight_g, weight_v"):
        rec.per_sample_grads("0")
    plain = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()  # the same function
    g, v = model[0].weight_g.detach(), model[0].weight_v.detach()
    with torch.no_grad():
        plain[0].weight.copy_(g * v / v.norm(dim=1, keepdim=True))
        plain[0].bias.copy_(model[0].bias)
        plain[2].load_state_dict(model[2].state_dict())
    ref = func_grads(plain, x, y, mse("mean"))
    grads = rec.per_sample_grads("0", fallback="func")
    assert set(grads) == {"weight_g", "weight_v", "bias"}
    # the chain rule through w = g·v/‖v‖, sample by sample, from the plain layer's gradients
    vn = v.norm(dim=1, keepdim=True)
    want_g = (ref["0.weight"] * v / vn).sum(-1, keepdim=True)
    want_v = g / vn * (ref["0.weight"] - want_g * v / vn)
    assert rel_err(grads["weight_g"], want_g) <= 1e-12 and rel_err(grads["weight_v"], want_v) <= 1e-12
    want = (want_g.flatten(1).square().sum(1) + want_v.flatten(1).square().sum(1)).sqrt()
    rest = {k: w for k, w in ref.items() if k != "0.weight"}
    total = (want.square() + norms_of(rest).square()).sqrt()
    assert rel_err(rec.per_sample_grad_norms(fallback="func"), total) <= 1e-12


def test_recomputing_rules_wait_for_the_trace_to_close() -> None:
    model = nn.Sequential(nn.Linear(3, 4), Scale(4)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    with backlens.trace(model) as rec:
        mse("mean")(model(x), torch.zeros(5, 4, dtype=torch.float64)).backward()
        assert rec.per_sample_grads("0")  # a closed form: fine inside
        with pytest.raises(backlens.BacklensError, match="after the `with"):
            rec.per_sample_grads("1", fallback="func")
    assert len(rec["1"].calls) == 1 and rec.per_sample_grads("1", fallback="func")
