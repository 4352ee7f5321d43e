"""Issue 15's examples, one row each: every one ends as a clear BacklensError before any work
(CLI: one line, exit 2), or as the right result. Numerics and callbacks have their own files
(tests/linear/test_ridge_units.py, tests/recording/test_on_record_errors.py); interrupted runs
are in tests/workflows/test_run_dir.py; the fuzz test in tests/test_fuzz.py."""

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from safetensors.torch import save_file
from typer.testing import CliRunner

import backlens
from backlens.cli import app
from backlens.cli.main import EXIT_BUG, run_or_exit
from backlens.errors import BacklensError, fail
from backlens.tensorfile import save_tensors
from backlens.workflows.datasets import load_csv
from backlens.workflows.model_io import load_model, save_model

runner = CliRunner()
TINY_ABSTRACT = ["abstract", "--data", "seed", "--layers", "3,4,4,1", "--epochs", "1", "--methods", "ridge"]


def a_file(tmp: Path, name: str = "taken") -> Path:
    (tmp / name).write_text("not a directory")
    return tmp / name


def earlier_run(tmp: Path) -> Path:
    (tmp / "run" / "maps").mkdir(parents=True)
    (tmp / "run" / "results.json").write_text("{}")
    (tmp / "run" / "maps" / "stale.safetensors").write_text("stale")
    return tmp / "run"


# (name, argv from tmp_path, what the one line says); each must fail before any training
CLI_REFUSALS: list[tuple[str, Callable[[Path], list[str]], str]] = [
    (
        "abstract --out under a file",
        lambda t: [*TINY_ABSTRACT, "--out", str(a_file(t) / "run")],
        "under the file",
    ),
    ("abstract --out is a file", lambda t: [*TINY_ABSTRACT, "--out", str(a_file(t))], "a file"),
    ("train --out under a file", lambda t: ["train", "--out", str(a_file(t) / "run")], "under the file"),
    (
        "linearity --out under a file",
        lambda t: ["linearity", "--out", str(a_file(t) / "r")],
        "under the file",
    ),
    ("demo --out FILE", lambda t: ["demo", "--out", str(a_file(t))], "a file"),
    ("second demo --out DIR", lambda t: ["demo", "--out", str(earlier_run(t))], "--overwrite"),
    (
        "trace --save under a file",
        lambda t: ["trace", "--save", str(a_file(t) / "r.safetensors")],
        "under the file",
    ),
    (
        "trace --save onto a file",
        lambda t: ["trace", "--save", str(a_file(t, "r.safetensors"))],
        "--overwrite",
    ),
    ("--layers 3,,1", lambda t: ["trace", "--layers", "3,,1"], "--layers"),
    ("--target for bundled data", lambda t: [*TINY_ABSTRACT, "--target", "y"], "--target"),
    ("--model beside --layers", lambda t: [*TINY_ABSTRACT, "--model", str(mlp_file(t))], "no layers"),
    ("--seed out of range", lambda t: ["trace", "--seed", "-1"], "--seed"),
    ("--seed far out of range", lambda t: ["demo", "--seed", str(2**40)], "seed"),
    ("abstract --seed out of range", lambda t: [*TINY_ABSTRACT, "--seed", "-3"], "seed"),
    (
        "NaN weights in --model",
        lambda t: ["abstract", "--data", "seed", "--model", str(nan_file(t))],
        "finite weights",
    ),
    ("--blocks not in the model", lambda t: [*TINY_ABSTRACT, "--blocks", "0:9"], "a module path"),
    ("train --seeds beyond the seed range", lambda t: ["train", "--seeds", str(2**40)], "--seeds"),
    (
        "abstract --repeat beyond the seed range",
        lambda t: [*TINY_ABSTRACT, "--repeat", str(2**40)],
        "--repeat",
    ),
    ("--test-size out of range", lambda t: [*TINY_ABSTRACT, "--test-size", "1.5"], "--test-size"),
]


def mlp_file(tmp: Path) -> Path:
    return save_model(backlens.build_mlp([3, 5, 1], "relu", seed=0), [3, 5, 1], "relu", tmp / "m.safetensors")


def nan_file(tmp: Path) -> Path:
    model = backlens.build_mlp([3, 5, 1], "relu", seed=0)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    return save_model(model, [3, 5, 1], "relu", tmp / "nan.safetensors")


