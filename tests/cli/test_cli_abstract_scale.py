"""`backlens abstract --checkpoint-every K --resume`: refusals before any work, and a run killed
with SIGKILL then resumed ends with the maps of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from backlens.cli import app

runner = CliRunner()
SLOW_MODEL = '''
import time
import torch
from torch import nn

class Slow(nn.Module):
    """A small MLP whose forward takes a while: a collection long enough to interrupt."""
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        layers = [nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 10)]
        self.body = nn.Sequential(*layers)
    def forward(self, x):
        time.sleep(0.15)
        return self.body(x)

def build():
    return Slow()
'''


def _refusal_setup(tmp_path: Path, case: str) -> list[str]:
    out = tmp_path / "run"
    if case == "checkpoint exists":
        (tmp_path / "run.checkpoint").mkdir()
        return ["--out", str(out), "--checkpoint-every", "2"]
    return {
        "no out": ["--checkpoint-every", "2"],
        "resume without out": ["--resume"],
        "nothing to resume": ["--out", str(out), "--resume"],
        "zero": ["--out", str(out), "--checkpoint-every", "0"],
    }[case]


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("no out", "--checkpoint-every: expected an out directory"),
        ("resume without out", "--resume: expected an out directory"),
        ("nothing to resume", "--resume: expected a checkpoint at"),
        ("checkpoint exists", "(--resume) to continue that run"),
        ("zero", "--checkpoint-every"),
    ],
)
def test_checkpoint_flags_refused_before_any_work(tmp_path: Path, case: str, match: str) -> None:
    result = runner.invoke(app, ["abstract", "--epochs", "1", *_refusal_setup(tmp_path, case)])
    assert result.exit_code == 2, result.output
    assert match in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()


def _fitted(out: Path) -> dict[str, torch.Tensor]:
    """Each map's singular values and each row's held-out error, by block and method."""
    run = json.loads((out / "results.json").read_text())["runs"][0]
    found = {}
    for block in run["blocks"]:
        for key, values in block["spectra"].items():
            found[f"{block['block']} {key} spectrum"] = torch.tensor(values, dtype=torch.float64)
        for row in block["rows"]:
            if row["test_rel_error"] is not None:
                name = f"{block['block']} {row['method']}/{row['direction']} error"
                found[name] = torch.tensor([row["test_rel_error"]], dtype=torch.float64)
    return found


@pytest.mark.slow
def test_killed_run_resumed_ends_with_the_uninterrupted_maps(tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(SLOW_MODEL)
    spec = f"{tmp_path / 'slow.py'}:build"
    common = ["abstract", "--model", spec, "--data", "digits", "--methods", "ridge", "--direction", "both"]
    backlens = [str(Path(sys.executable).parent / "backlens")]
    out, checkpoint = tmp_path / "run", tmp_path / "run.checkpoint"
    child = subprocess.Popen(
        [*backlens, *common, "--out", str(out), "--checkpoint-every", "1"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (checkpoint.exists() and any(checkpoint.iterdir())) and time.monotonic() < deadline:
            assert child.poll() is None, "the run ended before it could be interrupted"
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL and checkpoint.is_dir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    resumed = subprocess.run(
        [*backlens, *common, "--out", str(out), "--resume"], env=env, capture_output=True
    )
    assert resumed.returncode == 0, resumed.stdout.decode() + resumed.stderr.decode()
    assert not checkpoint.exists()
    plain = subprocess.run(
        [*backlens, *common, "--out", str(tmp_path / "plain")], env=env, capture_output=True
    )
    assert plain.returncode == 0
    got, want = _fitted(out), _fitted(tmp_path / "plain")
    assert got.keys() == want.keys() and got
    for name in want:  # the same sums, streamed in two sittings: equal to float64 rounding
        torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-15)


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_end_with_one_process_figures(tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(SLOW_MODEL.replace("time.sleep(0.15)", "pass"))
    common = [
        "abstract",
        "--model",
        f"{tmp_path / 'slow.py'}:build",
        "--data",
        "digits",
        "--methods",
        "ridge",
    ]
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node", "2", str(bin_dir / "backlens")]
    ranks = subprocess.run(
        [*torchrun, *common, "--out", str(tmp_path / "ranks")], env=env, capture_output=True
    )
    assert ranks.returncode == 0, ranks.stderr.decode()[-2000:]
    alone = subprocess.run(
        [str(bin_dir / "backlens"), *common, "--out", str(tmp_path / "alone")], env=env, capture_output=True
    )
    assert alone.returncode == 0
    got, want = _fitted(tmp_path / "ranks"), _fitted(tmp_path / "alone")
    assert got.keys() == want.keys() and got
    for name in want:  # a spectrum to 1e-12 of its largest value: the smallest are ill-conditioned
        scale = float(want[name].abs().max()) if "spectrum" in name else 0.0
        torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-12 * scale + 1e-15)
