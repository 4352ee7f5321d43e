"""The `trace` context: hooks that record each call of selected modules, forward and backward."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.autograd.graph import GradientEdge
from torch.utils.hooks import RemovableHandle

from ..errors import check_choice, check_module, fail
from ..torch_private import current_graph_task_id, own_parameters, queue_callback
from .graph import edge_of, find_boundary, input_edges, sequence_mark
from .nested import map_tensors, replace_tensors, tensors_in
from .record import Call, ModuleRecord, Trace
from .select import Selector, select_modules
from .store import Store

__all__ = ["trace", "Trace", "ModuleRecord", "Call"]

STORES = ("cpu", "device", None)


def _own_params(module: nn.Module) -> dict[str, bool]:
    """{name: requires_grad} of the module's own parameters, as named_parameters(recurse=False)."""
    if type(module).named_parameters is not nn.Module.named_parameters:
        return {k: p.requires_grad for k, p in module.named_parameters(recurse=False)}
    params: dict[str, bool] = {}
    seen: set[int] = set()
    for k, p in own_parameters(module).items():
        if p is not None and id(p) not in seen:
            seen.add(id(p))
            params[k] = p.requires_grad
    return params


class _InFlight(NamedTuple):
    """A call whose forward has begun: what its pre-hook took, for its forward hook to finish."""

    call_index: int  # the call's number among the module's calls
    inputs: Any  # snapshots of the positional arguments
    n_in: int  # how many input tensors
    edges: list[tuple[int, GradientEdge]]  # from input_edges, taken before the module ran
    mark: int  # sequence_mark() before the call: later nodes are the call's own


class _Pending:
    """A call whose gradients may still come: what its hooks have received so far."""

    __slots__ = (
        "same_as",
        "call",
        "order",
        "grad_in",
        "grad_out",
        "handles",
        "active",
        "done",
        "ref",
        "__weakref__",
    )

    def __init__(self, call: Call, order: int, n_in: int, n_out: int) -> None:
        self.call: Call | None = call
        self.order = order
        self.grad_in: list[list[torch.Tensor]] = [[] for _ in range(n_in)]
        self.grad_out: list[torch.Tensor | None] = [None] * n_out
        self.handles: list[RemovableHandle] = []
        self.active = False
        self.done = False
        self.ref: weakref.ref[_Pending] | None = None
        self.same_as: dict[int, int] = {}


