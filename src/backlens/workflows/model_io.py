"""Save and load a trained MLP: safetensors state_dict plus its width/activation spec, never pickle."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..errors import fail
from ..tensorfile import load_tensors, save_tensors
from .mlp import build_mlp

__all__ = ["save_model", "load_model"]

KIND = "backlens.MLP"


def save_model(model: nn.Module, widths: list[int], activation: str, path: str | os.PathLike[str]) -> Path:
    """Write the model's tensors and its spec (in the safetensors header) atomically."""
    return save_tensors(path, dict(model.state_dict()), KIND, {"widths": widths, "activation": activation})


def load_model(path: str | os.PathLike[str]) -> tuple[nn.Sequential, list[int], str]:
    """Rebuild the MLP written by `save_model`; returns (model, widths, activation)."""
    tensors, meta = load_tensors(path, KIND)
    model = build_mlp(meta["widths"], meta["activation"])
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise fail(
            "model",
            f"tensors for an MLP {meta['widths']}",
            f"missing {missing}, unexpected {unexpected}",
            "pass an unmodified file written by `backlens abstract --out`",
        )
    model.eval()
    return model, meta["widths"], meta["activation"]
