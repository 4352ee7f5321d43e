"""backlens: see backpropagation inside a PyTorch network and stand linear maps in for blocks."""

from .backprop import LayerTape, Tape, backprop
from .check import Report, check
from .data import seed_loader, seed_regression
from .errors import BacklensError, BacklensWarning
from .mlp import build_mlp
from .trace import Call, ModuleRecord, Trace, trace

__version__ = "0.1.0"

__all__ = [
    "BacklensError",
    "BacklensWarning",
    "Call",
    "LayerTape",
    "ModuleRecord",
    "Report",
    "Tape",
    "Trace",
    "backprop",
    "build_mlp",
    "check",
    "seed_loader",
    "seed_regression",
    "trace",
]