@pytest.mark.parametrize(("name", "argv", "match"), CLI_REFUSALS, ids=[c[0] for c in CLI_REFUSALS])
def test_cli_refuses_before_work(tmp_path: Path, name: str, argv, match: str) -> None:
    args = argv(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert text.startswith("error:") and match in text, text
    assert "training" not in text and "wrote" not in text  # nothing was trained or written
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_trace_save_overwrites_only_when_asked(tmp_path: Path) -> None:
    path = a_file(tmp_path, "r.safetensors")
    result = runner.invoke(app, ["trace", "--save", str(path), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert len(backlens.load_record(path).names) > 0


@pytest.mark.slow  # two small abstract runs, ~10 s
def test_abstract_overwrite_replaces_the_whole_run(tmp_path: Path) -> None:
    run = earlier_run(tmp_path)
    result = runner.invoke(app, [*TINY_ABSTRACT, "--out", str(run), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (run / "maps" / "stale.safetensors").exists()
    assert json.loads((run / "results.json").read_text())["options"]["layers"] == "3,4,4,1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing partial beside it


def crafted_moments(tmp: Path, d: int) -> Path:
    """A 'Moments' file whose header claims d_in = d_out = d over tiny tensors."""
    meta = json.dumps({"d_in": d, "d_out": d, "yy": "diagonal"})
    tensors = {k: torch.zeros(1) for k in ("n", "mean_x", "mean_y", "cxx", "cxy", "cyy_diag")}
    save_file(
        tensors,
        str(tmp / "m.safetensors"),
        metadata={"format": "backlens.Moments", "version": "1", "meta": meta},
    )
    return tmp / "m.safetensors"


@pytest.mark.parametrize("d", [8192, 10**9])
def test_crafted_moments_file_is_refused_before_any_allocation(tmp_path: Path, monkeypatch, d: int) -> None:
    def no_allocation(*args, **kwargs):
        raise AssertionError("Moments allocated before the file was checked")

    monkeypatch.setattr("backlens.linear.moments.Sums", no_allocation)
    with pytest.raises(BacklensError, match="tensor .* of shape"):
        backlens.Moments.load(crafted_moments(tmp_path, d))


MODEL_FILES: list[tuple[str, Callable[[Path], Path], str]] = [
    (
        "tensors of another spec",
        lambda t: save_model(backlens.build_mlp([3, 4, 1]), [3, 5, 1], "relu", t / "m.safetensors"),
        "of shape",
    ),
    (
        "no widths",
        lambda t: save_tensors(
            t / "m.safetensors", {"x": torch.zeros(1)}, "backlens.MLP", {"activation": "relu"}
        ),
        "widths",
    ),
    (
        "widths not ints",
        lambda t: save_tensors(
            t / "m.safetensors", {}, "backlens.MLP", {"widths": ["a"], "activation": "relu"}
        ),
        "widths",
    ),
    ("NaN weights", nan_file, "finite weights"),
    ("a Moments file", lambda t: backlens.Moments(2, 2).save(t / "m.safetensors"), "backlens.MLP file"),
]


@pytest.mark.parametrize(("name", "make", "match"), MODEL_FILES, ids=[c[0] for c in MODEL_FILES])
def test_model_files_are_checked_on_load(tmp_path: Path, name: str, make, match: str) -> None:
    with pytest.raises(BacklensError, match=match) as caught:
        load_model(make(tmp_path))
    assert ".save" not in caught.value.fix  # no pointer to functions that do not exist


@pytest.mark.parametrize(
    "load", [backlens.load_record, backlens.Moments.load, backlens.LinearMap.load, load_model]
)
def test_every_format_is_named_and_versioned(tmp_path: Path, load) -> None:
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(1)}, str(path), metadata={"format": "something.else", "version": "1"})
    with pytest.raises(BacklensError, match="version 1") as caught:
        load(path)
    assert "backlens.MLP.save" not in str(caught.value) and "backlens.record.save" not in str(caught.value)


def _model_and_batch():
    return backlens.build_mlp([3, 4, 1], "tanh", seed=0).double(), torch.randn(4, 3).double(), torch.randn(4)


def _moments():
    x = torch.randn(30, 3, dtype=torch.float64)
    return backlens.Moments(3, 2).update(x, x[:, :2])


API_REFUSALS: list[tuple[str, Callable[[], object], str]] = [
    ("ridge grid of strings", lambda: backlens.ridge(_moments(), grid=["a", "b"]), "grid"),
    ("ridge grid a string", lambda: backlens.ridge(_moments(), grid="1e-3"), "grid"),
    ("string tolerance", lambda: backlens.check(*_model_and_batch(), rtol="1e-6"), "rtol"),
    ("negative tolerance", lambda: backlens.check(*_model_and_batch(), rtol=-1e-6), "rtol"),
    ("NaN tolerance", lambda: backlens.check(*_model_and_batch(), rtol=float("nan")), "rtol"),
    ("seed below range", lambda: backlens.build_mlp([3, 1], seed=-1), "seed"),
    ("seed above range", lambda: backlens.seed_regression(8, seed=2**70), "seed"),
    ("seed not an int", lambda: backlens.build_mlp([3, 1], seed=1.5), "seed"),
    ("split seed", lambda: backlens.workflows.train.split_dataset(_digits(), seed=-2), "seed"),
    ("test_size a string", lambda: backlens.workflows.train.split_dataset(_digits(), "0.3"), "test_size"),
    ("negative sample cap", lambda: _collect(max_inputs=-5), "max_inputs"),
    ("zero pair cap", lambda: _collect(max_pairs=0), "max_pairs"),
    ("layers 3,,1", lambda: backlens.workflows.mlp.parse_widths("3,,1"), "comma-separated"),
    (
        "target for bundled data",
        lambda: backlens.workflows.datasets.load_dataset("digits", target="y"),
        "target",
    ),
]


def _digits():
    return backlens.workflows.datasets.load_dataset("seed")


def _collect(**caps):
    model = backlens.build_mlp([3, 4, 4, 1], "relu", seed=0)
    x = torch.randn(8, 3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, :1]), batch_size=4)
    return backlens.collect(model, backlens.Block(model, "0", "2"), loader, show_progress=False, **caps)


@pytest.mark.parametrize(("name", "call", "match"), API_REFUSALS, ids=[c[0] for c in API_REFUSALS])
def test_api_refuses_bad_arguments(name: str, call, match: str) -> None:
    with pytest.raises(BacklensError, match=match):
        call()


def write_csv(tmp: Path, data: bytes) -> Path:
    (tmp / "t.csv").write_bytes(data)
    return tmp / "t.csv"


ROWS = "".join(f"{i % 5},{(3 * i) % 7},{i % 2}\n" for i in range(12))


def test_csv_byte_order_mark_is_not_part_of_the_first_name(tmp_path: Path) -> None:
    path = write_csv(tmp_path, b"\xef\xbb\xbfa,b,label\n" + ROWS.encode())
    data = load_csv(path, "label")
    plain = load_csv(write_csv(tmp_path, b"a,b,label\n" + ROWS.encode()), "label")
    assert torch.equal(data.x, plain.x) and torch.equal(data.y, plain.y)
    assert load_csv(write_csv(tmp_path, b"\xef\xbb\xbflabel,a,b\n" + ROWS.encode()), "label").n_classes == 5


CSV_REFUSALS = [
    ("Latin-1", "caf\xe9,b,label\n".encode("latin-1") + ROWS.encode(), "UTF-8"),
    ("bad cell", ("a,b,label\n" + ROWS + "1,x2,0\n").encode(), "'x2' in column 'b', row 14"),
    ("missing cell", ("a,b,label\n" + ROWS + "1,,0\n").encode(), "column 'b', row 14"),
    ("Inf cell", ("a,b,label\n" + "2,inf,1\n" + ROWS).encode(), "'inf' in column 'b', row 2"),
    ("duplicate column", ("a,a,label\n" + ROWS).encode(), "distinct column names"),
    ("short row", ("a,b,label\n" + ROWS + "1,2\n").encode(), "row 14"),
]


@pytest.mark.parametrize(("name", "data", "match"), CSV_REFUSALS, ids=[c[0] for c in CSV_REFUSALS])
def test_bad_csv_is_refused_naming_the_place(tmp_path: Path, name: str, data: bytes, match: str) -> None:
    with pytest.raises(BacklensError, match=match.replace("(", r"\(")):
        load_csv(write_csv(tmp_path, data), "label")


def test_error_boundary(capsys) -> None:
    def bug() -> None:
        raise np.linalg.LinAlgError("deep inside")

    def bad_input() -> None:
        raise fail("widths", "positive ints", "[0]", "fix them")

    with pytest.raises(typer.Exit) as caught:
        run_or_exit(bug)
    assert caught.value.exit_code == EXIT_BUG == 3
    captured = capsys.readouterr()
    assert "this is a bug in backlens" in captured.out and "LinAlgError: deep inside" in captured.out
    assert "Traceback" in captured.err
    with pytest.raises(typer.Exit) as caught:
        run_or_exit(bad_input)
    captured = capsys.readouterr()
    assert caught.value.exit_code == 2 and captured.err == ""
    assert captured.out.strip() == "error: --layers: expected positive ints, got [0]. Fix: fix them"
