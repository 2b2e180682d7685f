"""Shared by the tests of versions derived from a published one (quantize, distill)."""

from __future__ import annotations

from typing import Any

from secure_maas.config import Settings
from secure_maas.db import create_engine
from secure_maas.db.session import session_factory, session_scope
from secure_maas.instance import initialise
from secure_maas.keys import Keyring
from secure_maas.registry import artifacts, catalog
from secure_maas.registry.publish import publish
from secure_maas.registry.store import ArtifactStore
from tests.functional.serving_support import dp


def publish_parent(settings: Settings, payload: bytes, signature: dict[str, Any]) -> None:
    """A new instance with digits:1, `payload` published with a DP guarantee of ε = 1.5."""
    initialise(settings)
    engine = create_engine(settings.database_url)
    try:
        publish(
            engine,
            ArtifactStore(settings.store_dir),
            Keyring.open(settings.keys_dir),
            name="digits",
            payload=payload,
            signature=signature,
            provenance=dp(1.5),
            created_by="tests",
        )
    finally:
        engine.dispose()


def open_version(settings: Settings, version: int) -> tuple[Any, dict[str, Any]]:
    """The decoded model of digits:`version` and its authenticated header's metadata, with
    the header's plaintext digest added as `plaintext_sha256`."""
    from secure_maas.registry.codec import decode_model

    engine = create_engine(settings.database_url)
    try:
        with session_scope(session_factory(engine)) as session:
            row = catalog.resolve(session, catalog.ModelRef("digits", version=version))
            opened = artifacts.open_version(
                ArtifactStore(settings.store_dir), Keyring.open(settings.keys_dir), row
            )
    finally:
        engine.dispose()
    try:
        metadata = {**opened.header.metadata, "plaintext_sha256": opened.header.plaintext_sha256}
        return decode_model(opened.plaintext), metadata
    finally:
        opened.wipe()
