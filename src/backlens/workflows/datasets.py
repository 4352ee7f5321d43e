"""Bundled datasets as tensors: the notebook's seed set, scikit-learn's digits and diabetes, CSV files."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import check_seed, fail
from .seed_data import seed_regression

__all__ = ["Dataset", "load_dataset", "load_csv", "DATASET_NAMES"]

DATASET_NAMES = ("seed", "digits", "diabetes")
# A CSV target with at most this many distinct integer values is treated as class labels.
MAX_CLASSES = 20


@dataclass(frozen=True)
class Dataset:
    """Features x (n, d), targets y ((n,) int64 labels or (n, k) floats) and what the task is."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    task: str  # "classification" or "regression"
    n_classes: int | None = None

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def n_outputs(self) -> int:
        return self.n_classes if self.n_classes is not None else int(self.y.shape[1])

    def fitted_widths(self, widths: Sequence[int]) -> list[int]:
        """`widths` with the first made the feature count and the last the output count."""
        return [self.n_features, *list(widths)[1:-1], self.n_outputs]

    def check_widths(self, widths: Sequence[int]) -> None:
        """Raise unless the first width is the feature count and the last the output count."""
        if widths[0] != self.n_features or widths[-1] != self.n_outputs:
            raise fail(
                "widths",
                f"first width {self.n_features} and last width {self.n_outputs} for "
                f"{self.name} ({self.task})",
                repr(list(widths)),
                f"pass widths {self.fitted_widths(widths)}",
            )


def _standardize(x: np.ndarray) -> np.ndarray:
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)


def load_dataset(
    name: str, dtype: torch.dtype = torch.float32, seed: int = 0, target: str | None = None
) -> Dataset:
    """'seed', 'digits' (1797 × 64, 10 classes), 'diabetes' (442 × 10, regression), or a CSV path.

    `seed` draws the 'seed' set (the others are fixed); `target` names a CSV file's label column
    and must be None for a bundled set.
    """
    check_seed("seed", seed)
    if not isinstance(name, str):
        raise fail("name", "a dataset name or the path of a .csv file", repr(name), "pass e.g. 'digits'")
    if name.endswith(".csv"):
        return _read_csv(Path(name), target, dtype, argument="name")
    if target is not None:
        raise fail(
            "target",
            f"None for the bundled dataset {name!r} (target names a column of a CSV file)",
            repr(target),
            "leave target out, or pass the path of a CSV file as name",
        )
    return _bundled(name, dtype, seed)


def _bundled(name: str, dtype: torch.dtype, seed: int) -> Dataset:
    """One of DATASET_NAMES as tensors; any other name raises listing them."""
    if name == "seed":
        x, y = seed_regression(128, seed=seed, dtype=dtype)
        return Dataset("seed", x, y.unsqueeze(1), "regression")
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.as_tensor(bunch.data / 16.0, dtype=dtype)  # pixel intensities 0..16 -> 0..1
        return Dataset("digits", x, torch.as_tensor(bunch.target, dtype=torch.int64), "classification", 10)
    if name == "diabetes":
        from sklearn.datasets import load_diabetes

        bunch = load_diabetes()
        target_std = _standardize(bunch.target.reshape(-1, 1))
        return Dataset(
            "diabetes",
            torch.as_tensor(_standardize(bunch.data), dtype=dtype),
            torch.as_tensor(target_std, dtype=dtype),
            "regression",
        )
    raise fail(
        "name",
        "one of " + ", ".join(DATASET_NAMES) + " or a path ending in .csv",
        repr(name),
        "pick a bundled dataset or give a CSV file",
    )


def load_csv(path: str | Path, target: str | None, dtype: torch.dtype = torch.float32) -> Dataset:
    """Numeric CSV with a header; `target` names the label column. Features are standardized.

    The task is classification when the target holds integers with at most MAX_CLASSES distinct
    values (relabelled 0..C-1), else regression (target standardized).
    """
    return _read_csv(Path(path), target, dtype, argument="path")


