"""report.html of each kind of run: self-contained, well-formed, holding its tables, plots and verdicts."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backlens import BacklensError, write_report
from backlens.cli import app
from backlens.report import SCREENSHOT_NAME, render_report
from html_check import parse

KINDS = ("demo", "abstract", "train", "linearity")


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.parametrize("kind", KINDS)
def test_report_is_self_contained_and_well_formed(run_dirs, kind):
    html = render_report(run_dirs[kind])
    parse(html)
    # no external URL at all: nothing a browser could fetch, no link out
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", html)
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html
    assert f"backlens {kind}:" in html


@pytest.mark.parametrize("kind", KINDS)
def test_every_plot_is_inline_byte_for_byte(run_dirs, kind):
    html = render_report(run_dirs[kind])
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    pngs = sorted(p for p in run_dirs[kind].glob("*.png") if p.name != SCREENSHOT_NAME)
    assert pngs, "every kind of run writes at least one plot"
    assert [base64.b64decode(i) for i in images] == [p.read_bytes() for p in pngs]


@pytest.mark.parametrize("kind", KINDS)
def test_options_and_versions_are_shown(run_dirs, kind):
    results = _results(run_dirs[kind])
    text = parse(render_report(run_dirs[kind])).text
    for package, number in results["versions"].items():
        assert package in text and number in text
    for key, value in (results.get("options") or {"seed": results["seed"]}).items():
        if not isinstance(value, dict):
            assert key in text
            assert (value if isinstance(value, str) else json.dumps(value)) in text, key


def test_abstract_report_holds_every_row_and_verdict(run_dirs):
    from backlens.workflows.abstract_report import verdict

    results = _results(run_dirs["abstract"])
    text = parse(render_report(run_dirs["abstract"])).text
    for block in results["runs"][0]["blocks"]:
        for row in block["rows"]:
            if row["test_rel_error"] is not None and row["method"] != "intact":
                assert f"{row['test_rel_error']:.3g}" in text
        for direction in ("forward", "backward"):
            line = "verdict — " + verdict(block["rows"], direction)
            assert text.count(line) == 2  # in the block's section and in the list at the top


def test_demo_report_holds_the_check_tensors_and_the_sweep(run_dirs):
    results = _results(run_dirs["demo"])
    text = parse(render_report(run_dirs["demo"])).text
    assert text.count("pass") == len(results["hand"]["rows"]) and results["hand"]["ok"]
    assert "verdict — hand backprop: all hand quantities match" in text
    toy_m = [f"{v:.2f}" for row in results["forward_toy"]["M"] for v in row]
    assert toy_m == ["1.36", "0.88", "-1.36", "-0.88"]  # the notebook's M
    assert all(v in text for v in toy_m)
    for sweep in results["sweep"]:
        point = sweep["points"][-1]
        assert any(f"{point['test_rel']:.3g}" in t for t in text)


def test_train_report_holds_the_summary_and_the_best_method(run_dirs):
    results = _results(run_dirs["train"])
    text = parse(render_report(run_dirs["train"])).text
    best = max(results["summary"], key=lambda r: r["test_metric_mean"])
    assert any(t.startswith(f"verdict — best test accuracy: {best['method']}") for t in text)
    for row in results["summary"]:
        assert row["method"] in text
        assert any(f"{row['test_metric_mean']:.4f}" in t for t in text)


def test_linearity_report_holds_each_score(run_dirs):
    results = _results(run_dirs["linearity"])
    text = parse(render_report(run_dirs["linearity"])).text
    for block in results["runs"][0]["blocks"]:
        assert f"{block['linearity']['held_out']:.3f}" in text


def test_write_report_refuses_to_replace_without_overwrite(run_dirs, tmp_path):
    run_dir = tmp_path / "copy"
    run_dir.mkdir()
    (run_dir / "results.json").write_text((run_dirs["train"] / "results.json").read_text())
    path = write_report(run_dir)
    assert path == run_dir / "report.html" and path.stat().st_size > 0
    with pytest.raises(BacklensError, match="overwrite"):
        write_report(run_dir)
    assert write_report(run_dir, overwrite=True) == path


@pytest.mark.parametrize(
    ("setup", "says"),
    [
        (lambda d: None, "without results.json"),
        (lambda d: (d / "results.json").write_text("{"), "readable results.json"),
        (lambda d: (d / "results.json").write_text("[1]"), "holding an object"),
        (lambda d: (d / "results.json").write_text('{"a": 1}'), "demo, abstract, train or linearity"),
    ],
)
def test_bad_run_directories_are_refused(tmp_path, setup, says):
    setup(tmp_path)
    with pytest.raises(BacklensError, match=says):
        write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_cli_report(run_dirs, tmp_path):
    run_dir = tmp_path / "linearity"
    run_dir.mkdir()
    for path in run_dirs["linearity"].iterdir():
        if path.name != "report.html":  # the browser test may have written one into the shared run
            (run_dir / path.name).write_bytes(path.read_bytes())
    runner = CliRunner()
    first = runner.invoke(app, ["report", str(run_dir)])
    assert first.exit_code == 0, first.output
    assert "report.html" in first.output
    again = runner.invoke(app, ["report", str(run_dir)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(app, ["report", str(run_dir), "--overwrite"]).exit_code == 0
    missing = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no such directory" in missing.output
