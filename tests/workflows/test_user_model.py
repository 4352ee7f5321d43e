"""--model file.py:build_fn: a user's own model, weights from safetensors only, clear failures."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from backlens import BacklensError
from backlens.cli import app
from backlens.workflows.user_model import UserModelError, is_model_spec, load_user_model

runner = CliRunner()

SOURCE = """
import torch
from torch import nn
import torch.nn.functional as F


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(64, 16)
        self.mlp = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 16))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        h = F.relu(self.inp(x))
        return self.head(h + self.mlp(h))


def build():
    torch.manual_seed(0)
    return Residual()


def broken():
    raise ValueError("no such layer")
"""


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "mymodel.py"
    path.write_text(SOURCE)
    return path


def test_builds_and_loads_weights_strictly(user_file: Path, tmp_path: Path) -> None:
    trained = load_user_model(f"{user_file}:build")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    save_file(trained.state_dict(), tmp_path / "w.safetensors")
    loaded = load_user_model(f"{user_file}:build", str(tmp_path / "w.safetensors"))
    pairs = zip(loaded.state_dict().values(), trained.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert not loaded.training
    save_file({"inp.weight": torch.zeros(16, 64)}, tmp_path / "part.safetensors")
    with pytest.raises(BacklensError, match="weights: expected tensors for exactly"):
        load_user_model(f"{user_file}:build", str(tmp_path / "part.safetensors"))


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("{f}:broken", UserModelError, "to build a model, got ValueError: no such layer"),
        ("{f}:nothing", BacklensError, "a function 'nothing'"),
        ("missing.py:build", BacklensError, "an existing Python file"),
    ],
)
def test_failures_name_the_file_and_function(user_file: Path, spec: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        load_user_model(spec.format(f=user_file))


def test_spec_form() -> None:
    assert is_model_spec("a/b.py:build") and not is_model_spec("run/model.safetensors")


def test_cli_end_to_end_and_the_users_traceback(user_file: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["abstract", "--model", f"{user_file}:build", "--blocks", "mlp", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    assert "block mlp" in result.output and (tmp_path / "r" / "results.json").exists()
    failed = runner.invoke(app, ["abstract", "--model", f"{user_file}:broken"])
    assert failed.exit_code == 2 and "no such layer" in failed.output
    wrong = runner.invoke(app, ["abstract", "--model", f"{user_file}:build", "--data", "diabetes"])
    assert wrong.exit_code == 2 and "--model: expected a model that takes diabetes's inputs" in wrong.output
    refused = runner.invoke(app, ["abstract", "--model", f"{user_file}:build", "--layers", "3,2"])
    assert refused.exit_code == 2 and "--model: expected no MLP options" in refused.output
