"""`backlens train` end to end on a tiny run: table, JSON, plots, and one-line refusals."""

import json
from pathlib import Path

from typer.testing import CliRunner

from backlens import BACKWARD_METHODS
from backlens.cli import app

runner = CliRunner()
TINY = ["--data", "digits", "--layers", "64,16,16,10", "--epochs", "1", "--batch-size", "256"]


def invoke(*args: str):
    return runner.invoke(app, ["train", *args])


def test_tiny_run_prints_the_table_and_writes_json_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke(*TINY, "--backward", "bp,dfa,usf", "--seeds", "2", "--shadow", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and "steps/s" in result.output and "dfa" in result.output
    data = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in data["summary"]] == ["bp", "dfa", "usf"]
    assert data["options"]["shadow"] is True and {r["seed"] for r in data["runs"]} == {0, 1}
    assert (out / "learning_curves.png").exists() and (out / "alignment.png").exists()
    refused = invoke(*TINY, "--backward", "bp", "--out", str(out))  # an earlier run is kept
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    again = invoke(*TINY, "--backward", "bp", "--out", str(out), "--overwrite")
    assert again.exit_code == 0, again.output
    assert json.loads((out / "results.json").read_text())["methods"] == ["bp"]


def test_unknown_method_is_one_line_naming_the_flag_and_the_choices() -> None:
    result = invoke(*TINY, "--backward", "bp,feedback")
    assert result.exit_code == 2
    assert result.output.startswith("error: --backward: expected one of")
    assert "--backward" in result.output and all(m in result.output for m in BACKWARD_METHODS)
    assert "Traceback" not in result.output


def test_expected_mask_on_the_cnn_is_refused() -> None:
    result = invoke("--arch", "cnn", "--backward", "fa,expected-mask", "--epochs", "1")
    assert result.exit_code == 2 and "expected-mask" in result.output and "Conv2d" in result.output


def test_layers_that_do_not_fit_the_data_name_the_flag() -> None:
    result = invoke("--data", "digits", "--layers", "64,16,3", "--backward", "bp")
    said = " ".join(result.output.split())  # the console wraps long lines
    assert result.exit_code == 2 and said.startswith("error: --layers:") and "[64, 16, 10]" in said
