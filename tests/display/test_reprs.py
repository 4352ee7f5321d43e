"""_repr_html_ of the library's objects: well-formed HTML holding their numbers; repr stays short."""

import pytest
import torch
from torch import nn

import backlens
from backlens.display import notebook_number
from html_check import cells, parse


@pytest.fixture
def traced():
    model = backlens.build_mlp([3, 2, 2, 1], "relu", seed=0)
    x, y = backlens.seed_regression(8, seed=0)
    with backlens.trace(model, select=[nn.Linear]) as rec:
        nn.functional.mse_loss(model(x[:4]), y[:4, None]).backward()
    return rec


def _entries(tensor):
    return [notebook_number(float(v)) for v in tensor.detach().double().reshape(-1)]


def _contains_run(haystack, needle):
    """needle appears in haystack as consecutive items."""
    k = len(needle)
    return any(haystack[i : i + k] == needle for i in range(len(haystack) - k + 1))


def test_trace_html_holds_every_recorded_tensor(traced):
    shown = cells(traced._repr_html_())
    for record in traced:
        for field in ("input", "output", "grad_output"):
            assert _contains_run(shown, _entries(getattr(record, field))), (record.name, field)
    assert "no backward" not in shown  # every call got its backward
    assert len(repr(traced)) < 60


def test_module_record_and_call_html(traced):
    record = traced["2"]
    assert _contains_run(cells(record._repr_html_()), _entries(record.grad_input))
    call_cells = cells(record.calls[0]._repr_html_())
    assert _contains_run(call_cells, _entries(record.calls[0].output))
    assert call_cells[0] == "2, call 0"


def test_first_layer_grad_input_shows_none(traced):
    # x does not require grad: the first Linear sends no gradient back, as in the notebook.
    assert "grad_input: None" in cells(traced["0"]._repr_html_())


def test_check_report_html_marks_pass_and_fail():
    model = backlens.build_mlp([3, 4, 1], "tanh", seed=0).double()
    x, y = backlens.seed_regression(6, seed=0)
    report = backlens.check(model, x.double(), y.double())
    html = report._repr_html_()
    shown = cells(html)
    assert shown.count("pass") == len(report.rows) and report.ok
    assert f"{report.rows[0].max_rel:.2e}" in shown
    bad = backlens.Report([backlens.CheckRow("0", "dW", "autograd", 1.0, 1.0, 1e-10)], report.tape)
    assert 'class="fail"' in bad._repr_html_() and "1 mismatches" in cells(bad._repr_html_())[0]


def test_linear_map_html_has_provenance_spectrum_and_entries():
    matrix = torch.tensor([[2.0, 0.0], [0.0, 0.5], [1.0, 1.0]], dtype=torch.float64)
    lm = backlens.LinearMap(
        matrix, method="ridge", info={"direction": "forward", "alpha": 0.25, "grid": [1, 2]}
    )
    html = lm._repr_html_()
    shown = cells(html)
    for expected in ("ridge", "forward", "3 × 2 (float64)", "3 → 2", "0.25"):
        assert expected in shown, expected
    assert "grid" not in shown  # long info entries stay in lm.info
    assert _contains_run(shown, _entries(matrix))
    singular = torch.linalg.svdvals(matrix)
    assert f"{float(singular.max()):.3g}" in html  # the sparkline's title states its range
    assert repr(lm).startswith("LinearMap(") and len(repr(lm)) < 120


def test_moments_html_states_counts_and_means():
    X = torch.randn(50, 3, dtype=torch.float64)
    m = backlens.Moments(3, 2).update(X, X[:, :2] * 2)
    shown = cells(m._repr_html_())
    assert "50" in shown and "3 × 2" in shown and f"{m.n_eff:.4g}" in shown
    assert _contains_run(shown, _entries(m.mean_x))
    assert "<svg" in m._repr_html_()
    empty = cells(backlens.Moments(3, 2)._repr_html_())
    assert "0" in empty  # an empty Moments shows its counts and nothing else
    parse(backlens.Moments(3, 2)._repr_html_())


def test_compare_rows_html(blocks_thread_rows):
    rows = blocks_thread_rows
    assert isinstance(rows, backlens.CompareRows) and isinstance(rows, list)
    shown = cells(rows._repr_html_())
    for row in rows:
        assert row.method in shown
        if row.test_rel_error is not None:
            assert f"{row.test_rel_error:.3g}" in shown
    single = cells(rows[1]._repr_html_())
    assert rows[1].method in single


@pytest.fixture
def blocks_thread_rows():
    torch.manual_seed(0)
    x = torch.randn(120, 4)
    y = torch.tanh(x[:, :2])
    model = backlens.build_mlp([4, 8, 8, 2], "relu", seed=0)

    def loader(a, b):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[a:b], y[a:b]), batch_size=40)

    block = backlens.Block(model, "0", "2")
    methods = ["ridge", "expected-mask", "identity"]
    return backlens.compare(
        model, block, loader(0, 80), loader(80, 120), methods=methods, show_progress=False
    )


def test_plain_reprs_are_one_short_line(traced):
    model = backlens.build_mlp([3, 4, 1], "tanh", seed=0).double()
    x, y = backlens.seed_regression(6, seed=0)
    report = backlens.check(model, x.double(), y.double())
    call = traced["0"].calls[0]
    expected = {
        repr(traced): "<Trace of 3 modules, 3 calls recorded>",
        repr(traced["0"]): "<ModuleRecord '0' (Linear): 1 call>",
        repr(call): "<Call 0 of '0': input 4×3, output 4×2, with backward>",
        repr(report): f"<Report of {len(report.rows)} checks, all within tolerance: mse (mean), float64>",
    }
    for got, want in expected.items():
        assert got == want
