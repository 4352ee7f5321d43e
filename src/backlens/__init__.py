"""backlens: see backpropagation inside a PyTorch network and stand linear maps in for blocks."""

from .blocks.analytic import expected_mask, mean_jacobian, weights_only
from .blocks.block import Block
from .blocks.collect import Collection, collect
from .blocks.compare import CompareRow, CompareRows, Fits, compare, fit_all
from .blocks.inuse import replaced
from .blocks.linear_backward import BACKWARD_METHODS, LinearBackward, linear_backward
from .blocks.linearity import LinearityRow, linearity
from .blocks.methods import METHOD_CHOICES, NotApplicable, fit_method
from .byhand.check import CheckRow, Report, check
from .byhand.engine import LayerTape, Tape, backprop
from .byhand.losses import LOSS_NAMES
from .errors import BacklensError, BacklensWarning
from .linear.analytic import identity
from .linear.linear_map import LinearMap
from .linear.linearity import LinearityScore, LinearityUndefinedWarning, linearity_score
from .linear.moments import Moments
from .linear.ridge import (
    AlphaAtGridEdgeWarning,
    EffectiveSamplesWarning,
    SingularSystemWarning,
    reduced_rank,
    ridge,
)
from .linear.scores import Score, score
from .recording.files import load_record, save_record
from .recording.per_sample_base import PartialNormWarning
from .recording.tracing import Call, ModuleRecord, Trace, trace
from .workflows.mlp import build_mlp
from .workflows.seed_data import seed_loader, seed_regression

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # LinearAbstraction needs scikit-learn (≈ 1 s to import): load it on first use only.
    if name == "LinearAbstraction":
        from .linear.estimator import LinearAbstraction

        return LinearAbstraction
    if name == "write_report":  # Jinja2 and the report's templates: on first use only
        from .report import write_report

        return write_report
    raise AttributeError(f"module 'backlens' has no attribute {name!r}")


__all__ = [
    # errors and warnings
    "BacklensError",
    "BacklensWarning",
    "AlphaAtGridEdgeWarning",
    "SingularSystemWarning",
    "EffectiveSamplesWarning",
    "LinearityUndefinedWarning",
    "PartialNormWarning",
    # the record
    "trace",
    "Trace",
    "ModuleRecord",
    "Call",
    "load_record",
    "save_record",
    # backprop by hand
    "backprop",
    "check",
    "Tape",
    "LayerTape",
    "Report",
    "CheckRow",
    "LOSS_NAMES",
    # the linear core
    "Moments",
    "LinearMap",
    "LinearAbstraction",
    "ridge",
    "reduced_rank",
    "expected_mask",
    "mean_jacobian",
    "weights_only",
    "identity",
    "score",
    "Score",
    "linearity_score",
    "LinearityScore",
    # blocks
    "Block",
    "collect",
    "Collection",
    "compare",
    "CompareRow",
    "CompareRows",
    "fit_all",
    "fit_method",
    "Fits",
    "NotApplicable",
    "METHOD_CHOICES",
    "replaced",
    "linearity",
    "LinearityRow",
    "linear_backward",
    "LinearBackward",
    "BACKWARD_METHODS",
    # workflows
    "build_mlp",
    "seed_regression",
    "seed_loader",
    "write_report",
]
