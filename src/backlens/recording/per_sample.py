"""The registry of per-sample gradient rules (one source of truth) and the trace-level driver.

RULES maps a module type to its Rule; a module gets a rule only if its type is registered or
subclasses a registered type without overriding forward (a changed forward would make the rule
silently wrong). FALLBACKS names the explicit fallbacks for other modules ("func": torch.func,
see per_sample_func). Shapes and the scaling s (n for a mean loss, 1 for a sum) as in
per_sample_base.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import fail
from .per_sample_attention import attention_grads
from .per_sample_base import (
    REDUCTIONS,
    CallData,
    PartialNormWarning,
    Rule,
    first_pairs,
    loss_scale,
    sq_norms_by_building,
)
from .per_sample_conv import conv_grads, conv_sq_norms, conv_transpose_grads, conv_transpose_sq_norms
from .per_sample_embedding import embedding_grads, embedding_sq_norms
from .per_sample_func import func_grads
from .per_sample_linear import linear_grads, linear_rule_grads, linear_rule_sq_norms, linear_sq_norms
from .per_sample_norm import group_norm_grads, layer_norm_grads, rms_norm_grads

if TYPE_CHECKING:
    from .record import ModuleRecord, Trace

__all__ = [
    "RULES",
    "FALLBACKS",
    "REDUCTIONS",
    "PartialNormWarning",
    "loss_scale",
    "linear_grads",
    "linear_sq_norms",
    "rule_for",
    "trace_grads",
    "trace_grad_norms",
]

_CONV = Rule(conv_grads, conv_sq_norms, method="unfold + einsum; norms by the Gram identity when cheaper")
_CONV_T = Rule(conv_transpose_grads, conv_transpose_sq_norms, method="unfold of δ + einsum")
RULES: dict[type[nn.Module], Rule] = {
    nn.Linear: Rule(
        linear_rule_grads, linear_rule_sq_norms, needs_module=False, method="einsum; norms in closed form"
    ),
    nn.Conv1d: _CONV,
    nn.Conv2d: _CONV,
    nn.Conv3d: _CONV,
    nn.ConvTranspose1d: _CONV_T,
    nn.ConvTranspose2d: _CONV_T,
    nn.ConvTranspose3d: _CONV_T,
    nn.Embedding: Rule(embedding_grads, embedding_sq_norms, method="scatter-add; norms in closed form"),
    nn.LayerNorm: Rule(layer_norm_grads, method="δ ⊙ x̂ summed over positions"),
    nn.GroupNorm: Rule(group_norm_grads, method="δ ⊙ x̂ summed over positions"),
    nn.RMSNorm: Rule(rms_norm_grads, method="δ ⊙ x̂ summed over positions"),
    nn.MultiheadAttention: Rule(
        attention_grads,
        covers_children=True,
        method="torch.func over its forward",
        recomputes=True,
        params=frozenset(
            {"in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight"}
            | {"bias_k", "bias_v", "out_proj.weight", "out_proj.bias"}
        ),
    ),
}
FUNC = Rule(
    func_grads,
    covers_children=True,
    method="torch.func vmap over the module's call",
    params=None,
    recomputes=True,
)


def _check_closed(trace: Trace, rule: Rule, name: str) -> None:
    if rule.recomputes and trace.recording:
        raise fail(
            name,
            "a trace whose `with` block has exited (this rule calls the module again, by torch.func)",
            "a trace still recording",
            "ask for the per-sample gradients after the `with backlens.trace(...)` block",
        )


OVERRIDES = ("forward", "_conv_forward")  # a subclass redefining one of these is not the base
FALLBACKS: dict[str | None, Rule | None] = {None: None, "func": FUNC}


def rule_for(module: nn.Module | None, module_type: str) -> Rule | None:
    """The registered rule for `module` (or, with no module, for a type named `module_type`)."""
    if module is None:
        return next((r for t, r in RULES.items() if t.__name__ == module_type and not r.needs_module), None)
    for base in type(module).__mro__:
        rule = RULES.get(base)  # type: ignore[arg-type]
        if rule is not None:
            same = all(getattr(type(module), m, None) is getattr(base, m, None) for m in OVERRIDES)
            return rule if same else None
    return None


def _check_fallback(fallback: str | None) -> Rule | None:
    if fallback not in FALLBACKS:
        raise fail(
            "fallback",
            "None (registered rules only) or 'func' (torch.func for other modules)",
            repr(fallback),
            "pass fallback='func' to cover other modules at the cost of a vmap per call",
        )
    return FALLBACKS[fallback]


def _calls(trace: Trace, record: ModuleRecord) -> list[CallData] | None:
    """The record's calls as rules read them; None if no backward reached any of them."""
    out = []
    for call in record.calls:
        if call.grad_outputs is None:
            continue
        out.append(
            CallData(
                f"rec[{record.name!r}].calls[{call.index}]", call.inputs, call.outputs, call.grad_outputs
            )
        )
    if not out:
        return None
    sizes = {c.input.shape[0] for c in out}
    if len(sizes) > 1 and not isinstance(trace.module(record.name), nn.MultiheadAttention):
        raise fail(
            f"rec[{record.name!r}]", "calls on one batch size", sorted(sizes), "trace one batch at a time"
        )
    return out


