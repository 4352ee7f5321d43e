"""Probe cotangents (collect(probes=K), ridge-probe), direction-weighted pairs (ridge-direction),
and the effective-sample-size warning and columns in compare."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import backlens
from backlens import EffectiveSamplesWarning
from backlens.blocks.block import Block
from backlens.blocks.collect import PROBE_SEED_OFFSET, collect
from backlens.blocks.compare import compare
from backlens.blocks.methods import NotApplicable, fit_method, fit_or_explain


def setup(n: int = 48, seed: int = 0, widths=(5, 9, 7, 3)):
    model = backlens.build_mlp(list(widths), "tanh", seed=seed).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, widths[0], generator=g, dtype=torch.float64) * 2
    y = torch.randn(n, widths[-1], generator=g, dtype=torch.float64)
    return model, DataLoader(TensorDataset(x, y), batch_size=16)


def test_probe_pairs_are_v_times_the_blocks_own_jacobian():
    model, loader = setup()
    block = Block(model, "0", "2")
    col = collect(model, block, loader, "backward", "mse", probes=3, seed=5, show_progress=False)
    plain = collect(model, block, loader, "backward", "mse", seed=5, show_progress=False)
    assert torch.allclose(col.backward.xy, plain.backward.xy)  # probes leave the gradients alone
    draws = torch.Generator().manual_seed(5 + PROBE_SEED_OFFSET)
    V, VJ = [], []
    for xb, _ in loader:
        a_in = model[:0](xb).detach().requires_grad_(True)
        a_out = model[0:3](a_in)
        for _ in range(3):
            v = torch.randn(a_out.shape, generator=draws, dtype=torch.float64)
            (vj,) = torch.autograd.grad(a_out, a_in, grad_outputs=v, retain_graph=True)
            V.append(v), VJ.append(vj)
    V, VJ = torch.cat(V), torch.cat(VJ)
    assert col.probe is not None and col.probe.n == 3 * 48 and col.probes == 3
    assert torch.allclose(col.probe.xy, V.T @ VJ, atol=1e-10)
    assert torch.allclose(col.probe.xx, V.T @ V, atol=1e-10)


def test_probes_work_for_forward_only_collections_too():
    model, loader = setup()
    col = collect(model, Block(model, "0", "2"), loader, "forward", "mse", probes=2, show_progress=False)
    assert col.backward is None and col.probe is not None and col.probe.n == 96


def relative_gap(fitted: torch.Tensor, target: torch.Tensor) -> float:
    return float((fitted - target).norm() / target.norm())


def test_ridge_probe_converges_to_the_mean_jacobian_as_probes_grow():
    model, loader = setup(n=64, seed=1)
    block = Block(model, "0", "2")  # Linear → tanh → Linear: J(x) varies with x
    gaps = []
    for probes in (1, 8, 64, 512):
        col = collect(model, block, loader, "backward", "mse", probes=probes, show_progress=False)
        mean_j = backlens.mean_jacobian(block, col.inputs, "backward").matrix.double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = fit_method("ridge-probe", block, col, "backward")
        assert fitted.method == "ridge-probe" and fitted.info["n"] == 64 * probes
        gaps.append(relative_gap(fitted.matrix.double(), mean_j))
    assert gaps[-1] < 0.03, gaps
    assert gaps[-1] < gaps[1] < gaps[0], gaps
    # the gradient-fitted ridge estimates something else: E[J] weighted by the gradients' energy
    ridge_gap = relative_gap(fit_method("ridge", block, col, "backward").matrix.double(), mean_j)
    assert gaps[-1] < ridge_gap


def test_probe_map_of_a_linear_block_is_its_weight():
    model, loader = setup()
    block = Block(model, "2", "2")  # one Linear: J = W everywhere
    col = collect(model, block, loader, "backward", "mse", probes=4, show_progress=False)
    fitted = fit_method("ridge-probe", block, col, "backward")
    assert relative_gap(fitted.matrix.double(), model[2].weight.double()) < 1e-4


def test_direction_weighted_pairs_scale_each_row_by_its_grad_out_norm():
    model, loader = setup()
    block = Block(model, "0", "2")
    col = collect(model, block, loader, "backward", "mse", weighting="direction", show_progress=False)
    X, Y = col.pairs["backward"]  # all 48 rows are in the sample
    scale = 1 / X.norm(dim=1, keepdim=True)
    assert col.weighted is not None and col.weighted.n == 48
    assert torch.allclose(col.weighted.xy, (X * scale).T @ (Y * scale), atol=1e-12)
    assert col.weighted.n_eff == pytest.approx(48.0)  # unit rows: every sample counts once
    fitted = fit_method("ridge-direction", block, col, "backward")
    assert fitted.method == "ridge-direction" and fitted.info["weighting"] == "direction"


def test_backward_only_methods_say_why_they_do_not_apply():
    model, loader = setup()
    block = Block(model, "0", "2")
    col = collect(model, block, loader, "both", "mse", show_progress=False)
    for method in ("ridge-probe", "ridge-direction"):
        forward = fit_or_explain(method, block, col, "forward")
        assert isinstance(forward, NotApplicable) and "backward maps only" in forward.reason
        missing = fit_or_explain(method, block, col, "backward")
        assert isinstance(missing, NotApplicable)
    assert "probes=K" in fit_or_explain("ridge-probe", block, col, "backward").reason
    with pytest.raises(backlens.BacklensError):
        collect(model, block, loader, "forward", weighting="direction", show_progress=False)
    with pytest.raises(backlens.BacklensError):
        collect(model, block, loader, "backward", probes=-1, show_progress=False)


def test_compare_shows_n_and_n_eff_and_warns_per_fit_when_n_eff_is_below_d():
    model, train = setup(n=12, widths=(5, 40, 40, 3))  # 12 samples for a 40-wide block output
    _, test = setup(n=32, seed=2, widths=(5, 40, 40, 3))
    block = Block(model, "0", "2")
    with pytest.warns(EffectiveSamplesWarning) as record:
        rows = compare(
            model,
            block,
            train,
            test,
            ["ridge", "ridge-probe", "ridge-direction", "mean-jacobian"],
            "backward",
            "mse",
            show_progress=False,
        )
    messages = [str(w.message) for w in record if w.category is EffectiveSamplesWarning]
    ridge_line = next(m for m in messages if "ridge (backward)" in m)
    assert ridge_line.startswith("block 0:2, ridge (backward): fitted on 12 samples, effectively")
    assert "40 input features" in ridge_line
    by_method = {r.method: r for r in rows}
    assert by_method["ridge"].n == 12 and by_method["ridge"].n_eff <= 12
    assert by_method["ridge-probe"].n == 12 * 4 and by_method["ridge-probe"].test_rel_error is not None
    assert by_method["ridge-direction"].n_eff == pytest.approx(12.0)
    assert by_method["mean-jacobian"].n is None and by_method["mean-jacobian"].n_eff is None
    assert "n_eff" in by_method["ridge"].to_dict()


def test_no_effective_samples_warning_with_enough_samples():
    model, train = setup(n=400, widths=(5, 6, 6, 3))
    col = collect(model, Block(model, "0", "2"), train, "backward", "mse", probes=2, show_progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EffectiveSamplesWarning)
        warnings.filterwarnings("ignore", category=backlens.AlphaAtGridEdgeWarning)
        fit_method("ridge-probe", Block(model, "0", "2"), col, "backward")
