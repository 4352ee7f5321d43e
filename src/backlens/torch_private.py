"""Every private torch API backlens uses, named, explained and in one place.

A private name (a leading underscore) can change or vanish in any torch release, so no other
module touches one: it imports the name from here. Each entry says what it does, why backlens
needs it, the torch versions it was checked on, and its fallback where torch may lack it. When
a torch upgrade breaks something, this file is the one to read.

Checked on: torch 2.13.0 (every entry). The project pins torch>=2.2,<2.14.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import Node

__all__ = [
    "BatchNormBase",
    "PythonNode",
    "child_modules",
    "current_graph_task_id",
    "lazy_clone",
    "next_sequence_nr",
    "own_parameters",
    "queue_callback",
    "sequence_nr",
    "storage_id",
    "version_counter",
]

# --- autograd graph ---------------------------------------------------------------------------

# torch._C._FunctionBase: the base class of the backward nodes of Python autograd Functions.
# Why: get_gradient_edge needs a token for those nodes, but for C++ nodes the edge can be built
# directly, which skips its Python overhead on every hooked call (recording.graph.edge_of).
# Checked on 2.13.0. No fallback: the code never had one.
PythonNode: type = torch._C._FunctionBase

# Node._sequence_nr(): the number autograd gave the node when it was created; numbers grow in
# creation order within a thread. Why: the walk that finds where gradients leave a module stops
# at nodes older than the module's call (recording.graph.find_boundary). A C-level methodcaller,
# since it runs once per node walked. Checked on 2.13.0.
sequence_nr: Callable[[Node], int] = operator.methodcaller("_sequence_nr")

_PROBE = torch.empty(0, requires_grad=True)


def _probe_sequence_nr() -> int:
    """The next sequence number, read off a node built for the purpose (one past the probe's)."""
    with torch.enable_grad():  # the probe's view must get a node
        return sequence_nr(_PROBE.view_as(_PROBE).grad_fn) + 1  # type: ignore[arg-type]


# torch.autograd._get_sequence_nr(): the number the next node created in this thread will get.
# Why: taken before a module runs, it marks which nodes the call created (see sequence_nr).
# Checked on 2.13.0. Fallback, where torch lacks it: build a probe node and read its number.
next_sequence_nr: Callable[[], int] = getattr(torch.autograd, "_get_sequence_nr", _probe_sequence_nr)

# torch._C._current_graph_task_id(): the id of the backward now running (-1 outside one).
# Why: a trace queues one end-of-backward callback per backward, not one per touched call.
# Checked on 2.13.0. Fallback, where torch lacks it: -1 always (one flush per batch of calls).
current_graph_task_id: Callable[[], int] = getattr(torch._C, "_current_graph_task_id", lambda: -1)

# torch.autograd.Variable._execution_engine.queue_callback(fn): run fn once the current backward
# has finished. Why: a call's record is complete only when every gradient of that backward has
# arrived, which no public hook reports. Must be called during a backward. Checked on 2.13.0.
queue_callback: Callable[[Callable[[], None]], None] = (
    torch.autograd.Variable._execution_engine.queue_callback
)

# --- tensors and storage ----------------------------------------------------------------------

# torch._lazy_clone(t): a copy-on-write clone; it shares memory with t until either is written
# to, and the write then copies, so the clone keeps the value it had when taken. Why: on the CPU
# a fresh copy's page faults cost more than the copy, and most snapshots are never written to.
# torch.__version__ is a TorchVersion, so the comparison is by version, not by string.
# Checked on 2.13.0; used only from 2.13 onwards (None before: callers then clone).
lazy_clone: Callable[[torch.Tensor], torch.Tensor] | None = (
    getattr(torch, "_lazy_clone", None) if torch.__version__ >= "2.13" else None
)

# UntypedStorage._cdata: the address of the C++ storage, the same for every view of it.
# Why: it keys the store's cache of recent snapshots without data_ptr(), which would turn a
# copy-on-write storage back into a copy. A C-level attrgetter: it runs on every recorded value.
# Checked on 2.13.0.
storage_id: Callable[[torch.UntypedStorage], int] = operator.attrgetter("_cdata")

# Tensor._version: the counter of in-place writes to the tensor's storage, shared by its views.
# Why: a cached snapshot is reused only if its source has not been written to since.
# Checked on 2.13.0.
version_counter: Callable[[torch.Tensor], int] = operator.attrgetter("_version")

# --- modules ----------------------------------------------------------------------------------


def own_parameters(module: nn.Module) -> dict[str, Any]:
    """module._parameters: {name: Parameter or None} of the module's own parameters.

    Why: named_parameters(recurse=False) builds a generator and a memo per call; reading the dict
    is what it does underneath, at a fraction of the cost (a trace reads it per selected module).
    Callers must fall back to named_parameters where a module overrides it. Checked on 2.13.0.
    """
    return module._parameters


def child_modules(module: nn.Module) -> dict[str, Any]:
    """module._modules: {name: child or None} of the module's direct children, in order.

    Why: named_children() skips None entries and repeats of one child; the by-hand chain parser
    reads each entry under the key it was registered with. Checked on 2.13.0.
    """
    return module._modules


# nn.modules.batchnorm._BatchNorm: the base class of every batch norm (BatchNorm1d/2d/3d, their
# lazy forms, SyncBatchNorm; not InstanceNorm). Why: one isinstance test covers them all, so the
# by-hand chain parser can say a batch norm was refused for being in training mode.
# Checked on 2.13.0.
BatchNormBase: type[nn.Module] = nn.modules.batchnorm._BatchNorm
