"""Resumable collect: a run killed with SIGKILL mid-stream and resumed from its checkpoint ends
with the same Moments, samples and maps as an uninterrupted run; a checkpoint of another run,
or a file that is not one, is refused with a reason."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from checkpoint_run import BATCHES, problem, run

from backlens.blocks.block import Block
from backlens.blocks.collect import collect
from backlens.blocks.methods import fit_method
from backlens.errors import BacklensError
from backlens.tensorfile import load_tensors

HERE = Path(__file__).parent
OPTIONS = {"probes": 2, "weighting": "direction"}
# the resumed stream adds the same chunks to the same raw sums: equal to float64 rounding
RTOL = 1e-12


def _same(a, b) -> None:
    for name in ("forward", "backward", "probe", "weighted"):
        ma, mb = getattr(a, name), getattr(b, name)
        assert ma.n == mb.n
        for stat in ("mean_x", "cxx", "cxy", "cyy_diag"):
            torch.testing.assert_close(getattr(ma, stat), getattr(mb, stat), rtol=RTOL, atol=0)
    for direction in a.pairs:
        for got, want in zip(a.pairs[direction], b.pairs[direction], strict=True):
            torch.testing.assert_close(got, want, rtol=RTOL, atol=0)
    torch.testing.assert_close(a.inputs, b.inputs, rtol=RTOL, atol=0)
    for direction in ("forward", "backward"):
        got = fit_method("ridge", a.block, a, direction).matrix
        want = fit_method("ridge", b.block, b, direction).matrix
        torch.testing.assert_close(got, want, rtol=RTOL, atol=1e-15)


def test_kill_minus_nine_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    checkpoint = tmp_path / "collect.checkpoint"
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    child = subprocess.Popen([sys.executable, str(HERE / "checkpoint_run.py"), str(checkpoint)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not checkpoint.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a batch or so past the first checkpoint
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    done = load_tensors(checkpoint, "backlens.CollectCheckpoint")[1]["batches"]
    assert 0 < done < BATCHES, "killed mid-run"
    resumed = run(str(checkpoint), **OPTIONS)
    _same(resumed, run(None, **OPTIONS))
    assert load_tensors(checkpoint, "backlens.CollectCheckpoint")[1]["batches"] == BATCHES


def test_resume_of_a_finished_checkpoint_streams_nothing_again(tmp_path: Path) -> None:
    checkpoint = tmp_path / "c"
    first = run(str(checkpoint), every=7, **OPTIONS)
    _same(run(str(checkpoint), **OPTIONS), first)


def _changed_model(path: Path) -> None:
    model, loader = problem()
    with torch.no_grad():
        model[0].weight[0, 0] += 1e-9
    collect(model, Block(model, "1", "3"), loader, show_progress=False, checkpoint=path, max_pairs=64)


def _changed_data(path: Path) -> None:
    model, loader = problem()
    loader.dataset.tensors[0][3, 1] += 1.0
    collect(model, Block(model, "1", "3"), loader, show_progress=False, checkpoint=path, max_pairs=64)


def _shorter_data(path: Path) -> None:
    model, loader = problem()
    short = torch.utils.data.DataLoader(torch.utils.data.Subset(loader.dataset, range(50)), batch_size=10)
    collect(model, Block(model, "1", "3"), short, show_progress=False, checkpoint=path, max_pairs=64)


def _wider_model(path: Path) -> None:
    from backlens.workflows.mlp import build_mlp

    model = build_mlp([6, 10, 8, 3], "tanh", seed=2).double()
    _, loader = problem()
    collect(model, Block(model, "1", "3"), loader, show_progress=False, checkpoint=path, max_pairs=64)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        pytest.param(_changed_model, "model values changed", id="weights"),
        pytest.param(_wider_model, "model parameter shapes changed (0.weight", id="shapes"),
        pytest.param(lambda p: run(str(p), seed=1), "options changed (seed: 0 → 1", id="seed"),
        pytest.param(
            lambda p: run(str(p), direction="forward"), "direction: 'both' → 'forward'", id="direction"
        ),
        pytest.param(_changed_data, "the data changed: the first 20 batches differ", id="data"),
        pytest.param(_shorter_data, "the loader now ends after 5 batches", id="fewer-batches"),
    ],
)
def test_resume_of_another_run_is_refused_naming_the_change(tmp_path: Path, change, named: str) -> None:
    checkpoint = tmp_path / "c"
    run(str(checkpoint))
    with pytest.raises(BacklensError, match="another run|checkpoint of this run") as caught:
        change(checkpoint)
    assert named in str(caught.value)


@pytest.mark.parametrize(
    ("content", "named"),
    [
        pytest.param(b"not safetensors", "unreadable", id="garbage"),
        pytest.param(None, "format='backlens.Moments'", id="a-moments-file"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path, content, named: str) -> None:
    from backlens.linear.moments import Moments

    path = tmp_path / "c"
    if content is None:
        Moments(2, 2).update(torch.randn(3, 2), torch.randn(3, 2)).save(path)
    else:
        path.write_bytes(content)
    with pytest.raises(BacklensError, match=named):
        run(str(path))


def test_every_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(BacklensError, match="every"):
        run(str(tmp_path / "c"), every=0)
    assert not (tmp_path / "c").exists()
