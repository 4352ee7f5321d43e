"""Training, splitting, task metrics and model files."""

from pathlib import Path

import pytest
import torch

import backlens
from backlens.byhand.losses import torch_loss
from backlens.workflows.datasets import load_dataset
from backlens.workflows.model_io import load_model, save_model
from backlens.workflows.train import split_dataset, task_metric, train_model


def test_split_is_disjoint_and_seeded() -> None:
    data = load_dataset("diabetes")
    a, b = split_dataset(data, 0.3, seed=1), split_dataset(data, 0.3, seed=1)
    assert len(a.test.x) == round(442 * 0.3) and len(a.train.x) + len(a.test.x) == 442
    assert torch.equal(a.test.x, b.test.x)
    rows = {tuple(r.tolist()) for r in a.train.x}
    assert not any(tuple(r.tolist()) in rows for r in a.test.x)


def test_training_learns_digits() -> None:
    split = split_dataset(load_dataset("digits"), 0.3, seed=0)
    model = backlens.build_mlp([64, 32, 10], "relu", seed=0)
    before = task_metric(model, split.test)
    history = train_model(model, split.train, "ce", epochs=5, seed=0)
    assert history[-1] < history[0]
    assert task_metric(model, split.test) > max(0.8, before)
    assert all(p.grad is None for p in model.parameters())


def test_task_metric_is_accuracy_and_mse() -> None:
    split = split_dataset(load_dataset("seed"), 0.25, seed=0)
    model = backlens.build_mlp([3, 4, 1], "relu", seed=0)
    with torch.no_grad():
        expected = float(((model(split.test.x) - split.test.y) ** 2).mean())
    assert task_metric(model, split.test) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", ["mse", "ce", "bce"])
def test_task_losses_match_torch(name: str) -> None:
    out = torch.randn(6, 3)
    y = torch.randint(0, 3, (6,)) if name == "ce" else torch.rand(6, 3)
    reference = {
        "mse": torch.nn.functional.mse_loss,
        "ce": torch.nn.functional.cross_entropy,
        "bce": torch.nn.functional.binary_cross_entropy_with_logits,
    }[name](out, y)
    assert torch_loss(name)(out, y) == pytest.approx(float(reference))


def test_model_roundtrip(tmp_path: Path) -> None:
    model = backlens.build_mlp([5, 7, 2], "tanh", seed=3)
    path = save_model(model, [5, 7, 2], "tanh", tmp_path / "m.safetensors")
    loaded, widths, activation = load_model(path)
    assert widths == [5, 7, 2] and activation == "tanh"
    x = torch.randn(4, 5)
    assert torch.equal(model(x), loaded(x))


def test_load_model_rejects_other_files(tmp_path: Path) -> None:
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(backlens.BacklensError, match="backlens.MLP file"):
        load_model(tmp_path / "junk.safetensors")
    with pytest.raises(backlens.BacklensError, match="test_size"):
        split_dataset(load_dataset("seed"), 1.5)
