"""Training data: loading a source, its fingerprint, the train/test split and preprocessing.

A source is one of `csv:PATH` (a header row; one column holds the label), `npz:PATH` (arrays
`x` and `y`, read without pickle) or a dataset bundled with scikit-learn (`sklearn:digits`,
`sklearn:breast_cancer`, `sklearn:wine`; nothing is downloaded). Every loader returns the same
`Dataset`: raw feature values as float32, labels as integers 0..k-1 and the class names.

The fingerprint identifies the data, not the file: it is the SHA-256 of a canonical encoding
(see `fingerprint`), so re-quoting a CSV, adding spaces or storing an NPZ with another numeric
dtype changes nothing, while any changed value, label or row order does.

Preprocessing is part of the privacy story, so it says whether the DP guarantee covers it:
scaling by a public value range (digits are 0..16 by construction) depends on no example and
is covered; standardising with the training split's mean and standard deviation is not (those
statistics are computed without noise and stored in the model).

No TensorFlow here: the views (`image_shape`, `sequence_shape`) are shapes that the model
applies with a `Reshape` layer, so a served model takes the raw features.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secure_maas.errors import SecureMaasError

FINGERPRINT_FORMAT = "secure-maas/dataset-fingerprint/v1"
BUNDLED = ("digits", "breast_cancer", "wine")


class DatasetError(SecureMaasError):
    """A data source cannot be used: malformed, empty, non-numeric, NaN, wrong keys."""


class DatasetNotFound(DatasetError):
    """The file a source names does not exist or cannot be read."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Examples in memory: `x[i]` has label `y[i]`, the index of its class in `classes`."""

    source: str
    x: NDArray[np.float32]
    y: NDArray[np.int64]
    classes: tuple[str, ...]
    fingerprint: str
    feature_names: tuple[str, ...] | None = None
    # Public bounds of every feature value, known without looking at the data (digits: 0..16).
    value_range: tuple[float, float] | None = None

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def summary(self) -> dict[str, Any]:
        """What a registry row records about the data (never the data itself)."""
        return {
            "source": self.source,
            "fingerprint": self.fingerprint,
            "n": self.n,
            "feature_shape": list(self.feature_shape),
            "classes": list(self.classes),
        }


def load_dataset(source: str, *, label_column: str | None = None) -> Dataset:
    """Load `csv:PATH`, `npz:PATH` or `sklearn:NAME`; `label_column` is for CSV only."""
    kind, sep, rest = source.partition(":")
    if not sep or not rest:
        raise DatasetError(
            f"dataset source {source!r} must look like csv:PATH, npz:PATH or sklearn:NAME"
        )
    if kind != "csv" and label_column is not None:
        raise DatasetError("--label-column applies to csv: sources only")
    if kind == "csv":
        if not label_column:
            raise DatasetError("a csv: source needs the name of its label column")
        return load_csv(Path(rest), label_column, source=source)
    if kind == "npz":
        return load_npz(Path(rest), source=source)
    if kind == "sklearn":
        return load_bundled(rest)
    raise DatasetError(f"unknown dataset source kind {kind!r}: use csv:, npz: or sklearn:")


def load_csv(path: Path, label_column: str, *, source: str | None = None) -> Dataset:
    """Read a CSV with a header row; every column but `label_column` must be numeric."""
    text = _read_text(path)
    rows = [row for row in csv.reader(text.splitlines(), skipinitialspace=True) if row]
    if not rows:
        raise DatasetError(f"{path}: the file is empty (a header row is required)")
    header = [cell.strip() for cell in rows[0]]
    if label_column not in header:
        raise DatasetError(f"{path}: no column {label_column!r}; columns are {header}")
    if header.count(label_column) > 1:
        raise DatasetError(f"{path}: column {label_column!r} appears more than once")
    if len(header) < 2:
        raise DatasetError(f"{path}: there must be at least one feature column besides the label")
    label_at = header.index(label_column)
    names = tuple(name for i, name in enumerate(header) if i != label_at)
    body = rows[1:]
    if not body:
        raise DatasetError(f"{path}: no data rows after the header")
    features = np.empty((len(body), len(names)), dtype=np.float64)
    labels: list[str] = []
    for row_number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DatasetError(
                f"{path}: row {row_number} has {len(row)} cells, the header has {len(header)}"
            )
        values = [cell.strip() for cell in row]
        labels.append(_label_cell(values[label_at], path, row_number))
        cells = values[:label_at] + values[label_at + 1 :]
        for col, (name, cell) in enumerate(zip(names, cells, strict=True)):
            features[row_number - 2, col] = _number_cell(cell, name, path, row_number)
    y, classes = _encode_labels(np.asarray(labels))
    return _make(source or f"csv:{path}", features, y, classes, feature_names=names)


