"""One small run directory of each kind (demo, abstract, train, linearity), built once per session."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from backlens.workflows import notebook
from backlens.workflows.abstract import AbstractOptions, run_abstract
from backlens.workflows.arch_run import ArchOptions, run_arch
from backlens.workflows.demo import run_demo
from backlens.workflows.train_backward import TrainOptions, run_train


def _small_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    # The demo's sweep fits d = 512 maps on up to 8,192 samples (seconds); the report only needs its shape.
    full = notebook.sample_size_sweep
    monkeypatch.setattr(
        notebook,
        "sample_size_sweep",
        lambda sizes, **kw: full(sizes, **{**kw, "d_in": 32, "hidden": 16, "n_test": 256}),
    )


@pytest.fixture(scope="session")
def run_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    quiet = Console(file=io.StringIO())
    dirs = {kind: root / kind for kind in ("demo", "abstract", "train", "linearity")}
    with pytest.MonkeyPatch.context() as monkeypatch:
        _small_sweep(monkeypatch)
        run_demo(out=dirs["demo"], console=quiet)
    run_abstract(
        AbstractOptions(
            data="seed", layers="3,8,8,1", epochs=1, methods="ridge,expected-mask", out=str(dirs["abstract"])
        ),
        console=quiet,
    )
    run_train(
        TrainOptions(
            layers="64,16,10", backward="bp,fa", epochs=1, batch_size=128, shadow=True, out=str(dirs["train"])
        ),
        console=quiet,
    )
    run_arch(
        ArchOptions(
            arch="gru", epochs=1, direction="forward", linearity_only=True, out=str(dirs["linearity"])
        ),
        console=quiet,
    )
    return dirs
