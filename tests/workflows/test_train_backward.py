"""The train workflow: every option checked before any work, one model per method from the same
initialisation and data order, NaN losses stop a run cleanly, and the JSON and plots it writes."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from backlens import BACKWARD_METHODS, BacklensError
from backlens.workflows import train_backward as tb
from backlens.workflows.mnist import load_mnist
from backlens.workflows.train_backward_report import mean_std

TINY = {"data": "digits", "layers": "64,16,16,10", "epochs": 1, "batch_size": 128}


def options(**kw) -> tb.TrainOptions:
    return tb.TrainOptions(**{**TINY, **kw})


@pytest.mark.parametrize(
    ("kw", "argument", "says"),
    [
        ({"backward": "bp,sgd"}, "backward", "'expected-mask'"),
        ({"backward": "fa,fa"}, "backward", "more than once"),
        ({"backward": ""}, "backward", "name at least one"),
        ({"arch": "rnn"}, "arch", "'cnn'"),
        ({"arch": "cnn", "layers": None, "backward": "bp,expected-mask"}, "blocks", "Conv2d"),
        ({"arch": "cnn", "layers": None, "data": "mnist"}, "arch", "digits"),
        ({"arch": "cnn"}, "layers", "MLP"),
        ({"layers": "64,16,3"}, "widths", "[64, 16, 10]"),
        ({"data": "cifar"}, "data", "mnist"),
        ({"data": "missing.csv"}, "data", "missing.csv"),
        ({"data": "mnist", "target": "label"}, "target", "CSV"),
        ({"data": "digits", "target": "label"}, "target", "CSV"),
        ({"epochs": 0}, "epochs", "positive"),
        ({"seeds": -1}, "seeds", "positive"),
        ({"lr": 0.0}, "lr", "learning rate"),
    ],
)
def test_every_bad_option_is_refused_before_any_work(kw, argument, says, monkeypatch) -> None:
    monkeypatch.setattr(tb, "train_one", lambda *a, **k: pytest.fail("trained despite a bad option"))
    with pytest.raises(BacklensError) as info:
        tb.run_train(options(**kw))
    assert info.value.argument == argument and says in str(info.value)


def test_unknown_method_error_names_every_choice() -> None:
    with pytest.raises(BacklensError) as info:
        tb.parse_backward("bp,ridge-ish")
    assert all(repr(m) in info.value.expected for m in BACKWARD_METHODS)


def test_non_empty_out_is_refused_without_overwrite(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("earlier run")
    with pytest.raises(BacklensError, match="overwrite"):
        tb.run_train(options(out=str(tmp_path)))


def test_methods_start_from_the_same_weights_and_bp_reproduces() -> None:
    prepared = tb.prepare(options(backward="bp,fa"))
    a, b = prepared.build(3), prepared.build(3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    data = tb.train_data(options(), prepared.dataset, 3)
    runs = [tb.train_one(prepared.build(3), "bp", data, options(), 3) for _ in range(2)]
    assert runs[0]["epochs"][0]["train_loss"] == runs[1]["epochs"][0]["train_loss"]
    assert runs[0]["final"] == runs[1]["final"]


def test_run_writes_table_json_and_plots_with_shadow(tmp_path: Path) -> None:
    out = tmp_path / "run"
    results = tb.run_train(options(backward="bp,fa,expected-mask", seeds=2, shadow=True, out=str(out)))
    data = json.loads((out / "results.json").read_text())
    assert data["methods"] == ["bp", "fa", "expected-mask"] and len(data["runs"]) == 6
    assert data["optimizer"].startswith("Adam") and data["metric"] == "accuracy"
    for row in data["summary"]:
        assert 0 <= row["test_metric_mean"] <= 1 and row["test_error_mean"] == 1 - row["test_metric_mean"]
        assert row["steps_per_s_mean"] > 0 and row["seeds"] == 2
    bp = next(r for r in results["runs"] if r["method"] == "bp")
    fa = next(r for r in results["runs"] if r["method"] == "fa")
    assert set(bp["alignment"]["layers"]) == {"0", "2", "4"} and len(bp["alignment"]["steps"]) >= 10
    assert bp["alignment"]["kinds"] == {"0": "Linear", "2": "Linear", "4": "Linear"}
    assert all(a < 1e-3 for a in bp["alignment"]["layers"]["0"])  # bp's own update is the gradient
    assert all(a > 1 for a in fa["alignment"]["layers"]["0"])  # fa's first layer is not
    assert all(a < 1e-3 for a in fa["alignment"]["layers"]["4"])  # the output layer's is
    for png in ("learning_curves.png", "alignment.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


class NaNAfter(nn.Module):
    """Passes its input on, then NaN from the `after`-th call on (a diverging run)."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * math.nan if self.calls > self.after else x


