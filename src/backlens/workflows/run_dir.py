"""What every run directory follows: checked before any work, written whole or not at all, and
the versions it records.

A run writes into a hidden sibling `.NAME.partial-XXXX` and renames it onto NAME only when it
is complete, so NAME never holds a half-written or mixed run: an interrupted run removes its
partial directory (Ctrl-C), or leaves it under that name (a kill), and NAME keeps what it had;
with overwrite the earlier run is replaced whole, never merged with the new one.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from ..errors import fail

__all__ = ["check_run_dir", "check_output_file", "staged_run_dir", "final_path", "run_versions"]

ANOTHER = "pick another path"
PARTIAL = re.compile(r"^\.(?P<name>.+)\.partial-[A-Za-z0-9_]+$")


def _existing_ancestor(argument: str, path: Path) -> Path:
    """The nearest existing ancestor of `path`, which must be a writable directory."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise fail(argument, "a path under a directory", f"{path}, under the file {ancestor}", ANOTHER)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise fail(
            argument,
            "a path under a writable directory",
            f"{path} ({ancestor} is read-only)",
            ANOTHER,
        )
    return ancestor


def check_run_dir(out: str | os.PathLike[str] | None, overwrite: bool) -> Path | None:
    """The run directory: new, or an empty directory, or with overwrite=True one holding an
    earlier run (never the current directory or one above it), under a writable directory.
    Checked before any work, so a run never ends by failing to write."""
    if out is None:
        return None
    if not isinstance(out, (str, os.PathLike)) or str(out) == "":
        raise fail("out", "a directory path", repr(out), "pass a path such as results/run")
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
    if path.exists() and Path.cwd().resolve().is_relative_to(path.resolve()):
        raise fail("out", "a directory outside the current one", str(path), "pick another directory")
    if path.exists() and any(path.iterdir()) and not (path / "results.json").is_file():
        # overwrite replaces the directory whole: only ever one that holds a run
        raise fail(
            "out",
            "a new directory, or one holding an earlier run (its results.json) to replace",
            f"{path}, which holds other files",
            "pick another directory",
        )
    _existing_ancestor("out", path)
    return path


def check_output_file(argument: str, path: str | os.PathLike[str], overwrite: bool) -> Path:
    """A file a command will write: new (or overwrite=True), not a directory, under a writable one."""
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise fail(argument, "a file path", repr(path), "pass a path such as record.safetensors")
    target = Path(path)
    if target.is_dir():
        raise fail(argument, "a file path", f"{target}, a directory", "name a file inside it")
    if target.exists() and not overwrite:
        raise fail(argument, "a new file", f"{target}, which exists", "pick another path or pass --overwrite")
    _existing_ancestor(argument, target)
    return target


@contextmanager
def staged_run_dir(out: str | os.PathLike[str] | None, overwrite: bool) -> Iterator[Path | None]:
    """Yield a partial sibling of `out` to write the run into; on success it replaces `out`
    whole; on any exception (KeyboardInterrupt included) it is removed and `out` is untouched."""
    target = check_run_dir(out, overwrite)
    if target is None:
        yield None
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as error:
        raise fail("out", "a directory backlens can write", f"{target} ({error.strerror})", ANOTHER) from None
    try:
        yield stage
        _publish(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _publish(stage: Path, target: Path) -> None:
    """Rename the complete run onto `target`; an earlier run there is moved aside first, then removed."""
    stage.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.replaced-", dir=target.parent))
        os.replace(target, old / target.name)
    try:
        os.replace(stage, target)
    except BaseException:
        if old is not None:  # put the earlier run back
            os.replace(old / target.name, target)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def final_path(path: str | os.PathLike[str]) -> Path:
    """Where a file written into a partial run directory will be once the run is complete
    (for messages: 'wrote out/results.json', not the partial name)."""
    parts = list(Path(path).parts)
    for k, part in enumerate(parts):
        match = PARTIAL.match(part)
        if match:
            parts[k] = match.group("name")
    return Path(*parts)


def run_versions() -> dict[str, str]:
    """The versions a results.json records."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": version("scikit-learn"),
    }
