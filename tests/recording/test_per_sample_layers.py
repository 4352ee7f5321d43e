"""Per-sample gradients and norms of every registered layer type, against torch.func and Opacus."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from per_sample_oracles import TOL, func_grads, mse, norms_of, rel_err, traced_step
from torch import nn


class Attention(nn.Module):
    """Self-attention returning only its output, as TransformerEncoderLayer calls it."""

    def __init__(self, batch_first: bool, kv_bias: bool = False) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first, add_bias_kv=kv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


class Lookup(nn.Module):
    def __init__(self, padding_idx: int | None) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 3, padding_idx=padding_idx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(x)


@dataclass
class Case:
    make: Callable[[], nn.Module]
    shape: tuple[int, ...]  # of the input, batch axis included
    layer: str = ""  # the module's name in the model
    batch_dim: int = 0
    integer: bool = False  # indices into an embedding

    @property
    def select(self) -> list | None:
        """Attention is not a leaf (out_proj is its child): select it by type."""
        return [nn.MultiheadAttention] if self.layer == "attn" else None


CASES = {
    "conv1d-groups-dilation": Case(
        lambda: nn.Conv1d(3, 6, 3, stride=2, padding=2, groups=3, dilation=2), (5, 3, 11)
    ),
    "conv1d-plain": Case(lambda: nn.Conv1d(2, 3, 1), (1, 2, 4)),
    "conv2d-stride-groups": Case(lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (4, 4, 9, 8)),
    "conv2d-same-dilation": Case(
        lambda: nn.Conv2d(4, 6, (3, 2), padding="same", dilation=(2, 1)), (3, 4, 7, 6)
    ),
    "conv2d-reflect": Case(
        lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect", bias=False), (3, 2, 5, 5)
    ),
    "conv3d": Case(lambda: nn.Conv3d(2, 4, (2, 3, 2), stride=(1, 2, 1), padding=(1, 0, 1)), (3, 2, 5, 6, 4)),
    "convT1d": Case(lambda: nn.ConvTranspose1d(3, 4, 3, stride=3, padding=1, dilation=2), (4, 3, 5)),
    "convT2d": Case(
        lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2), (3, 4, 5, 4)
    ),
    "embedding-padding": Case(lambda: Lookup(2), (5, 6), "emb", integer=True),
    "embedding": Case(lambda: Lookup(None), (3, 4, 2), "emb", integer=True),
    "layernorm": Case(lambda: nn.LayerNorm(6), (4, 5, 6)),
    "layernorm-2d-nobias": Case(lambda: nn.LayerNorm((3, 4), bias=False), (3, 2, 3, 4)),
    "groupnorm": Case(lambda: nn.GroupNorm(2, 6), (4, 6, 3, 3)),
    "rmsnorm": Case(lambda: nn.RMSNorm(6), (4, 5, 6)),
    "mha-batch-first": Case(lambda: Attention(True, kv_bias=True), (3, 4, 8), "attn"),
    "mha-seq-first": Case(lambda: Attention(False), (4, 3, 8), "attn", batch_dim=1),
}


def _data(case: Case, dtype: torch.dtype, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = case.make().to(dtype)
    with torch.no_grad():  # non-trivial affine parameters (norms start at w = 1, b = 0)
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randint(0, 7, case.shape) if case.integer else torch.randn(case.shape, dtype=dtype)
    y = torch.randn_like(model(x))
    return model, x, y


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case_id", list(CASES))
def test_layer_grads_and_norms_equal_torch_func(case_id: str, dtype: torch.dtype, reduction: str) -> None:
    case = CASES[case_id]
    model, x, y = _data(case, dtype)
    ref = func_grads(model, x, y, mse(reduction), case.batch_dim)
    rec = traced_step(model, x, y, mse(reduction), select=case.select)
    grads = rec.per_sample_grads(case.layer, reduction=reduction)
    prefix = case.layer + "." if case.layer else ""
    assert {prefix + k for k in grads} == set(ref)
    for key, g in grads.items():
        assert g.shape == ref[prefix + key].shape and g.dtype == dtype
        assert rel_err(g, ref[prefix + key]) <= TOL[dtype], key
        mean = 1 / x.shape[case.batch_dim] if reduction == "mean" else 1  # they sum to .grad
        param = model.get_parameter(prefix + key)
        assert rel_err(g.sum(0) * mean, param.grad) <= TOL[dtype] * 10
    norms = rec.per_sample_grad_norms(reduction=reduction)
    assert rel_err(norms, norms_of(ref)) <= TOL[dtype]


def _opacus_grads(case_id: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, reduction: str) -> dict:
    """Opacus GradSampleModule's grad_sample per parameter; attention through DPMultiheadAttention."""
    from opacus import GradSampleModule
    from opacus.layers import DPMultiheadAttention

    oracle = copy.deepcopy(model)
    if case_id.startswith("mha"):
        attn = oracle.attn  # type: ignore[union-attr]
        dp = DPMultiheadAttention(8, 2, batch_first=attn.batch_first, add_bias_kv=attn.bias_k is not None)
        dp.to(x.dtype).load_state_dict(attn.state_dict())  # float64 weights stay float64
        oracle.attn = dp  # type: ignore[union-attr]
    gsm = GradSampleModule(oracle, loss_reduction=reduction, batch_first=not case_id.endswith("seq-first"))
    mse(reduction)(gsm(x), y).backward()
    got = {k: p.grad_sample for k, p in oracle.named_parameters()}
    if case_id.startswith("mha"):  # DP attention splits in_proj into q, k, v Linears
        qkv = ("qlinear", "klinear", "vlinear")
        got["attn.in_proj_weight"] = torch.cat([got.pop(f"attn.{m}.weight") for m in qkv], dim=1)
        got["attn.in_proj_bias"] = torch.cat([got.pop(f"attn.{m}.bias") for m in qkv], dim=1)
        for kv in ("k", "v"):
            if f"attn.seq_bias_{kv}.bias" in got:
                got[f"attn.bias_{kv}"] = got.pop(f"attn.seq_bias_{kv}.bias").reshape(-1, 1, 1, 8)
    return got


