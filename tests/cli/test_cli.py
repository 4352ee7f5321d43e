"""CLI smoke tests: each command runs end to end and writes what it says."""

import json
from pathlib import Path

from typer.testing import CliRunner

from backlens.cli import app

runner = CliRunner()


def test_demo_writes_results_and_plot(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--seed", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for section in (
        "a. Data",
        "b. The 3-2-2-1",
        "c. Hand-derived",
        "d. Abstraction",
        "e. Forward toy",
        "f. Residual",
    ):
        assert section in result.output
    assert "all hand quantities match" in result.output
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["seed"] == 1 and data["hand"]["ok"] is True
    assert abs(data["forward_toy"]["residual"] - 3.0199) < 1e-4
    assert {p["b"] for p in data["sweep"][0]["points"]} == {2**k for k in range(6, 14)}
    png = (tmp_path / "residual_vs_samples.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.part"))  # atomic writes leave no temp files
