"""The names of the stand-in methods: one spelling each, in Python, in files and on the CLI.

`LinearMap.method` holds one of these; `blocks.methods` maps each to how it is fitted for a
block, and the CLI's choices come from there.
"""

from __future__ import annotations

__all__ = [
    "RIDGE",
    "RIDGE_PROBE",
    "RIDGE_DIRECTION",
    "REDUCED_RANK",
    "EXPECTED_MASK",
    "MEAN_JACOBIAN",
    "WEIGHTS_ONLY",
    "IDENTITY",
    "METHOD_NAMES",
]

RIDGE = "ridge"
RIDGE_PROBE = "ridge-probe"  # backward ridge on probe cotangents (v, v·J), v ~ N(0, I)
RIDGE_DIRECTION = "ridge-direction"  # backward ridge on pairs scaled by 1/‖grad_out‖
REDUCED_RANK = "reduced-rank"  # written "reduced-rank:R" where a rank R must be chosen
EXPECTED_MASK = "expected-mask"
MEAN_JACOBIAN = "mean-jacobian"
WEIGHTS_ONLY = "weights-only"
IDENTITY = "identity"

METHOD_NAMES = (
    RIDGE,
    RIDGE_PROBE,
    RIDGE_DIRECTION,
    REDUCED_RANK,
    EXPECTED_MASK,
    MEAN_JACOBIAN,
    WEIGHTS_ONLY,
    IDENTITY,
)
