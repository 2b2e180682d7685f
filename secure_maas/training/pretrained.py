"""Opening a public model to start from, and copying its weights into a new one (see `transfer`).

The init model is read only through the registry: its signed header is checked first (its
privacy class must be `public`, as its publisher signed it, never as the database row says),
then it is verified and decrypted in memory (`artifacts.open_version`), decoded
(`codec.decode_model`) and the plaintext wiped. Its weights are kept as numpy copies in a
`transfer.PublicInit`; nothing is written to disk. Imports TensorFlow.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from sqlalchemy.engine import Engine

from secure_maas.crypto import InvalidArtifact
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import Keyring
from secure_maas.registry import artifacts, catalog
from secure_maas.registry.models import Privacy
from secure_maas.registry.signature import InvalidModelData
from secure_maas.registry.store import SealedStore
from secure_maas.training.transfer import (
    HEAD_LAYER,
    PREPROCESSING_LAYER,
    InitLayer,
    InitRefused,
    PublicInit,
)

#: How a copied head is described; a head of another shape is freshly initialised.
HEAD_COPIED = "copied"


class NotPublic(InitRefused):
    """The init model's signed privacy class is not `public`."""


def load_public_init(engine: Engine, store: SealedStore, keyring: Keyring, ref: str) -> PublicInit:
    """The weights of the public model `ref` (NAME, NAME:V or NAME@LABEL) names.

    Raises `NotPublic` for a model of any other signed class (before decrypting it), and
    `InitRefused` for a missing, tampered or quantized one.
    """
    from secure_maas.registry.codec import LoadedModel, UnsafeModel, decode_model

    try:
        parsed = catalog.ModelRef.parse(ref)
        with session_scope(session_factory(engine)) as session:
            row = catalog.resolve(session, parsed)
            name, version = row.model.name, row.version
            signed = artifacts.signed_facts(store, keyring, row)
            if signed.privacy != Privacy.PUBLIC.value:
                raise NotPublic(
                    f"--init-from {name}:{version} refused: its privacy class is "
                    f"{signed.privacy!r}, not 'public'. Only a model trained on public data "
                    "(`models import --public`) can start a DP run: a DP model's weights already "
                    "spent the budget of its own data, and other models' data is private or unknown"
                )
            opened = artifacts.open_version(store, keyring, row)
    except catalog.ModelNotFound as exc:
        raise InitRefused(f"--init-from {ref}: {exc}") from exc
    except InvalidArtifact as exc:
        raise InitRefused(
            f"--init-from {ref}: the artifact failed verification ({exc.code}: {exc.reason})"
        ) from exc
    try:
        model = decode_model(opened.plaintext)
    except (UnsafeModel, InvalidModelData) as exc:
        raise InitRefused(f"--init-from {name}:{version}: cannot be loaded: {exc}") from exc
    finally:
        opened.wipe()
    if not isinstance(model, LoadedModel):
        raise InitRefused(
            f"--init-from {name}:{version} is a quantized model: start from its float parent"
        )
    return public_init_of(model.model, name, version, signed.plaintext_sha256)


def public_init_of(model: tf.keras.Model, name: str, version: int, sha256: str) -> PublicInit:
    """A copy of `model`'s weights as a `PublicInit` (the registry's path above, or a model
    the caller vouches is public, as `bench/transfer.py` does for its demonstration)."""
    layers = tuple(
        InitLayer(layer.name, tuple(np.array(w, copy=True) for w in layer.get_weights()))
        for layer in _weighted_layers(model)
    )
    return PublicInit(name, version, sha256, layers)


def _weighted_layers(model: tf.keras.Model) -> list[tf.keras.layers.Layer]:
    return [layer for layer in model.layers if layer.weights and layer.name != PREPROCESSING_LAYER]


def check_compatible(model: tf.keras.Model, init: PublicInit) -> str:
    """Refuse (`InitRefused`) an init model whose layers are not `model`'s; returns what
    happens to the head: `HEAD_COPIED`, or why it is freshly initialised."""
    layers = _weighted_layers(model)
    names = tuple(layer.name for layer in layers)
    if names != init.layer_names:
        raise InitRefused(
            f"--init-from {init.ref}: its layers with weights are {', '.join(init.layer_names)}; "
            f"this run builds {', '.join(names)}: give the --arch and size options it was "
            "built with"
        )
    head = HEAD_COPIED
    for layer in layers:
        shapes = tuple(tuple(int(d) for d in w.shape) for w in layer.weights)
        theirs = init.layer(layer.name).shapes
        if shapes == theirs:
            continue
        if layer.name != HEAD_LAYER:
            raise InitRefused(
                f"--init-from {init.ref}: layer {layer.name!r} has weights of shapes {theirs} "
                f"there and {shapes} here: give the size options it was built with"
            )
        head = f"freshly initialised ({shapes[0][-1]} classes here, {theirs[0][-1]} in {init.ref})"
    return head


def apply_init(model: tf.keras.Model, init: PublicInit, frozen: tuple[str, ...]) -> str:
    """Copy `init`'s weights into `model` (the head only when its shape matches) and freeze
    the layers named in `frozen`; returns what happened to the head (`check_compatible`)."""
    head = check_compatible(model, init)
    for layer in _weighted_layers(model):
        if layer.name == HEAD_LAYER and head != HEAD_COPIED:
            continue
        layer.set_weights(list(init.layer(layer.name).weights))
        if layer.name in frozen:
            layer.trainable = False
    return head
