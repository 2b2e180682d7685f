"""Storage faults.

Publishing (`secure-maas models import`, the real CLI in a child process) into a store folder
that is full or read-only must fail cleanly: exit status 1 with one `Error:` line and no
traceback, no temp file or partial artifact left in the store, no registry row (not even the
model's own row) and no `model:publish` audit event (by design, `cli/recording.py`: a change
that failed recorded nothing because nothing happened). Once the fault is lifted, the very same
command succeeds and `models verify`'s check (`verify_all`) finds the artifact intact and no
orphan file.

The faults are real: a 256 KiB tmpfs mounted on the model's store folder (the sealed artifact
is about 280 KB, so its write starts and then runs out of space) and a read-only bind mount of
the whole store. Where mounting is refused they fall back, never skip: full becomes
RLIMIT_FSIZE in the child (EFBIG), read-only becomes `chmod a-w` on every store folder with
CAP_DAC_OVERRIDE dropped from the child's capability bounding set when it runs as root (root
ignores modes otherwise; EACCES). A probe child proves each fault in effect before the CLI runs.
`SMAAS_TEST_STORAGE_FALLBACK=1` forces the fallbacks where mounting works.

Tampering while serving (gunicorn, 2 workers; the model process preloads `digits@stable` and
`digits`, version 2): a new version is published, its file on disk tampered with, and the `stable`
label moved to it. Five tampers: a flipped byte, a truncation, a validly signed artifact of another
version swapped in, a forged artifact of the same name and version sealed and signed with the real
keys but holding other weights (only the registry's digests tell), and a folder in its place that
cannot be read. The model process refuses it at its next load with a `model:load` audit event
(decision `error`, reason code `model.refused`, the envelope's code and reason), and the label and
the bare name keep being answered by version 2 (outputs compared with the Keras reference, and each
answer's own audit event names version 2), while asking for the tampered version by number is a 503
that does not say why. Then the file of the loaded version 2 itself is tampered with: the model
process keeps serving it from memory, and its replacement (SIGTERM to it; the master starts a new
one) refuses it with its own audit event, so answers go from 200 (version 2's outputs) to 503, never
to wrong outputs. The audit chain verifies at the end.
"""

from __future__ import annotations

import ctypes
import errno
import http.client
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import sqlalchemy as sa

from secure_maas.audit import AuditRecord
from secure_maas.crypto.envelope import seal
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import KeyKind, Keyring
from secure_maas.registry import catalog
from secure_maas.registry.artifacts import verify_all
from secure_maas.registry.models import Model, ModelVersion, VersionStatus
from secure_maas.registry.publish import publish
from secure_maas.registry.store import ArtifactStore
from tests.functional.serving_support import (
    SCRIPT,
    Instance,
    by_request,
    dp,
    events,
    model_process,
    models,
    server,
)
from tests.system.conftest import Report
from tests.system.support import GUNICORN, ROW, Kind, audit_intact, children, predict, wait_until

FULL_BYTES = 256 * 1024  # the tmpfs; the sealed model below is about 280 KB
FSIZE_LIMIT = 64 * 1024  # the fallback: the largest file the child may write
FORCE_FALLBACK = os.environ.get("SMAAS_TEST_STORAGE_FALLBACK") == "1"
CLI_TIMEOUT_S = 120
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE = 24, 1
UNAVAILABLE = {"error": "service unavailable"}
STREAK = 8  # answers in a row on fresh connections before a change counts as seen by all

# A child that tries to write `size` bytes into a new file at `path` (removed again) and
# prints the errno it got, 0 if the write went through: proof that a fault is in effect.
PROBE = """
import os, sys
path, size = sys.argv[1], int(sys.argv[2])
try:
    with open(path, "xb") as handle:
        handle.write(bytes(size))
        handle.flush()
        os.fsync(handle.fileno())
except OSError as exc:
    print(exc.errno)
else:
    print(0)
finally:
    if os.path.lexists(path):
        os.unlink(path)
"""


