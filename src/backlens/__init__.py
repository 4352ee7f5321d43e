"""backlens: see backpropagation inside a PyTorch network and stand linear maps in for blocks."""

from .byhand.check import CheckRow, Report, check
from .byhand.engine import LayerTape, Tape, backprop
from .errors import BacklensError, BacklensWarning
from .linear.analytic import expected_mask, identity, mean_jacobian, weights_only
from .linear.linear_map import LinearMap
from .linear.moments import Moments
from .linear.ridge import AlphaAtGridEdgeWarning, SingularSystemWarning, reduced_rank, ridge
from .linear.scores import Score, score
from .recording.files import load_record, save_record
from .recording.tracing import Call, ModuleRecord, Trace, trace
from .workflows.mlp import build_mlp
from .workflows.seed_data import seed_loader, seed_regression

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # LinearAbstraction needs scikit-learn (≈ 1 s to import): load it on first use only.
    if name == "LinearAbstraction":
        from .linear.estimator import LinearAbstraction

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
