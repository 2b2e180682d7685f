"""The guarantees rules rely on come from the header the publisher signed, not the database row.

Every fact is taken from the authenticated header and the row is checked against it, so
`UPDATE model_versions SET privacy='dp', dp_epsilon=0.5` on a non-DP model changes nothing a
caller or a rule sees: a `max_epsilon` rule still denies, serving refuses the version
(`model.refused`, code `row_mismatch`, audited) while the version it served before keeps
serving, the served metadata shows no forged guarantee, `models verify` fails naming the
fields, `models show` shows the signed facts and fails, and `policy explain` judges by the
header.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import Engine

from secure_maas.actions import Action
from secure_maas.auth import tokens
from secure_maas.config import Settings
from secure_maas.crypto.envelope import InvalidArtifact
from secure_maas.dataplane.cache import EVENT_FALLBACK, EVENT_REFUSED, ModelCache, ModelUnavailable
from secure_maas.db import create_engine
from secure_maas.db.session import session_factory, session_scope
from secure_maas.instance import initialise
from secure_maas.keys import Keyring
from secure_maas.policy import Rule, directory, grants
from secure_maas.policy.evaluate import Caller, ModelFacts, RequestFacts
from secure_maas.policy.index import CompiledPolicy
from secure_maas.registry import artifacts, catalog
from secure_maas.registry.catalog import ModelRef
from secure_maas.registry.models import ModelVersion, Privacy
from secure_maas.registry.publish import Provenance, publish
from secure_maas.registry.store import ArtifactStore
from secure_maas.serving.app import close_app, create_app
from secure_maas.timeutil import utcnow
from tests.functional.cli import run_cli
from tests.functional.serving_support import dp, events, models

FORGE = "UPDATE model_versions SET privacy = 'dp', dp_epsilon = 0.5 WHERE version = :version"
RULE = Rule("allow", "role:analyst", ["model:predict"], model="plain", max_epsilon=3)


@pytest.fixture
def instance(settings: Settings) -> Iterator[tuple[Engine, ArtifactStore, Keyring]]:
    initialise(settings)
    engine = create_engine(settings.database_url)
    yield engine, ArtifactStore(settings.store_dir), Keyring.open(settings.keys_dir)
    engine.dispose()


def put(
    instance: tuple[Engine, ArtifactStore, Keyring],
    key: str = "one",
    provenance: Provenance | None = None,
) -> int:
    engine, store, keyring = instance
    built = models()
    return publish(
        engine, store, keyring, name="plain", payload=built.payloads[key],
        signature=built.signatures[key], provenance=provenance or Provenance(Privacy.IMPORTED),
        created_by="tests",
    ).version  # fmt: skip


def forge(engine: Engine, version: int) -> None:
    """The attack: a database writer labels a non-DP version DP with a small ε."""
    with engine.begin() as connection:
        connection.execute(sa.text(FORGE), {"version": version})


def row_of(engine: Engine, version: int) -> ModelVersion:
    with session_scope(session_factory(engine)) as session:
        row = catalog.resolve(session, ModelRef("plain", version=version), include_disabled=True)
        _ = row.model.name
        return row


def decide(epsilon: float | None) -> bool:
    facts = ModelFacts("plain", 1, (), epsilon)
    request = RequestFacts(rows=1, now=utcnow())
    policy = CompiledPolicy([RULE])
    return policy.decide(
        Caller("alice", ("analyst",)), Action.MODEL_PREDICT, facts, request
    ).allowed


def test_the_forged_row_is_refused_on_open_and_by_verify(
    instance: tuple[Engine, ArtifactStore, Keyring],
) -> None:
    engine, store, keyring = instance
    version = put(instance)
    forge(engine, version)
    row = row_of(engine, version)

    with pytest.raises(InvalidArtifact) as opened:
        artifacts.open_version(store, keyring, row)
    assert opened.value.code == "row_mismatch"
    assert "privacy" in opened.value.reason and "dp_epsilon" in opened.value.reason
    assert str(opened.value) == "invalid or tampered artifact"  # nothing for a caller

    with pytest.raises(InvalidArtifact, match="tampered") as signed:
        artifacts.signed_facts(store, keyring, row)
    assert signed.value.code == "row_mismatch"
    header = artifacts.signed_facts(store, keyring, row, reconcile=False)
    assert (header.privacy, header.dp, header.epsilon) == ("imported", None, None)

    with session_scope(session_factory(engine)) as session:
        findings = list(artifacts.verify_all(session, store, keyring, "plain"))
    assert [(f.version, f.ok, f.code) for f in findings] == [(version, False, "row_mismatch")]
    assert findings[0].reason == (
        "registry row differs from the signed header in: privacy, dp_epsilon"
    )


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("dp_epsilon", 0.1),
        ("dp_delta", 1e-9),
        ("dp_noise_multiplier", 9.0),
        ("dp_preprocessing", "none"),
        ("dataset_name", "other"),
        ("dataset_fingerprint", "f1"),
        ("signature", '{"inputs": [], "outputs": []}'),
        ("publisher_key_id", "publisher-elsewhere"),
        ("plaintext_bytes", 1),
    ],
)
def test_every_signed_fact_of_a_dp_row_is_checked(
    instance: tuple[Engine, ArtifactStore, Keyring], column: str, value: Any
) -> None:
    engine, store, keyring = instance
    version = put(instance, provenance=dp(2.0))
    assert artifacts.signed_facts(store, keyring, row_of(engine, version)).epsilon == 2.0
    with engine.begin() as connection:
        connection.execute(
            sa.text(f"UPDATE model_versions SET {column} = :value"), {"value": value}
        )
    with pytest.raises(InvalidArtifact) as caught:
        artifacts.signed_facts(store, keyring, row_of(engine, version))
    assert caught.value.code == "row_mismatch"
    assert caught.value.reason.endswith(f"in: {column}")


def test_withdrawing_the_dp_label_is_not_a_mismatch(
    instance: tuple[Engine, ArtifactStore, Keyring],
) -> None:
    """What migration 0006 does to DP models whose preprocessing was not covered: weaker, so
    kept, and the weaker class is the one used."""
    engine, store, keyring = instance
    version = put(instance, provenance=dp(2.0))
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE model_versions SET privacy = 'non-private'"))
    facts = artifacts.signed_facts(store, keyring, row_of(engine, version))
    assert (facts.privacy, facts.dp, facts.epsilon) == ("non-private", None, None)


def test_a_serving_worker_decides_by_the_header_and_refuses_the_row(
    instance: tuple[Engine, ArtifactStore, Keyring],
) -> None:
    engine, store, keyring = instance
    first = put(instance)
    happened: list[tuple[str, dict[str, Any]]] = []
    cache = ModelCache(
        engine, store, lambda: Keyring.open(keyring.folder), 1 << 30,
        lambda kind, details: happened.append((kind, details)), poll_interval=0,
    )  # fmt: skip
    try:
        assert cache.get("plain").facts.version == first  # loaded and served
        second = put(instance, key="two")
        forge(engine, second)
        forge(engine, first)  # a loaded version keeps serving, whatever its row says now

        facts = cache.facts("plain")
        assert (facts.version, facts.privacy, facts.dp_epsilon) == (second, "imported", None)
        assert facts.guarantee()["dp"] is None  # served metadata: the signed facts
        assert not decide(facts.dp_epsilon)  # the max_epsilon rule denies, as before the edit
        assert decide(0.5)  # (the forged ε would have been allowed)

        assert cache.get("plain").facts.version == first  # the bare name falls back
        with pytest.raises(ModelUnavailable):
            cache.get(f"plain:{second}")
        cache.refresh(force=True)
        refused = [d for kind, d in happened if kind == EVENT_REFUSED]  # once per difference
        assert sorted((d["version"], d["code"]) for d in refused) == [
            (first, "row_mismatch"),
            (second, "row_mismatch"),
        ]
        assert all(d["reason"].endswith("in: privacy, dp_epsilon") for d in refused)
        assert [d["refused_version"] for k, d in happened if k == EVENT_FALLBACK] == [second]
    finally:
        cache.close()


def test_a_version_whose_header_cannot_be_authenticated_shows_no_guarantee(
    instance: tuple[Engine, ArtifactStore, Keyring],
) -> None:
    """The row forged and the file cut short (database and store write access): the facts
    are `unverified` with no guarantee, so nothing answered from them alone (metadata, lists)
    relies on the row; a prediction, which loads first, is refused or falls back to a version
    that is decided again on its own signed facts."""
    engine, store, keyring = instance
    first = put(instance)
    happened: list[tuple[str, dict[str, Any]]] = []
    cache = ModelCache(
        engine, store, lambda: Keyring.open(keyring.folder), 1 << 30,
        lambda kind, details: happened.append((kind, details)), poll_interval=0,
    )  # fmt: skip
    try:
        assert cache.get("plain").facts.version == first
        second = put(instance, key="two")
        forge(engine, second)
        path = store.path("plain", second)
        path.write_bytes(path.read_bytes()[:-10])

        facts = cache.facts("plain")
        assert (facts.version, facts.verified, facts.privacy) == (second, False, "unverified")
        assert facts.guarantee()["dp"] is None and facts.dp_epsilon is None
        assert facts.epsilon_for(loads=False) is None  # metadata: the max_epsilon rule denies
        assert not decide(facts.epsilon_for(loads=False))
        assert facts.epsilon_for(loads=True) == 0.5  # a prediction loads before it answers:
        entry = cache.get("plain")  # the load refuses the version and falls back
        assert (entry.facts.version, entry.facts.verified) == (first, True)
        assert not decide(entry.facts.epsilon_for(loads=True))  # which is decided again
        with pytest.raises(ModelUnavailable):
            cache.get(f"plain:{second}")
        refused = [d for kind, d in happened if kind == EVENT_REFUSED]
        assert [(d["version"], d["code"]) for d in refused] == [(second, "truncated")]
    finally:
        cache.close()


@pytest.fixture
def served(
    instance: tuple[Engine, ArtifactStore, Keyring], settings: Settings
) -> Iterator[tuple[Flask, str]]:
    engine, _, keyring = instance
    version = put(instance)
    with session_scope(session_factory(engine)) as session:
        directory.add_principal(session, "alice", actor="tests", roles=["analyst"])
        grants.grant(session, RULE, actor="tests")
        grants.grant(
            session,
            Rule("allow", "role:analyst", ["model:metadata", "model:list"], model="plain"),
            actor="tests",
        )
        token = tokens.issue(
            session, keyring, settings, subject="alice", ttl=timedelta(hours=1), actor="t"
        ).token
    forge(engine, version)  # before the worker starts: it never saw the true row
    app = create_app(settings)
    yield app, token
    close_app(app)


def test_over_http_the_forged_guarantee_neither_allows_nor_shows(
    served: tuple[Flask, str], instance: tuple[Engine, ArtifactStore, Keyring]
) -> None:
    app, token = served
    client = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    x = np.zeros((1, 4), dtype=np.float32).tolist()
    answer = client.post("/v1/models/plain:predict", json={"instances": x}, headers=auth)
    assert answer.status_code == 403, answer.get_json()

    listed = client.get("/v1/models", headers=auth).get_json()
    assert listed["models"][0]["versions"][0]["privacy"] == "imported"
    assert listed["models"][0]["versions"][0]["epsilon"] is None
    metadata = client.get("/v1/models/plain/metadata", headers=auth)
    assert metadata.status_code == 200
    assert '"epsilon": 0.5' not in json.dumps(metadata.get_json())
    close_app(app)

    engine = instance[0]
    loads = [e for e in events(engine) if e.action == "model:load"]
    assert [(e.reason_code, e.decision) for e in loads] == [("model.refused", "error")]
    assert "dp_epsilon" in (loads[0].reason or "")
    denied = [e for e in events(engine) if e.action == "model:predict"]
    assert [e.decision for e in denied] == ["deny"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_cli_reports_the_forged_row(
    instance: tuple[Engine, ArtifactStore, Keyring], cli_env: dict[str, str]
) -> None:
    engine = instance[0]
    version = put(instance)
    env = cli_env
    assert run_cli("models", "verify", env=env).returncode == 0
    forge(engine, version)

    verified = run_cli("models", "verify", "--format", "json", env=env)
    assert verified.returncode == 1
    finding = json.loads(verified.stdout)[0]
    assert (finding["ok"], finding["code"]) == (False, "row_mismatch")
    assert "privacy, dp_epsilon" in finding["reason"]
    assert "1 of 1 artifacts failed verification" in verified.stderr

    shown = run_cli("models", "show", f"plain:{version}", "--format", "json", env=env)
    assert shown.returncode == 1
    data = json.loads(shown.stdout)[0]
    assert (data["privacy"], data["epsilon"]) == ("imported", None)
    assert set(data["dp"].values()) == {None}  # the forged ε is nowhere
    assert "row_mismatch" in data["header"] and "dp_epsilon" in shown.stderr
    assert "Traceback" not in shown.stderr

    listed = json.loads(run_cli("models", "list", "--format", "json", env=env).stdout)
    assert [(m["privacy"], m["epsilon"]) for m in listed] == [("unverified", None)]

    granted = run_cli("policy", "grant", "--subject", "role:analyst", "--model", "plain",
                      "--action", "model:predict", "--max-epsilon", "3", env=env)  # fmt: skip
    assert granted.returncode == 0, granted.stderr
    assert run_cli("principal", "add", "alice", "--role", "analyst", env=env).returncode == 0
    explained = run_cli("policy", "explain", "--subject", "alice", "--model", f"plain:{version}",
                        "--action", "model:predict", env=env)  # fmt: skip
    assert explained.stdout.startswith("DENY:"), explained.stdout
    assert "row_mismatch" in explained.stdout

    records = [e for e in events(engine) if e.action == "model:verify"]
    assert [(e.decision, e.reason_code) for e in records] == [
        ("allow", "intact"),
        ("error", "verify_failed"),
        ("error", "row_mismatch"),
    ]
    assert "dp_epsilon" in (records[1].reason or "") and "dp_epsilon" in (records[2].reason or "")
