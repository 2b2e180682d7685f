"""Regression (found by CI, tests/system/test_two_instances.py): token ids were base64url, so
one in 64 began with "-", and `secure-maas token revoke JTI` then failed with "No such option"
(exit 2): the token could not be revoked by id as the README shows. New ids are hex (128 bits),
so none can look like an option; a token issued before, whose id does begin with "-", is
revoked with `token revoke -- JTI`, the usual end of options.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from secure_maas.auth import tokens
from secure_maas.auth.models import IssuedToken
from secure_maas.config import Settings
from secure_maas.db import create_engine
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import Keyring
from secure_maas.policy import directory
from tests.functional.cli import run_cli

NOW = datetime(2027, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def session(migrated_engine: Engine) -> Iterator[Session]:
    with session_scope(session_factory(migrated_engine)) as session:
        yield session


def test_token_ids_never_look_like_an_option(session: Session, settings: Settings) -> None:
    keyring, _ = Keyring.init(settings.keys_dir)
    directory.add_principal(session, "alice", actor="ops", roles=["analyst"])
    ids = {
        tokens.issue(
            session, keyring, settings, subject="alice", ttl=timedelta(minutes=5), actor="ops",
            now=NOW,
        ).jti
        for _ in range(200)
    }  # fmt: skip
    assert len(ids) == 200
    assert all(re.fullmatch(r"[0-9a-f]{32}", jti) for jti in ids)


def test_an_old_id_that_begins_with_a_dash_is_revoked_after_double_dash(
    cli_env: dict[str, str], settings: Settings
) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=cli_env)

    assert cli("init").returncode == 0
    assert cli("principal", "add", "alice", "--role", "analyst").returncode == 0
    assert cli("token", "issue", "--subject", "alice").returncode == 0
    legacy = "-7HvzxKQz3sOcPMATb-5XNGW"  # the id CI met, as base64url made them
    engine = create_engine(settings.database_url)
    try:
        with session_scope(session_factory(engine)) as session:
            session.execute(sa.update(IssuedToken).values(jti=legacy))
    finally:
        engine.dispose()
    refused = cli("token", "revoke", legacy)
    assert refused.returncode == 2 and "No such option" in refused.stderr
    done = cli("token", "revoke", "--", legacy)
    assert done.returncode == 0, done.stderr
    assert f"revoked {legacy}" in done.stdout
