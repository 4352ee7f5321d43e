"""collect under a 2-process gloo group: merged Moments and fitted maps equal one process's, and
ranks that disagree all raise the same BacklensError (never a hang: each launch has a timeout).
One launch per module (spawning ranks costs seconds), each case a test reading its results."""

from pathlib import Path

import pytest
import torch
from rank_workers import BATCH, collected, launch, problem, ranks_worker, scored
from torch.utils.data import DataLoader

# float64 sums over 200 rows merged in another order: equal to a few ulps, so 1e-12 relative.
RTOL = 1e-12
SHARDINGS = {
    "70-and-130-samples": [list(range(0, 7)), list(range(7, 20))],
    "interleaved": [list(range(1, 20, 3)), [b for b in range(20) if b % 3 != 1]],
    "one-rank-empty": [list(range(20)), []],
}
DISAGREEMENTS = {"moments shape": "Moments shape", "dtype": "dtype", "block": "block"}


@pytest.fixture(scope="module")
def ranks_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("ranks")
    launch(ranks_worker, (SHARDINGS, list(DISAGREEMENTS)), where, timeout=90.0)
    return where


@pytest.fixture(scope="module")
def one_process() -> dict:
    model, data = problem()
    return collected(model, DataLoader(data, batch_size=BATCH))


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    scale = want.abs().max().clamp_min(1e-300)
    assert float((got - want).abs().max() / scale) <= RTOL, what


@pytest.mark.parametrize("sharding", list(SHARDINGS))
@pytest.mark.parametrize("rank", [0, 1])
def test_two_gloo_ranks_equal_one_process(
    ranks_run: Path, one_process: dict, sharding: str, rank: int
) -> None:
    got = torch.load(ranks_run / f"{sharding}.{rank}.pt")
    assert got["n_samples"] == one_process["n_samples"] == 200
    for key, value in one_process.items():
        if isinstance(value, dict):
            assert got[key]["n"] == value["n"]
            assert got[key]["n_eff"] == pytest.approx(value["n_eff"], rel=RTOL)
            for stat in ("mean_x", "mean_y", "cxx", "cxy", "cyy_diag"):
                _close(got[key][stat], value[stat], f"{key} {stat}")
        elif isinstance(value, torch.Tensor):
            _close(got[key], value, f"map {key}")


@pytest.mark.parametrize("rank", [0, 1])
def test_compare_and_linearity_over_ranks_equal_one_process(ranks_run: Path, rank: int) -> None:
    # in-use means are over every rank's test batches; scores come from the merged Moments
    model, data = problem()
    loader = DataLoader(data, batch_size=BATCH)
    want = scored(model, loader, loader)
    got = torch.load(ranks_run / f"scored.{rank}.pt")
    assert got.keys() == want.keys()
    for key, value in want.items():
        if value is None:
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(value, rel=RTOL, abs=1e-15), key


@pytest.mark.parametrize(("case", "named"), list(DISAGREEMENTS.items()))
def test_ranks_that_disagree_all_raise(ranks_run: Path, case: str, named: str) -> None:
    messages = [(ranks_run / f"{case}.{r}.txt").read_text() for r in (0, 1)]
    assert messages[0] == messages[1], messages
    assert f"the same {named} on every rank" in messages[0] and "rank 1:" in messages[0]
