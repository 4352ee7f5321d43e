"""Data as rows: the one conversion of a tensor or array into a 2-D CPU tensor (n, width)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from ..errors import describe, fail

__all__ = ["as_rows"]

NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)  # kept as they are; others to float32


def as_rows(argument: str, value: Any, width: int, owner: str, keep_device: bool = False) -> torch.Tensor:
    """`value` (a tensor or numpy array, (n, width) or (..., width): leading dims flattened) as a
    2-D CPU tensor, float16/32/64 kept, other float dtypes as float32; else raise. `owner` names
    what sets the width, for the message ("the map's input"). `keep_device`: a GPU tensor stays
    where it is (Moments accumulate on the data's device)."""
    if isinstance(value, np.ndarray):
        with warnings.catch_warnings():  # a read-only array is fine: it is only read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise fail(argument, "a torch.Tensor or numpy array", describe(value), "pass torch.as_tensor(value)")
    if not value.is_floating_point():
        raise fail(argument, "floating-point data", describe(value), "convert it with .double()")
    if value.ndim < 2 or value.shape[-1] != width:
        raise fail(
            argument,
            f"shape (n, {width}) (or (..., {width}))",
            describe(value),
            f"pass rows of {width} features, matching {owner}",
        )
    value = value.detach().reshape(-1, width)
    value = value if keep_device else value.cpu()
    return value if value.dtype in NUMPY_FLOATS else value.float()
