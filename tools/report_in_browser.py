"""Open a report.html in headless Chromium and check it: no console errors, no request leaving
the file, every table and image present and visible; save a screenshot beside it.

    python tools/report_in_browser.py RUN_DIR      # prints the findings, exit 1 on any problem

Uses Debian's chromium (/usr/bin/chromium, or $BACKLENS_CHROMIUM) through playwright: no browser
download. tests/report/test_browser.py runs the same check.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCREENSHOT_NAME = "report_screenshot.png"  # as backlens.report.SCREENSHOT_NAME


def chromium_path() -> str | None:
    """The Chromium executable to drive, or None when none is installed."""
    wanted = os.environ.get("BACKLENS_CHROMIUM")
    if wanted:
        return wanted if Path(wanted).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


# Boxes of every table and image, measured in the page after it has loaded and laid out.
MEASURE = """() => Array.from(document.querySelectorAll('table, img, svg')).map(e => {
  const r = e.getBoundingClientRect();
  return {tag: e.tagName.toLowerCase(), width: r.width, height: r.height,
          complete: e.tagName !== 'IMG' || (e.complete && e.naturalWidth > 0)};
})"""


@contextmanager
def launched(executable: str) -> Iterator[Any]:
    """A headless Chromium (playwright's Browser), closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def check_in_browser(report: Path, browser: Any) -> dict[str, Any]:
    """Load the report in a fresh page; return what was seen: console errors, requests, boxes."""
    url = report.resolve().as_uri()
    seen: dict[str, Any] = {"console_errors": [], "page_errors": [], "requests": []}
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.on("console", lambda m: m.type == "error" and seen["console_errors"].append(m.text))
        page.on("pageerror", lambda e: seen["page_errors"].append(str(e)))
        page.on("request", lambda r: seen["requests"].append(r.url))
        page.goto(url, wait_until="load")
        seen["elements"] = page.evaluate(MEASURE)
        seen["title"] = page.title()
        shot = report.parent / SCREENSHOT_NAME
        page.screenshot(path=str(shot), full_page=True)
        seen["screenshot"] = str(shot)
    finally:
        page.close()
    # The page itself and inline data: URLs never leave the file.
    seen["outside"] = [u for u in seen["requests"] if u != url and not u.startswith("data:")]
    return seen


def problems(seen: dict[str, Any]) -> list[str]:
    """Every way the report failed the check, one line each (empty: it passed)."""
    found = [f"console error: {m}" for m in seen["console_errors"]]
    found += [f"page error: {m}" for m in seen["page_errors"]]
    found += [f"request leaving the file: {u}" for u in seen["outside"]]
    for e in seen["elements"]:
        if e["width"] <= 0 or e["height"] <= 0 or not e["complete"]:
            found.append(f"{e['tag']} not visible: {e['width']}×{e['height']}, loaded {e['complete']}")
    if not any(e["tag"] == "table" for e in seen["elements"]):
        found.append("no table in the report")
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    executable = chromium_path()
    if executable is None:
        print("no chromium installed: apt-get install -y chromium")
        return 2
    with launched(executable) as browser:
        seen = check_in_browser(Path(argv[0]) / "report.html", browser)
    counts = {t: sum(e["tag"] == t for e in seen["elements"]) for t in ("table", "img", "svg")}
    print(f"{seen['title']}: {counts}, {len(seen['requests'])} requests, screenshot {seen['screenshot']}")
    found = problems(seen)
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
