"""Training data: loading a source, its fingerprint, the train/test split and preprocessing.

A source is one of `csv:PATH` (a header row; one column holds the label), `npz:PATH` (arrays
`x` and `y`, read without pickle) or a dataset bundled with scikit-learn (`sklearn:digits`,
`sklearn:breast_cancer`, `sklearn:wine`; nothing is downloaded). Every loader returns the same
`Dataset`: raw feature values as float32, labels as integers 0..k-1 and the class names.

Records, not files. Each record (its features and its label's name) has a digest; the
dataset's fingerprint hashes the SORTED digests, so it identifies the multiset of records:
re-quoting a CSV, adding spaces, another NPZ dtype or another row order change nothing, while
any changed value or label does. The identity hashes the sorted digests of the feature vectors
alone: the same people under other label names or another label column are still the same
people, and a privacy budget belongs to them (`catalog`).

The train/test split is record-local: a record is held out when a keyed hash of its digest
falls below the test fraction, so adding or removing one record changes no other record's side
and the per-example guarantee of training carries over to the registered data. The key is
per dataset (random, kept in its registry row); without one (library use) a public key is used.

Preprocessing is part of the privacy story, so it says whether the DP guarantee covers it:
scaling by a public value range (digits are 0..16 by construction, or ranges an operator
declares at registration) depends on no example and is covered; `dp-standardize` releases the
statistics with the Gaussian mechanism (`dpstats`), accounted in the run's ε, and is covered;
exact standardisation (`standardize`) stores exact statistics of the training split and is not,
so only a run without DP may use it.

No TensorFlow here: the views (`image_shape`, `sequence_shape`) are shapes that the model
applies with a `Reshape` layer, so a served model takes the raw features.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import math
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secure_maas.errors import SecureMaasError
from secure_maas.training import dpstats
from secure_maas.training.options import PREPROCESSING

FINGERPRINT_FORMAT = "secure-maas/dataset-fingerprint/v2"
FINGERPRINT_FORMAT_V1 = "secure-maas/dataset-fingerprint/v1"
IDENTITY_FORMAT = "secure-maas/dataset-identity/v1"
SPLIT_CONTEXT = b"secure-maas/split/v1"
#: How a run's split was drawn, recorded with the run so a later check can redraw it.
SPLIT_METHOD = SPLIT_CONTEXT.decode()
#: The split key of data that has none of its own (library use, not a registered dataset).
PUBLIC_SPLIT_KEY = b"secure-maas/public-split-key"
BUNDLED = ("digits", "breast_cancer", "wine")

ValueRange = tuple["NDArray[np.float64]", "NDArray[np.float64]"]


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
    # Public bounds of every feature value (low, high; each of the feature shape), known without
    # looking at the data: by the format (digits: 0..16) or declared at registration.
    value_range: ValueRange | None = None
    value_range_declared: bool = False
    identity: str = ""
    # The order-dependent v1 fingerprint, to check datasets registered before v2.
    fingerprint_v1: str = ""
    # Key of the record-local split (a registered dataset's own); None: PUBLIC_SPLIT_KEY.
    split_key: bytes | None = None

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_features(self) -> int:
        return int(np.prod(self.feature_shape))

    def summary(self) -> dict[str, Any]:
        """What a registry row records about the data (never the data itself)."""
        return {
            "source": self.source,
            "fingerprint": self.fingerprint,
            "identity": self.identity,
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


def _canonical_features(x: NDArray[Any]) -> NDArray[np.float64]:
    """Little-endian float64 rows in C order, with -0.0 read as 0.0 (a CSV's "-0" is zero)."""
    return np.ascontiguousarray(np.asarray(x, dtype="<f8") + 0.0, dtype="<f8")


def _header(fmt: str, feature_shape: Sequence[int]) -> bytes:
    header = {"feature_shape": [int(d) for d in feature_shape], "format": fmt}
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def feature_digests(x: NDArray[Any]) -> list[bytes]:
    """SHA-256 of every example's features (canonical float64 bytes), in row order."""
    rows = _canonical_features(x).reshape(len(x), -1)
    return [hashlib.sha256(row.tobytes()).digest() for row in rows]


def record_digests(x: NDArray[Any], y: NDArray[Any], classes: Sequence[str]) -> list[bytes]:
    """SHA-256 of every record, in row order: its label's NAME (UTF-8, length-prefixed), then
    its features as canonical float64 bytes. Names, not indices: an index depends on which
    other classes the file holds."""
    names = [name.encode() for name in classes]
    rows = _canonical_features(x).reshape(len(x), -1)
    digests = []
    for row, label in zip(rows, np.asarray(y, dtype=np.int64), strict=True):
        name = names[int(label)]
        digests.append(hashlib.sha256(len(name).to_bytes(4, "big") + name + row.tobytes()).digest())
    return digests


def fingerprint(x: NDArray[Any], y: NDArray[Any], classes: Sequence[str]) -> str:
    """SHA-256 hex of the dataset as a multiset of records (order-independent).

    The encoding is one line of JSON (sorted keys, no spaces) naming the format and the feature
    shape, a newline, then the records' digests (`record_digests`) in sorted order. Values are
    what was parsed, so file formatting, the NPZ's numeric dtype and the row order do not
    matter; any changed value or label does.
    """
    digest = hashlib.sha256(_header(FINGERPRINT_FORMAT, np.shape(x)[1:]))
    for item in sorted(record_digests(x, y, classes)):
        digest.update(item)
    return digest.hexdigest()


def identity(x: NDArray[Any]) -> str:
    """SHA-256 hex of the multiset of feature vectors: the data's identity for budgets.

    Labels are left out on purpose: the same examples relabelled (another label column, other
    class names) describe the same people, whose privacy one budget protects.
    """
    digest = hashlib.sha256(_header(IDENTITY_FORMAT, np.shape(x)[1:]))
    for item in sorted(feature_digests(x)):
        digest.update(item)
    return digest.hexdigest()


def fingerprint_v1(x: NDArray[Any], y: NDArray[Any], classes: Sequence[str]) -> str:
    """The order-dependent fingerprint of datasets registered before v2 (kept to check them).

    One line of JSON (sorted keys, no spaces) naming the format, the classes in label order and
    the shape and dtype of both arrays, then a newline, then the features as little-endian
    float64 in C order, then the labels (class indices) as little-endian int64.
    """
    x64 = np.ascontiguousarray(x, dtype="<f8")
    y64 = np.ascontiguousarray(y, dtype="<i8")
    header = {
        "classes": list(classes),
        "format": FINGERPRINT_FORMAT_V1,
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
    """Train/test indices, record by record: a record is held out when HMAC-SHA256(split key,
    context ‖ seed ‖ its digest), read as a fraction of 2^64, is below `test_fraction`.

    Adding or removing a record changes only that record's side (no stratification, no global
    shuffle), so neighbouring registered datasets give neighbouring training splits. Identical
    records fall on the same side.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test fraction must be between 0 and 1, got {test_fraction}")
    key = dataset.split_key if dataset.split_key is not None else PUBLIC_SPLIT_KEY
    prefix = SPLIT_CONTEXT + int(seed).to_bytes(8, "big", signed=True)
    draws = np.fromiter(
        (
            int.from_bytes(hmac.new(key, prefix + item, hashlib.sha256).digest()[:8], "big")
            for item in record_digests(dataset.x, dataset.y, dataset.classes)
        ),
        dtype=np.float64,
        count=dataset.n,
    )
    held_out = draws / 2.0**64 < test_fraction
    train_idx, test_idx = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise DatasetError(
            f"{dataset.n} examples are too few to hold out a test split of {test_fraction:g} "
            f"(this seed put {len(test_idx)} in it)"
        )
    return train_idx.astype(np.int64), test_idx.astype(np.int64)


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
    kind: str  # one of PREPROCESSING but "auto"
    covered_by_dp: bool
    description: str
    # The statistics' Gaussian release (dp-standardize only): composed into the run's ε.
    stats_noise_multiplier: float | None = None


def resolve_preprocessing(dataset: Dataset, kind: str) -> str:
    """The preprocessing `kind` means for `dataset`: `auto` is the public range when one is
    known (by format or declared), else `dp-standardize`."""
    if kind not in PREPROCESSING:
        raise DatasetError(f"unknown preprocessing {kind!r}: use {', '.join(PREPROCESSING)}")
    if kind == "auto":
        return "public-range" if dataset.value_range is not None else "dp-standardize"
    if kind == "public-range" and dataset.value_range is None:
        raise DatasetError(
            f"{dataset.source} has no public value range to scale by: declare one at "
            "registration (--feature-range) or use dp-standardize"
        )
    return kind


def preprocessing_for(
    dataset: Dataset,
    train_idx: NDArray[np.int64],
    *,
    kind: str = "auto",
    rng: np.random.Generator | None = None,
    stats_noise_multiplier: float | None = None,
) -> Preprocessing:
    """How inputs are scaled (see `resolve_preprocessing` and the module docstring).

    `public-range` maps each feature's public range to [0, 1]. `dp-standardize` releases the
    training split's statistics with the Gaussian mechanism (`dpstats.release`, noise multiplier
    `stats_noise_multiplier`, default `dpstats.DEFAULT_NOISE_MULTIPLIER`; `rng` draws the
    noise and is required). `standardize` uses the exact mean and standard deviation of the
    training split: NOT covered by DP. `none` feeds raw values.
    """
    shape = dataset.feature_shape
    kind = resolve_preprocessing(dataset, kind)
    if kind == "public-range":
        if dataset.value_range is None:  # resolve_preprocessing refused it; keeps mypy honest
            raise DatasetError(f"{dataset.source} has no public value range")
        low, high = dataset.value_range
        origin = (
            "declared public at registration"
            if dataset.value_range_declared
            else "a property of the data format"
        )
        return Preprocessing(
            mean=low.astype(np.float32),
            variance=((high - low) ** 2).astype(np.float32),
            kind=kind,
            covered_by_dp=True,
            description=(
                f"inputs scaled from their public value range ({_range_text(low, high)}) to "
                f"0..1; the range is {origin}, uses no example, and the DP guarantee covers it"
            ),
        )
    if kind == "dp-standardize":
        if rng is None:
            raise DatasetError("dp-standardize needs a random generator for its noise")
        z = (
            dpstats.DEFAULT_NOISE_MULTIPLIER
            if stats_noise_multiplier is None
            else float(stats_noise_multiplier)
        )
        released = dpstats.release(dataset.x[train_idx], z, rng)
        return Preprocessing(
            mean=released.mean.reshape(shape).astype(np.float32),
            variance=released.variance.reshape(shape).astype(np.float32),
            kind=kind,
            covered_by_dp=True,
            description=(
                "inputs standardised with per-feature statistics released by the Gaussian "
                f"mechanism (octave histograms of the training split, noise multiplier {z:g}); "
                "the release is composed into the model's ε, so the DP guarantee covers it"
            ),
            stats_noise_multiplier=z,
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
                "inputs standardised with the exact per-feature mean and standard deviation of "
                "the training split; these statistics are stored in the model and are NOT "
                "private, so such a model never carries a DP guarantee"
            ),
        )
    return Preprocessing(
        mean=np.zeros(shape, dtype=np.float32),
        variance=np.ones(shape, dtype=np.float32),
        kind=kind,
        covered_by_dp=True,
        description="raw inputs, no preprocessing",
    )


# --------------------------------------------------------------------------- declared ranges


def parse_feature_ranges(specs: Sequence[str]) -> dict[str, Any]:
    """`--feature-range` values as the JSON a registry row keeps.

    `LO:HI` is the range of every feature; `NAME=LO:HI` of one feature (its column name, or its
    flat index for data without names) and wins over the default. LO < HI, both finite.
    """
    default: list[float] | None = None
    features: dict[str, list[float]] = {}
    for spec in specs:
        name, sep, bounds = spec.rpartition("=")
        if sep and not name.strip():
            raise DatasetError(f"--feature-range {spec!r}: the feature name is empty")
        low, colon, high = bounds.partition(":")
        try:
            pair = [float(low), float(high)] if colon else None
        except ValueError:
            pair = None
        if pair is None or not all(math.isfinite(v) for v in pair) or not pair[0] < pair[1]:
            raise DatasetError(
                f"--feature-range {spec!r}: expected LO:HI or NAME=LO:HI with finite LO < HI"
            )
        if not sep:
            if default is not None:
                raise DatasetError("--feature-range LO:HI (every feature) is given twice")
            default = pair
        else:
            if name.strip() in features:
                raise DatasetError(f"--feature-range: feature {name.strip()!r} is given twice")
            features[name.strip()] = pair
    if default is None and not features:
        raise DatasetError("no --feature-range given")
    return {"default": default, "features": features}


def with_declared_ranges(dataset: Dataset, declared: Mapping[str, Any]) -> Dataset:
    """`dataset` with the public ranges an operator declared; every feature needs one, and every
    value must lie inside its feature's range (a range the data breaks is not a bound)."""
    flat = dataset.num_features
    names = list(dataset.feature_names) if dataset.feature_names is not None else None
    keys = names if names is not None else [str(i) for i in range(flat)]
    if len(keys) != flat:
        raise DatasetError(f"{dataset.source}: {len(keys)} feature names for {flat} features")
    default = declared.get("default")
    given = dict(declared.get("features") or {})
    unknown = sorted(set(given) - set(keys))
    if unknown:
        what = "feature names" if names is not None else "flat feature indices"
        raise DatasetError(
            f"--feature-range names unknown features {unknown}; use the {what} of {dataset.source}"
        )
    low = np.empty(flat, dtype=np.float64)
    high = np.empty(flat, dtype=np.float64)
    for i, key in enumerate(keys):
        pair = given.get(key, default)
        if pair is None:
            raise DatasetError(
                f"feature {key!r} has no declared range: give --feature-range {key}=LO:HI "
                "or a range for every feature (LO:HI)"
            )
        low[i], high[i] = float(pair[0]), float(pair[1])
    values = dataset.x.reshape(dataset.n, flat).astype(np.float64)
    outside = np.flatnonzero(((values < low) | (values > high)).any(axis=0))
    if len(outside):
        named = [keys[i] for i in outside[:5]]
        raise DatasetError(
            f"{dataset.source}: values of {len(outside)} feature(s) lie outside their declared "
            f"range ({', '.join(map(repr, named))}{', …' if len(outside) > 5 else ''}); a "
            "public range must hold every value"
        )
    shape = dataset.feature_shape
    return replace(
        dataset,
        value_range=(low.reshape(shape), high.reshape(shape)),
        value_range_declared=True,
    )


def _range_text(low: NDArray[np.float64], high: NDArray[np.float64]) -> str:
    if np.all(low == low.flat[0]) and np.all(high == high.flat[0]):
        return f"{low.flat[0]:g}..{high.flat[0]:g}"
    return "declared per feature"


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
    """Check parsed values and build the `Dataset` with its fingerprint and identity."""
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
    ranges = None
    if value_range is not None:
        shape = x.shape[1:]
        ranges = (np.full(shape, value_range[0]), np.full(shape, value_range[1]))
    return Dataset(
        source=source,
        x=x32,
        y=y,
        classes=classes,
        fingerprint=fingerprint(x, y, classes),
        feature_names=feature_names,
        value_range=ranges,
        identity=identity(x),
        fingerprint_v1=fingerprint_v1(x, y, classes),
    )
