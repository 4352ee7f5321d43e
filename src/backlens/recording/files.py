"""A trace's record on disk: each tensor keyed "module/call/field", safetensors, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import fail
from ..tensorfile import load_tensors, save_tensors
from .nested import replace_tensors, tensors_in
from .record import Call, ModuleRecord, Trace

__all__ = ["save_record", "load_record", "KIND"]

KIND = "backlens.record"
# Fields as stored: a Call attribute and how its entries are numbered in the key.
STORED = (
    ("inputs", "input"),
    ("output", "output"),
    ("grad_inputs", "grad_input"),
    ("grad_outputs", "grad_output"),
)


def _skeleton(value: Any) -> Any:
    """The structure of a field as JSON: "T" for a tensor, null for anything else."""
    if isinstance(value, torch.Tensor):
        return "T"
    if isinstance(value, (tuple, list)):
        return [_skeleton(v) for v in value]
    if isinstance(value, dict):
        return {"__dict__": {str(k): _skeleton(v) for k, v in value.items()}}
    return None


def _rebuild(skeleton: Any) -> Any:
    if skeleton == "T":
        return torch.empty(0)  # a placeholder that replace_tensors swaps for the stored tensor
    if isinstance(skeleton, list):
        return tuple(_rebuild(s) for s in skeleton)
    if isinstance(skeleton, dict):
        return {k: _rebuild(v) for k, v in skeleton["__dict__"].items()}
    return None


def save_record(record: Trace, path: str | os.PathLike[str]) -> Path:
    """Write every recorded tensor of `record` as "<module>/<call>/<field>.<k>" (safetensors).

    field is input, output, grad_input or grad_output; k numbers the tensors of that field in
    order. The structure (which entries were None, tuple outputs) goes into the metadata, so
    `load_record` gives back the same Trace. Written atomically: complete or absent.
    """
    if not isinstance(record, Trace):
        raise fail(
            "record",
            "a Trace (what `with backlens.trace(...) as rec` gives)",
            type(record).__name__,
            "pass the record itself",
        )
    tensors: dict[str, torch.Tensor] = {}
    owners: set[int] = set()
    modules = []
    for module in record:
        calls = []
        for call in module.calls:
            entry: dict[str, Any] = {"index": call.index}
            for attr, label in STORED:
                value = getattr(call, attr)
                entry[attr] = None if value is None and attr.startswith("grad") else _skeleton(value)
                for k, t in enumerate(tensors_in(value)):
                    t = t.detach().cpu()
                    # one tensor can sit in two fields (a module's output is the next one's input):
                    # safetensors wants each stored once, so later ones are copied
                    if t.untyped_storage().data_ptr() in owners:
                        t = t.clone()
                    owners.add(t.untyped_storage().data_ptr())
                    tensors[f"{module.name}/{call.index}/{label}.{k}"] = t
            calls.append(entry)
        modules.append(
            {
                "name": module.name,
                "type": module.module_type,
                "is_linear": module.is_linear,
                "params": module.params,
                "calls": calls,
            }
        )
    meta = {"order": record.names, "modules": modules}
    return save_tensors(path, tensors, KIND, meta)


def load_record(path: str | os.PathLike[str]) -> Trace:
    """Read a file written by `save_record` (or `rec.save`) back into a Trace."""
    tensors, meta = load_tensors(path, KIND)
    try:
        records = []
        for spec in meta["modules"]:
            record = ModuleRecord(
                spec["name"],
                spec["type"],
                is_linear=bool(spec["is_linear"]),
                params={k: bool(v) for k, v in spec["params"].items()},
            )
            for entry in spec["calls"]:
                fields: dict[str, Any] = {}
                for attr, label in STORED:
                    skeleton = entry[attr]
                    if skeleton is None and attr.startswith("grad"):
                        fields[attr] = None
                        continue
                    shape = _rebuild(skeleton)
                    stored = (
                        tensors[f"{spec['name']}/{entry['index']}/{label}.{k}"]
                        for k in range(len(tensors_in(shape)))
                    )
                    fields[attr] = replace_tensors(shape, stored)
                record.calls.append(Call(spec["name"], int(entry["index"]), **fields))
            records.append(record)
        ran = [n for n in meta["order"] if any(r.name == n and r.calls for r in records)]
        trace = Trace(records, order=ran)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, StopIteration) as err:
        raise fail(
            "path",
            f"a complete {KIND} file",
            f"{path}: missing or malformed {err}",
            "rewrite it with rec.save(path)",
        ) from None
    return trace
