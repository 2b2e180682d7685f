"""Invariant 2: with the database unreachable, verification, decisions and quotas fail with
`DatabaseUnavailable` (a 503 for serving), never with an answer."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from secure_maas.actions import Action
from secure_maas.auth.verify import Verifier
from secure_maas.config import Settings
from secure_maas.db import DatabaseUnavailable, create_engine
from secure_maas.keys import Keyring
from secure_maas.policy import Caller, ModelFacts, PolicyCache, Quota, RequestFacts, Window, consume
from secure_maas.policy.leases import QuotaLeases

NOW = datetime(2027, 5, 1, tzinfo=UTC)
NOWHERE = "postgresql+psycopg://postgres@127.0.0.1:9/nothing"  # the discard port: refused


def test_everything_fails_closed_without_a_database(tmp_path: Path) -> None:
    settings = Settings(database_url=NOWHERE, keys_dir=tmp_path / "keys")
    Keyring.init(settings.keys_dir)
    engine = create_engine(NOWHERE)
    with pytest.raises(DatabaseUnavailable, match="cannot read shared state"):
        Verifier(engine, settings).verify("a.b.c", now=NOW)
    with pytest.raises(DatabaseUnavailable, match="cannot read shared state"):
        PolicyCache(engine).decide(
            Caller("alice"), Action.MODEL_PREDICT, ModelFacts("digits"), RequestFacts(1, NOW)
        )
    with pytest.raises(DatabaseUnavailable, match="cannot count quota"):
        consume(engine, "alice", "digits", (Quota(Window.MINUTE, 5),), 1, NOW)
    leases = QuotaLeases(engine, reaper=False)
    with pytest.raises(DatabaseUnavailable, match="cannot count quota"):
        leases.consume("alice", "digits", (Quota(Window.MINUTE, 5),), 1, NOW)
    leases.close()