def load_npz(path: Path, *, source: str | None = None) -> Dataset:
    """Read arrays `x` (n, ...) and `y` (n,) from an NPZ file; pickled objects are refused."""
    if not path.is_file():
        raise DatasetNotFound(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if not {"x", "y"} <= keys:
                raise DatasetError(
                    f"{path}: an npz dataset needs arrays named 'x' and 'y'; found {sorted(keys)}"
                )
            x, y = archive["x"], archive["y"]
    except DatasetError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(
            f"{path}: not a readable npz file without pickled objects: {exc}"
        ) from exc
    if x.dtype.kind not in "biuf":
        raise DatasetError(f"{path}: x must hold numbers, not {x.dtype}")
    if x.ndim < 2:
        raise DatasetError(f"{path}: x must have shape (examples, features...), got {x.shape}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DatasetError(
            f"{path}: y must be one label per example, shape ({x.shape[0]},); got {y.shape}"
        )
    if y.dtype.kind not in "biufUS":
        raise DatasetError(f"{path}: y must hold numbers or strings, not {y.dtype}")
    features = x.astype(np.float64)
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise DatasetError(f"{path}: y contains NaN or infinite labels")
    labels = y.astype(str) if y.dtype.kind in "US" else y
    y_idx, classes = _encode_labels(labels)
    return _make(source or f"npz:{path}", features, y_idx, classes)


def load_bundled(name: str) -> Dataset:
    """One of the real datasets that ship inside scikit-learn (no network access)."""
    from sklearn import datasets as sk

    if name == "digits":
        bunch = sk.load_digits()
        # 8x8 images of 4x4-block counts: every pixel is 0..16 by construction, a public range.
        return _make(
            "sklearn:digits",
            np.asarray(bunch.images, dtype=np.float64),
            np.asarray(bunch.target, dtype=np.int64),
            tuple(str(t) for t in bunch.target_names),
            value_range=(0.0, 16.0),
        )
    if name in ("breast_cancer", "wine"):
        bunch = sk.load_breast_cancer() if name == "breast_cancer" else sk.load_wine()
        return _make(
            f"sklearn:{name}",
            np.asarray(bunch.data, dtype=np.float64),
            np.asarray(bunch.target, dtype=np.int64),
            tuple(str(t) for t in bunch.target_names),
            feature_names=tuple(str(f) for f in bunch.feature_names),
        )
    raise DatasetError(f"unknown bundled dataset {name!r}; choose one of {', '.join(BUNDLED)}")


def fingerprint(x: NDArray[Any], y: NDArray[Any], classes: Sequence[str]) -> str:
    """SHA-256 hex of the canonical encoding of a dataset.

    The encoding is one line of JSON (sorted keys, no spaces) naming the format, the classes in
    label order and the shape and dtype of both arrays, then a newline, then the features as
    little-endian float64 in C order, then the labels (class indices) as little-endian int64.
    Values are what was parsed, so file formatting and the NPZ's numeric dtype do not matter.
    """
    x64 = np.ascontiguousarray(x, dtype="<f8")
    y64 = np.ascontiguousarray(y, dtype="<i8")
    header = {
        "classes": list(classes),
        "format": FINGERPRINT_FORMAT,
        "x": {"dtype": "<f8", "shape": list(x64.shape)},
        "y": {"dtype": "<i8", "shape": list(y64.shape)},
    }
    digest = hashlib.sha256()
    digest.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    digest.update(x64.tobytes(order="C"))
    digest.update(y64.tobytes(order="C"))
    return digest.hexdigest()


# --------------------------------------------------------------------------- split and views


def split(
    dataset: Dataset, *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Deterministic train/test indices for `seed`, stratified by class where possible."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test fraction must be between 0 and 1, got {test_fraction}")
    n_test = math.ceil(dataset.n * test_fraction)
    if n_test < 1 or dataset.n - n_test < 1:
        raise DatasetError(f"{dataset.n} examples are too few to hold out a test split")
    counts = np.bincount(dataset.y, minlength=dataset.num_classes)
    stratify = dataset.y if counts.min() >= 2 and n_test >= dataset.num_classes else None
    train_idx, test_idx = train_test_split(
        np.arange(dataset.n), test_size=n_test, random_state=seed, stratify=stratify
    )
    return np.sort(train_idx).astype(np.int64), np.sort(test_idx).astype(np.int64)


def image_shape(feature_shape: Sequence[int]) -> tuple[int, int, int] | None:
    """The (height, width, channels) view of a feature shape, or None for flat features."""
    if len(feature_shape) == 2:
        return (int(feature_shape[0]), int(feature_shape[1]), 1)
    if len(feature_shape) == 3:
        return (int(feature_shape[0]), int(feature_shape[1]), int(feature_shape[2]))
    return None


def sequence_shape(feature_shape: Sequence[int]) -> tuple[int, int]:
    """The (timesteps, features) view: image rows as steps; flat features as steps of one."""
    if len(feature_shape) == 1:
        return (int(feature_shape[0]), 1)
    steps = int(feature_shape[0])
    return (steps, int(np.prod(feature_shape[1:])))


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True, eq=False)
class Preprocessing:
    """`(x - mean) / sqrt(variance)`, element-wise over the feature shape, inside the model."""

    mean: NDArray[np.float32]
    variance: NDArray[np.float32]
    kind: str  # "public-range" | "standardize" | "none"
    covered_by_dp: bool
    description: str


