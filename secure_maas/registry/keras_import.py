"""Importing a Keras model made elsewhere (`models import`): check before Keras parses it, and
read it from memory only.

A `.h5` or `.keras` file can carry a Lambda layer whose Python bytecode Keras would run while
loading. So the architecture is read from the file first (HDF5 attribute `model_config`, or
`config.json` inside the `.keras` zip), put through the same allow-list the serving side uses,
and only then handed to Keras, with `safe_mode` where Keras offers it.

The file is read once, into memory, and everything after works on those bytes: what was checked
is what is built (no second open that a swapped file could answer), and nothing is written to
disk. That matters for `.keras`: Keras 2.15's `load_model` extracts the whole archive,
`model.weights.h5` included, into a temporary folder under `TMPDIR` whenever the archive holds
more than its three usual entries, and leaves it there if loading fails. Here the archive is
opened from a `BytesIO`, `config.json` is built with Keras' own deserializer in safe mode, and
the weights are loaded from the in-memory `model.weights.h5` through h5py's file-object driver,
so plaintext weights never reach a file (DESIGN invariant 3). Archives that carry asset files
are refused: the sealed format holds architecture and weights only. Imports TensorFlow.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import h5py
import tensorflow as tf

from secure_maas.errors import SecureMaasError
from secure_maas.registry.codec import check_architecture, encode_model
from secure_maas.registry.signature import ServingSignature

CONFIG_ENTRY = "config.json"
WEIGHTS_ENTRY = "model.weights.h5"
METADATA_ENTRY = "metadata.json"  # Keras' own notes (version, date); not used

#: The most an imported file, or the sum of a `.keras` archive's entries, may hold once read.
#: It bounds the memory an import can be made to take (a zip's entries can claim any size).
MAX_IMPORT_BYTES = 16 << 30
MAX_CONFIG_BYTES = 100 << 20


class NotAKerasModel(SecureMaasError):
    """The file is not a Keras model this service can import."""


def _read_file(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_IMPORT_BYTES + 1)
    except OSError as exc:
        raise NotAKerasModel(f"{path} cannot be read: {exc.strerror or exc}") from exc
    if len(data) > MAX_IMPORT_BYTES:
        raise NotAKerasModel(f"{path} is larger than {MAX_IMPORT_BYTES} bytes")
    return data


def _json(data: str | bytes, path: Path, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotAKerasModel(f"{path}: {what} is not readable JSON: {exc}") from exc


# -- .keras: a zip of config.json, metadata.json and model.weights.h5 ------------------------


def _archive_entries(data: bytes, path: Path) -> tuple[Any, bytes]:
    """The architecture config and the weights file's bytes, read from the archive in memory."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            names = {info.filename for info in infos}
            missing = sorted({CONFIG_ENTRY, WEIGHTS_ENTRY} - names)
            if missing:
                raise NotAKerasModel(f"{path} is not a Keras archive: no {', '.join(missing)}")
            extra = sorted(
                info.filename
                for info in infos
                if not info.is_dir()
                and info.filename not in {CONFIG_ENTRY, WEIGHTS_ENTRY, METADATA_ENTRY}
            )
            if extra:
                shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
                raise NotAKerasModel(
                    f"{path} holds files besides the architecture and weights ({shown}): "
                    "models that need asset files cannot be imported; save the model without "
                    "them (vocabularies in the layer config) and import again"
                )
            sizes = {info.filename: info.file_size for info in infos}
            if sizes[CONFIG_ENTRY] > MAX_CONFIG_BYTES:
                raise NotAKerasModel(f"{path}: {CONFIG_ENTRY} is over {MAX_CONFIG_BYTES} bytes")
            if sum(sizes.values()) > MAX_IMPORT_BYTES:
                raise NotAKerasModel(f"{path} unpacks to more than {MAX_IMPORT_BYTES} bytes")
            config = archive.read(CONFIG_ENTRY)
            weights = archive.read(WEIGHTS_ENTRY)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise NotAKerasModel(f"{path} is not a readable Keras archive: {exc}") from exc
    except (NotImplementedError, RuntimeError) as exc:  # unsupported compression, encryption
        raise NotAKerasModel(f"{path} uses a zip feature Keras archives do not: {exc}") from exc
    return _json(config, path, CONFIG_ENTRY), weights


