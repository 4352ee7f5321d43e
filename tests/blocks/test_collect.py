"""collect: the boundary pairs streamed into Moments equal what autograd gives, batch by batch."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import backlens
from backlens.blocks.block import Block
from backlens.blocks.collect import Reservoir, collect


def direct_pairs(
    model: nn.Sequential, block: Block, loader: DataLoader
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The oracle: run the block's modules by hand and differentiate each batch's loss with autograd."""
    names = [n for n, _ in model.named_children()]
    lo, hi = names.index(block.start), names.index(block.end)
    fx, fy, bx, by = [], [], [], []
    for xb, yb in loader:
        a_in = model[:lo](xb).detach().requires_grad_(True)
        a_out = model[lo : hi + 1](a_in)
        out = model[hi + 1 :](a_out)
        loss = nn.functional.mse_loss(out, yb)
        g_out, g_in = torch.autograd.grad(loss, [a_out, a_in])
        fx.append(a_in.detach()), fy.append(a_out.detach()), bx.append(g_out), by.append(g_in)
    return {"forward": (torch.cat(fx), torch.cat(fy)), "backward": (torch.cat(bx), torch.cat(by))}


@pytest.mark.parametrize(("start", "end"), [("0", "2"), ("2", "4"), ("1", "3"), ("4", "4")])
def test_moments_equal_direct_computation(start: str, end: str) -> None:
    model = backlens.build_mlp([5, 6, 7, 3], "tanh", seed=0).double()
    x, y = torch.randn(50, 5, dtype=torch.float64), torch.randn(50, 3, dtype=torch.float64)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    block = Block(model, start, end)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    col = collect(model, block, loader, "both", "mse", show_progress=False)
    oracle = direct_pairs(model, block, loader)
    for direction, moments in (("forward", col.forward), ("backward", col.backward)):
        X, Y = oracle[direction]
        assert moments.n == 50
        # float64 sums over 50 rows: agreement to a few ulps of the largest entry
        torch.testing.assert_close(moments.xx, X.T @ X, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(moments.xy, X.T @ Y, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(moments.sum_y, Y.sum(0), rtol=1e-12, atol=1e-12)
        px, py = col.pairs[direction]
        assert px.shape == X.shape and py.shape == Y.shape  # under the cap: every row kept
    torch.testing.assert_close(col.inputs.sort(0).values, oracle["forward"][0].sort(0).values)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.grad is None


def test_forward_only_skips_backward() -> None:
    model = backlens.build_mlp([4, 5, 2], "relu", seed=0)
    loader = DataLoader(TensorDataset(torch.randn(10, 4), torch.randn(10, 2)), batch_size=4)
    col = collect(model, Block(model, "0", "2"), loader, "forward", show_progress=False)
    assert col.backward is None and col.forward.n == 10 and "backward" not in col.pairs


def test_reservoir_caps_and_samples_uniformly() -> None:
    res = Reservoir(cap=100, seed=0)
    for start in range(0, 10_000, 250):
        res.add(torch.arange(start, start + 250, dtype=torch.float64).unsqueeze(1))
    (values,) = res.columns([1])
    assert values.shape == (100, 1) and res.seen == 10_000
    assert len(set(values.squeeze(1).tolist())) == 100
    # a uniform sample of 0..9999 has mean ≈ 5000 (std of the mean ≈ 290)
    assert abs(float(values.mean()) - 5000) < 1200


def test_bad_arguments() -> None:
    model = backlens.build_mlp([4, 5, 2], "relu", seed=0)
    other = backlens.build_mlp([4, 5, 2], "relu", seed=0)
    loader = DataLoader(TensorDataset(torch.randn(4, 4), torch.randn(4, 2)), batch_size=4)
    with pytest.raises(backlens.BacklensError, match="Block of this model"):
        collect(model, Block(other, "0", "2"), loader)
    with pytest.raises(backlens.BacklensError, match="direction"):
        collect(model, Block(model, "0", "2"), loader, direction="sideways")
    with pytest.raises(backlens.BacklensError, match="empty loader"):
        collect(model, Block(model, "0", "2"), [], show_progress=False)