def _batch(calls: Sequence[CallData], module: nn.Module | None) -> int:
    x = calls[0].input
    if isinstance(module, nn.MultiheadAttention) and not module.batch_first:
        return x.shape[1]
    return x.shape[0]


def trace_grads(
    trace: Trace,
    name: str,
    reduction: str,
    fallback: str | None,
    out: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample gradients of module `name`'s trainable parameters (for Trace.per_sample_grads)."""
    loss_scale(reduction, 1)
    extra = _check_fallback(fallback)
    record = trace[name]
    module = trace.module(name)
    rule, names = _grads_rule(trace, name, record, module, extra)
    calls = _calls(trace, record)
    if calls is None:
        raise fail(
            "name",
            "a module whose calls a backward reached",
            f"{name!r} without",
            "run loss.backward() inside the trace",
        )
    scale = loss_scale(reduction, _batch(calls, module))
    _check_closed(trace, rule, f"rec.per_sample_grads({name!r})")
    if out is not None:
        if rule is not RULES[nn.Linear]:
            raise fail("out", "None for a module other than nn.Linear", "buffers", "drop out=")
        acts, backs = first_pairs(calls)
        return linear_grads(acts, backs, scale=scale, out=out, weight="weight" in names, bias="bias" in names)
    return rule.grads(module, calls, scale, names)


def _grads_rule(
    trace: Trace, name: str, record: ModuleRecord, module: nn.Module | None, extra: Rule | None
) -> tuple[Rule, frozenset[str]]:
    """The rule that gives module `name`'s per-sample gradients, and its trainable parameters;
    raise when there is none, when it lacks the module or its calls, or when all is frozen."""
    rule = rule_for(module, record.module_type) or extra
    if rule is None:
        supported = ", ".join(f"nn.{t.__name__}" for t in RULES)
        raise fail(
            "name",
            f"a module of a supported type ({supported}), or fallback='func'",
            f"{name!r}, a {record.module_type}"
            + (" (a record without its model: only nn.Linear)" if module is None else ""),
            "select a supported module, or pass fallback='func' (torch.func: a vmap per call)",
        )
    if rule.needs_module and module is None:
        raise fail(
            "name", "a traced module (a loaded record keeps no model)", repr(name), "trace the model again"
        )
    if not record.calls:
        raise fail(
            "name",
            "a module with recorded calls",
            f"{name!r} with none",
            "trace with store='cpu' or 'device' and run the model inside the trace",
        )
    names = frozenset(_trainable(trace, record, module, rule.covers_children))
    unknown = sorted(k for k in names if not rule.gives(k))
    if unknown:
        if extra is None:
            raise fail(
                "name",
                f"a {record.module_type} with the parameters its rule knows",
                f"{name!r} with {', '.join(unknown)} (a reparametrization such as weight_norm?)",
                "pass fallback='func' (torch.func over the module's forward)",
            )
        rule = extra
    if not names:
        raise fail(
            "name",
            "a module with a parameter that requires grad",
            f"{name!r}, all frozen",
            "unfreeze a parameter",
        )
    return rule, names


def _trainable(trace: Trace, record: ModuleRecord, module: nn.Module | None, children: bool) -> list[str]:
    if module is None:
        return [k for k, v in record.params.items() if v]
    return [k for k, p in module.named_parameters(recurse=children) if p.requires_grad]


def trace_grad_norms(
    trace: Trace, reduction: str, names: Sequence[str] | None, allow_partial: bool, fallback: str | None
) -> torch.Tensor:
    """(n,) per-sample gradient norms over every parameter that received a gradient (see Trace)."""
    loss_scale(reduction, 1)
    extra = _check_fallback(fallback)
    plan, left_out = _plan(trace, names, extra)
    if left_out and not allow_partial:
        raise fail(
            "allow_partial",
            "a per-sample rule for every parameter that received a gradient",
            "none for " + "; ".join(left_out),
            "trace those modules (select=...), pass fallback='func', or allow_partial=True to leave "
            "them out with a PartialNormWarning",
        )
    if not plan:
        raise fail(
            "rec",
            "recorded calls, reached by a backward, of modules with trainable parameters",
            "none",
            "trace with store='cpu' or 'device' and run loss.backward() inside the trace",
        )
    if left_out:
        warnings.warn(PartialNormWarning(left_out), stacklevel=3)
    total: torch.Tensor | None = None
    for (mname, _), (rule, params) in plan.items():
        module = trace.module(mname)
        calls = _calls(trace, trace[mname])
        assert calls is not None
        scale = loss_scale(reduction, _batch(calls, module))
        _check_closed(trace, rule, f"rec.per_sample_grad_norms() for {mname!r}")
        sq = sq_norms_by_building(rule, module, calls, scale, frozenset(params))
        if total is not None and total.shape != sq.shape:
            raise fail(
                "names",
                "layers that saw the same batch",
                f"{mname!r} with {sq.shape[0]} samples against {total.shape[0]}",
                "pass the layers of one batch",
            )
        total = sq if total is None else total + sq.to(total.device)
    assert total is not None
    return total.sqrt()


Plan = dict[tuple[str, bool], tuple[Rule, list[str]]]  # (module, by the fallback): rule, params


def _plan(trace: Trace, names: Sequence[str] | None, extra: Rule | None) -> tuple[Plan, list[str]]:
    """{module: (rule, its parameter names)} covering each parameter once, and what is left out."""
    plan: Plan = {}
    left_out: list[str] = []
    if names is not None or trace.model is None:
        for mname in names if names is not None else [r.name for r in trace]:
            record = trace[mname]
            module = trace.module(mname)
            rule = rule_for(module, record.module_type) or extra
            trainable = _trainable(trace, record, module, rule.covers_children if rule else False)
            if not trainable:
                continue
            reached = _calls(trace, record) if record.calls else None
            if rule is None or reached is None:
                why = "no backward reached its calls in this trace"
                if rule is None:
                    why = "no per-sample rule" if module is not None else "a loaded record keeps no model"
                    why += " (only nn.Linear needs none)" if module is None else ""
                left_out += [f"{_join(mname, k)} ({record.module_type}: {why})" for k in trainable]
                continue
            unknown = [k for k in trainable if not rule.gives(k)]
            left_out += [
                f"{_join(mname, k)} ({record.module_type}: its rule does not know it)" for k in unknown
            ]
            plan[(mname, rule is extra)] = (rule, [k for k in trainable if rule.gives(k)])
        return plan, left_out
    model = trace.model
    owners: dict[int, list[str]] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(_join(mname, pname))
    got = {r.name: bool(r.calls) and _calls(trace, r) is not None for r in trace}
    for full, p in model.named_parameters():
        if not p.requires_grad:
            continue
        places = sorted(set(owners.get(id(p), [full])))
        if len(places) > 1:
            if p.grad is not None:
                left_out.append(f"{full} (shared by {', '.join(places)}: tied parameters are not covered)")
            continue
        owner, _, pname = full.rpartition(".")
        chosen = _cover(trace, owner, full, got, extra)
        if chosen is None:
            if p.grad is not None or got.get(owner):
                left_out.append(f"{full} ({_why(trace, owner, got)})")
            continue
        mname, rule = chosen
        plan.setdefault((mname, rule is extra), (rule, []))[1].append(
            full[len(mname) + 1 :] if mname else full
        )
    return plan, left_out


def _cover(
    trace: Trace, owner: str, full: str, reached: dict[str, bool], extra: Rule | None
) -> tuple[str, Rule] | None:
    """The traced module, the owner or an ancestor, whose rule gives parameter `full`."""
    chain = [owner]
    while chain[-1]:
        chain.append(chain[-1].rpartition(".")[0])
    for cand in chain:
        if reached.get(cand):
            rule = rule_for(trace.module(cand), trace[cand].module_type)
            if (
                rule is not None
                and (cand == owner or rule.covers_children)
                and rule.gives(full[len(cand) + 1 :] if cand else full)
            ):
                return cand, rule
    if extra is not None:
        for cand in chain:
            if reached.get(cand):
                return cand, extra
    return None


def _why(trace: Trace, owner: str, reached: dict[str, bool]) -> str:
    if owner not in trace:
        return f"its module {owner or '(model)'!r} is not traced"
    kind = trace[owner].module_type
    if not trace[owner].calls:
        return f"{kind}: never called in this trace (a parent may use its weights: trace the parent)"
    if not reached.get(owner):
        return f"{kind}: no backward reached its calls in this trace (run loss.backward() inside it)"
    if rule_for(trace.module(owner), kind) is not None:
        return f"{kind}: its rule does not know this parameter (a reparametrization?); pass fallback='func'"
    return f"{kind}: no per-sample rule (pass fallback='func')"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
