"""Moments' raw state (for checkpoints) continues a stream bit for bit; the process-group merge
refuses to run without a group."""

import pytest
import torch

from backlens.errors import BacklensError
from backlens.linear.distributed import all_reduce_moments
from backlens.linear.moments import Moments


@pytest.mark.parametrize("yy", ["diagonal", "full"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_continues_the_stream_bit_for_bit(yy: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(300, 5, generator=g, dtype=dtype) + 3, torch.randn(300, 4, generator=g, dtype=dtype))
    b = (torch.randn(200, 5, generator=g, dtype=dtype) + 3, torch.randn(200, 4, generator=g, dtype=dtype))
    whole = Moments(5, 4, yy=yy).update(*a).update(*b)
    half = Moments(5, 4, yy=yy).update(*a)
    resumed = Moments.from_state(5, 4, yy, half.state()).update(*b)
    for stat in ("mean_x", "mean_y", "cxx", "cxy", "cyy_diag"):
        assert torch.equal(getattr(resumed, stat), getattr(whole, stat)), stat
    assert resumed.n == whole.n and resumed.n_eff == whole.n_eff


def test_state_of_other_shapes_is_refused() -> None:
    state = Moments(3, 2).update(torch.randn(4, 3), torch.randn(4, 2)).state()
    with pytest.raises(BacklensError, match=r"kx of shape \(4,\)"):
        Moments.from_state(4, 2, "diagonal", state)


def test_all_reduce_without_a_process_group_is_refused() -> None:
    with pytest.raises(BacklensError, match="init_process_group"):
        all_reduce_moments(Moments(2, 2))
