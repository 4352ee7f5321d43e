"""HTML for a LinearMap and a Moments in Jupyter: shapes, provenance, a spectrum sparkline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..display import key_values, section, sparkline, tensor_table, wrap

if TYPE_CHECKING:
    from .linear_map import LinearMap
    from .moments import Moments

__all__ = ["linear_map_html", "moments_html"]

# info entries too long for a cell (lists, nested dicts) are left to `lm.info`.
_SHORT = (str, int, float, bool)


def _spectrum(matrix: torch.Tensor) -> str:
    values = torch.linalg.svdvals(matrix.detach().double().cpu())
    return section("singular values", sparkline(values), 5)


def linear_map_html(lm: LinearMap) -> str:
    facts: dict[str, Any] = {"method": lm.method, "direction": lm.direction or "unnamed"}
    facts["M"] = f"{lm.d_in} × {lm.d_out} ({str(lm.matrix.dtype).replace('torch.', '')})"
    if lm.direction is not None:
        facts["block"] = f"{lm.block_in} → {lm.block_out}"
    facts["‖b‖"] = float(torch.linalg.vector_norm(lm.bias.double()))
    facts.update({k: v for k, v in lm.info.items() if k != "direction" and isinstance(v, _SHORT)})
    body = key_values(facts, "Y ≈ X·M + b (row vectors)")
    body += _spectrum(lm.matrix) + tensor_table(lm.matrix, "M")
    return wrap(section("LinearMap", body))


def moments_html(m: Moments) -> str:
    n_eff = m.n_eff
    facts: dict[str, Any] = {
        "d_in × d_out": f"{m.d_in} × {m.d_out}",
        "n": m.n,
        "n_eff": "unknown" if n_eff is None else f"{n_eff:.4g}",
        "YᵀY kept": m.yy_mode,
    }
    body = key_values(facts, "float64 sums of row pairs (x: d_in, y: d_out)")
    if m.n > 0:
        # The spectrum of the centred XᵀX says how many directions the samples cover.
        body += section("eigenvalues of centred XᵀX", sparkline(torch.linalg.eigvalsh(m.cxx).flip(0)), 5)
        body += tensor_table(m.mean_x, "mean x") + tensor_table(m.mean_y, "mean y")
    return wrap(section("Moments", body))
