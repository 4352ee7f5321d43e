"""`backlens trace` prints one training step's record and saves it for load_record."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

import backlens
from backlens.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "rows"),
    [
        (["--data", "seed", "--layers", "3,2,2,1", "--activation", "relu", "--batch-size", "4"], 5),
        (
            [
                "--data",
                "digits",
                "--layers",
                "64,16,10",
                "--activation",
                "tanh",
                "--batch-size",
                "8",
            ],
            3,
        ),
    ],
)
def test_trace_prints_and_saves(tmp_path: Path, args: list[str], rows: int) -> None:
    out = tmp_path / "step.safetensors"
    result = runner.invoke(app, ["trace", *args, "--save", str(out)])
    assert result.exit_code == 0, result.output
    assert "grad_output" in result.output and "Linear" in result.output
    rec = backlens.load_record(out)
    assert len(rec.names) == rows
    batch = int(args[-1])
    assert rec["0"].input.shape[0] == batch and rec["0"].grad_input is None
    assert rec[rec.names[-1]].grad_output is not None


def test_show_prints_full_tensors() -> None:
    result = runner.invoke(app, ["trace", "--show"])
    assert result.exit_code == 0, result.output
    assert "grad_outputs[0] =" in result.output


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--data", "digits", "--layers", "3,2,1"], "--layers"),
        (["--data", "mnist"], "--data"),
        (["--batch-size", "0"], "--batch-size"),
        (["--activation", "swish"], "--activation"),
    ],
)
def test_bad_options_exit_2_with_one_line(args: list[str], match: str) -> None:
    result = runner.invoke(app, ["trace", *args])
    assert result.exit_code == 2 and match in result.output and "Traceback" not in result.output
