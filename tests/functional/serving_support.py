"""A serving instance for the serving tests: keys, schema, real Keras models, principals, rules
and tokens, made with the library itself, on SQLite or PostgreSQL.

Models (tiny, built once per test process):
- `digits` v1 (DP, epsilon 1.0) labelled `canary` (analysts are denied predictions on it),
  v2 (DP, epsilon 2.0, the newest) labelled `stable`: one input `x` [-1, 4] float32 ->
  `probs` [-1, 3];
- `digits_loose` (DP, epsilon 9.0): over the analysts' max_epsilon, so invisible to them;
- `multi`: inputs `a` [-1, 3] and `b` [-1, 2] -> outputs `score` [-1, 2] and `gate` [-1, 1];
- `listed`: analysts may list it, nothing else;  `secret`: nobody but its name exists.

Principals: alice (analyst), bob (auditor), carol (analyst, disabled after her token was
issued), dave (multi only: max 3 rows, 2 requests a day), eve (no rules at all).
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from secure_maas.audit import AuditRecord
from secure_maas.audit.models import events_table
from secure_maas.audit.query import (
    RECORD_COLUMNS,
    AuditFilter,
    list_events,
    read_snapshot,
    to_record,
)
from secure_maas.auth import tokens
from secure_maas.config import Settings
from secure_maas.db import create_engine
from secure_maas.db.session import session_factory, session_scope
from secure_maas.instance import initialise
from secure_maas.keys import KeyKind, Keyring
from secure_maas.policy import Quota, Rule, directory, grants
from secure_maas.registry import catalog
from secure_maas.registry.models import Privacy
from secure_maas.registry.publish import Provenance, publish
from secure_maas.registry.store import ArtifactStore
from secure_maas.timeutil import utcnow
from tests.conftest import PG_AVAILABLE, REQUIRE_PG, _pg_schema_url

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "secure-maas"
BODY_LIMIT = 64 * 1024


def dp(epsilon: float) -> Provenance:
    guarantee = {
        "epsilon": epsilon,
        "delta": 1e-5,
        "noise_multiplier": 1.1,
        "clip_norm": 1.0,
        "batch_size": 32,
        "sampling_rate": 0.01,
        "epochs": 3,
        "steps": 300,
        "accountant": "rdp",
        "statement": f"({epsilon}, 1e-05)-DP, training-set size 3000",
        "preprocessing": "public-range",
        "stats_noise_multiplier": None,
    }
    return Provenance(Privacy.DP, dp=guarantee, dataset_name="synthetic", dataset_fingerprint="f0")


@dataclass
class Models:
    """Keras models, their encoded bytes and signatures; `predict` is the reference output."""

    keras: dict[str, Any]
    payloads: dict[str, bytes]
    signatures: dict[str, dict[str, Any]]

    def predict(self, key: str, inputs: Any) -> dict[str, np.ndarray]:
        model = self.keras[key]
        outputs = model.predict(inputs, verbose=0)
        names = model.output_names
        if not isinstance(outputs, list):
            outputs = [outputs]
        return dict(zip(names, outputs, strict=True))


@functools.cache
def models() -> Models:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from secure_maas.registry.codec import encode_model
    from secure_maas.registry.signature import ServingSignature

    built: dict[str, Any] = {}
    for key, seed in (("one", 1), ("two", 2)):
        tf.keras.utils.set_random_seed(seed)
        x = tf.keras.Input((4,), name="x")
        hidden = tf.keras.layers.Dense(8, activation="relu")(x)
        built[key] = tf.keras.Model(x, tf.keras.layers.Dense(3, "softmax", name="probs")(hidden))
    tf.keras.utils.set_random_seed(3)
    a = tf.keras.Input((3,), name="a")
    b = tf.keras.Input((2,), name="b")
    joined = tf.keras.layers.Concatenate()([a, b])
    hidden = tf.keras.layers.Dense(6, activation="tanh")(joined)
    score = tf.keras.layers.Dense(2, activation="softmax", name="score")(hidden)
    gate = tf.keras.layers.Dense(1, activation="sigmoid", name="gate")(hidden)
    built["multi"] = tf.keras.Model([a, b], [score, gate])
    return Models(
        keras=built,
        payloads={key: encode_model(model) for key, model in built.items()},
        signatures={key: ServingSignature.from_model(m).to_dict() for key, m in built.items()},
    )


@dataclass
class Instance:
    settings: Settings
    engine: Engine
    tokens: dict[str, str] = field(default_factory=dict)

    def headers(self, who: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}", **extra}

    def env(self) -> dict[str, str]:
        """Environment for a `secure-maas` child process serving this instance."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MAAS_")}
        env.update(
            SECURE_MAAS_DATABASE_URL=self.settings.database_url,
            SECURE_MAAS_KEYS_DIR=str(self.settings.keys_dir),
            SECURE_MAAS_STORE_DIR=str(self.settings.store_dir),
            SECURE_MAAS_MAX_BODY_BYTES=str(self.settings.max_body_bytes),
            TF_CPP_MIN_LOG_LEVEL="2",
            CUDA_VISIBLE_DEVICES="",
        )
        return env


