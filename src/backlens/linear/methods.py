"""The names of the stand-in methods: one spelling each, in Python, in files and on the CLI.

`LinearMap.method` holds one of these; `blocks.methods` maps each to how it is fitted for a
block, and the CLI's choices come from there.
"""

from __future__ import annotations

__all__ = [
    "RIDGE",
    "REDUCED_RANK",
    "EXPECTED_MASK",
    "MEAN_JACOBIAN",
    "WEIGHTS_ONLY",
    "IDENTITY",
    "METHOD_NAMES",
]

RIDGE = "ridge"
REDUCED_RANK = "reduced-rank"  # written "reduced-rank:R" where a rank R must be chosen
EXPECTED_MASK = "expected-mask"
MEAN_JACOBIAN = "mean-jacobian"
WEIGHTS_ONLY = "weights-only"
IDENTITY = "identity"

METHOD_NAMES = (RIDGE, REDUCED_RANK, EXPECTED_MASK, MEAN_JACOBIAN, WEIGHTS_ONLY, IDENTITY)
