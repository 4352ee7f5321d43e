"""LinearMap: the abstraction Y ≈ X·M + b, with its provenance, saved as safetensors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import check_tensor, describe, fail
from ..tensorfile import load_tensors, save_tensors

__all__ = ["LinearMap"]

# Orientation, the one convention every map follows (README "Orientation" links here):
# a LinearMap maps rows of its own input to rows of its own output, Y ≈ X·M + b, with M of shape
# (d_in, d_out) of the *map*. For a block f with Jacobian J (block_out × block_in, PyTorch weight
# layout), its forward map has M = Jᵀ (block_in, block_out): activations y ≈ x·Jᵀ + b; its
# backward map has M = J (block_out, block_in): grad_in ≈ grad_out·J, no bias. So on a backward
# map d_in is the block's output width; `block_in`, `block_out` and `jacobian` read the block's
# side the same way for both directions.

KIND = "backlens.LinearMap"
FLIP = {"backward": "forward", "forward": "backward"}


class LinearMap:
    """Y ≈ X·matrix + bias. `method` names the estimator; `info` says how it was obtained."""

    def __init__(
        self,
        matrix: torch.Tensor,
        bias: torch.Tensor | None = None,
        method: str = "custom",
        info: dict[str, Any] | None = None,
    ) -> None:
        check_tensor("matrix", matrix, ndim=2, floating=True)
        if bias is None:
            bias = torch.zeros(matrix.shape[1], dtype=matrix.dtype)
        check_tensor("bias", bias, shape=(matrix.shape[1],), floating=True)
        if not (bool(torch.isfinite(matrix).all()) and bool(torch.isfinite(bias).all())):
            raise fail("matrix, bias", "finite values", "NaN or Inf", "fit the map on finite data")
        if not isinstance(method, str):
            raise fail("method", "a string", describe(method), "name the estimator")
        self._matrix = matrix.detach()
        self._bias = bias.detach().to(matrix.dtype)
        self.method = method
        self.info: dict[str, Any] = dict(info or {})

    @property
    def matrix(self) -> torch.Tensor:
        """M, (d_in, d_out)."""
        return self._matrix

    @property
    def bias(self) -> torch.Tensor:
        """b, (d_out,); zeros when the map has no intercept."""
        return self._bias

    @property
    def d_in(self) -> int:
        return int(self._matrix.shape[0])

    @property
    def d_out(self) -> int:
        return int(self._matrix.shape[1])

    @property
    def jacobian(self) -> torch.Tensor:
        """The block's (mean) Jacobian this map stands for, (block_out, block_in), either direction."""
        return self._matrix.T if self._block_direction() == "forward" else self._matrix

    @property
    def block_in(self) -> int:
        """The block's input width (d_out for a backward map, d_in for a forward one)."""
        return int(self.jacobian.shape[1])

    @property
    def block_out(self) -> int:
        """The block's output width."""
        return int(self.jacobian.shape[0])

    def _block_direction(self) -> str:
        if self.direction is None:
            raise fail(
                "map",
                "a map with a direction ('forward' or 'backward') to read a block's side",
                f"{self!r} with no direction in info",
                "use d_in/d_out, or set info['direction']",
            )
        return self.direction

    @property
    def direction(self) -> str | None:
        """'forward', 'backward', or None when the map was fitted to unnamed data."""
        value = self.info.get("direction")
        return value if value in FLIP else None

    def apply(self, X: torch.Tensor) -> torch.Tensor:
        """X·M + b for X (..., d_in), computed in the map's precision, returned in X's dtype."""
        check_tensor("X", X, floating=True)
        if X.ndim < 1 or X.shape[-1] != self.d_in:
            raise fail("X", f"shape (..., {self.d_in})", describe(X), "pass rows the map was fitted on")
        M = self._matrix.to(X.device)
        out = X.to(M.dtype) @ M + self._bias.to(X.device)
        return out.to(X.dtype)

    __call__ = apply

    def transpose(self) -> LinearMap:
        """The adjoint map v ↦ v·Mᵀ (forward ↔ backward). A bias has no adjoint: it is dropped."""
        info = dict(self.info)
        if self.direction is not None:
            info["direction"] = FLIP[self.direction]
        info["transposed_from"] = self.method
        return LinearMap(self._matrix.T.clone(), None, self.method, info)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write matrix, bias, method and info as safetensors + JSON header, atomically."""
        meta = {"method": self.method, "info": self.info}
        return save_tensors(path, {"matrix": self._matrix, "bias": self._bias}, KIND, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LinearMap:
        """Read a file written by LinearMap.save; anything else raises BacklensError."""
        tensors, meta = load_tensors(path, KIND)
        if set(tensors) != {"matrix", "bias"} or not isinstance(meta.get("method"), str):
            raise fail(
                "path",
                "a LinearMap file holding matrix and bias",
                f"{path}: {sorted(tensors)}",
                "rewrite it with LinearMap.save",
            )
        return cls(tensors["matrix"], tensors["bias"], meta["method"], meta.get("info") or {})

    def _repr_html_(self) -> str:
        from .display import linear_map_html

        return linear_map_html(self)

    def __repr__(self) -> str:
        extra = "".join(f", {k}={self.info[k]!r}" for k in ("direction", "alpha", "rank") if k in self.info)
        return f"LinearMap(method={self.method!r}, d_in={self.d_in}, d_out={self.d_out}{extra})"
