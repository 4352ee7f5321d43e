"""--report on the run commands: report.html at the end of the run; refused without --out, before any work."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from backlens.cli import app

runner = CliRunner()


def test_train_with_report_writes_it_at_the_end(tmp_path):
    out = tmp_path / "train"
    out.mkdir()  # an earlier run: its results.json and report.html, replaced whole
    (out / "results.json").write_text("{}")
    (out / "report.html").write_text("an earlier run's")
    args = ["train", "--layers", "64,16,10", "--backward", "bp", "--epochs", "1", "--batch-size", "256"]
    result = runner.invoke(app, [*args, "--out", str(out), "--report", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "backlens train:" in (out / "report.html").read_text()  # the earlier one replaced
    assert f"wrote {out / 'report.html'}" in result.output


@pytest.mark.parametrize(
    "command",
    [
        ["demo"],
        ["abstract", "--data", "seed"],
        ["abstract", "--arch", "gru"],
        ["train"],
        ["linearity", "--arch", "gru"],
    ],
)
def test_report_without_out_is_refused_before_any_work(command, monkeypatch):
    import backlens.workflows.arch_run as arch_run
    import backlens.workflows.demo as demo

    monkeypatch.setattr(
        demo, "seed_regression", lambda *a, **k: pytest.fail("ran despite --report without --out")
    )
    monkeypatch.setattr(
        arch_run, "run_arch", lambda *a, **k: pytest.fail("ran despite --report without --out")
    )
    result = runner.invoke(app, [*command, "--report"])
    assert result.exit_code == 2
    assert "--report: expected --out DIR beside it" in result.output
