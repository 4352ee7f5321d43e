"""Save and load a trained MLP: safetensors state_dict plus its width/activation spec, never pickle."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import fail
from ..tensorfile import load_tensors, save_tensors
from .mlp import ACTIVATIONS, build_mlp

__all__ = ["save_model", "load_model"]

KIND = "backlens.MLP"


def save_model(model: nn.Module, widths: list[int], activation: str, path: str | os.PathLike[str]) -> Path:
    """Write the model's tensors and its spec (in the safetensors header) atomically."""
    return save_tensors(path, dict(model.state_dict()), KIND, {"widths": widths, "activation": activation})


def load_model(path: str | os.PathLike[str]) -> tuple[nn.Sequential, list[int], str]:
    """Rebuild the MLP written by `save_model`; returns (model, widths, activation). The spec and
    every tensor's shape are checked before the model is built, and the weights must be finite."""
    tensors, meta = load_tensors(path, KIND, _file_shapes)
    widths, activation = list(meta["widths"]), str(meta["activation"])
    model = build_mlp(widths, activation)
    model.load_state_dict(tensors, strict=True)  # names and shapes already checked: cannot fail
    for name, tensor in model.state_dict().items():
        if not bool(torch.isfinite(tensor).all()):
            raise fail(
                "model",
                "a model file with finite weights",
                f"{path}: NaN or Inf in {name}",
                "retrain it, or pass the file of a run that did not diverge",
            )
    model.eval()
    return model, widths, activation


def _file_shapes(meta: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The tensors an MLP file must hold given its spec: Linear k at index 2k, weight (out, in)."""
    widths, activation = meta["widths"], meta["activation"]
    if (
        not isinstance(widths, list)
        or len(widths) < 2
        or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)
    ):
        raise ValueError(f"widths={widths!r:.80}: not a list of two or more positive ints")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r:.40}: not one of {sorted(ACTIVATIONS)}")
    shapes: dict[str, tuple[int, ...]] = {}
    for k, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        shapes[f"{2 * k}.weight"] = (d_out, d_in)
        shapes[f"{2 * k}.bias"] = (d_out,)
    return shapes
