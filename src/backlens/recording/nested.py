"""Nested tuples, lists and dicts of tensors: list the tensors in order, rebuild with others."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["tensors_in", "map_tensors", "replace_tensors"]


def tensors_in(value: Any) -> list[torch.Tensor]:
    """Every tensor in `value` (a tensor, or tuples/lists/dicts of them), depth first, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in tensors_in(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tensors_in(item)]
    return []


def map_tensors(value: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """`value` with every tensor t replaced by fn(t); lists become tuples, other leaves stay."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return tuple(map_tensors(item, fn) for item in value)
    if isinstance(value, dict):
        return {key: map_tensors(item, fn) for key, item in value.items()}
    return value


def replace_tensors(value: Any, new: Iterator[Any], other: Any = None) -> Any:
    """`value`, its tensors replaced in order by the items of `new`, other leaves by `other`."""
    if isinstance(value, torch.Tensor):
        return next(new)
    if isinstance(value, (tuple, list)):
        return tuple(replace_tensors(item, new, other) for item in value)
    if isinstance(value, dict):
        return {key: replace_tensors(item, new, other) for key, item in value.items()}
    return other
