"""The model zoo: every architecture builds reproducibly, names real blocks, steps and learns."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from backlens.errors import BacklensError
from backlens.workflows.zoo import (
    ARCH_NAMES,
    ARCHITECTURES,
    ZooData,
    accuracy,
    build,
    loaders,
    train_arch,
    zoo_data,
)


@dataclass(frozen=True)
class Case:
    """What each architecture promises: its data's shapes and the test accuracy it reaches."""

    name: str
    input_shape: tuple[int, ...]
    input_dtype: torch.dtype
    n_classes: int
    n_train: int
    n_test: int
    # Measured with default epochs on seeds 0-3: mlp 0.952-0.976, cnn 0.985-0.991,
    # resmlp 0.963-0.985, transformer 0.997-1.0, gru 0.997-1.0; thresholds leave a margin.
    min_accuracy: float


CASES = [
    Case("mlp", (64,), torch.float32, 10, 1258, 539, 0.93),
    Case("cnn", (1, 8, 8), torch.float32, 10, 1258, 539, 0.95),
    Case("resmlp", (64,), torch.float32, 10, 1258, 539, 0.93),
    Case("transformer", (12,), torch.int64, 2, 4000, 1000, 0.95),
    Case("gru", (24, 1), torch.float32, 3, 3000, 1000, 0.95),
]
BY_NAME = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])


@pytest.fixture(scope="module")
def datasets() -> dict[str, ZooData]:
    return {name: zoo_data(name, seed=0) for name in ARCH_NAMES}


