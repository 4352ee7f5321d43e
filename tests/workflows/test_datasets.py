"""Bundled datasets and CSV loading, with their errors."""

from pathlib import Path

import pytest
import torch

from backlens import BacklensError
from backlens.workflows.datasets import load_csv, load_dataset


@pytest.mark.parametrize(
    ("name", "shape", "task", "outputs"),
    [
        ("seed", (128, 3), "regression", 1),
        ("digits", (1797, 64), "classification", 10),
        ("diabetes", (442, 10), "regression", 1),
    ],
)
def test_bundled(name: str, shape: tuple[int, int], task: str, outputs: int) -> None:
    ds = load_dataset(name)
    assert tuple(ds.x.shape) == shape and ds.task == task and ds.n_outputs == outputs
    assert len(ds.y) == shape[0] and torch.isfinite(ds.x).all()


def test_widths_must_fit_data() -> None:
    ds = load_dataset("digits")
    ds.check_widths([64, 32, 10])
    with pytest.raises(BacklensError, match=r"pass widths \[64, 32, 10\]") as caught:
        ds.check_widths([63, 32, 10])
    assert caught.value.argument == "widths" and caught.value.got == "[63, 32, 10]"
    assert "--" not in str(caught.value)
    assert ds.fitted_widths([63, 8, 8, 2]) == [64, 8, 8, 10]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


def test_csv_classification_and_regression(tmp_path: Path) -> None:
    ds = load_csv(write(tmp_path, "a,b,label\n1,2,3\n2,3,5\n4,1,3\n0,0,5\n"), target="label")
    assert ds.task == "classification" and ds.n_classes == 2 and ds.y.tolist() == [0, 1, 0, 1]
    torch.testing.assert_close(ds.x.mean(0), torch.zeros(2), atol=1e-6, rtol=0)
    ds = load_csv(write(tmp_path, "a,b,value\n1,2,0.5\n2,3,1.5\n4,1,2.25\n"), target="value")
    assert ds.task == "regression" and ds.y.shape == (3, 1)


@pytest.mark.parametrize(
    ("text", "target", "match"),
    [
        ("a,b\n1,\n", "b", "missing value in column 'b', row 2"),
        ("a,b\n1,2\nx,3\n", "b", "'x' in column 'a', row 3"),
        ("a,b\n1,2\n", "c", r"^target: expected a column of data.csv \(a, b\), got 'c'"),
        ("a,b\n", "b", "^path: expected a CSV with a header row and at least one data row"),
        ("a,b\n1,2,3\n", "b", "fields in row 2"),
    ],
)
def test_csv_errors_name_column_and_row(tmp_path: Path, text: str, target: str, match: str) -> None:
    with pytest.raises(BacklensError, match=match):
        load_csv(write(tmp_path, text), target=target)


def test_csv_errors_name_the_callers_argument(tmp_path: Path) -> None:
    with pytest.raises(BacklensError, match="^path: expected an existing CSV file"):
        load_csv(tmp_path / "absent.csv", target="y")
    with pytest.raises(BacklensError, match="^name: expected an existing CSV file"):
        load_dataset(str(tmp_path / "absent.csv"), target="y")
    with pytest.raises(BacklensError, match="^name: expected 3 fields per row"):
        load_dataset(str(write(tmp_path, "a,b,c\n1,2\n")), target="c")
    with pytest.raises(BacklensError, match="^target: expected a column") as caught:
        load_dataset(str(write(tmp_path, "a,b\n1,2\n")))
    assert caught.value.argument == "target" and caught.value.got == "None"


def test_unknown_dataset() -> None:
    with pytest.raises(BacklensError, match="^name: expected one of seed, digits, diabetes"):
        load_dataset("mnist")


def test_target_for_a_bundled_dataset_is_refused() -> None:
    with pytest.raises(BacklensError, match="^target: expected None for the bundled dataset 'digits'"):
        load_dataset("digits", target="label")
