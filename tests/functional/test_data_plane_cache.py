"""The model cache on both databases: facts without weights, loading, LRU by bytes, registry
changes seen within a second, tampered artifacts refused while loaded versions keep serving.

An artifact file that exists but cannot be read (a folder in its place; EACCES or EIO alike)
is refused like a missing or tampered one (`InvalidArtifact`, code `unreadable`): a
`model.refused` event, the fallback to the version a label or a bare name was serving, and a
finding of `models verify`."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.engine import Engine

from secure_maas.config import Settings
from secure_maas.dataplane.cache import (
    EVENT_EVICTED,
    EVENT_FALLBACK,
    EVENT_LOADED,
    EVENT_REFUSED,
    ModelCache,
    ModelUnavailable,
)
from secure_maas.db import create_engine
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import Keyring
from secure_maas.registry import catalog
from secure_maas.registry.artifacts import verify_all
from secure_maas.registry.catalog import ModelNotFound
from secure_maas.registry.models import Privacy, VersionStatus
from secure_maas.registry.publish import Provenance, publish
from secure_maas.registry.store import ArtifactStore
from tests.functional.serving_support import models

IMPORTED = Provenance(Privacy.IMPORTED)
Event = tuple[str, dict[str, Any]]


class Built:
    """Two small Keras models with one signature: their bytes, a batch, and their outputs."""

    def __init__(self) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        from secure_maas.registry.codec import encode_model
        from secure_maas.registry.signature import ServingSignature

        self.x = np.random.default_rng(5).normal(size=(7, 4)).astype(np.float32)
        self.payloads: list[bytes] = []
        self.outputs: list[np.ndarray] = []
        for seed in (1, 2):
            tf.keras.utils.set_random_seed(seed)
            inputs = tf.keras.Input((4,), name="x")
            hidden = tf.keras.layers.Dense(8, activation="relu")(inputs)
            outputs = tf.keras.layers.Dense(3, activation="softmax", name="probs")(hidden)
            model = tf.keras.Model(inputs, outputs)
            self.payloads.append(encode_model(model))
            self.outputs.append(model.predict(self.x, verbose=0))
        self.signature = ServingSignature.from_model(model).to_dict()


@pytest.fixture(scope="module")
def built() -> Built:
    return Built()


@pytest.fixture
def keyring(settings: Settings) -> Keyring:
    return Keyring.init(settings.keys_dir)[0]


@pytest.fixture
def store(settings: Settings) -> ArtifactStore:
    return ArtifactStore(settings.store_dir)


@pytest.fixture
def put(
    migrated_engine: Engine, store: ArtifactStore, keyring: Keyring, built: Built
) -> Callable[..., int]:
    def publish_one(
        name: str = "m",
        model: int = 0,
        *,
        payload: bytes | None = None,
        provenance: Provenance = IMPORTED,
        engine: Engine | None = None,
    ) -> int:
        row = publish(
            engine or migrated_engine, store, keyring, name=name,
            payload=built.payloads[model] if payload is None else payload,
            signature=built.signature, provenance=provenance, created_by="tester",
        )  # fmt: skip
        return row.version

    return publish_one


@pytest.fixture
def events() -> list[Event]:
    return []


@pytest.fixture
def make_cache(
    migrated_engine: Engine, store: ArtifactStore, keyring: Keyring, events: list[Event]
) -> Callable[..., ModelCache]:
    made: list[ModelCache] = []

    def build(**options: Any) -> ModelCache:
        options.setdefault("max_bytes", 1 << 30)
        options.setdefault("on_event", lambda kind, details: events.append((kind, details)))
        cache = ModelCache(migrated_engine, store, lambda: Keyring.open(keyring.folder), **options)
        made.append(cache)
        return cache

    yield build  # type: ignore[misc]
    for cache in made:
        cache.close()


def kinds(events: list[Event]) -> list[str]:
    return [kind for kind, _ in events]


def write(engine: Engine, change: Callable[[Any], object]) -> None:
    with session_scope(session_factory(engine)) as session:
        change(session)


def until(check: Callable[[], bool], limit: float = 5.0) -> float:
    """Seconds until `check()` holds (polling every 20 ms; gives up after `limit`)."""
    start = time.monotonic()
    while not check() and time.monotonic() - start < limit:
        time.sleep(0.02)
    return time.monotonic() - start


def resolves(cache: ModelCache, ref: str, version: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return cache.facts(ref).version == version
        except ModelNotFound:
            return False

    return check


def flip(path: Path, offset: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_facts_come_without_weights_then_the_model_serves_its_own_outputs(
    make_cache: Callable[..., ModelCache],
    put: Callable[..., int],
    built: Built,
    events: list[Event],
) -> None:
    dp = Provenance(Privacy.DP, dp={"epsilon": 1.25, "delta": 1e-5}, dataset_name="digits")
    put(provenance=dp)
    cache = make_cache()
    facts = cache.facts("m")
    assert (facts.name, facts.version, facts.active, facts.labels) == ("m", 1, True, ())
    assert facts.dp_epsilon == 1.25 and facts.guarantee()["dp"]["delta"] == 1e-5
    assert facts.signature.input_names == ["x"]
    for missing in ("absent", "m:9", "m@stable"):
        with pytest.raises(ModelNotFound):
            cache.facts(missing)
    assert cache.loaded() == [] and events == [] and not cache.ready("m")  # no weights yet

    entry = cache.get("m")
    np.testing.assert_allclose(entry.predict({"x": built.x})["probs"], built.outputs[0],
                               rtol=0, atol=1e-6)  # fmt: skip
    submitted = entry.batcher.submit({"x": built.x[:3]})["probs"]
    np.testing.assert_allclose(submitted, built.outputs[0][:3], rtol=0, atol=1e-6)
    assert cache.get("m:1") is entry and cache.ready("m")
    assert kinds(events) == [EVENT_LOADED] and events[0][1]["version"] == 1
    assert [f.version for f in cache.versions("m")] == [1] and len(cache.models()) == 1


def test_lru_is_bounded_by_plaintext_bytes(
    make_cache: Callable[..., ModelCache],
    put: Callable[..., int],
    built: Built,
    events: list[Event],
) -> None:
    for _ in range(3):
        put()
    size = len(built.payloads[0])
    cache = make_cache(max_bytes=2 * size + 10)
    cache.get("m:1")
    second = cache.get("m:2")
    second.predict({"x": built.x})  # starts its batcher
    cache.get("m:1")  # now the most recently used
    cache.get("m:3")
    assert cache.loaded() == [("m", 1), ("m", 3)]
    assert [d for k, d in events if k == EVENT_EVICTED] == [
        {"model": "m", "version": 2, "reason": "lru", "bytes": size}
    ]
    stats = cache.stats()
    assert stats.bytes == 2 * size <= stats.max_bytes and stats.evictions == 1
    # a request that resolved version 2 before the eviction still gets its answer
    np.testing.assert_allclose(second.predict({"x": built.x})["probs"], built.outputs[0],
                               rtol=0, atol=1e-6)  # fmt: skip


def test_registry_changes_reach_the_cache_within_one_second(
    make_cache: Callable[..., ModelCache],
    put: Callable[..., int],
    database_url: str,
    events: list[Event],
) -> None:
    put()
    cache = make_cache()
    assert cache.get("m").facts.version == 1
    other = create_engine(database_url)  # another worker's connection does the writing
    try:
        put(engine=other)
        assert until(resolves(cache, "m", 2)) <= 1.0

        write(other, lambda s: catalog.set_label(s, "m", 1, "stable", actor="admin"))
        assert until(resolves(cache, "m@stable", 1)) <= 1.0
        write(other, lambda s: catalog.set_label(s, "m", 2, "stable", actor="admin"))
        assert until(resolves(cache, "m@stable", 2)) <= 1.0

        assert cache.get("m").facts.version == 2
        write(other, lambda s: catalog.set_status(s, "m", 2, VersionStatus.DISABLED))
        assert until(resolves(cache, "m", 1)) <= 1.0
    finally:
        other.dispose()
    assert ("m", 2) not in cache.loaded()
    assert ("model.evicted", {"model": "m", "version": 2, "reason": "disabled",
                              "bytes": cache.facts("m").plaintext_bytes}) in events  # fmt: skip
    for ref in ("m:2", "m@stable"):
        with pytest.raises(ModelNotFound, match="disabled"):
            cache.get(ref)


def test_tampered_artifacts_are_refused_and_loaded_versions_keep_serving(
    make_cache: Callable[..., ModelCache],
    put: Callable[..., int],
    migrated_engine: Engine,
    store: ArtifactStore,
    built: Built,
    events: list[Event],
) -> None:
    put(model=0)
    put(model=1)
    write(migrated_engine, lambda s: catalog.set_label(s, "m", 1, "stable", actor="admin"))
    cache = make_cache()
    stable = cache.get("m@stable")
    assert stable.facts.version == 1

    flip(store.path("m", 1))  # the file of a loaded version is replaced: memory keeps serving
    np.testing.assert_allclose(cache.get("m:1").predict({"x": built.x})["probs"],
                               built.outputs[0], rtol=0, atol=1e-6)  # fmt: skip

    flip(store.path("m", 2))  # a version not loaded yet is refused, with the reason in the event
    with pytest.raises(ModelUnavailable) as caught:
        cache.get("m:2")
    assert "tamper" not in str(caught.value) and "digest" not in str(caught.value)
    refused = [d for k, d in events if k == EVENT_REFUSED]
    assert len(refused) == 1 and refused[0]["version"] == 2
    assert refused[0]["code"] and refused[0]["reason"]
    with pytest.raises(ModelUnavailable):
        cache.get("m:2")  # not tried again at once
    assert kinds(events).count(EVENT_REFUSED) == 1

    write(migrated_engine, lambda s: catalog.set_label(s, "m", 2, "stable", actor="admin"))
    cache.refresh(force=True)
    assert cache.facts("m@stable").version == 2
    assert cache.get("m@stable") is stable  # the label keeps serving what it served
    assert cache.ready("m@stable")
    fallback = [d for k, d in events if k == EVENT_FALLBACK]
    assert fallback == [{"model": "m", "version": 1, "ref": "m@stable", "refused_version": 2}]
    with pytest.raises(ModelUnavailable):
        cache.get("m")  # the newest version is the tampered one, never served here


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


def test_undecodable_payload_and_failing_event_sink(
    make_cache: Callable[..., ModelCache], put: Callable[..., int], events: list[Event]
) -> None:
    put("junk", payload=b"signed and sealed, but not a model")
    cache = make_cache()
    with pytest.raises(ModelUnavailable):
        cache.get("junk")
    assert events[-1][0] == EVENT_REFUSED and events[-1][1]["code"] == "undecodable"

    put("m")
    broken = make_cache(on_event=lambda kind, details: (_ for _ in ()).throw(OSError("audit")))
    with pytest.raises(OSError, match="audit"):
        broken.get("m")  # the audit sink failed: fail closed, and nothing is cached
    assert broken.loaded() == []


def test_concurrent_first_use_loads_once_and_preload_reports(
    make_cache: Callable[..., ModelCache], put: Callable[..., int], events: list[Event]
) -> None:
    from secure_maas.registry.codec import decode_model

    put()
    decodes: list[int] = []

    def counting(data: bytearray) -> Any:
        decodes.append(1)
        return decode_model(data)

    cache = make_cache(decode=counting)
    start = threading.Barrier(6)
    got: list[Any] = []

    def worker() -> None:
        start.wait()
        got.append(cache.get("m"))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(got) == 6 and all(entry is got[0] for entry in got)
    assert len(decodes) == 1 and kinds(events) == [EVENT_LOADED]
    assert cache.preload(["m", "absent", "m:9"]) == {
        "m": None,
        "absent": "no model named 'absent'",
        "m:9": "model 'm' has no version 9",
    }
