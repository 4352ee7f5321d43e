"""report.html in a real browser: headless Chromium (Debian's `chromium`) driven by playwright.

Loads with no console error and no request leaving the file; every table and image is present
and visible; a screenshot is saved in the run directory. Without a browser the test skips with
a message; BACKLENS_REQUIRE_BROWSER=1 (set by .ci/run) turns the skip into a failure.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

from backlens import write_report
from backlens.report import SCREENSHOT_NAME

ROOT = Path(__file__).resolve().parents[2]


def _tool():  # tools/ is not a package: load the script by path
    spec = importlib.util.spec_from_file_location(
        "report_in_browser", ROOT / "tools" / "report_in_browser.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _tool()


def _browser() -> str:
    """The Chromium to drive; skip (or fail, where a browser is required) without one."""
    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package (pip install -e '.[dev]')")
    executable = tool.chromium_path()
    if executable is None:
        missing.append("chromium (apt-get install -y chromium)")
    if missing:
        message = "no browser to open the report in: needs " + " and ".join(missing)
        if os.environ.get("BACKLENS_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " (BACKLENS_REQUIRE_BROWSER=1)")
        pytest.skip(message)
    assert executable is not None
    return executable


@pytest.fixture(scope="module")
def browser():
    """One Chromium for every page of this module (a launch costs about a second)."""
    with tool.launched(_browser()) as launched:
        yield launched


def _check(run_dir: Path, browser) -> dict:
    report = write_report(run_dir, overwrite=True)
    seen = tool.check_in_browser(report, browser)
    assert tool.problems(seen) == []
    html = report.read_text()
    counts = {tag: sum(e["tag"] == tag for e in seen["elements"]) for tag in ("table", "img")}
    assert counts["table"] == len(re.findall(r"<table[ >]", html))  # every table was laid out
    assert (
        counts["img"]
        == html.count("<img ")
        == len([p for p in run_dir.glob("*.png") if p.name != SCREENSHOT_NAME])
    )
    shot = run_dir / SCREENSHOT_NAME
    assert shot.stat().st_size > 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return seen


@pytest.mark.parametrize("kind", ["demo", "abstract", "train", "linearity"])
def test_report_opens_in_chromium(run_dirs, kind, browser):
    seen = _check(run_dirs[kind], browser)
    assert seen["requests"] == [(run_dirs[kind] / "report.html").resolve().as_uri()]


def test_problems_are_found_in_a_broken_page(tmp_path, browser):
    page = tmp_path / "report.html"
    page.write_text(
        "<!DOCTYPE html><html><body><table></table>"
        '<img src="https://example.invalid/x.png"><script>console.error("boom")</script></body></html>'
    )
    found = tool.problems(tool.check_in_browser(page, browser))
    assert any("console error: boom" in f for f in found)
    assert any("request leaving the file: https://example.invalid/x.png" in f for f in found)
    assert any(f.startswith("table not visible") for f in found)
    assert any(f.startswith("img not visible") for f in found)


@pytest.mark.slow
def test_digits_abstract_report_in_chromium(tmp_path, browser):
    """The issue's check: a full digits `abstract` run, its report, the browser and its screenshot."""
    from typer.testing import CliRunner

    from backlens.cli import app

    out = tmp_path / "digits"
    args = ["abstract", "--data", "digits", "--layers", "64,128,128,10", "--epochs", "30", "--out", str(out)]
    assert CliRunner().invoke(app, args).exit_code == 0
    seen = _check(out, browser)
    assert sum(e["tag"] == "img" for e in seen["elements"]) == 3  # errors, curve, spectra
