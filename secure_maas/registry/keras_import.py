"""Importing a Keras model made elsewhere (`models import`): check before Keras parses it.

A `.h5` or `.keras` file can carry a Lambda layer whose Python bytecode Keras would run while
loading. So the architecture is read from the file first (HDF5 attribute `model_config`, or
`config.json` inside the `.keras` zip), put through the same allow-list the serving side uses,
and only then handed to Keras, with `safe_mode` where Keras offers it. Imports TensorFlow.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import h5py
import tensorflow as tf

from secure_maas.errors import SecureMaasError
from secure_maas.registry.codec import check_architecture, encode_model
from secure_maas.registry.signature import ServingSignature


class NotAKerasModel(SecureMaasError):
    """The file is not a Keras model this service can import."""


def _architecture(path: Path) -> Any:
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        if path.suffix in (".h5", ".hdf5"):
            with h5py.File(path, "r") as handle:
                raw = handle.attrs.get("model_config")
                if raw is None:
                    raise NotAKerasModel(f"{path} holds weights only (no model_config)")
                return json.loads(raw if isinstance(raw, str) else raw.decode())
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise NotAKerasModel(f"{path} is not a readable Keras model: {exc}") from exc
    raise NotAKerasModel(f"{path}: expected a .keras or .h5 file")


def load_keras_file(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The model in `path` encoded for sealing, and its serving signature."""
    check_architecture(_architecture(path))
    try:
        if path.suffix == ".keras":
            model = tf.keras.models.load_model(path, compile=False, safe_mode=True)
        else:
            model = tf.keras.models.load_model(path, compile=False)
    except (OSError, ValueError, TypeError) as exc:
        raise NotAKerasModel(f"Keras could not load {path}: {exc}") from exc
    return encode_model(model), ServingSignature.from_model(model).to_dict()
