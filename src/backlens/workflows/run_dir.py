"""What every run directory follows: new or empty unless overwrite, and the versions it records."""

from __future__ import annotations

import os
import platform
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from ..errors import fail

__all__ = ["check_run_dir", "run_versions"]


def check_run_dir(out: str | os.PathLike[str] | None, overwrite: bool) -> Path | None:
    """The run directory: new, or an empty directory, or any directory with overwrite=True.
    Checked before any work, so a run never ends by failing to write."""
    if out is None:
        return None
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise fail("out", "a directory for the run", f"{path}, a file", "pick a directory path")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise fail(
            "out",
            "an empty or new directory",
            f"{path} holding an earlier run",
            "pick another directory or pass overwrite=True (--overwrite)",
        )
    return path


def run_versions() -> dict[str, str]:
    """The versions a results.json records."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": version("scikit-learn"),
    }
