"""Tensors plus JSON metadata in one safetensors file: written atomically, checked on load."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import fail
from .files import atomic_write, to_jsonable

__all__ = ["save_tensors", "load_tensors"]

VERSION = "1"
REWRITE = "rewrite the file with backlens"


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


def load_tensors(
    path: str | os.PathLike[str],
    kind: str,
    shapes: Callable[[dict[str, Any]], dict[str, tuple[int, ...]]] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by `save_tensors` with the same `kind`, or raise BacklensError.

    Checked in this order, each before anything that trusts it: the format name and version,
    the JSON metadata, then (with `shapes`, the expected shape of each tensor given the
    metadata; it may raise KeyError/ValueError/TypeError) every tensor's shape, read from the
    header, before any tensor is read."""
    target = Path(path)
    if not target.is_file():
        raise fail("path", f"an existing {kind} file", str(target), "check the path")
    try:
        with safe_open(str(target), framework="pt") as handle:
            meta = _checked_meta(target, handle.metadata() or {}, kind)
            if shapes is not None:
                _check_shapes(target, kind, handle, meta, shapes)
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError) as err:
        raise fail(
            "path",
            f"a {kind} file (safetensors)",
            f"{target}: unreadable ({err})",
            "pass a file written by backlens; a partly written file is never valid",
        ) from None
    return tensors, meta


def _checked_meta(target: Path, header: dict[str, str], kind: str) -> dict[str, Any]:
    if header.get("format") != kind or header.get("version") != VERSION:
        got = f"{target} with format={header.get('format')!r}, version={header.get('version')!r}"
        raise fail(
            "path", f"a {kind} file, version {VERSION}", got, f"pass a file written by backlens ({kind})"
        )
    try:
        meta = json.loads(header.get("meta", "{}"))
    except json.JSONDecodeError as err:
        raise fail("path", "valid JSON metadata", f"{target}: {err}", REWRITE) from None
    if not isinstance(meta, dict):
        raise fail(
            "path",
            "JSON metadata holding an object",
            f"{target}: {meta!r:.60}",
            REWRITE,
        )
    return meta


def _check_shapes(
    target: Path,
    kind: str,
    handle: Any,
    meta: dict[str, Any],
    shapes: Callable[[dict[str, Any]], dict[str, tuple[int, ...]]],
) -> None:
    try:
        wanted = shapes(meta)
    except (KeyError, ValueError, TypeError) as err:
        raise fail("path", f"a consistent {kind} file", f"{target}: metadata {err}", REWRITE) from None
    names = set(handle.keys())
    for name, shape in wanted.items():
        got = tuple(handle.get_slice(name).get_shape()) if name in names else None
        if got != tuple(shape):
            raise fail(
                "path",
                f"a consistent {kind} file",
                f"{target}: tensor {name} of shape {got}, not {tuple(shape)}",
                REWRITE,
            )