def first_batch(data: ZooData, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.train.tensors
    return x[:size], y[:size]


def test_the_table_names_exactly_the_shipped_architectures() -> None:
    assert set(ARCHITECTURES) == {"mlp", "cnn", "resmlp", "transformer", "gru"}
    assert [c.name for c in CASES] == list(ARCH_NAMES)
    assert all(arch.name == name for name, arch in ARCHITECTURES.items())
    assert all(zoo_data(name).name == arch.dataset for name, arch in ARCHITECTURES.items())


@BY_NAME
def test_build_is_float32_and_fixed_by_the_seed(case: Case) -> None:
    rng_before = torch.get_rng_state()
    a, b, other = build(case.name, seed=0), build(case.name, seed=0), build(case.name, seed=1)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left untouched
    state_a, state_b, state_other = a.state_dict(), b.state_dict(), other.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert any(not torch.equal(state_a[k], state_other[k]) for k in state_a)
    assert all(p.dtype == torch.float32 for p in a.parameters())
    assert isinstance(ARCHITECTURES[case.name].build(seed=0), nn.Module)


@BY_NAME
def test_blocks_are_modules_called_in_the_listed_order(case: Case, datasets: dict[str, ZooData]) -> None:
    model = build(case.name, seed=0)
    blocks = ARCHITECTURES[case.name].blocks
    assert blocks and len(set(blocks)) == len(blocks)
    called: list[str] = []
    handles = [
        model.get_submodule(path).register_forward_hook(lambda *_, path=path: called.append(path))
        for path in blocks
    ]
    try:
        model(first_batch(datasets[case.name])[0])
    finally:
        for handle in handles:
            handle.remove()
    assert called == list(blocks)


@BY_NAME
def test_one_step_gives_a_finite_loss_and_every_gradient(case: Case, datasets: dict[str, ZooData]) -> None:
    model = build(case.name, seed=0)
    loss = ARCHITECTURES[case.name].step(model, first_batch(datasets[case.name]))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name


@BY_NAME
def test_train_and_eval_modes_agree_but_for_batchnorm(case: Case, datasets: dict[str, ZooData]) -> None:
    model = build(case.name, seed=0)
    x, _ = first_batch(datasets[case.name])
    with torch.no_grad():
        trained_mode = model.train()(x)
        eval_mode = model.eval()(x)
    has_batchnorm = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # Eval mode takes torch's fused transformer path, which differs by rounding (≈ 1e-7).
    assert torch.allclose(trained_mode, eval_mode, atol=1e-5) != has_batchnorm


@BY_NAME
def test_data_have_the_stated_shapes_and_are_fixed_by_the_seed(
    case: Case, datasets: dict[str, ZooData]
) -> None:
    data = datasets[case.name]
    assert (data.task, data.n_classes, data.input_shape, data.input_dtype) == (
        "classification",
        case.n_classes,
        case.input_shape,
        case.input_dtype,
    )
    for part, n in ((data.train, case.n_train), (data.test, case.n_test)):
        x, y = part.tensors
        assert x.shape == (n, *case.input_shape) and x.dtype == case.input_dtype
        assert y.shape == (n,) and y.dtype == torch.int64
        assert set(y.tolist()) == set(range(case.n_classes))
    again, other = zoo_data(case.name, seed=0), zoo_data(case.name, seed=1)
    assert all(torch.equal(u, v) for u, v in zip(data.train.tensors, again.train.tensors, strict=True))
    assert not torch.equal(data.test.tensors[0], other.test.tensors[0])


def test_digit_images_are_the_flat_rows_reshaped(datasets: dict[str, ZooData]) -> None:
    flat, images = datasets["mlp"].train.tensors[0], datasets["cnn"].train.tensors[0]
    assert torch.equal(images.reshape(len(images), 64), flat)
    assert float(flat.min()) == 0.0 and float(flat.max()) == 1.0


def test_token_labels_say_whether_token_zero_comes_again(datasets: dict[str, ZooData]) -> None:
    tokens, labels = datasets["transformer"].train.tensors
    for row, label in zip(tokens[:50].tolist(), labels[:50].tolist(), strict=True):
        assert label == int(row[0] in row[1:])
    assert 0.4 < labels.float().mean() < 0.6  # balanced classes


@BY_NAME
def test_training_reaches_the_stated_accuracy(case: Case, datasets: dict[str, ZooData]) -> None:
    arch = ARCHITECTURES[case.name]
    model, data = arch.build(seed=0), datasets[case.name]
    history = train_arch(case.name, model, data, seed=0)
    assert len(history) == arch.default_epochs and history[-1] < history[0]
    assert not model.training and all(p.grad is None for p in model.parameters())
    _, test_loader = loaders(data)
    assert accuracy(model, test_loader) >= case.min_accuracy


@pytest.mark.slow
@BY_NAME
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_training_reaches_the_stated_accuracy_on_other_seeds(case: Case, seed: int) -> None:
    model, data = build(case.name, seed=seed), zoo_data(case.name, seed=seed)
    train_arch(case.name, model, data, seed=seed)
    assert accuracy(model, loaders(data, seed=seed)[1]) >= case.min_accuracy


def test_loaders_shuffle_train_by_the_seed_and_keep_test_in_order(datasets: dict[str, ZooData]) -> None:
    data = datasets["mlp"]
    order = lambda loader: torch.cat([y for _, y in loader])  # noqa: E731
    train_a, test_a = loaders(data, batch_size=100, seed=0)
    train_b, _ = loaders(data, batch_size=100, seed=0)
    train_c, _ = loaders(data, batch_size=100, seed=1)
    assert torch.equal(order(train_a), order(train_b))
    assert not torch.equal(order(train_a), order(train_c))
    assert torch.equal(order(test_a), data.test.tensors[1])


def test_accuracy_keeps_batchnorm_statistics_and_the_mode(datasets: dict[str, ZooData]) -> None:
    model = build("cnn", seed=0).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    value = accuracy(model, loaders(datasets["cnn"])[1])
    assert 0.0 <= value <= 1.0 and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_unknown_architecture_raises_listing_the_choices() -> None:
    with pytest.raises(BacklensError, match="'mlp', 'cnn', 'resmlp', 'transformer', 'gru'"):
        build("lstm")
    with pytest.raises(BacklensError, match="name"):
        zoo_data("vit")


def test_bad_arguments_raise_naming_them(datasets: dict[str, ZooData]) -> None:
    model = build("mlp", seed=0)
    with pytest.raises(BacklensError, match="seed"):
        build("mlp", seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(BacklensError, match="data"):
        train_arch("mlp", model, datasets["mlp"].train)  # type: ignore[arg-type]
    with pytest.raises(BacklensError, match="'digits' data of 'mlp'"):
        train_arch("mlp", model, datasets["gru"])
    with pytest.raises(BacklensError, match="lr"):
        train_arch("mlp", model, datasets["mlp"], lr=-1.0)
    with pytest.raises(BacklensError, match="epochs"):
        train_arch("mlp", model, datasets["mlp"], epochs=0)
    with pytest.raises(BacklensError, match="model"):
        train_arch("mlp", "model", datasets["mlp"])  # type: ignore[arg-type]
    with pytest.raises(BacklensError, match="batch_size"):
        loaders(datasets["mlp"], batch_size=0)


def test_training_restores_the_thread_count(datasets: dict[str, ZooData]) -> None:
    before = torch.get_num_threads()
    train_arch("mlp", build("mlp", seed=0), datasets["mlp"], epochs=1, num_threads=1)
    assert torch.get_num_threads() == before
    with pytest.raises(BacklensError, match="num_threads"):
        train_arch("mlp", build("mlp", seed=0), datasets["mlp"], epochs=1, num_threads=0)
    assert torch.get_num_threads() == before
