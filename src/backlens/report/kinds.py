"""Which command wrote a results.json, and the sections its report shows.

Abstract, train and linearity runs are shown through the commands' own print functions (the
terminal's tables); the demo prints while it computes, so its sections are rebuilt here from
the numbers it saved, tensors as shaded tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from markupsafe import Markup

from ..display import tensor_table
from ..errors import fail
from .pieces import HtmlPiece, Piece, Section, TablePiece, TextPiece, captured

__all__ = ["KINDS", "run_kind", "sections"]

KINDS = ("demo", "abstract", "train", "linearity")


def run_kind(results: dict[str, Any], source: str) -> str:
    """demo, abstract, train or linearity, read from the keys each command writes."""
    options = results.get("options") or {}
    if {"hand", "abstraction", "sweep"} <= results.keys():
        return "demo"
    if "methods" in results and "summary" in results and "metric" in results:
        return "train"
    if "runs" in results and isinstance(options, dict):
        return "linearity" if options.get("linearity_only") else "abstract"
    raise fail(
        "run_dir",
        f"a run directory of one of: {', '.join(KINDS)}",
        f"{source} with keys {sorted(results)[:8]}",
        "point at a directory that backlens demo, abstract, train or linearity wrote (--out)",
    )


def _tensor(value: Any, caption: str) -> HtmlPiece:
    return HtmlPiece(Markup(tensor_table(None if value is None else _array(value), caption)))


def _array(value: Any) -> Any:
    import numpy as np

    return np.asarray(value, dtype=np.float64)


def _demo_data(results: dict[str, Any]) -> Section:
    data = results["data"]
    return Section(
        "a. Data: x = randint(-10, 10, (128, 3)), y = (x0·(cos x1 + exp(x1/3)) + x2)/10",
        [
            _tensor(data["x"][:4], "x, first rows"),
            _tensor(data["y"][:4], "y, first rows"),
            _tensor(data["first_batch"]["x"], "first shuffled batch: x"),
            _tensor(data["first_batch"]["y"], "first shuffled batch: y"),
        ],
    )


def _demo_trace(results: dict[str, Any]) -> Section:
    traced = results["trace"]
    pieces: list[Piece] = [TextPiece(f"MSE loss of the batch: {traced['loss']:.4f}")]
    for name, fields in traced["layers"].items():
        for field_name, value in fields.items():
            pieces.append(_tensor(value, f"layer {name}: {field_name}"))
    return Section("b. The 3-2-2-1 ReLU model traced for one batch", pieces)


def _demo_hand(results: dict[str, Any]) -> Section:
    hand = results["hand"]
    rows = [
        [r["layer"], r["quantity"], r["oracle"], f"{r['max_abs']:.2e}", f"{r['max_rel']:.2e}"]
        + [f"{r['tol']:.0e}", "pass" if r["ok"] else "FAIL"]
        for r in hand["rows"]
    ]
    columns = ["layer", "quantity", "against", "abs err", "rel err", "tol", "ok"]
    verdict = "all hand quantities match" if hand["ok"] else "mismatch found"
    pieces: list[Piece] = [
        TablePiece(columns, rows, "hand backprop vs autograd, the trace and torch.func"),
        TextPiece(f"verdict — hand backprop: {verdict}", verdict=True),
    ]
    for name, values in hand["tape"].items():
        pieces += [_tensor(v, f"layer {name}: {k}") for k, v in values.items() if v is not None]
    pieces += [_tensor(v, f"grad {k}") for k, v in hand["grads"].items()]
    return Section("c. Hand-derived forward and backward, checked", pieces)


def _demo_abstraction(results: dict[str, Any]) -> Section:
    pieces: list[Piece] = []
    columns = ["map", "δ", "‖Gp−GM‖ fit", "rel fit", "‖Gp−GM‖ held-out", "rel held-out"]
    for result in results["abstraction"]:
        rows = [
            [r["method"], "" if r["alpha"] is None else f"{r['alpha']:.2g}"]
            + [
                f"{r['train_abs']:.4g}",
                f"{r['train_rel']:.3g}",
                f"{r['test_abs']:.4g}",
                f"{r['test_rel']:.3g}",
            ]
            for r in result["rows"]
        ]
        title = f"{result['kind']} data: fit on b={result['b']}, held out on {result['n_test']} fresh samples"
        pieces.append(TablePiece(columns, rows, title))
        best = min(result["rows"], key=lambda r: r["test_rel"])
        pieces.append(
            TextPiece(
                f"verdict — {result['kind']} data: {best['method']} has the least held-out error "
                f"({best['test_rel']:.3g})",
                verdict=True,
            )
        )
    pieces.append(TextPiece(f"The notebook's `Gp − G@W`: {results['abstraction'][0]['note']}"))
    return Section("d. Abstraction Experiment: Gp = ((G·W) ⊙ R)·W2", pieces)


def _demo_toy(results: dict[str, Any]) -> Section:
    toy = results["forward_toy"]
    pieces: list[Piece] = [_tensor(toy[k], k) for k in ("W", "X", "Y", "M", "MX")]
    pieces.append(TextPiece(f"residual ‖M·X − Y‖ = {toy['residual']:.4f}"))
    return Section("e. Forward toy: Y = W·relu(X), M = Y·Xᵀ(XXᵀ)⁻¹", pieces)


def _demo_sweep(results: dict[str, Any]) -> Section:
    pieces: list[Piece] = []
    for sweep in results["sweep"]:
        methods = list(dict.fromkeys(p["method"] for p in sweep["points"]))
        sizes = list(dict.fromkeys(p["b"] for p in sweep["points"]))
        cell = {(p["b"], p["method"]): p for p in sweep["points"]}
        rows = [
            [str(b)] + [f"{cell[b, m]['train_rel']:.3g} / {cell[b, m]['test_rel']:.3g}" for m in methods]
            for b in sizes
        ]
        title = f"{sweep['kind']} data: relative residual, fitting / held-out ({sweep['n_test']} samples)"
        pieces.append(TablePiece(["b", *methods], rows, title))
    return Section("f. Residual against the number of fitting samples", pieces)


def _demo(results: dict[str, Any]) -> list[Section]:
    builders = (_demo_data, _demo_trace, _demo_hand, _demo_abstraction, _demo_toy, _demo_sweep)
    return [build(results) for build in builders]


def _abstract(results: dict[str, Any]) -> list[Section]:
    from ..workflows.abstract_report import print_run, print_summary
    from ..workflows.linearity_report import print_linearity

    out = []
    for run in results["runs"]:
        pieces = captured(print_run, run, results["options"])
        if any(b.get("linearity") or b.get("linearity_note") for b in run["blocks"]):
            pieces += captured(print_linearity, run)
        out.append(Section(f"seed {run['seed']}", pieces))
    summary = captured(print_summary, results)
    if summary:
        out.append(Section("over seeds", summary))
    return out


def _linearity(results: dict[str, Any]) -> list[Section]:
    from ..workflows.linearity_report import print_linearity

    return [Section(f"seed {run['seed']}", captured(print_linearity, run)) for run in results["runs"]]


def _train(results: dict[str, Any]) -> list[Section]:
    from ..workflows.train_backward_report import print_summary

    pieces = captured(print_summary, results)
    higher = results["metric"] == "accuracy"  # else a loss-like metric: lower is better
    scored = [r for r in results["summary"] if r["test_metric_mean"] is not None]
    if scored:
        pick = max if higher else min
        best = pick(scored, key=lambda r: r["test_metric_mean"])
        pieces.append(
            TextPiece(
                f"verdict — best test {results['metric']}: {best['method']} "
                f"({best['test_metric_mean']:.4f} over {best['seeds']} seed(s))",
                verdict=True,
            )
        )
    return [Section("backward methods", pieces)]


BUILDERS: dict[str, Callable[[dict[str, Any]], list[Section]]] = {
    "demo": _demo,
    "abstract": _abstract,
    "train": _train,
    "linearity": _linearity,
}


def sections(kind: str, results: dict[str, Any]) -> list[Section]:
    return BUILDERS[kind](results)