class trace:  # noqa: N801 - used as a context manager, named like a function
    """Record what flows through the selected modules of `model` in the body of a `with` block.

        with backlens.trace(model) as rec:
            loss_fn(model(x), y).backward()
        rec["0"].input, rec["0"].output, rec["0"].grad_input, rec["0"].grad_output

    select: None (every leaf module), or module names, glob patterns ("blocks.*.mlp") and
      nn.Module types (nn.Linear).
    store: "cpu" keeps detached copies on the CPU, "device" where they were, None keeps nothing
      (each call goes to `on_record`, then is dropped: memory stays flat in a training loop).
    on_record: called with each Call once it is complete: after the backward that reached it,
      at once if no backward can (no output needs grad), or, if none came, when its graph is
      freed or the context exits.

    Gradients are recorded by tensor hooks registered from the forward hook, and by hooks on the
    autograd nodes where gradients leave the module, not by full backward hooks: in-place
    activations work, and the model's outputs and .grads are bit-identical to an untraced run.
    Hooks are removed on exit, also when the body raises; an enabled flag silences those that
    autograd still holds (pytorch#25723). Nothing is written onto the model. Traces can nest.
    A call records the first backward that reaches it; backward must run inside the context.
    """

    def __init__(
        self,
        model: nn.Module,
        select: Sequence[Selector] | Selector | None = None,
        store: str | None = "cpu",
        on_record: Callable[[Call], Any] | None = None,
    ) -> None:
        self.model = check_module("model", model)
        self.store = check_choice("store", store, STORES)
        if on_record is not None and not callable(on_record):
            raise fail(
                "on_record",
                "a callable taking a Call, or None",
                repr(on_record),
                "pass a function, e.g. lambda call: stats.append(call.output.norm())",
            )
        self.on_record = on_record
        self.selected = select_modules(model, select)
        self.record: Trace | None = None
        self._enabled = False
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> Trace:
        if self._enabled:
            raise fail(
                "trace",
                "a context entered once at a time",
                "a nested `with` of the same trace",
                "create a second backlens.trace(...) to nest",
            )
        modules = {n: self.model.get_submodule(n) for n in self.selected}
        self.record = Trace(
            [
                ModuleRecord(
                    n,
                    type(m).__name__,
                    is_linear=isinstance(m, nn.Linear),
                    params=_own_params(m),
                )
                for n, m in modules.items()
            ],
            model=self.model,
        )
        self.record.recording = True
        self._store = Store(self.store)
        self.record.settle = self._store.settle
        self._counts = dict.fromkeys(self.selected, 0)
        self._stacks: dict[str, list[_InFlight]] = {n: [] for n in self.selected}  # per module
        self._seen: set[str] = set()
        self._waiting: dict[weakref.ref[_Pending], Call] = {}  # calls whose backward may come
        self._active: list[_Pending] = []
        self._queued_task: int | None = None
        self._order = 0
        self._dropped: Exception | None = None  # on_record's error where a graph was freed
        self._enabled = True
        try:
            for name, module in modules.items():
                self._handles.append(module.register_forward_pre_hook(functools.partial(self._before, name)))
                self._handles.append(module.register_forward_hook(functools.partial(self._after, name)))
        except BaseException:
            self._close()
            raise
        return self.record

    def __exit__(self, kind: object, error: object, tb: object) -> None:
        try:
            self._close()
        except Exception as callback_error:
            if not isinstance(error, BaseException):
                raise
            # the body's own exception is the one to see; on_record's failure is noted on it
            error.add_note(f"on_record raised on exit too: {type(callback_error).__name__}: {callback_error}")

    def _close(self) -> None:
        self._enabled = False
        if self.record is not None:
            self.record.recording = False
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        try:
            waiting = [ref() for ref in list(self._waiting)]
            self._finish_all([p for p in waiting if p is not None], backward=False)
            dropped, self._dropped = self._dropped, None
            if dropped is not None:
                raise dropped
        finally:
            self._waiting.clear()
            self._active.clear()
            self._store.clear()
            for stack in self._stacks.values():
                stack.clear()

    def _finish_all(self, pendings: list[_Pending], backward: bool) -> None:
        """Finish every call, even when on_record raises for one: the others keep what they saw
        (their gradients among it); the first error is raised once all are done."""
        first: Exception | None = None
        for pending in pendings:
            if pending.done:
                continue
            try:
                self._finish(pending, backward=backward)
            except Exception as error:
                first = first or error
        if first is not None:
            raise first

    # forward: copy inputs before the module runs (it may change them in place), outputs after

    def _before(self, name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not self._enabled:
            return
        if name not in self._seen:
            self._seen.add(name)
            self.record.mark_ran(name)  # type: ignore[union-attr]
        index = self._counts[name]
        self._counts[name] = index + 1
        if len(args) == 1 and isinstance(args[0], torch.Tensor):  # the common case, made quick
            t = args[0]
            edges = [(0, edge_of(t))] if t.requires_grad and torch.is_grad_enabled() else []
            inputs: tuple[Any, ...] = (self._store.value(t),)
            n_in = 1
        else:
            tensors = tensors_in(args)
            edges = input_edges(tensors) if torch.is_grad_enabled() else []
            inputs = map_tensors(args, self._store.value)
            n_in = len(tensors)
        mark = sequence_mark() if edges else 0
        self._stacks[name].append(_InFlight(index, inputs, n_in, edges, mark))

    def _after(self, name: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self._enabled or not self._stacks[name]:
            return
        index, inputs, n_in, edges, mark = self._stacks[name].pop()
        if isinstance(output, torch.Tensor):
            outs = [output]
            call = Call(name, index, inputs, self._store.value(output))
        else:
            outs = tensors_in(output)
            call = Call(name, index, inputs, map_tensors(output, self._store.value))
        if self.store is not None:
            self.record[name].calls.append(call)  # type: ignore[index]
        live = [(k, t) for k, t in enumerate(outs) if t.requires_grad] if torch.is_grad_enabled() else []
        if not live:
            self._emit(call)
            return
        self._order += 1
        pending = _Pending(call, self._order, n_in, len(outs))
        boundary = find_boundary(live, edges, mark)
        pending.same_as = boundary.same_as
        for k, t in live:
            through = [i for kk, i in boundary.passthrough if kk == k] if boundary.passthrough else []
            pending.handles.append(
                t.register_hook(functools.partial(self._on_output_grad, pending, k, through))
            )
        for node, pairs in boundary.nodes:
            pending.handles.append(
                node.register_hook(functools.partial(self._on_input_grads, pending, pairs))
            )
        pending.ref = weakref.ref(pending, self._abandoned)
        self._waiting[pending.ref] = call

    # backward: gradients arrive at the outputs' tensor hooks and the boundary nodes' hooks

    def _on_output_grad(self, pending: _Pending, k: int, through: list[int], grad: torch.Tensor) -> None:
        if not self._enabled or pending.done:
            return
        self._touch(pending)
        kept = self._store.grad(grad)
        pending.grad_out[k] = kept
        for i in through:
            pending.grad_in[i].append(kept)

    def _on_input_grads(
        self,
        pending: _Pending,
        pairs: list[tuple[int, int]],
        grad_inputs: tuple[torch.Tensor | None, ...],
        grad_outputs: Any,
    ) -> None:
        if not self._enabled or pending.done:
            return
        self._touch(pending)
        for j, i in pairs:
            if grad_inputs[j] is not None:
                pending.grad_in[i].append(self._store.grad(grad_inputs[j]))  # type: ignore[arg-type]

    def _touch(self, pending: _Pending) -> None:
        """Mark a call as reached by this backward; its record completes when the backward ends."""
        if pending.active:
            return
        pending.active = True
        task = current_graph_task_id()
        if not self._active or task != self._queued_task:
            self._queued_task = task
            queue_callback(self._flush)
        self._active.append(pending)

    def _flush(self) -> None:
        active, self._active = self._active, []
        self._queued_task = None
        self._finish_all(sorted(active, key=lambda p: p.order), backward=True)

    def _finish(self, pending: _Pending, backward: bool) -> None:
        call = pending.call
        assert call is not None
        self._store.settle()  # copies from CUDA land before gradients are summed or read
        self._waiting.pop(pending.ref, None)  # type: ignore[arg-type]
        pending.done = True
        for handle in pending.handles:
            handle.remove()
        if backward:
            summed = [None if not gs else functools.reduce(torch.add, gs) for gs in pending.grad_in]
            for i, first in pending.same_as.items():
                summed[i] = summed[first]
            inputs, output = call.inputs, call.output
            single_in = len(inputs) == 1 and isinstance(inputs[0], torch.Tensor)
            call.grad_inputs = (summed[0],) if single_in else replace_tensors(inputs, iter(summed))
            call.grad_outputs = (
                (pending.grad_out[0],)
                if isinstance(output, torch.Tensor)
                else replace_tensors(call.outputs, iter(pending.grad_out))
            )
        pending.call, pending.grad_in, pending.grad_out, pending.handles = None, [], [], []
        self._emit(call)

    def _abandoned(self, ref: weakref.ref[_Pending]) -> None:
        """The graph of a call (and so its hooks) was freed before any backward reached it."""
        call = self._waiting.pop(ref, None)
        if call is not None and self._enabled:
            try:
                self._emit(call)
            except Exception as error:  # Python would print and drop it here: raised on exit instead
                self._dropped = self._dropped or error

    def _emit(self, call: Call) -> None:
        if self.on_record is not None:
            self._store.settle()  # the callback reads the call
            self.on_record(call)