# Not oracles there (Opacus 1.6): batch-first attention mixes heads (see below), conv ignores
# padding_mode (it pads with zeros; torch.func agrees with us), LayerNorm(bias=False) crashes.
NOT_OPACUS = {"mha-batch-first", "conv2d-reflect", "layernorm-2d-nobias"}
OPACUS_CASES = [c for c in CASES if c not in NOT_OPACUS]


@pytest.mark.filterwarnings("ignore::UserWarning")  # Opacus warns about its secure-RNG settings
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case_id", OPACUS_CASES)
def test_layer_grads_equal_opacus(case_id: str, dtype: torch.dtype, reduction: str) -> None:
    case = CASES[case_id]
    model, x, y = _data(case, dtype)
    want = _opacus_grads(case_id, model, x, y, reduction)
    rec = traced_step(model, x, y, mse(reduction), select=case.select, store="device")
    prefix = case.layer + "." if case.layer else ""
    grads = rec.per_sample_grads(case.layer, reduction=reduction)
    assert {prefix + k for k in grads} == set(want)
    for key, g in grads.items():
        ref = want[prefix + key]
        if case_id == "embedding-padding":  # Opacus gives the padding row a gradient; autograd does not
            assert ref[:, 2].abs().max() > 0 and g[:, 2].abs().max() == 0
            ref = ref.clone()
            ref[:, 2] = 0
        assert rel_err(g, ref) <= TOL[dtype], key


def test_opacus_attention_batch_first_is_not_an_oracle() -> None:
    """Why the batch-first attention is checked against torch.func only: Opacus 1.6's
    DPMultiheadAttention(batch_first=True) with 2 heads computes another function."""
    from opacus.layers import DPMultiheadAttention

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    dp = DPMultiheadAttention(8, 2, batch_first=True)
    dp.load_state_dict(mha.state_dict())
    x = torch.randn(3, 4, 8)
    with torch.no_grad():
        assert float((dp(x, x, x)[0] - mha(x, x, x)[0]).abs().max()) > 1e-2