def preprocessing_for(
    dataset: Dataset, train_idx: NDArray[np.int64], *, kind: str = "auto"
) -> Preprocessing:
    """Choose how inputs are scaled; `auto` is the public range when known, else standardise.

    `public-range` maps the known value range to [0, 1]; it uses no example, so the DP
    guarantee covers it. `standardize` uses the per-feature mean and standard deviation of the
    training split: they are computed without noise, are not covered by the DP guarantee and
    are stored in the model (the usual, documented compromise for tabular data without public
    bounds). `none` feeds raw values.
    """
    shape = dataset.feature_shape
    if kind == "auto":
        kind = "public-range" if dataset.value_range is not None else "standardize"
    if kind == "public-range":
        if dataset.value_range is None:
            raise DatasetError(f"{dataset.source} has no public value range to scale by")
        low, high = dataset.value_range
        return Preprocessing(
            mean=np.full(shape, low, dtype=np.float32),
            variance=np.full(shape, (high - low) ** 2, dtype=np.float32),
            kind=kind,
            covered_by_dp=True,
            description=(
                f"inputs scaled from their public range {low:g}..{high:g} to 0..1; the range "
                "is a property of the data format, so the DP guarantee covers this step"
            ),
        )
    if kind == "standardize":
        train = dataset.x[train_idx].astype(np.float64)
        std = train.std(axis=0)
        std[std < 1e-12] = 1.0
        return Preprocessing(
            mean=train.mean(axis=0).astype(np.float32),
            variance=(std**2).astype(np.float32),
            kind=kind,
            covered_by_dp=False,
            description=(
                "inputs standardised with the per-feature mean and standard deviation of the "
                "training split, computed without noise; these statistics are stored in the "
                "model and are NOT covered by the DP guarantee"
            ),
        )
    if kind == "none":
        return Preprocessing(
            mean=np.zeros(shape, dtype=np.float32),
            variance=np.ones(shape, dtype=np.float32),
            kind=kind,
            covered_by_dp=True,
            description="raw inputs, no preprocessing",
        )
    raise DatasetError(f"unknown preprocessing {kind!r}: use auto, public-range, standardize, none")


# --------------------------------------------------------------------------- helpers


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise DatasetNotFound(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise DatasetNotFound(f"{path}: is a directory, not a file") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise DatasetNotFound(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _number_cell(cell: str, column: str, path: Path, row: int) -> float:
    if cell == "":
        raise DatasetError(f"{path}: row {row}, column {column!r}: missing value")
    try:
        value = float(cell)
    except ValueError:
        raise DatasetError(
            f"{path}: row {row}, column {column!r}: {cell!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise DatasetError(f"{path}: row {row}, column {column!r}: {cell!r} is NaN or infinite")
    return value


def _label_cell(cell: str, path: Path, row: int) -> str:
    if cell == "":
        raise DatasetError(f"{path}: row {row}: missing label")
    if cell.lower() in ("nan", "+nan", "-nan"):
        raise DatasetError(f"{path}: row {row}: the label is NaN")
    return cell


def _encode_labels(labels: NDArray[Any]) -> tuple[NDArray[np.int64], tuple[str, ...]]:
    """Map labels to 0..k-1; numeric labels sort numerically and print canonically (1.0 -> 1)."""
    numeric = _as_numbers(labels)
    if numeric is not None:
        values = np.unique(numeric)
        y = np.searchsorted(values, numeric).astype(np.int64)
        return y, tuple(_canonical_number(v) for v in values)
    text = np.asarray([str(v) for v in labels])
    values_text = np.unique(text)
    return np.searchsorted(values_text, text).astype(np.int64), tuple(str(v) for v in values_text)


def _as_numbers(labels: NDArray[Any]) -> NDArray[np.float64] | None:
    if labels.dtype.kind in "biuf":
        return labels.astype(np.float64)
    try:
        numbers = np.asarray([float(v) for v in labels], dtype=np.float64)
    except ValueError:
        return None
    return numbers if np.all(np.isfinite(numbers)) else None


def _canonical_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _make(
    source: str,
    x: NDArray[np.float64],
    y: NDArray[np.int64],
    classes: tuple[str, ...],
    *,
    feature_names: tuple[str, ...] | None = None,
    value_range: tuple[float, float] | None = None,
) -> Dataset:
    if x.shape[0] == 0:
        raise DatasetError(f"{source}: the dataset has no examples")
    if x.size == 0:
        raise DatasetError(f"{source}: the examples have no features")
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[0]
        raise DatasetError(
            f"{source}: feature value at index {tuple(bad.tolist())} is NaN or infinite"
        )
    if len(classes) < 2:
        raise DatasetError(f"{source}: a classification dataset needs at least two classes")
    x32 = x.astype(np.float32)
    if not np.all(np.isfinite(x32)):
        raise DatasetError(f"{source}: feature values beyond the float32 range (about 3.4e38)")
    return Dataset(
        source=source,
        x=x32,
        y=y,
        classes=classes,
        fingerprint=fingerprint(x, y, classes),
        feature_names=feature_names,
        value_range=value_range,
    )
