"""One self-contained report.html for a run directory of demo, abstract, train or linearity."""

from .write import REPORT_NAME, SCREENSHOT_NAME, render_report, write_report

__all__ = ["REPORT_NAME", "SCREENSHOT_NAME", "render_report", "write_report"]
