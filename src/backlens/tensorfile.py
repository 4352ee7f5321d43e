"""Tensors plus JSON metadata in one safetensors file: written atomically, checked on load."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import fail
from .files import atomic_write, to_jsonable

__all__ = ["save_tensors", "load_tensors"]

VERSION = "1"


def save_tensors(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], kind: str, meta: dict[str, Any]
) -> Path:
    """Write `tensors` and `meta` (JSON) as a safetensors file tagged `kind`; all or nothing."""
    header = {
        "format": kind,
        "version": VERSION,
        "meta": json.dumps(to_jsonable(meta), allow_nan=False),
    }
    data = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(data, tmp, metadata=header))


def load_tensors(path: str | os.PathLike[str], kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by `save_tensors` with the same `kind`, or raise BacklensError."""
    target = Path(path)
    if not target.is_file():
        raise fail("path", f"an existing {kind} file", str(target), "check the path")
    try:
        with safe_open(str(target), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise fail(
            "path",
            f"a {kind} file (safetensors)",
            f"{target}: unreadable ({err})",
            "pass a file written by backlens; a partly written file is never valid",
        ) from None
    if header.get("format") != kind or header.get("version") != VERSION:
        got = f"{target} with format={header.get('format')!r}, version={header.get('version')!r}"
        raise fail("path", f"a {kind} file, version {VERSION}", got, f"pass a file written by {kind}.save")
    try:
        meta = json.loads(header.get("meta", "{}"))
    except json.JSONDecodeError as err:
        raise fail(
            "path", "valid JSON metadata", f"{target}: {err}", "rewrite the file with backlens"
        ) from None
    return tensors, meta
