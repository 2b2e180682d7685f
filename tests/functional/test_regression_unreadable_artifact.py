"""Regression (issue 8, storage faults): an artifact file that exists but cannot be read (here a
folder in its place; EACCES or EIO alike) was not refused. `open_version` let the `OSError`
through, so the model cache neither recorded a `model.refused` event (no `model:load` audit
event) nor fell back to the version a label or a bare name was serving: every request went back
to the disk and failed with a 503. It is now refused like a missing or tampered file
(`InvalidArtifact`, code `unreadable`), and `models verify` reports it instead of stopping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from secure_maas.config import Settings
from secure_maas.dataplane.cache import EVENT_FALLBACK, EVENT_REFUSED, ModelCache, ModelUnavailable
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import Keyring
from secure_maas.registry.artifacts import verify_all
from secure_maas.registry.models import Privacy
from secure_maas.registry.publish import Provenance, publish
from secure_maas.registry.store import ArtifactStore
from tests.functional.serving_support import models


def test_an_unreadable_artifact_is_refused_and_the_loaded_version_keeps_serving(
    settings: Settings, migrated_engine: Engine
) -> None:
    keyring = Keyring.init(settings.keys_dir)[0]
    store = ArtifactStore(settings.store_dir)
    built = models()

    def put(key: str) -> int:
        return publish(
            migrated_engine, store, keyring, name="m", payload=built.payloads[key],
            signature=built.signatures[key], provenance=Provenance(Privacy.IMPORTED),
            created_by="tests",
        ).version  # fmt: skip

    put("one")
    put("two")
    events: list[tuple[str, dict[str, Any]]] = []
    cache = ModelCache(
        migrated_engine, store, lambda: Keyring.open(settings.keys_dir), 1 << 30,
        lambda kind, details: events.append((kind, details)), poll_interval=0,
    )  # fmt: skip
    try:
        assert cache.get("m").facts.version == 2
        version = put("one")
        path: Path = store.path("m", version)
        path.unlink()
        path.mkdir()  # opening it raises IsADirectoryError, an OSError

        assert cache.get("m").facts.version == 2  # the bare name keeps its loaded version
        with pytest.raises(ModelUnavailable):
            cache.get(f"m:{version}")
        refused = [details for kind, details in events if kind == EVENT_REFUSED]
        assert [(d["version"], d["code"]) for d in refused] == [(version, "unreadable")]
        assert "cannot be read" in refused[0]["reason"]
        assert [d["refused_version"] for k, d in events if k == EVENT_FALLBACK] == [version]
    finally:
        cache.close()

    with session_scope(session_factory(migrated_engine)) as session:
        findings = [(f.version, f.ok, f.code) for f in verify_all(session, store, keyring, "m")]
    assert findings == [(1, True, "ok"), (2, True, "ok"), (version, False, "unreadable")]