def test_a_nan_loss_stops_the_run_and_keeps_the_finished_epochs(tmp_path: Path, monkeypatch) -> None:
    real = tb._builder
    # 12 steps an epoch (1438 samples / 128), then 1 test batch: forward call 18 is step 16
    monkeypatch.setattr(
        tb, "_builder", lambda o, d: lambda seed: nn.Sequential(real(o, d)(seed), NaNAfter(17))
    )
    out = tmp_path / "run"
    results = tb.run_train(options(backward="bp,fa", epochs=3, out=str(out)))
    for run in results["runs"]:
        assert run["stopped"] == {"step": 16, "epoch": 1, "loss": "nan"} and run["steps"] == 16
        assert len(run["epochs"]) == 1 and math.isfinite(run["epochs"][0]["train_loss"])
        assert run["final"]["test_metric"] is None  # NaNAfter keeps failing: no metric is made up
    data = json.loads((out / "results.json").read_text())  # strict JSON: no NaN anywhere
    assert data["summary"][0]["stopped"][0]["step"] == 16
    assert (out / "learning_curves.png").exists() and not (out / "alignment.png").exists()


def test_cnn_on_digit_images_with_shadow() -> None:
    results = tb.run_train(
        tb.TrainOptions(data="digits", arch="cnn", backward="usf", epochs=1, batch_size=256, shadow=True)
    )
    (run,) = results["runs"]
    assert run["final"]["test_metric"] > 0.1
    assert {"features.0.0", "features.1.0", "head.1"} <= set(run["alignment"]["layers"])


def test_mnist_is_mlxtends_5000_samples_in_unit_range() -> None:
    data = load_mnist()
    assert data.x.shape == (5000, 784) and data.x.dtype == torch.float32
    assert float(data.x.min()) == 0 and float(data.x.max()) == 1
    assert torch.equal(torch.bincount(data.y), torch.full((10,), 500))


def test_mean_std_skips_missing_values_and_stopped_runs() -> None:
    x, mean, std = mean_std([[1.0, None, 3.0], [3.0, None], [None]])
    assert x.tolist() == [0, 2] and mean.tolist() == [2.0, 3.0] and std.tolist() == [1.0, 0.0]


def test_a_stopped_run_keeps_the_last_finished_epochs_weights(monkeypatch) -> None:
    """A run stopped mid-epoch ends with the weights of its last finished epoch, all finite."""
    prepared = tb.prepare(options(epochs=2))
    data = tb.train_data(options(), prepared.dataset, 0)
    model = prepared.build(0)
    calls = {"n": 0}

    def poison(module, args, out):  # from step 14 on the output is Inf: the loss is not finite
        calls["n"] += 1
        return out * math.inf if calls["n"] > 15 else out

    model.register_forward_hook(poison)
    run = tb.train_one(model, "bp", data, options(epochs=2), 0)
    assert run["stopped"]["step"] == 14 and len(run["epochs"]) == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_default_methods_are_those_that_apply_to_the_model() -> None:
    mlp = tb.prepare(options(backward=None)).methods
    cnn = tb.prepare(tb.TrainOptions(arch="cnn")).methods
    assert mlp == list(BACKWARD_METHODS) and cnn == [m for m in BACKWARD_METHODS if m != "expected-mask"]


def test_a_csv_file_with_its_label_column(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g)
    rows = ["a,b,c,label"] + [f"{a:.4f},{b:.4f},{c:.4f},{int(a + b > 0)}" for a, b, c in x.tolist()]
    (tmp_path / "two.csv").write_text("\n".join(rows) + "\n")
    results = tb.run_train(
        options(data=str(tmp_path / "two.csv"), target="label", layers="3,8,8,2", epochs=3)
    )
    assert results["metric"] == "accuracy" and results["methods"] == list(BACKWARD_METHODS)
