"""What a trace recorded: per module, per call, inputs, output, grad_inputs, grad_outputs."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from ..errors import fail
from . import per_sample
from .nested import tensors_in

__all__ = ["Call", "ModuleRecord", "Trace"]

FIELDS = ("input", "output", "grad_input", "grad_output")


@dataclass
class Call:
    """One call of one module: what went in and out, forward and backward.

    inputs: the positional arguments; output: what the module returned; grad_inputs and
    grad_outputs mirror them, a tensor's gradient in a tensor's place and None elsewhere.
    grad_inputs[i] is the gradient this call sent back to inputs[i] (None where autograd gives
    none: the input did not require grad); a tensor passed at several positions (self-attention's
    query, key and value) gets its total at each. grad_outputs[k] is the gradient at the k-th
    output. Both are None when no backward reached the call.
    """

    module: str
    index: int
    inputs: tuple[Any, ...]
    output: Any
    grad_inputs: tuple[Any, ...] | None = None
    grad_outputs: tuple[Any, ...] | None = None

    @property
    def input(self) -> torch.Tensor | None:
        """The first tensor among the positional inputs."""
        return _first(self.inputs)

    @property
    def outputs(self) -> tuple[Any, ...]:
        """The output as a tuple: (output,) for a single tensor."""
        return self.output if isinstance(self.output, tuple) else (self.output,)

    @property
    def grad_input(self) -> torch.Tensor | None:
        """The gradient of the first positional input (None if it needed none)."""
        return None if self.grad_inputs is None else _first_aligned(self.inputs, self.grad_inputs)

    @property
    def grad_output(self) -> torch.Tensor | None:
        """The gradient at the first output tensor."""
        return None if self.grad_outputs is None else _first_aligned(self.outputs, self.grad_outputs)

    def _repr_html_(self) -> str:
        from .display import call_html

        return call_html(self)

    def __repr__(self) -> str:
        shapes = [
            f"{label} {'×'.join(map(str, t.shape)) or 'scalar'}"
            for label, t in (("input", self.input), ("output", _first(self.output)))
            if isinstance(t, torch.Tensor)
        ]
        backward = "no backward" if self.grad_outputs is None else "with backward"
        return f"<Call {self.index} of {self.module or '(model)'!r}: {', '.join(shapes)}, {backward}>"


def _first(values: Any) -> torch.Tensor | None:
    found = tensors_in(values)
    return found[0] if found else None


def _first_aligned(values: Any, grads: Any) -> torch.Tensor | None:
    """The entry of `grads` at the place of the first tensor in `values`."""
    if isinstance(values, torch.Tensor):
        return grads
    if isinstance(values, (tuple, list)):
        for value, grad in zip(values, grads, strict=False):
            if tensors_in(value):
                return _first_aligned(value, grad)
    return None


@dataclass
class ModuleRecord:
    """Every call of one selected module, in order; single-call shortcuts for the common case.

    params maps each of the module's own parameters to whether it required grad.
    """

    name: str
    module_type: str
    calls: list[Call] = field(default_factory=list)
    is_linear: bool = False
    params: dict[str, bool] = field(default_factory=dict)

    def _only_call(self, what: str) -> Call:
        if len(self.calls) != 1:
            keeps = " (a trace with store=None keeps no calls)" if not self.calls else ""
            raise fail(
                f"rec[{self.name!r}].{what}",
                "a module called once",
                f"{len(self.calls)} calls{keeps}",
                f"read rec[{self.name!r}].calls[i].{what} for the call you want",
            )
        return self.calls[0]

    def _repr_html_(self) -> str:
        from .display import record_html

        return record_html(self)

    def __repr__(self) -> str:
        calls = f"{len(self.calls)} call" + ("s" if len(self.calls) != 1 else "")
        return f"<ModuleRecord {self.name or '(model)'!r} ({self.module_type}): {calls}>"

    @property
    def input(self) -> torch.Tensor | None:
        return self._only_call("input").input

    @property
    def output(self) -> torch.Tensor | None:
        return _first(self._only_call("output").output)

    @property
    def grad_input(self) -> torch.Tensor | None:
        return self._only_call("grad_input").grad_input

    @property
    def grad_output(self) -> torch.Tensor | None:
        return self._only_call("grad_output").grad_output


def _nothing() -> None:
    """No copies in flight (a loaded record, or one traced on the CPU)."""


class Trace:
    """The records of one `trace` context, indexed by module name.

    order: names of the modules that have run, in the order they first ran (a trace notes each
    with `mark_ran` as it runs; a loaded record passes the saved order).
    """

    def __init__(
        self, records: Sequence[ModuleRecord], order: Sequence[str] = (), model: nn.Module | None = None
    ) -> None:
        self._records = {r.name: r for r in records}
        self._model = model
        self.recording = False  # True while the trace's `with` block runs (the trace sets it)
        self.settle: Callable[[], None] = _nothing  # waits for copies in flight (the trace sets it)
        self._ran: dict[str, None] = {}  # the names that ran, in order (a dict: ordered and quick)
        for name in order:
            self.mark_ran(name)

    def mark_ran(self, name: str) -> None:
        """Note that module `name` has run; its first run fixes its place in `names`."""
        if name not in self._records:
            raise fail("name", "a module name of this trace", repr(name), "pass one of rec.names")
        self._ran.setdefault(name)

    @property
    def names(self) -> list[str]:
        """Selected module names in the order they first ran (then those that never ran)."""
        return [*self._ran, *(n for n in self._records if n not in self._ran)]

    def __getitem__(self, name: str) -> ModuleRecord:
        self.settle()
        if name not in self._records:
            import difflib

            close = difflib.get_close_matches(str(name), list(self._records), n=5, cutoff=0.3)
            raise fail(
                "name",
                "a traced module name",
                repr(name),
                "use one of " + ", ".join(close or self.names[:10]) + " (see rec.names)",
            )
        return self._records[name]

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def __iter__(self) -> Iterator[ModuleRecord]:
        self.settle()
        return (self._records[n] for n in self.names)

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        calls = sum(len(r.calls) for r in self._records.values())
        return f"<Trace of {len(self)} modules, {calls} calls recorded>"

    def __rich__(self) -> Table:
        table = Table(title="trace: ‖·‖ is the Frobenius norm", title_justify="left")
        for column in ("module", "type", "call", *FIELDS):
            table.add_column(
                column, justify="left" if column in ("module", "type") else "right", overflow="fold"
            )
        for record in self:
            if not record.calls:
                table.add_row(record.name or "(model)", record.module_type, "-", *["not run"] + [""] * 3)
            for call in record.calls:
                cells = [
                    _cell(_first(call.output) if f == "output" else getattr(call, f), call, f) for f in FIELDS
                ]
                table.add_row(record.name or "(model)", record.module_type, str(call.index), *cells)
        return table

    def __str__(self) -> str:
        return _render(self, width=160)

    def _repr_html_(self) -> str:
        from .display import trace_html

        return trace_html(self)

    def show(self, name: str, call: int | None = None, console: Console | None = None) -> None:
        """Print the full tensors of one module (every call, or the one at index `call`)."""
        record = self[name]
        calls = record.calls if call is None else [_call_at(record, call)]
        console = console or Console()
        for c in calls:
            console.rule(f"{name or '(model)'} ({record.module_type}), call {c.index}")
            for label, values in (
                ("inputs", c.inputs),
                ("output", c.outputs),
                ("grad_inputs", c.grad_inputs),
                ("grad_outputs", c.grad_outputs),
            ):
                for k, value in enumerate(values if values is not None else (None,)):
                    console.print(
                        f"{label}[{k}] =" if label != "output" or len(c.outputs) > 1 else "output =",
                        _full(value),
                        highlight=False,
                    )

    def per_sample_grads(
        self,
        name: str,
        reduction: str = "mean",
        out: dict[str, torch.Tensor] | None = None,
        fallback: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """{parameter name: (n, *shape)}: each sample's gradient of its own loss term, summed over calls.

        For the module types of `per_sample.RULES` (Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d,
        Embedding, LayerNorm, GroupNorm, RMSNorm, MultiheadAttention — its out_proj included).
        reduction: "mean" if the loss averaged over the n samples of the batch (the recorded δ
        is then scaled by n, as Opacus does), "sum" if it summed them; as in torch.nn.functional.
        Parameters that did not require grad are left out. `out`: buffers to write into (Linear).
        fallback="func": any other module through torch.func (vmap over its own forward at the
        recorded inputs: one forward to check them, then a forward and backward per sample).
        """
        return per_sample.trace_grads(self, name, reduction, fallback, out)

    def per_sample_grad_norms(
        self,
        reduction: str = "mean",
        names: Sequence[str] | None = None,
        allow_partial: bool = False,
        fallback: str | None = None,
    ) -> torch.Tensor:
        """(n,) norm of each sample's gradient over every parameter of the model that received one.

        A parameter counts as having received a gradient when it requires grad and its .grad is
        set (loss.backward()) or a backward reached its traced module. Each is covered once: by
        its module's rule, by a traced ancestor whose rule covers children (attention's
        out_proj), or with fallback="func" by the nearest traced module through torch.func. One
        it cannot cover (not traced, no rule, tied between modules) raises a BacklensError
        naming it; allow_partial=True leaves those out with a PartialNormWarning listing them.
        names: only those modules' parameters (an explicit subset: no coverage check). A record
        loaded from a file has no model: its recorded modules are the whole.
        Closed forms where they exist (Linear, Embedding, Conv by the Gram identity when
        cheaper), else built one module at a time: what DP-SGD clipping needs.
        """
        return per_sample.trace_grad_norms(self, reduction, names, allow_partial, fallback)

    @property
    def model(self) -> nn.Module | None:
        """The traced model (None for a record loaded from a file)."""
        return self._model

    def module(self, name: str) -> nn.Module | None:
        """The traced module `name` (None for a record loaded from a file)."""
        self[name]
        return None if self._model is None else self._model.get_submodule(name)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write every recorded tensor to a .safetensors file (see backlens.save_record)."""
        from .files import save_record

        return save_record(self, path)