class _WeightsInMemory:
    """The reading half of Keras 2.15's `H5IOStore`, over an HDF5 file held in memory.

    h5py reads a Python file object through its `fileobj` driver: no file is created.
    """

    def __init__(self, data: bytes) -> None:
        self._file = h5py.File(io.BytesIO(data), "r")

    def get(self, path: str) -> Any:
        if not path:
            return self._file["vars"]
        if path in self._file and "vars" in self._file[path]:
            return self._file[path]["vars"]
        return {}

    def close(self) -> None:
        self._file.close()


def _build_keras_v3(config: Any) -> Any:
    """Build the checked `config.json` object, then load its weights, as Keras 2.15's own
    `saving_lib.load_model` does, minus the extraction to disk and the compile step."""
    from keras.src.saving import saving_lib
    from keras.src.saving.serialization_lib import ObjectSharingScope, deserialize_keras_object

    if not isinstance(config, dict):
        raise NotAKerasModel(f"{CONFIG_ENTRY} is not a JSON object")
    config = {**config, "compile_config": None}
    enabled = getattr(saving_lib._SAVING_V3_ENABLED, "value", False)
    saving_lib._SAVING_V3_ENABLED.value = True
    try:
        with ObjectSharingScope():
            return deserialize_keras_object(config, safe_mode=True)
    finally:
        saving_lib._SAVING_V3_ENABLED.value = enabled


def _load_weights(model: Any, weights: bytes) -> None:
    from keras.src.saving import saving_lib

    store = _WeightsInMemory(weights)
    try:
        saving_lib._load_state(
            model,
            weights_store=store,
            assets_store=None,
            inner_path="",
            visited_trackables=set(),
        )
    finally:
        store.close()


def _load_keras(data: bytes, path: Path) -> Any:
    config, weights = _archive_entries(data, path)
    check_architecture(config)
    try:
        model = _build_keras_v3(config)
        _load_weights(model, weights)
    except SecureMaasError:
        raise
    except Exception as exc:  # Keras and h5py raise open-ended types for a bad archive
        raise NotAKerasModel(f"Keras could not load {path}: {exc}"[:1000]) from exc
    return model


# -- .h5: the legacy HDF5 format -------------------------------------------------------------


def _load_h5(data: bytes, path: Path) -> Any:
    from keras.src.saving.legacy import hdf5_format

    try:
        handle = h5py.File(io.BytesIO(data), "r")
    except OSError as exc:
        raise NotAKerasModel(f"{path} is not a readable HDF5 file: {exc}") from exc
    with handle:
        raw = handle.attrs.get("model_config")
        if raw is None:
            raise NotAKerasModel(f"{path} holds weights only (no model_config)")
        check_architecture(
            _json(raw if isinstance(raw, str | bytes) else b"", path, "model_config")
        )
        try:
            return hdf5_format.load_model_from_hdf5(handle, compile=False)
        except SecureMaasError:
            raise
        except Exception as exc:  # as above
            raise NotAKerasModel(f"Keras could not load {path}: {exc}"[:1000]) from exc


def load_keras_file(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The model in `path` encoded for sealing, and its serving signature.

    Reads `path` once; raises `NotAKerasModel` for anything that is not an importable Keras
    model and `UnsafeModel` for an architecture that could run code (a Lambda layer, a custom
    class), before Keras sees it. Writes no file.
    """
    if path.suffix not in (".keras", ".h5", ".hdf5"):
        raise NotAKerasModel(f"{path}: expected a .keras or .h5 file")
    data = _read_file(path)
    model = _load_keras(data, path) if path.suffix == ".keras" else _load_h5(data, path)
    if not isinstance(model, tf.keras.Model):
        raise NotAKerasModel(f"{path} holds a {type(model).__name__}, not a Keras model")
    return encode_model(model), ServingSignature.from_model(model).to_dict()
