"""Data declared public, for transformations that must not read private data (int8 calibration).

Quantizing a DP model is post-processing only if the data it calibrates on is not private: one
of the training examples read again would be a use the guarantee does not cover. So only a file
the operator names and declares public is accepted (`npz:PATH`), and it is refused when it is
recognisably a registered (private) dataset: the same source, or the same records (the dataset
fingerprint of its `x` and `y`, when it has both). A private file copied with its records
changed cannot be recognised; the declaration is the operator's, and what was used is recorded
(source, SHA-256 of the file, rows) in the derived version and its audit event.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from secure_maas.db.session import session_factory, session_scope
from secure_maas.errors import SecureMaasError
from secure_maas.registry.derive import PublicData
from secure_maas.training.dataset_catalog import canonical_source
from secure_maas.training.datasets import DatasetError, load_npz
from secure_maas.training.models import RegisteredDataset

#: The biggest calibration file read into memory.
MAX_BYTES = 1 << 30


class NotPublic(SecureMaasError):
    """The data named is not data declared public, or is a registered dataset."""


def load_public(source: str, input_names: Sequence[str], engine: Engine) -> PublicData:
    """The arrays of `source` (`npz:PATH`) by model input name, after the checks above.

    The file holds one array per input name, or, for a one-input model, `x` (the layout of a
    dataset file, whose `y` is then ignored)."""
    kind, _, rest = source.partition(":")
    if kind != "npz" or not rest:
        raise NotPublic(
            f"calibration data must be npz:PATH, a file declared public; got {source!r} "
            "(registered datasets are private and are never used for calibration)"
        )
    canonical = canonical_source(source)
    path = Path(canonical.partition(":")[2])
    try:
        if path.stat().st_size > MAX_BYTES:
            raise NotPublic(f"{path}: over {MAX_BYTES} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise NotPublic(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise NotPublic(f"{path}: not a readable npz file without pickled objects: {exc}") from None
    _refuse_registered(canonical, path, engine)
    names = list(input_names)
    if set(names) <= set(arrays):
        chosen = {name: arrays[name] for name in names}
    elif len(names) == 1 and "x" in arrays:
        chosen = {names[0]: arrays["x"]}
    else:
        raise NotPublic(f"{path}: holds {sorted(arrays)}; the model's inputs are {sorted(names)}")
    return PublicData(canonical, hashlib.sha256(data).hexdigest(), chosen)


def _refuse_registered(source: str, path: Path, engine: Engine) -> None:
    """Refuse a registered dataset's source, or a file with its records."""
    print_ = _fingerprint(path)
    with session_scope(session_factory(engine)) as session:
        rows = session.execute(
            sa.select(
                RegisteredDataset.name, RegisteredDataset.source, RegisteredDataset.fingerprint
            )
        ).all()
    for name, registered_source, registered_print in rows:
        if registered_source == source or (print_ is not None and print_ == registered_print):
            raise NotPublic(
                f"{source} is registered dataset {name!r}, which is private: calibrate on data "
                "declared public"
            )


def _fingerprint(path: Path) -> str | None:
    """The dataset fingerprint of the file, as registration computes it, when it has a
    dataset's layout (`x` and `y`)."""
    try:
        return load_npz(path).fingerprint
    except DatasetError:
        return None
