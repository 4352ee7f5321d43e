"""abstract --arch and linearity: zoo architectures end to end, and the profile against its oracle."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import backlens
from backlens.cli import app
from backlens.linear.linearity import linearity_score
from backlens.linear.moments import Moments
from backlens.workflows.arch_run import ArchOptions, run_arch
from backlens.workflows.zoo import ARCHITECTURES, loaders, zoo_data

runner = CliRunner()


def test_resmlp_end_to_end_writes_tables_json_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "run"
    results = run_arch(
        ArchOptions(arch="resmlp", epochs=2, out=str(out), methods="ridge,mean-jacobian,identity")
    )
    names = {p.name for p in out.iterdir()}
    assert {"results.json", "heldout_error.png", "spectra.png", "linearity.png"} <= names
    blocks = json.loads((out / "results.json").read_text())["runs"][0]["blocks"]
    assert [b["block"] for b in blocks] == list(ARCHITECTURES["resmlp"].blocks)
    for block in blocks:
        methods = {(r["method"], r["direction"]) for r in block["rows"]}
        assert ("ridge", "backward") in methods and ("mean-jacobian", "forward") in methods
        assert 0 < block["linearity"]["fit"] <= 1 + 1e-12
    assert results["runs"][0]["metric"]["name"] == "accuracy"


def test_linearity_profile_equals_the_score_of_directly_collected_pairs() -> None:
    model = ARCHITECTURES["cnn"].build(seed=0).eval()
    train, test = loaders(zoo_data("cnn"), batch_size=256)
    rows = backlens.linearity(model, train, test, blocks=["features.0"], loss="ce", show_progress=False)
    # the oracle: the block's own input and output, by hand, channel vectors per pixel
    pairs = {}
    for name, loader in (("train", train), ("test", test)):
        m = Moments(1, 8)
        for x, _ in loader:
            with torch.no_grad():
                y = model.features[0](x)
            m.update(x.movedim(1, -1).reshape(-1, 1), y.movedim(1, -1).reshape(-1, 8))
        pairs[name] = m
    expected = linearity_score(pairs["train"], pairs["test"])
    assert rows[0].positions == "shared"
    assert rows[0].score.fit == pytest.approx(expected.fit, rel=1e-9)  # float32 activations, float64 sums
    assert rows[0].score.held_out == pytest.approx(expected.held_out, rel=1e-9)


def test_cli_linearity_and_arch_refuses_mlp_options(tmp_path: Path) -> None:
    result = runner.invoke(app, ["linearity", "--arch", "gru", "--epochs", "1", "--out", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output
    assert "linearity profile (gru)" in result.output and (tmp_path / "g" / "linearity.png").exists()
    refused = runner.invoke(app, ["abstract", "--arch", "cnn", "--layers", "3,2"])
    assert refused.exit_code == 2 and "--arch: expected no MLP options" in refused.output
    unknown = runner.invoke(app, ["abstract", "--arch", "vit"])
    assert unknown.exit_code == 2 and "arch" in unknown.output and "transformer" in unknown.output