def _read_csv(path: Path, target: str | None, dtype: torch.dtype, argument: str) -> Dataset:
    """load_csv's work; `argument` is the caller's name for the path, for its errors."""
    header, body = _csv_rows(path, argument)
    column = _target_column(header, target, path)
    values = _csv_values(header, body, argument)
    return _csv_dataset(path.stem, np.delete(values, column, axis=1), values[:, column], dtype)


def _csv_rows(path: Path, argument: str) -> tuple[list[str], list[list[str]]]:
    """The header (names stripped) and the data rows of an existing CSV file with both."""
    if not path.is_file():
        raise fail(argument, "an existing CSV file", str(path), "check the path")
    try:  # utf-8-sig: a byte-order mark (as Excel writes) is not part of the first name
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError as error:
        raise fail(
            argument,
            "a UTF-8 CSV file",
            f"{path}: byte {error.object[error.start]:#04x} at offset {error.start} is not UTF-8",
            "re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 in.csv > out.csv)",
        ) from None
    except (csv.Error, OSError) as error:
        raise fail(argument, "a readable CSV file", f"{path}: {error}", "fix or re-export the file") from None
    if len(rows) < 2:
        raise fail(
            argument,
            "a CSV with a header row and at least one data row",
            f"{len(rows)} rows",
            "add data",
        )
    header = [h.strip() for h in rows[0]]
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise fail(
            argument,
            "distinct column names",
            f"{', '.join(map(repr, repeated))} more than once",
            "rename them",
        )
    return header, rows[1:]


def _target_column(header: list[str], target: str | None, path: Path) -> int:
    """The index of the `target` column, which the header must name."""
    if target is None or target not in header:
        raise fail(
            "target",
            "a column of " + str(path.name) + " (" + ", ".join(header) + ")",
            repr(target),
            "name the column holding the labels or values to predict",
        )
    return header.index(target)


def _csv_values(header: list[str], body: list[list[str]], argument: str) -> np.ndarray:
    """The data rows as floats (n, columns); a short row or a bad cell raises naming it."""
    values = np.empty((len(body), len(header)))
    for r, row in enumerate(body, start=2):  # row numbers as a spreadsheet shows them
        if len(row) != len(header):
            raise fail(
                argument,
                f"{len(header)} fields per row",
                f"{len(row)} fields in row {r}",
                "fix that row",
            )
        for c, cell in enumerate(row):
            values[r - 2, c] = _csv_number(cell, header[c], r, argument)
    return values


def _csv_number(cell: str, column: str, row: int, argument: str) -> float:
    """One cell as a float; missing or non-numeric cells raise naming their column and row."""
    text = cell.strip()
    if text == "" or text.lower() in ("na", "nan", "null"):
        raise fail(
            argument,
            "no missing values",
            f"missing value in column {column!r}, row {row}",
            "fill or drop that row",
        )
    try:
        value = float(text)
    except ValueError:
        raise fail(
            argument,
            "numeric columns",
            f"{text!r} in column {column!r}, row {row}",
            "encode it as a number or drop the column",
        ) from None
    if not np.isfinite(value):
        raise fail(
            argument, "finite values", f"{text!r} in column {column!r}, row {row}", "fix or drop that row"
        )
    return value


def _csv_dataset(name: str, x: np.ndarray, y: np.ndarray, dtype: torch.dtype) -> Dataset:
    """Classification when y holds at most MAX_CLASSES distinct integers, else regression."""
    features = torch.as_tensor(_standardize(x), dtype=dtype)
    labels = np.unique(y)
    if np.all(y == np.round(y)) and len(labels) <= MAX_CLASSES:
        classes = np.searchsorted(labels, y)
        return Dataset(
            name, features, torch.as_tensor(classes, dtype=torch.int64), "classification", len(labels)
        )
    return Dataset(name, features, torch.as_tensor(_standardize(y.reshape(-1, 1)), dtype=dtype), "regression")
