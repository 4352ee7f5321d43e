"""Choose modules of a model by name, glob pattern ("blocks.*.mlp") or type (nn.Linear)."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence

from torch import nn

from ..errors import fail

__all__ = ["Selector", "select_modules", "leaf_names"]

Selector = str | type[nn.Module]


def leaf_names(model: nn.Module) -> list[str]:
    """Names of the modules without children; [""] (the model itself) if it has none."""
    return [n for n, m in model.named_modules() if n and not any(True for _ in m.children())] or [""]


def select_modules(model: nn.Module, select: Sequence[Selector] | Selector | None) -> list[str]:
    """Names of the selected modules, in model.named_modules() order, each once.

    None selects every leaf module. Each selector must match at least one module.
    """
    if select is None:
        return leaf_names(model)
    named = dict(model.named_modules())
    if isinstance(select, (str, type)):
        select = [select]
    if not isinstance(select, Sequence) or not select:
        raise fail(
            "select",
            "None, or a non-empty list of module names, glob patterns or nn.Module types",
            repr(select),
            "pass e.g. ['0', 'blocks.*.mlp', nn.Linear]",
        )
    chosen: set[str] = set()
    for selector in select:
        if isinstance(selector, type) and issubclass(selector, nn.Module):
            hits = [n for n, m in named.items() if isinstance(m, selector)]
        elif isinstance(selector, str):
            hits = [n for n in named if n == selector or (n and fnmatch.fnmatchcase(n, selector))]
        else:
            raise fail(
                "select",
                "module names, glob patterns or nn.Module types",
                repr(selector),
                "pass e.g. ['0', 'blocks.*.mlp', nn.Linear]",
            )
        if not hits:
            raise fail(
                "select",
                "a selector matching a module of the model",
                repr(selector),
                "use one of " + ", ".join(_closest(selector, named)),
            )
        chosen.update(hits)
    return [n for n in named if n in chosen]


def _closest(selector: Selector, named: dict[str, nn.Module]) -> list[str]:
    names = [n for n in named if n]
    if isinstance(selector, type):
        types = sorted({type(m).__name__ for m in named.values()})
        return [f"nn.{t}" for t in types]
    return difflib.get_close_matches(selector, names, n=5, cutoff=0.3) or names[:10] or ['"" (the model)']