def database_url(request: pytest.FixtureRequest, tmp: Path) -> Iterator[str]:
    """A fresh database URL for a module-scoped fixture parametrized sqlite/postgresql."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp / 'var' / 'secure_maas.db'}"
        return
    if not PG_AVAILABLE:
        if REQUIRE_PG:
            pytest.fail("PostgreSQL not reachable (SMAAS_TEST_REQUIRE_POSTGRES=1)")
        pytest.skip("PostgreSQL not reachable")
    admin: Engine = request.getfixturevalue("pg_admin")
    url, schema = _pg_schema_url(admin)
    yield url
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def prepared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, prefix: str
) -> Iterator[Instance]:
    """The serving tests' instance on the database `request.param` names, for a module-scoped
    fixture parametrized sqlite/postgresql: `yield from prepared(request, factory, "name")`."""
    tmp = tmp_path_factory.mktemp(f"{prefix}-{request.param}")
    urls = database_url(request, tmp)
    made = prepare(tmp, next(urls))
    yield made
    made.engine.dispose()
    next(urls, None)


def prepare(tmp: Path, url: str) -> Instance:
    """Keys, schema, models, principals, rules and tokens of the serving tests."""
    settings = Settings(
        database_url=url,
        keys_dir=tmp / "keys",
        store_dir=tmp / "var" / "store",
        max_body_bytes=BODY_LIMIT,
    )
    initialise(settings)
    engine = create_engine(url)
    keyring = Keyring.open(settings.keys_dir)
    store = ArtifactStore(settings.store_dir)
    built = models()

    def put(name: str, key: str, provenance: Provenance) -> None:
        publish(
            engine, store, keyring, name=name, payload=built.payloads[key],
            signature=built.signatures[key], provenance=provenance, created_by="tests",
        )  # fmt: skip

    put("digits", "one", dp(1.0))
    put("digits", "two", dp(2.0))
    put("digits_loose", "one", dp(9.0))
    put("multi", "multi", Provenance(Privacy.IMPORTED))
    put("listed", "one", Provenance(Privacy.IMPORTED))
    put("secret", "one", Provenance(Privacy.IMPORTED))
    factory = session_factory(engine)
    with session_scope(factory) as session:
        catalog.set_label(session, "digits", 1, "canary", actor="tests")
        catalog.set_label(session, "digits", 2, "stable", actor="tests")
    instance = Instance(settings, engine)
    with session_scope(factory) as session:
        for name, roles in (
            ("alice", ["analyst"]),
            ("bob", ["auditor"]),
            ("carol", ["analyst"]),
            ("dave", []),
            ("eve", []),
        ):
            directory.add_principal(session, name, actor="tests", roles=roles)
        analysts = ["model:predict", "model:metadata", "model:list"]
        daily = Quota("day", requests=2)
        for rule in (
            Rule("allow", "role:analyst", analysts, model="digits*", max_epsilon=3, max_rows=100),
            Rule("allow", "role:analyst", analysts, model="multi"),
            Rule("allow", "role:analyst", ["model:list"], model="listed"),
            Rule("allow", "role:auditor", ["audit:read"]),
            Rule("deny", "role:analyst", ["model:predict"], label="canary"),
            Rule("allow", "user:dave", analysts, model="multi", max_rows=3, quotas=(daily,)),
        ):
            grants.grant(session, rule, actor="tests")
        hour = timedelta(hours=1)
        for name in ("alice", "bob", "carol", "dave", "eve"):
            issued = tokens.issue(session, keyring, settings, subject=name, ttl=hour, actor="t")
            instance.tokens[name] = issued.token
        instance.tokens.update(_bad_tokens(session, keyring, settings))
        directory.set_disabled(session, "carol", True)
    return instance


def _bad_tokens(session: Any, keyring: Keyring, settings: Settings) -> dict[str, str]:
    """Tokens the service must refuse, each for one reason."""
    hour = timedelta(hours=1)
    expired = tokens.issue(
        session, keyring, settings, subject="alice", ttl=hour, actor="t",
        now=utcnow() - timedelta(hours=3),
    ).token  # fmt: skip
    good = tokens.issue(session, keyring, settings, subject="alice", ttl=hour, actor="t").token
    head, body, signature = good.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    revoked = tokens.issue(session, keyring, settings, subject="alice", ttl=hour, actor="t")
    tokens.revoke(session, revoked.jti, actor="t")
    key = keyring.active(KeyKind.JWT)
    now = int(utcnow().timestamp())
    claims = {
        "iss": settings.issuer, "aud": "someone-else", "sub": "alice", "iat": now, "nbf": now,
        "exp": now + 600, "jti": "wrong-audience",
    }  # fmt: skip
    pem = keyring.private_key(key.id).pem()
    wrong_audience = jwt.encode(claims, pem, algorithm="EdDSA", headers={"kid": key.id})
    unknown_kid = jwt.encode({**claims, "aud": settings.audience}, pem, algorithm="EdDSA",
                             headers={"kid": "jwt-nosuchkey"})  # fmt: skip

    def b64(data: dict[str, Any]) -> str:
        import base64

        raw = json.dumps(data).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    alg_none = b64({"alg": "none", "kid": key.id}) + "." + b64({**claims, "aud": "secure-maas"})
    return {
        "expired": expired,
        "tampered": f"{head}.{body}.{flipped}",
        "revoked": revoked.token,
        "wrong_audience": wrong_audience,
        "unknown_kid": unknown_kid,
        "alg_none": alg_none + ".",
        "garbage": "not.a.token",
    }


def events(engine: Engine, **filters: Any) -> list[AuditRecord]:
    """Every audit event (matching `filters`), oldest first."""
    found: list[AuditRecord] = []
    with read_snapshot(engine) as connection:
        after = None
        while True:
            page = list_events(connection, AuditFilter(**filters), after=after, limit=1000)
            found += page
            if len(page) < 1000:
                return found
            after = page[-1].seq


def by_request(engine: Engine, request_ids: set[str]) -> dict[str, list[AuditRecord]]:
    """The events (model loads aside) of each request id."""
    columns = [events_table.c[name] for name in RECORD_COLUMNS]
    query = (
        sa.select(*columns)
        .where(events_table.c.request_id.in_(sorted(request_ids)))
        .where(events_table.c.action != "model:load")
        .order_by(events_table.c.seq)
    )
    found: dict[str, list[AuditRecord]] = {rid: [] for rid in request_ids}
    with read_snapshot(engine) as connection:
        for row in connection.execute(query):
            record = to_record(row)
            found[str(record.request_id)].append(record)
    return found


def call(
    url: str,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection (http.client sends a str header value as latin-1):
    the status, the headers and the body of the answer, whatever the status."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, dict(answer.headers), answer.read()
    finally:
        connection.close()


#: The name the model process gives itself (`/proc/PID/comm`).
MODEL_PROCESS = "smaas-model"


def child_processes(pid: int) -> list[int]:
    """The live child processes of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def comm(pid: int) -> str:
    """A process's name as the kernel knows it ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _workers(master: int) -> list[int]:
    return [pid for pid in child_processes(master) if comm(pid) != MODEL_PROCESS]


def model_process(master: int) -> int | None:
    """The pid of the model process of the gunicorn master `master` (None when there is none)."""
    found = [pid for pid in child_processes(master) if comm(pid) == MODEL_PROCESS]
    return found[0] if found else None


def maps_tensorflow(pid: int) -> bool:
    """Whether `pid` has TensorFlow's native library mapped (it imported TensorFlow)."""
    return "/tensorflow/" in Path(f"/proc/{pid}/maps").read_text()