# -- faults ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """A storage fault in effect: how it was made, the errno a writer gets, and what the child
    process must run before exec for it to apply (None when it applies to everyone)."""

    how: str
    errno: int
    preexec: Callable[[], None] | None = None

    @property
    def message(self) -> str:
        return os.strerror(self.errno)


def _mount(*args: str) -> bool:
    """`mount ARGS`; False (never an error) where mounting is refused or forced off."""
    if FORCE_FALLBACK or os.geteuid() != 0:
        return False
    try:
        done = subprocess.run(["mount", *args], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _umount(target: Path) -> None:
    """Unmount `target`; lazily if it is busy (nothing may stay mounted), then fail."""
    done = subprocess.run(["umount", str(target)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)
        raise AssertionError(f"umount {target} failed: {done.stderr.strip()}")


def _limit_file_size() -> None:
    # Python ignores SIGXFSZ, so writing past the limit fails with EFBIG instead of killing.
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


def _drop_dac_override() -> None:
    # Root regains its bounding set at exec: dropping the capability there is what sticks.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE)")


@contextmanager
def store_full(folder: Path) -> Iterator[Fault]:
    """`folder` (a model's store folder) is full: a 256 KiB tmpfs, else RLIMIT_FSIZE."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if _mount("-t", "tmpfs", "-o", f"size={FULL_BYTES},mode=0700", "tmpfs", str(folder)):
        try:
            yield Fault("a 256 KiB tmpfs on the model's folder", errno.ENOSPC)
        finally:
            _umount(folder)
    else:
        yield Fault(f"RLIMIT_FSIZE of {FSIZE_LIMIT} bytes", errno.EFBIG, _limit_file_size)


@contextmanager
def store_read_only(store: Path) -> Iterator[Fault]:
    """The whole store is read-only: a read-only bind mount, else every folder `chmod a-w`
    (and, as root, the child without CAP_DAC_OVERRIDE)."""
    if _mount("--bind", "-o", "ro", str(store), str(store)):
        try:
            yield Fault("a read-only bind mount of the store", errno.EROFS)
        finally:
            _umount(store)
        return
    folders = [store, *(p for p in store.rglob("*") if p.is_dir() and not p.is_symlink())]
    modes = {folder: folder.stat().st_mode & 0o7777 for folder in folders}
    try:
        for folder, mode in modes.items():
            folder.chmod(mode & ~0o222)
        preexec = _drop_dac_override if os.geteuid() == 0 else None
        yield Fault("chmod a-w, without CAP_DAC_OVERRIDE", errno.EACCES, preexec)
    finally:
        for folder, mode in modes.items():
            folder.chmod(mode)


def prove(fault: Fault, path: Path, size: int) -> None:
    """Fail (never skip) unless writing `size` bytes at `path` now fails as `fault` says."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), str(size)],
        capture_output=True, text=True, timeout=30, preexec_fn=fault.preexec,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = int(done.stdout.strip())
    assert got == fault.errno, f"{fault.how} is not in effect: probe got errno {got}"


# -- the CLI and what it left ------------------------------------------------------------------


def cli(
    instance: Instance, *args: str, preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real `secure-maas ARGS` for this instance, in a child process."""
    return subprocess.run(
        [str(SCRIPT), *args], env=instance.env(), capture_output=True, text=True,
        timeout=CLI_TIMEOUT_S, preexec_fn=preexec,
    )  # fmt: skip


def start_cli(
    instance: Instance, args: tuple[str, ...], preexec: Callable[[], None] | None
) -> subprocess.Popen[str]:
    """`secure-maas ARGS` started in a child process (see `cli_together`)."""
    pipe = subprocess.PIPE
    command = [str(SCRIPT), *args]
    env = instance.env()
    return subprocess.Popen(command, env=env, stdout=pipe, stderr=pipe, text=True,
                            preexec_fn=preexec)  # fmt: skip


def cli_together(
    instance: Instance, commands: list[tuple[str, ...]], preexec: Callable[[], None] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Several `secure-maas` commands run at the same time; their results, in order."""
    started = [start_cli(instance, args, preexec) for args in commands]
    results = []
    for child in started:
        try:
            out, err = child.communicate(timeout=CLI_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise
        results.append(subprocess.CompletedProcess(child.args, child.returncode, out, err))
    return results


def clean_error(done: subprocess.CompletedProcess[str], expect: str) -> str:
    """The one `Error:` line of a failed command (exit 1, last line, no traceback)."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], done.stderr
    assert expect in errors[0], errors[0]
    return errors[0]


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under `root`, hidden ones included: (size, mtime) of files, (-1, 0) else."""
    found: dict[str, tuple[int, int]] = {}
    for path in root.rglob("*"):
        info = path.lstat()
        shape = (info.st_size, info.st_mtime_ns) if path.is_file() else (-1, 0)
        found[path.relative_to(root).as_posix()] = shape
    return found


def registered(instance: Instance, name: str) -> tuple[bool, list[int]]:
    """Whether `name` has a `models` row, and its version numbers."""
    with instance.engine.connect() as connection:
        model = connection.execute(sa.select(Model.id).where(Model.name == name)).first()
        versions = connection.execute(
            sa.select(ModelVersion.version)
            .join(Model, Model.id == ModelVersion.model_id)
            .where(Model.name == name)
            .order_by(ModelVersion.version)
        ).scalars()
        return model is not None, list(versions)


def verified(instance: Instance, name: str) -> list[tuple[int | None, str]]:
    """What `models verify NAME` finds, file by file (orphan files included): (version, code)."""
    store = ArtifactStore(instance.settings.store_dir)
    keyring = Keyring.open(instance.settings.keys_dir)
    with session_scope(session_factory(instance.engine)) as session:
        return [(f.version, f.code) for f in verify_all(session, store, keyring, name)]


def published(instance: Instance, name: str) -> list[int | None]:
    """The versions of `name` that `model:publish` audit events record."""
    return [e.model_version for e in events(instance.engine, action="model:publish", model=name)]


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Keras model made elsewhere whose sealed artifact (about 280 KB) cannot fit the tmpfs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(11)
    inputs = tf.keras.Input((64,), name="features")
    hidden = tf.keras.layers.Dense(1024, activation="relu", name="hidden")(inputs)
    outputs = tf.keras.layers.Dense(3, activation="softmax", name="probs")(hidden)
    path = tmp_path_factory.mktemp("elsewhere") / "churn.keras"
    tf.keras.Model(inputs, outputs).save(path)
    return path


# -- publishing into a faulty store ------------------------------------------------------------


def test_publish_into_a_full_store_fails_cleanly_then_succeeds(
    pg_instance: Instance, keras_file: Path, report: Report
) -> None:
    instance = pg_instance
    store = instance.settings.store_dir
    folder = store / "churn"
    folder.mkdir(mode=0o700, exist_ok=True)
    before = tree(store)
    command = ("models", "import", str(keras_file), "--name", "churn")
    with store_full(folder) as fault:
        prove(fault, folder / ".probe", 2 * FULL_BYTES)
        started = time.monotonic()
        failed = cli(instance, *command, preexec=fault.preexec)
        failed_s = time.monotonic() - started
        line = clean_error(failed, f"cannot write artifact {folder / '1.sealed'}: {fault.message}")
        assert sorted(os.listdir(folder)) == []  # no temp file, no partial artifact
    assert tree(store) == before
    assert registered(instance, "churn") == (False, [])  # not even the model's row
    assert published(instance, "churn") == []

    done = cli(instance, *command)
    assert done.returncode == 0, done.stderr
    assert "published churn:1 " in done.stdout
    assert registered(instance, "churn") == (True, [1])
    assert published(instance, "churn") == [1]
    assert sorted(os.listdir(folder)) == ["1.sealed"]
    assert verified(instance, "churn") == [(1, "ok")]
    report.note("storage", f"full store ({fault.how}): {line!r} in {failed_s:.1f} s")
    report.figure("storage_full_fallback", int(fault.preexec is not None))


def test_publish_into_a_read_only_store_fails_cleanly_then_succeeds(
    pg_instance: Instance, keras_file: Path, report: Report
) -> None:
    instance = pg_instance
    store = instance.settings.store_dir
    before = tree(store)
    versions = registered(instance, "churn")[1]
    following = max(versions, default=0) + 1
    existing = ("models", "import", str(keras_file), "--name", "churn")
    fresh = ("models", "import", str(keras_file), "--name", "churn_fresh")
    with store_read_only(store) as fault:
        prove(fault, store / "digits" / ".probe", 16)
        # Both at once (each starts TensorFlow): a model with a folder, and a new model.
        results = cli_together(instance, [existing, fresh], preexec=fault.preexec)
        into_folder = clean_error(
            results[0], f"cannot write artifact {store / 'churn' / f'{following}.sealed'}"
        )
        assert fault.message in into_folder
        new_folder = clean_error(
            results[1], f"cannot create store folder {store / 'churn_fresh'}: {fault.message}"
        )
    assert tree(store) == before  # nothing written, nothing left
    assert registered(instance, "churn") == (bool(versions), versions)
    assert registered(instance, "churn_fresh") == (False, [])
    assert published(instance, "churn") == versions and published(instance, "churn_fresh") == []

    done = cli(instance, *existing)
    assert done.returncode == 0, done.stderr
    assert f"published churn:{following} " in done.stdout
    assert registered(instance, "churn") == (True, [*versions, following])
    assert published(instance, "churn") == [*versions, following]
    assert verified(instance, "churn") == [(v, "ok") for v in [*versions, following]]
    report.note("storage", f"read-only store ({fault.how}): {into_folder!r}; {new_folder!r}")
    report.figure("storage_read_only_fallback", int(fault.preexec is not None))


# -- tampering while serving -------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    request_id: str
    retry_after: str | None


def call(url: str, kind: Kind) -> Reply:
    """`kind` on a fresh connection, so that either worker may take it."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(kind.method, kind.path, body=kind.body, headers=dict(kind.headers))
        response = connection.getresponse()
        body = response.read()
        request_id = response.headers.get("X-Request-Id", "")
        return Reply(response.status, body, request_id, response.headers.get("Retry-After"))
    finally:
        connection.close()


def flip(path: Path) -> str:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside the body: an encrypted chunk
    path.write_bytes(bytes(data))
    return "flipped a byte"


def truncate(path: Path) -> str:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    return "cut the last 100 bytes"


def unreadable(path: Path) -> str:
    path.unlink()
    path.mkdir()  # opening it fails as EACCES or EIO would: an OSError
    return "replaced by a folder (unreadable)"


def swap_in(source: Path) -> Callable[[Path], str]:
    def swap(path: Path) -> str:
        path.write_bytes(source.read_bytes())
        return f"swapped in {source.parent.name}/{source.name} (validly signed)"

    return swap


def forge(keyring: Keyring) -> Callable[[Path], str]:
    """A fresh artifact for the same name and version, sealed and signed with the real keys,
    holding other weights (same serving signature): only the registry's digests tell."""

    def forged(path: Path) -> str:
        import tensorflow as tf

        from secure_maas.registry.codec import encode_model

        tf.keras.utils.set_random_seed(4)
        inputs = tf.keras.Input((4,), name="x")
        same = models().keras["one"].layers[1].name  # same names: the same plaintext length
        hidden = tf.keras.layers.Dense(8, activation="relu", name=same)(inputs)
        model = tf.keras.Model(inputs, tf.keras.layers.Dense(3, "softmax", name="probs")(hidden))
        service = keyring.active(KeyKind.SERVICE)
        publisher = keyring.active(KeyKind.PUBLISHER)
        metadata = {"signature": models().signatures["one"], **dp(1.5).as_metadata()}
        with open(path, "wb") as out:
            seal(
                encode_model(model), out, model="digits", version=int(path.stem),
                metadata=metadata, recipient=keyring.public_key(service.id),
                recipient_key_id=service.id, signer=keyring.private_key(publisher.id),
                signer_key_id=publisher.id,
            )  # fmt: skip
        return "forged a same-name same-version artifact with other weights (validly signed)"

    return forged


def model_loads(instance: Instance, version: int, kind: str) -> list[AuditRecord]:
    """The `model:load` events of digits:`version` whose reason code is `kind`."""
    return [
        event
        for event in events(instance.engine, action="model:load", model="digits")
        if event.model_version == version and event.reason_code == kind
    ]


def refusals(instance: Instance, version: int) -> list[dict[str, object]]:
    """The refusals of digits:`version` in the audit log: the envelope's code and reason."""
    found = []
    for event in model_loads(instance, version, "model.refused"):
        assert event.decision == "error" and event.actor_kind == "service", event
        assert event.reason, event
        found.append({"reason": event.reason, **event.details})
    return found


@dataclass
class Prober:
    """Asks the server for predictions and checks that each answer is either version 2's
    outputs (200) or a bare 503; keeps the request ids to check against the audit log."""

    url: str
    base: Kind
    expected: npt.NDArray[Any]
    answered: dict[int, list[str]] = field(default_factory=lambda: {200: [], 503: []})

    def kind(self, path: str, name: str) -> Kind:
        return replace(self.base, name=name, path=f"/v1/models/{path}:predict")

    def latest_and_stable(self, rounds: int, *, allow_503: bool = False) -> Counter[int]:
        statuses: Counter[int] = Counter()
        kinds = (self.kind("digits", "latest"), self.kind("digits/labels/stable", "stable"))
        for _ in range(rounds):
            for kind in kinds:
                reply = call(self.url, kind)
                statuses[reply.status] += 1
                if reply.status == 200:
                    outputs = np.array(json.loads(reply.body)["predictions"], dtype=np.float32)
                    assert np.allclose(outputs, self.expected, atol=1e-5, rtol=0), reply
                else:
                    assert allow_503 and reply.status == 503, (kind.name, reply)
                    assert json.loads(reply.body) == UNAVAILABLE, reply  # no reason given
                self.answered[reply.status].append(reply.request_id)
        return statuses

    def streak(self, kind: Kind, status: int, limit: float = 10.0) -> float:
        """Seconds until STREAK answers in a row to `kind` were `status`: every worker saw the
        registry change (the other status, 404 or 503, until then)."""
        run = [0]

        def check() -> bool:
            reply = call(self.url, kind)
            assert reply.status in (404, 503), reply
            run[0] = run[0] + 1 if reply.status == status else 0
            return run[0] >= STREAK

        return wait_until(check, limit, step=0.02)


def test_tampered_artifacts_are_refused_while_the_loaded_version_keeps_serving(
    pg_instance: Instance, report: Report
) -> None:
    instance = pg_instance
    store = ArtifactStore(instance.settings.store_dir)
    keyring = Keyring.open(instance.settings.keys_dir)
    factory = session_factory(instance.engine)
    built = models()
    row = np.array([ROW], dtype=np.float32)
    expected = built.predict("two", row)["probs"]
    assert not np.allclose(expected, built.predict("one", row)["probs"], atol=1e-3)
    tampers: list[tuple[Callable[[Path], str], str]] = [
        (flip, "chunk_auth"),
        (truncate, "truncated"),
        (swap_in(store.path("digits", 1)), "version_mismatch"),
        (forge(keyring), "digest_mismatch"),
        (unreadable, "unreadable"),
    ]
    preload = ("--preload", "digits@stable", "--preload", "digits")
    with server(instance, *GUNICORN, *preload) as served:
        master = served.process.pid
        wait_until(lambda: len(children(master)) == 2, 60, step=0.2)
        # The model process preloaded version 2 (one event), for the label and the bare name.
        wait_until(lambda: len(model_loads(instance, 2, "model.loaded")) >= 1, 90, step=0.2)
        probe = Prober(served.url, predict(instance, "alice"), expected)
        assert probe.latest_and_stable(4) == {200: 8}

        tampered: list[int] = []
        seen: list[float] = []
        for tamper, code in tampers:
            version = publish(
                instance.engine, store, keyring, name="digits", payload=built.payloads["one"],
                signature=built.signatures["one"], provenance=dp(1.5), created_by="tests",
            ).version  # fmt: skip
            tampered.append(version)
            what = tamper(store.path("digits", version))
            with session_scope(factory) as session:
                catalog.set_label(session, "digits", version, "stable", actor="tests")
            by_number = probe.kind(f"digits/versions/{version}", f"v{version}")
            seen_s = probe.streak(by_number, 503)
            seen.append(seen_s)
            reply = call(served.url, by_number)  # asked by number: no fallback
            assert (reply.status, reply.retry_after) == (503, "5")
            assert json.loads(reply.body) == UNAVAILABLE  # the reason stays in the audit log
            assert probe.latest_and_stable(6) == {200: 12}  # by version 2, from memory
            found = refusals(instance, version)
            assert len(found) == 1, found  # by the one model process (retried after 30 s)
            assert {f["code"] for f in found} == {code}, found
            fallbacks = model_loads(instance, 2, "model.fallback")
            assert any(e.details.get("refused_version") == version for e in fallbacks)
            report.note(
                "storage",
                f"digits:{version} {what}: refused ({code}: {found[0]['reason']}) by the "
                f"model process within {seen_s:.2f} s; latest and stable answered by v2",
            )

        # Back to version 2 everywhere, then tamper with the file of the loaded version itself.
        with session_scope(factory) as session:
            catalog.set_label(session, "digits", 2, "stable", actor="tests")
            for version in tampered:
                catalog.set_status(session, "digits", version, VersionStatus.DISABLED)
        probe.streak(probe.kind(f"digits/versions/{tampered[-1]}", "disabled"), 404)
        flip(store.path("digits", 2))
        assert probe.latest_and_stable(6) == {200: 12}  # in memory, whatever the file holds

        replacing: Counter[int] = Counter()
        old = model_process(master)
        assert old is not None
        os.kill(old, signal.SIGTERM)  # the master starts a new model process, which loads afresh
        wait_until(lambda: model_process(master) not in (None, old), 60, step=0.2)
        wait_until(lambda: len(refusals(instance, 2)) >= 1, 90, step=0.2)  # refused at its boot
        replacing += probe.latest_and_stable(8, allow_503=True)
        assert probe.latest_and_stable(6, allow_503=True) == {503: 12}  # nothing holds v2 now
        assert {f["code"] for f in refusals(instance, 2)} == {"chunk_auth"}

    # Every answer's own audit event: version 2 answered each 200, each 503 says unavailable.
    recorded = by_request(instance.engine, {*probe.answered[200], *probe.answered[503]})
    for request_id in probe.answered[200]:
        (event,) = recorded[request_id]
        assert (event.http_status, event.model_version) == (200, 2), event
    for request_id in probe.answered[503]:
        (event,) = recorded[request_id]
        assert (event.http_status, event.reason_code) == (503, "unavailable"), event
    checked = audit_intact(instance)
    report.note(
        "storage",
        "digits:2 tampered while loaded: served from memory, refused by the new model process "
        f"(answers while it was replaced: {dict(sorted(replacing.items()))})",
    )
    report.figure("storage_tamper_refused_loads", sum(len(refusals(instance, v)) for v in tampered))
    report.figure("storage_refused_everywhere_max_s", max(seen))
    report.figure("storage_tamper_answers_v2", len(probe.answered[200]))
    report.figure("storage_tamper_answers_503", len(probe.answered[503]))
    report.figure("storage_audit_events", checked)
