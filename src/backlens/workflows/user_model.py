"""A user's own model for `backlens abstract --model path/to/file.py:build_fn [--weights F]`:
built by their function, weights from safetensors only (never pickle)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from torch import nn

from ..errors import BacklensError, describe, fail

__all__ = ["UserModelError", "is_model_spec", "load_user_model"]


class UserModelError(BacklensError):
    """The user's file or function failed: the CLI prints this line, then the user's traceback."""


def is_model_spec(text: str) -> bool:
    """'file.py:function' (a user's builder) rather than a model.safetensors from an earlier run."""
    path, colon, name = text.rpartition(":")
    return bool(colon) and path.endswith(".py") and name.isidentifier()


def _builder(spec: str):  # type: ignore[no-untyped-def]
    path_text, _, name = spec.rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise fail("model", "an existing Python file: path/to/file.py:build_fn", spec, "check the path")
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    loader_spec = importlib.util.spec_from_file_location(f"backlens_user_model_{key}", path)
    assert loader_spec is not None and loader_spec.loader is not None
    module = importlib.util.module_from_spec(loader_spec)
    try:
        loader_spec.loader.exec_module(module)
    except Exception as error:  # the user's code: named, then re-raised with its own traceback
        raise UserModelError(
            "model", f"{path} to import", f"{type(error).__name__}: {error}", "fix that file"
        ) from error
    build = getattr(module, name, None)
    if not callable(build):
        raise fail(
            "model",
            f"a function {name!r} in {path}",
            describe(build),
            "name the function that builds the model",
        )
    return build


def load_user_model(spec: str, weights: str | None = None) -> nn.Module:
    """`build_fn()` from the file, in eval mode, with the safetensors `weights` loaded strictly."""
    build = _builder(spec)
    try:
        model = build()
    except Exception as error:  # the user's code: named, then re-raised with its own traceback
        raise UserModelError(
            "model", f"{spec}() to build a model", f"{type(error).__name__}: {error}", "fix that function"
        ) from error
    if not isinstance(model, nn.Module):
        raise fail("model", f"{spec}() returning a torch.nn.Module", describe(model), "return the model")
    if weights is not None:
        _load_weights(model, weights)
    return model.eval()


def _load_weights(model: nn.Module, weights: str) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(weights)
    except (OSError, SafetensorError) as error:
        raise fail(
            "weights",
            "a readable .safetensors file",
            f"{weights}: {error}",
            "pass the file the model was saved to",
        ) from None
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of the wrong shape
        raise fail(
            "weights",
            "tensors of the model's shapes",
            str(error).splitlines()[-1].strip(),
            "save the weights of this model",
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise fail(
            "weights",
            "tensors for exactly the model's parameters and buffers",
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}",
            "save them with safetensors.torch.save_file(model.state_dict(), path)",
        )