def free_port() -> int:
    """A free port on 127.0.0.1, below Linux's ephemeral range (32768 and up), so no outgoing
    connection is given it meanwhile. Under pytest-xdist each worker takes only the ports
    congruent to its number modulo the worker count, so two workers never pick the same one.
    (Linux's own choice for port 0 cannot be split that way: it hands out odd ports only.)"""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    chooser = random.SystemRandom()
    while True:
        port = chooser.randrange(20000 + worker % count, 32768, count)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


@dataclass
class Served:
    """A running `secure-maas serve`: its URL, and `stop()` (SIGTERM, once)."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    stopping: bool = False

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if not self.stopping and self.process.poll() is None:
            self.stopping = True
            self.process.terminate()


@contextmanager
def server(
    instance: Instance, *args: str, limit: float = 120.0, env: Mapping[str, str] | None = None
) -> Iterator[Served]:
    """`secure-maas serve ARGS --port P` as a child process (`env` added to the instance's
    environment), once /readyz says ready (and, with `--workers N`, all N workers are forked);
    stopped with SIGTERM at the end, and then checked to have exited cleanly."""
    port = free_port()
    workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 0
    log = instance.settings.keys_dir.parent / f"server-{port}.log"
    with open(log, "wb") as output:
        child = subprocess.Popen(
            [str(SCRIPT), "serve", "--port", str(port), *args],
            env={**instance.env(), **(env or {})}, cwd=ROOT, stdout=output,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        served = Served(f"http://127.0.0.1:{port}", child, log)
        try:
            deadline = time.monotonic() + limit
            while True:
                if child.poll() is not None:
                    raise AssertionError(f"server exited early:\n{log.read_text()[-4000:]}")
                try:
                    with urllib.request.urlopen(served.url + "/readyz", timeout=2) as answer:
                        # Under gunicorn the first worker may answer before the master forked
                        # the others: ready means every worker is there.
                        if answer.status == 200 and len(_workers(child.pid)) >= workers:
                            break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"server not ready in {limit}s:\n{log.read_text()[-4000:]}"
                    )
                time.sleep(0.2)
            yield served
        finally:
            served.stop()
            try:
                code = child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
                raise AssertionError("server did not stop within 60 s of SIGTERM") from None
    text = log.read_text(errors="replace")
    assert code == 0, f"server exited with {code}:\n{text[-4000:]}"
    assert "Traceback" not in text, text[-4000:]
