"""`backlens abstract` end to end on small models: table, JSON, maps, model, plots, and refusals."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backlens.cli import app
from backlens.linear.linear_map import LinearMap

runner = CliRunner()
SMALL = ["--epochs", "2", "--methods", "ridge,expected-mask,mean-jacobian,weights-only,identity"]


def invoke(*args: str):
    return runner.invoke(app, ["abstract", *args])


def test_digits_end_to_end_and_reuse_model(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke("--data", "digits", "--layers", "64,16,16,10", *SMALL, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "verdict — forward:" in result.output and "verdict — backward:" in result.output
    data = json.loads((out / "results.json").read_text())
    run = data["runs"][0]
    assert run["task"] == "classification" and [b["block"] for b in run["blocks"]] == ["0:2", "2:4"]
    assert data["options"]["seed"] == 0 and "torch" in data["versions"]
    methods = {(r["method"], r["direction"]) for r in run["blocks"][1]["rows"]}
    assert ("ridge", "backward") in methods and ("intact", "forward") in methods
    assert {p["method"] for p in run["blocks"][0]["curve"]} == {"ridge", "mean-jacobian"}
    for png in ("heldout_error.png", "error_vs_samples.png", "spectra.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    lm = LinearMap.load(out / "maps" / "block2-4_ridge_forward.safetensors")
    assert (lm.d_in, lm.d_out) == (16, 10)
    # the saved model reproduces the intact metric without training
    again = invoke(
        "--data",
        "digits",
        "--model",
        str(out / "model.safetensors"),
        "--blocks",
        "2:4",
        "--methods",
        "ridge",
        "--direction",
        "forward",
    )
    assert again.exit_code == 0, again.output
    assert f"test {run['metric']['test']:.4f}" in again.output
    # an earlier run is never overwritten silently
    refused = invoke("--data", "digits", "--layers", "64,16,16,10", *SMALL, "--out", str(out))
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    assert json.loads((out / "results.json").read_text()) == data


def test_diabetes_regression_with_repeat(tmp_path: Path) -> None:
    result = invoke(
        "--data",
        "diabetes",
        "--layers",
        "10,8,8,1",
        "--activation",
        "tanh",
        *SMALL,
        "--blocks",
        "0:2",
        "--repeat",
        "2",
        "--out",
        str(tmp_path / "d"),
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "d" / "results.json").read_text())
    assert [r["seed"] for r in data["runs"]] == [0, 1] and data["runs"][0]["metric"]["name"] == "mse"
    ridge = next(s for s in data["summary"] if s["method"] == "ridge" and s["direction"] == "forward")
    assert ridge["test_rel_error_std"] is not None
    assert "mean ± std over 2 seeds" in result.output


def test_csv_input(tmp_path: Path) -> None:
    lines = ["a,b,c,label"] + [f"{i % 7},{(i * 3) % 5},{i % 4},{int(i % 7 > 3)}" for i in range(60)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    result = invoke(
        "--data",
        str(tmp_path / "t.csv"),
        "--target",
        "label",
        "--layers",
        "3,6,6,2",
        *SMALL,
        "--blocks",
        "0:2",
    )
    assert result.exit_code == 0, result.output
    assert "classification" in result.output


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--data", "digits", "--layers", "60,16,10"], "--layers: expected first width 64"),
        (
            ["--data", "digits", "--layers", "64,16,16,10", "--blocks", "0:9"],
            "a module path of the model (e.g. 0, 1, 2, 3, 4)",
        ),
        (["--data", "digits", "--layers", "64,16,10", "--methods", "ridge,lasso"], "methods"),
        (["--data", "nope"], "one of seed, digits, diabetes"),
        (["--data", "digits", "--layers", "64,16,10", "--loss", "bce"], "ce for digits (classification)"),
        (["--data", "diabetes", "--layers", "10,8,1", "--loss", "ce"], "mse for diabetes (regression)"),
    ],
)
def test_bad_input_exits_2_with_a_clear_line(args: list[str], match: str) -> None:
    result = invoke(*args, "--epochs", "1")
    assert result.exit_code == 2
    assert match in " ".join(result.output.split())