def _call_at(record: ModuleRecord, index: int) -> Call:
    for c in record.calls:
        if c.index == index:
            return c
    raise fail(
        "call",
        f"a call index of {record.name!r} (0..{len(record.calls) - 1})",
        index,
        "pick one of those",
    )


def _cell(value: Any, call: Call, what: str) -> str:
    if (
        what == "grad_input"
        and call.grad_inputs is None
        or what == "grad_output"
        and call.grad_outputs is None
    ):
        return "no backward"
    if not isinstance(value, torch.Tensor):
        return "None"
    count = {"input": len(tensors_in(call.inputs)), "output": len(tensors_in(call.output))}.get(what, 1)
    shape = "×".join(str(s) for s in value.shape) or "scalar"
    norm = (
        float(torch.linalg.vector_norm(value.detach().double()))
        if value.is_floating_point()
        else float("nan")
    )
    return f"{shape} ‖{norm:.3g}‖" + (f" +{count - 1}" if count > 1 else "")


def _full(value: Any) -> str:
    """Notebook-style: every entry, 4 decimals, small values suppressed."""
    if not isinstance(value, torch.Tensor):
        return repr(value)
    array = (
        value.detach().cpu().double().numpy() if value.is_floating_point() else value.detach().cpu().numpy()
    )
    return np.array2string(array, precision=4, suppress_small=True, threshold=10**9, max_line_width=120)


def _render(renderable: Any, width: int) -> str:
    import io

    buffer = io.StringIO()
    Console(file=buffer, width=width, force_terminal=False, color_system=None).print(renderable)
    return buffer.getvalue().rstrip("\n")
