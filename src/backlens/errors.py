"""The one exception base, and the validators every public function calls first."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = [
    "BacklensError",
    "BacklensWarning",
    "fail",
    "check_tensor",
    "check_module",
    "check_finite",
    "check_device",
    "check_choice",
    "check_positive_int",
    "check_seed",
    "check_seed_range",
    "memory_for",
    "check_positive_real",
    "SEED_LIMIT",
]

# Seeds are ints in [0, 2**31): torch takes them up to 2**64, numpy and scikit-learn below
# 2**32, and backlens adds offsets (seed + k for repeats, + 7919 for probes) that must stay valid.
SEED_LIMIT = 2**31


class BacklensError(ValueError):
    """Bad input or misuse: the message names the argument, what was expected, what came, the fix.

    The four parts are kept as attributes, so a caller (the CLI) can say the same thing in its
    own words — its flag for the argument — without parsing the message.
    """

    def __init__(self, argument: str, expected: str, got: Any, fix: str) -> None:
        self.argument, self.expected, self.got, self.fix = argument, expected, str(got), fix
        super().__init__(self.render())

    def render(self, argument: str | None = None) -> str:
        """The message, naming `argument` (default: the Python argument) for what was wrong."""
        return f"{argument or self.argument}: expected {self.expected}, got {self.got}. Fix: {self.fix}"

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes
        return (type(self), (self.argument, self.expected, self.got, self.fix))


class BacklensWarning(UserWarning):
    """A result is usable but the user should know something about it."""


def fail(argument: str, expected: str, got: Any, fix: str) -> BacklensError:
    """Build a BacklensError with the four parts every message has."""
    return BacklensError(argument, expected, got, fix)


def describe(value: Any) -> str:
    """A short description of a value for error messages."""
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"array of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
        parts = ", ".join(
            f"tensor {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__ for v in value[:6]
        )
        return f"{type(value).__name__} of {len(value)}: ({parts})"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}"


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(
    argument: str,
    value: Any,
    *,
    ndim: int | Sequence[int] | None = None,
    floating: bool = False,
    shape: Sequence[int | None] | None = None,
) -> torch.Tensor:
    """Return `value` if it is a tensor of the wanted rank/shape/dtype, else raise."""
    if not isinstance(value, torch.Tensor):
        raise fail(argument, "a torch.Tensor", describe(value), "pass torch.as_tensor(value)")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if value.ndim not in allowed:
            want = " or ".join(f"{k}-D" for k in allowed)
            raise fail(argument, f"a {want} tensor", describe(value), "reshape it")
    if shape is not None:
        if value.ndim != len(shape) or any(
            s is not None and s != v for s, v in zip(shape, value.shape, strict=False)
        ):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise fail(argument, f"shape {want}", describe(value), "pass data of that shape")
    if floating and value.dtype not in FLOAT_DTYPES:
        raise fail(
            argument,
            "a floating-point tensor",
            describe(value),
            "convert it with .float() or .double()",
        )
    return value


def check_finite(argument: str, value: torch.Tensor, first_row: int = 0) -> torch.Tensor:
    """Raise if `value` holds NaN or Inf, naming the first bad row (counted from `first_row`)."""
    if value.is_floating_point():
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            row = int(bad.reshape(bad.shape[0], -1).any(dim=1).nonzero()[0, 0]) if value.ndim else 0
            kind = "NaN" if bool(torch.isnan(value).any()) else "Inf"
            raise fail(
                argument,
                "finite values",
                f"{kind} (first in row {row + first_row})",
                "clean or drop those rows",
            )
    return value


def check_device(argument: str, value: torch.Tensor, device: torch.device, where: str) -> torch.Tensor:
    """Return `value` if it lives on `device` (where `where` is), else raise."""
    if value.device != device:
        raise fail(
            argument,
            f"a tensor on {device}, where {where} is",
            f"a tensor on {value.device}",
            f"move it with {argument}.to('{device}')",
        )
    return value


def check_module(argument: str, value: Any) -> nn.Module:
    """Return `value` if it is an nn.Module, else raise."""
    if not isinstance(value, nn.Module):
        raise fail(argument, "a torch.nn.Module", describe(value), "pass the model itself")
    return value


def check_choice(argument: str, value: Any, choices: Sequence[Any]) -> Any:
    """Return `value` if it is one of `choices`, else raise listing them."""
    if value not in choices:
        raise fail(
            argument,
            "one of " + ", ".join(repr(c) for c in choices),
            repr(value),
            "pick one of those",
        )
    return value


def check_positive_int(argument: str, value: Any) -> int:
    """Return `value` if it is a positive int, else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise fail(argument, "a positive integer", repr(value), "pass an int >= 1")
    return value


@contextmanager
def memory_for(argument: str, what: str) -> Iterator[None]:
    """Turn torch's failure to allocate `what` (too large for this machine's memory, or beyond
    its size arithmetic) into a BacklensError naming the argument that asked for it."""
    try:
        yield
    except (RuntimeError, MemoryError, TypeError) as error:
        text = str(error)
        if not isinstance(error, MemoryError) and "allocate" not in text and "overflow" not in text.lower():
            raise
        got = text.splitlines()[0][:160]
        raise fail(argument, f"sizes whose {what} fits in memory", got, "use smaller sizes") from None


def check_seed(argument: str, value: Any) -> int:
    """Return `value` if it is an int seed in [0, SEED_LIMIT), else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise fail(argument, "an int seed in [0, 2**31)", repr(value), "pass e.g. seed=0")
    return value


def check_seed_range(argument: str, seed: int, count: int) -> int:
    """`count` if seeds seed..seed+count-1 all stay below SEED_LIMIT (one run per seed), else raise."""
    if seed + count > SEED_LIMIT:
        raise fail(
            argument, f"at most {SEED_LIMIT - seed} runs from seed {seed}", repr(count), "ask for fewer"
        )
    return count


def check_positive_real(argument: str, value: Any, fix: str) -> float:
    """Return `value` as a float if it is a finite real number > 0, else raise."""
    import math
    import numbers

    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise fail(argument, "a finite number > 0", repr(value), fix)
    return float(value)
