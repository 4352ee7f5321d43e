"""backlens: see backpropagation inside a PyTorch network and stand linear maps in for blocks."""

from .analytic import expected_mask, identity, mean_jacobian, weights_only
from .backprop import LayerTape, Tape, backprop
from .check import CheckRow, Report, check
from .data import seed_loader, seed_regression
from .errors import BacklensError, BacklensWarning
from .linear_map import LinearMap
from .mlp import build_mlp
from .moments import Moments
from .record_io import load_record, save_record
from .ridge import AlphaAtGridEdgeWarning, SingularSystemWarning, reduced_rank, ridge
from .scores import Score, score
from .trace import Call, ModuleRecord, Trace, trace

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # LinearAbstraction needs scikit-learn (≈ 1 s to import): load it on first use only.
    if name == "LinearAbstraction":
        from .sklearn_api import LinearAbstraction

        return LinearAbstraction
    raise AttributeError(f"module 'backlens' has no attribute {name!r}")


__all__ = [
    "BacklensError",
    "BacklensWarning",
    "AlphaAtGridEdgeWarning",
    "SingularSystemWarning",
    "LinearAbstraction",
    "LinearMap",
    "Moments",
    "Score",
    "expected_mask",
    "identity",
    "mean_jacobian",
    "reduced_rank",
    "ridge",
    "score",
    "weights_only",
    "Call",
    "LayerTape",
    "ModuleRecord",
    "CheckRow",
    "Report",
    "Tape",
    "Trace",
    "backprop",
    "build_mlp",
    "check",
    "seed_loader",
    "seed_regression",
    "trace",
    "load_record",
    "save_record",
]
