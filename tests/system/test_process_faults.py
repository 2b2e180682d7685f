"""Process faults: SIGKILL at the worst moments, then prove nothing was lost,
half-written or left undecryptable, and that running the command again finishes the job.

- A gunicorn worker killed under load (PostgreSQL, 2 workers x 4 threads, 8 keep-alive clients;
  the victim is the worker holding the most client connections): every request answered 200
  has its audit event exactly once, the HMAC chain verifies, no answer is a 5xx, the clients cut
  off see only a dropped connection (the load client retries once on a fresh one), at most one
  request per client was recorded without being answered, and the master forks a replacement
  that stays up while the survivor keeps serving.
- The instance's model process killed under load: replaced by the master, workers untouched,
  only 200s and audited 503s meanwhile (an event the dead process took but never confirmed may
  stand beside its 503's own).
- `secure-maas train` killed mid-training: no version, no artifact or temp file in the store, the
  run marked "started, not finished" with its ε counted (DESIGN: a run that touched the data
  spends, however it ended) in `privacy report`, and a re-run publishes; the ledger composes both.
- `secure-maas models rewrap` killed while writing a new file, and its re-run killed right after
  a rename (file moved, row not yet): every artifact verifies and decrypts in each interrupted
  state; the next run moves every file and row to the new key and leaves no temp file, and the
  old service keys can then be retired with everything still opening.
- `secure-maas keys rotate` killed as its first new file appears (service, JWT) and as its
  manifest is replaced (each kind): the keyring loads with one active key per kind, artifacts
  open, tokens verify, the chain verifies, `jwks.json` never lags the manifest; each re-run
  rotates cleanly. A rotation in effect always has its `keys:rotate` event: the event is
  committed before the manifest takes the change (a kill in between leaves an event naming a
  key the manifest never took, never a rotation unrecorded).

Why: SIGKILL (the OOM killer, a node eviction, `kill -9`) runs no handler, no `finally` and no
`atexit`, so only the ordering of writes (temp file, fsync, rename; one transaction per change)
can keep these promises. Every kill is triggered by what the victim has visibly done (an output
line, a file appearing, a file renamed), not by a guessed delay; every wait is bounded.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from secure_maas.audit import KeyringAuditKeys
from secure_maas.audit.models import events_table
from secure_maas.auth import tokens
from secure_maas.auth.verify import Verifier
from secure_maas.crypto.envelope import inspect_artifact
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import KeyKind, Keyring
from secure_maas.registry import artifacts
from secure_maas.registry.models import Model, ModelVersion
from secure_maas.registry.publish import publish
from secure_maas.registry.store import ArtifactStore
from secure_maas.training.models import TrainingRun
from tests.functional.cli import SCRIPT, run_cli
from tests.functional.serving_support import (
    Instance,
    by_request,
    dp,
    model_process,
    models,
    server,
)
from tests.system.conftest import Report
from tests.system.support import (
    GUNICORN,
    Answer,
    Kind,
    Load,
    audit_intact,
    children,
    predict,
    wait_until,
)

CLIENTS = 8
DATASET = "faults-cancer"
BUDGET = 5.0
BULK = "faults-bulk"
BULK_VERSIONS = 16
TINY = ("--arch", "mlp", "--units", "16")
# Where `keys rotate` is killed: as its first new file appears (new key files, manifest not yet
# replaced: the same state for every kind, so twice) and as its manifest is replaced (each kind).
KILLS = (
    (KeyKind.SERVICE, "file"),
    (KeyKind.JWT, "file"),
    (KeyKind.SERVICE, "manifest"),
    (KeyKind.PUBLISHER, "manifest"),
    (KeyKind.JWT, "manifest"),
    (KeyKind.AUDIT, "manifest"),
)


# -- helpers -----------------------------------------------------------------------------------


def cli_env(instance: Instance) -> dict[str, str]:
    return {**instance.env(), "TF_CPP_MIN_LOG_LEVEL": "3"}


def ok(instance: Instance, *args: str) -> str:
    """`secure-maas ARGS` for `instance`; its stdout, after checking it succeeded."""
    result = run_cli(*args, env=cli_env(instance))
    assert result.returncode == 0, f"secure-maas {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def start(instance: Instance, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(SCRIPT), *args], env=cli_env(instance), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def kill_when(
    child: subprocess.Popen[str], happened: Callable[[], bool], *, limit: float = 60.0
) -> bool:
    """SIGKILL `child` as soon as `happened()` holds (polled about every 0.2 ms); False when
    the child exited on its own first. Waits for the child either way."""
    deadline = time.monotonic() + limit
    try:
        while child.poll() is None:
            if happened():
                os.kill(child.pid, signal.SIGKILL)  # not yet reaped: the pid is still ours
                child.wait(timeout=30)
                return child.returncode == -signal.SIGKILL
            if time.monotonic() > deadline:
                raise AssertionError(f"{child.args!r} did not reach its kill point in {limit} s")
            time.sleep(0.0002)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()
    return False


def last_seq(instance: Instance) -> int:
    with instance.engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.max(events_table.c.seq))).scalar() or 0)


def events_since(
    instance: Instance, seq: int, action: str, until: int | None = None
) -> list[sa.Row[Any]]:
    """(request_id, reason_code, decision, model) of every `action` event after `seq` (up to
    `until` included)."""
    c = events_table.c
    query = (
        sa.select(c.request_id, c.reason_code, c.decision, c.model)
        .where(c.seq > seq, c.action == action, c.seq <= (until or 2**62))
        .order_by(c.seq)
    )
    with instance.engine.connect() as connection:
        return list(connection.execute(query))


def version_rows(instance: Instance, name: str | None = None) -> list[ModelVersion]:
    query = sa.select(ModelVersion).join(Model).order_by(Model.name, ModelVersion.version)
    if name is not None:
        query = query.where(Model.name == name)
    with Session(instance.engine, expire_on_commit=False) as session:
        return list(session.execute(query).scalars())


def temp_files(root: Path) -> list[str]:
    """Temp files an interrupted atomic write left behind under `root`."""
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.tmp"))


def every_artifact_opens(instance: Instance) -> int:
    """Verify and decrypt every registered artifact with the keyring as it is on disk now (no
    orphan files either); how many there are."""
    keyring = Keyring.open(instance.settings.keys_dir)
    store = ArtifactStore(instance.settings.store_dir)
    with session_scope(session_factory(instance.engine)) as session:
        findings = list(artifacts.verify_all(session, store, keyring))
    bad = [f for f in findings if not f.ok]
    assert not bad, bad
    return len(findings)


def key_of(store: ArtifactStore, relative: str) -> str:
    with store.open(relative) as handle:
        return inspect_artifact(handle).service_key_id


# -- 1. a worker killed under load ---------------------------------------------------------------


def client_ports(pid: int, port: int) -> set[int]:
    """The client-side ports of the established connections to `port` that `pid` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()  # sl local remote state ... uid timeout inode
                if fields[3] != "01" or fields[9] not in inodes:
                    continue
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    found.add(int(fields[2].rsplit(":", 1)[1], 16))
    return found


def answered_by(pid: int, port: int, kind: Kind, limit: float) -> int:
    """Send `kind` on fresh connections until worker `pid` is the one that accepted and
    answered it (200); how many connections that took."""
    deadline = time.monotonic() + limit
    for tries in itertools.count(1):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request(kind.method, kind.path, body=kind.body, headers=dict(kind.headers))
            response = connection.getresponse()
            response.read()
            assert response.status == 200, response.status
            assert connection.sock is not None
            if connection.sock.getsockname()[1] in client_ports(pid, port):
                return tries
        finally:
            connection.close()
        if time.monotonic() > deadline:
            raise AssertionError(f"worker {pid} answered none of {tries} connections in {limit} s")
        time.sleep(0.05)
    raise AssertionError("unreachable")


def acknowledged(answers: list[Answer], after: float = 0.0) -> int:
    return sum(1 for a in answers if a.status == 200 and a.at > after)


def test_a_killed_worker_loses_no_acknowledged_event_and_is_replaced(
    pg_instance: Instance, report: Report
) -> None:
    instance = pg_instance
    first_seq = last_seq(instance)
    with server(instance, *GUNICORN) as served:
        master = served.process.pid
        wait_until(lambda: len(children(master)) == 2, 60, step=0.1)
        workers = children(master)
        load = Load([served.url], [predict(instance, "alice")], concurrency=CLIENTS, seconds=150)
        with load:
            wait_until(lambda: acknowledged(load.snapshot()) >= 40, 90, step=0.05)
            # The busier worker: its clients' requests are the ones cut off.
            held, victim = max((len(client_ports(pid, served.port)), pid) for pid in workers)
            assert held > 0, "no client connection on either worker"
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()

            def replaced() -> bool:
                now = children(master)
                return len(now) == 2 and victim not in now

            respawn_s = wait_until(replaced, 60, step=0.01)
            (newcomer,) = set(children(master)) - set(workers)
            # The service keeps answering after the replacement appeared.
            wait_until(lambda: acknowledged(load.snapshot(), killed + respawn_s) >= 40, 90,
                       step=0.05)  # fmt: skip
        assert served.process.poll() is None, "the master died with its worker"
        load_seq = last_seq(instance)  # every answered request's event is committed by now
        # The replacement itself serves: a request it accepted and answered.
        tries = answered_by(newcomer, served.port, predict(instance, "alice"), 90)
        serving_s = time.monotonic() - killed
        assert set(children(master)) == set(workers) - {victim} | {newcomer}
    answers = load.snapshot()

    statuses = Counter(a.status for a in answers)
    assert set(statuses) <= {200, 0}, f"only 200 or a dropped connection expected: {statuses}"
    dropped = statuses[0]
    assert dropped <= CLIENTS, f"{dropped} requests failed: more than were in flight at the kill"
    acked = {a.request_id for a in answers if a.status == 200}
    assert "" not in acked and len(acked) == statuses[200], "every 200 carries its own id"

    found = by_request(instance.engine, acked)
    wrong = {rid: len(records) for rid, records in found.items() if len(records) != 1}
    assert not wrong, f"acknowledged requests without exactly one audit event: {wrong}"
    assert all(records[0].decision == "allow" for records in found.values())
    recorded = events_since(instance, first_seq, "model:predict", until=load_seq)
    assert len(recorded) == len({row.request_id for row in recorded}), "an event twice"
    unanswered = {row.request_id for row in recorded} - acked
    assert len(unanswered) <= CLIENTS, "more recorded-but-unanswered requests than clients"
    checked = audit_intact(instance)

    report.note(
        "process faults",
        f"worker {victim} SIGKILLed under load ({CLIENTS} clients, {held} connected to it): "
        f"{statuses[200]} answered "
        f"200, each audited once; {dropped} dropped connections, 0 5xx; {len(unanswered)} "
        f"recorded but never answered (in flight on the dead worker); replacement {newcomer} "
        f"forked in {respawn_s:.2f} s, answered on a connection it accepted {serving_s:.1f} s "
        f"after the kill ({tries} connection(s)); chain of {checked} events verifies",
    )
    report.figure("worker_kill_acknowledged", statuses[200])
    report.figure("worker_kill_dropped", dropped)
    report.figure("worker_kill_5xx", sum(n for s, n in statuses.items() if s >= 500))
    report.figure("worker_kill_unanswered_recorded", len(unanswered))
    report.figure("worker_respawn_s", respawn_s)
    report.figure("worker_replacement_serving_s", serving_s)


# -- 1b. the model process killed under load ----------------------------------------------------


def test_a_killed_model_process_fails_closed_and_is_restarted(
    pg_instance: Instance, report: Report
) -> None:
    """The instance's model process (models and the shared audit writer) SIGKILLed under load:
    the master forks a new one and serving resumes; meanwhile requests get 503 (their events
    written by the workers' local writers), never a dropped connection; every 200 has exactly
    one event; a request whose event was handed to the dead process but never confirmed is a
    503 with its own event, beside which the unconfirmed one may exist (at most one per client
    in flight); the chain verifies."""
    instance = pg_instance
    with server(instance, *GUNICORN) as served:
        master = served.process.pid
        wait_until(lambda: model_process(master) is not None, 60, step=0.1)
        wait_until(lambda: len(children(master)) == 2, 60, step=0.1)
        victim = model_process(master)
        workers = children(master)
        load = Load([served.url], [predict(instance, "alice")], concurrency=CLIENTS, seconds=150)
        with load:
            wait_until(lambda: acknowledged(load.snapshot()) >= 40, 90, step=0.05)
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            respawn_s = wait_until(lambda: model_process(master) not in (None, victim), 60,
                                   step=0.01)  # fmt: skip
            wait_until(lambda: acknowledged(load.snapshot(), killed + respawn_s) >= 40, 120,
                       step=0.05)  # fmt: skip
            serving_s = time.monotonic() - killed
        assert served.process.poll() is None, "the master died with its model process"
        assert children(master) == workers, "the workers were not touched"
    answers = load.snapshot()
    statuses = Counter(a.status for a in answers)
    assert set(statuses) <= {200, 503}, f"only 200 or 503 expected: {statuses}"
    acked = {a.request_id for a in answers if a.status == 200}
    refused = {a.request_id for a in answers if a.status == 503}
    found = by_request(instance.engine, acked | refused)
    wrong = {rid: len(found[rid]) for rid in acked if len(found[rid]) != 1}
    assert not wrong, f"acknowledged requests without exactly one audit event: {wrong}"
    assert all(found[rid][0].http_status == 200 for rid in acked)
    unaudited = {rid for rid in refused if not found[rid] or found[rid][-1].http_status != 503}
    assert not unaudited, f"503s without their own event: {unaudited}"
    unconfirmed = {rid for rid in refused if len(found[rid]) > 1}
    assert all(len(found[rid]) <= 2 for rid in refused)
    assert len(unconfirmed) <= CLIENTS, "more unconfirmed audit writes than requests in flight"
    checked = audit_intact(instance)
    report.note(
        "process faults",
        f"model process {victim} SIGKILLed under load ({CLIENTS} clients): {statuses[200]} "
        f"answered 200, each audited once; {statuses[503]} answered 503, each audited "
        f"({len(unconfirmed)} beside an unconfirmed event that was committed); replacement in "
        f"{respawn_s:.2f} s, 40 more 200s {serving_s:.1f} s after the kill; chain of {checked} "
        "events verifies",
    )
    report.figure("model_kill_acknowledged", statuses[200])
    report.figure("model_kill_503", statuses[503])
    report.figure("model_respawn_s", respawn_s)
    report.figure("model_kill_serving_again_s", serving_s)


# -- 2. training killed mid-run ------------------------------------------------------------------


def runs_of(instance: Instance, model: str) -> list[TrainingRun]:
    query = sa.select(TrainingRun).where(TrainingRun.model_name == model).order_by(TrainingRun.id)
    with Session(instance.engine, expire_on_commit=False) as session:
        return list(session.execute(query).scalars())


def test_a_killed_training_run_publishes_nothing_stays_counted_and_a_rerun_publishes(
    pg_instance: Instance, report: Report
) -> None:
    from secure_maas.training import dataset_catalog, ledger

    instance = pg_instance
    model = "faults-doomed"
    keys = KeyringAuditKeys(Keyring.open(instance.settings.keys_dir))
    dataset_catalog.register_dataset(
        instance.engine,
        keys,
        name=DATASET,
        source="sklearn:breast_cancer",
        epsilon_budget=BUDGET,
        actor="tests",
    )
    first_seq = last_seq(instance)
    child = start(instance, "train", "--dataset", DATASET, "--model-name", model,
                  "--target-epsilon", "2", *TINY, "--epochs", "2000")  # fmt: skip
    assert child.stdout is not None
    seen: list[str] = []
    watchdog = threading.Timer(240, child.kill)
    watchdog.start()
    try:
        for line in child.stdout:
            seen.append(line)
            if line.startswith("epoch 2/"):  # training, long before any publishing
                os.kill(child.pid, signal.SIGKILL)
                break
        child.wait(timeout=30)
    finally:
        watchdog.cancel()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL, "".join(seen)[-3000:]

    # Nothing published, nothing half-written.
    assert version_rows(instance, model) == []
    folder = instance.settings.store_dir / model
    assert not folder.exists() or not list(folder.iterdir()), list(folder.iterdir())
    (run,) = runs_of(instance, model)
    assert run.status == "started" and run.model_version is None and run.finished_at is None
    assert run.epsilon is not None and 1.9 < run.epsilon <= 2.0
    codes = [(row.reason_code, row.decision) for row in events_since(instance, first_seq,
                                                                      "train:run")]  # fmt: skip
    assert codes == [("started", "allow")]
    assert events_since(instance, first_seq, "model:publish") == []

    # ... clearly marked, and its ε counted, in what the operator reads.
    (spent,) = json.loads(
        ok(instance, "privacy", "report", "--dataset", DATASET, "--format", "json")
    )
    assert (spent["started"], spent["finished"], spent["aborted"]) == (1, 0, 0)
    assert spent["counted_runs"] == 1
    assert spent["spent_epsilon_rdp"] == pytest.approx(run.epsilon, rel=1e-9)
    assert spent["remaining_epsilon"] == pytest.approx(BUDGET - run.epsilon, rel=1e-9)
    (row,) = spent["runs"]
    assert (row["status"], row["counted"], row["version"]) == ("started, not finished", "yes", None)

    # Running it again works, and the ledger composes both runs.
    began = time.monotonic()
    out = ok(instance, "train", "--dataset", DATASET, "--model-name", model,
             "--target-epsilon", "1", *TINY, "--epochs", "3")  # fmt: skip
    rerun_s = time.monotonic() - began
    assert f"published {model}:1" in out
    assert [r.status for r in runs_of(instance, model)] == ["started", "finished"]
    with Session(instance.engine) as session:
        (after,) = ledger.report(session, DATASET)
    assert after.spend.statuses == {"started": 1, "finished": 1} and after.spend.counted == 2
    assert run.epsilon < after.spend.epsilon_rdp <= BUDGET
    assert sorted(p.name for p in folder.iterdir()) == ["1.sealed"]
    every_artifact_opens(instance)
    audit_intact(instance)

    report.note(
        "process faults",
        f"train SIGKILLed at epoch 2: no version, no file; run 'started, not finished' with "
        f"ε={run.epsilon:.3f} counted; re-run published {model}:1 in {rerun_s:.1f} s, dataset "
        f"at ε={after.spend.epsilon_rdp:.3f} of {BUDGET:g} (RDP)",
    )
    report.figure("train_kill_counted_epsilon", run.epsilon)
    report.figure("train_rerun_s", rerun_s)


# -- 3. rewrap killed mid-file, then just after a replace ----------------------------------------


def publish_bulk(instance: Instance, count: int) -> None:
    """`count` versions of BULK, published with the library as training would."""
    built = models()
    keyring = Keyring.open(instance.settings.keys_dir)
    store = ArtifactStore(instance.settings.store_dir)
    for _ in range(count):
        publish(
            instance.engine, store, keyring, name=BULK, payload=built.payloads["one"],
            signature=built.signatures["one"], provenance=dp(1.0), created_by="tests",
        )  # fmt: skip


def temp_version(folder: Path) -> int:
    """The highest version whose new file is being written in `folder` (0: none)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    return max((int(n.split(".")[1]) for n in names if n.endswith(".tmp")), default=0)


@dataclass(frozen=True)
class Interrupted:
    """What a killed rewrap left: files on the new key, rows not yet saying so, temp files."""

    moved: int
    rows_behind: int
    temp_files: int

    def __str__(self) -> str:
        return f"{self.moved} moved, {self.rows_behind} row(s) behind, {self.temp_files} temp"


def interrupted(instance: Instance, store: ArtifactStore) -> Interrupted:
    active = Keyring.open(instance.settings.keys_dir).active(KeyKind.SERVICE).id
    on_new = [row for row in version_rows(instance) if key_of(store, row.artifact_path) == active]
    behind = sum(1 for row in on_new if row.service_key_id != active)
    return Interrupted(len(on_new), behind, len(temp_files(store.root)))


def test_a_killed_rewrap_leaves_everything_decryptable_and_a_rerun_finishes(
    pg_instance: Instance, report: Report
) -> None:
    instance = pg_instance
    publish_bulk(instance, BULK_VERSIONS)
    store = ArtifactStore(instance.settings.store_dir)
    folder = store.root / BULK
    keys_dir = instance.settings.keys_dir
    ok(instance, "keys", "rotate", "--kind", "service")
    active = Keyring.open(keys_dir).active(KeyKind.SERVICE).id

    # Kill 1: while the new file of version 6 (or later) of BULK is being written.
    child = start(instance, "models", "rewrap")
    assert kill_when(child, lambda: temp_version(folder) >= 6), "rewrap ended before version 6"
    first = interrupted(instance, store)
    assert first.moved >= 5
    total = every_artifact_opens(instance)  # moved or not, everything still decrypts

    # Kill 2: the re-run, the moment it has renamed BULK's last pending new file into place.
    pending = [row.artifact_path for row in version_rows(instance, BULK)
               if key_of(store, row.artifact_path) != active]  # fmt: skip
    assert pending, "the first kill came after every version of BULK had moved"
    last = store.root / pending[-1]
    inode = last.stat().st_ino
    child = start(instance, "models", "rewrap")
    assert kill_when(child, lambda: last.stat().st_ino != inode), "rewrap ended untouched"
    second = interrupted(instance, store)
    assert key_of(store, pending[-1]) == active
    assert every_artifact_opens(instance) == total

    # The next run finishes: every file and every row on the active key, no temp file left.
    out = ok(instance, "models", "rewrap")
    assert out.strip().endswith("already on the active service key"), out
    rows = version_rows(instance)
    assert {key_of(store, row.artifact_path) for row in rows} == {active}
    assert {row.service_key_id for row in rows} == {active}
    for row in rows:
        assert row.size_bytes == (store.root / row.artifact_path).stat().st_size
    assert temp_files(store.root) == [], "a killed write's temp file outlived the re-run"
    ok(instance, "models", "verify")

    # Proof that nothing still needs an old key: retire them all, everything still opens.
    for record in Keyring.open(keys_dir).usable(KeyKind.SERVICE):
        if record.id != active:
            ok(instance, "keys", "retire", record.id)
    assert [r.id for r in Keyring.open(keys_dir).usable(KeyKind.SERVICE)] == [active]
    assert every_artifact_opens(instance) == total
    audit_intact(instance)

    report.note(
        "process faults",
        f"models rewrap SIGKILLed mid-file ({first}) and its re-run just after a rename "
        f"({second}): all {total} artifacts decrypted each time; the third run finished, temp "
        "files gone, old service keys retired, everything still opens",
    )
    report.figure("rewrap_kill_artifacts", total)
    report.figure("rewrap_kill_rows_behind", second.rows_behind)


# -- 4. keys rotate killed -----------------------------------------------------------------------


def keyring_state(keys_dir: Path) -> tuple[set[str], int]:
    """The names in the keys folder and the manifest's inode."""
    return set(os.listdir(keys_dir)), (keys_dir / "keyring.json").stat().st_ino


def check_keyring(instance: Instance, kind: KeyKind, old_token: str) -> Keyring:
    """The keyring loads with one active key per kind, and what `kind` protects still works:
    artifacts open (service, publisher keys), tokens verify (JWT), the chain verifies (audit)."""
    keyring = Keyring.open(instance.settings.keys_dir)
    keyring.check()
    for each in KeyKind:
        assert sum(1 for r in keyring.records if r.kind is each and r.status == "active") == 1
    if kind in (KeyKind.SERVICE, KeyKind.PUBLISHER):
        every_artifact_opens(instance)
    elif kind is KeyKind.JWT:
        assert Verifier(instance.engine, instance.settings).verify(old_token).subject == "alice"
    else:
        audit_intact(instance)
    return keyring


def published_kids(keys_dir: Path) -> set[str]:
    return {key["kid"] for key in json.loads((keys_dir / "jwks.json").read_text())["keys"]}


def trusted_kids(keyring: Keyring) -> set[str]:
    return {record.id for record in keyring.usable(KeyKind.JWT)}


def test_a_killed_key_rotation_keeps_the_keyring_whole_and_a_rerun_rotates(
    pg_instance: Instance, report: Report
) -> None:
    instance = pg_instance
    keys_dir = instance.settings.keys_dir
    old_token = instance.tokens["alice"]
    phases: Counter[str] = Counter()
    unaudited = jwks_ahead = 0
    for kind, trigger in KILLS:
        before = Keyring.open(keys_dir).active(kind).id
        names, inode = keyring_state(keys_dir)
        seq = last_seq(instance)

        def happened(trigger: str = trigger, names: set[str] = names, inode: int = inode,
                     ) -> bool:  # fmt: skip
            now_names, now_inode = keyring_state(keys_dir)
            return now_inode != inode if trigger == "manifest" else now_names != names

        child = start(instance, "keys", "rotate", "--kind", kind.value)
        if not kill_when(child, happened):
            phases["finished first"] += 1
            continue
        # The interrupted state: whole and usable, whatever the moment of the kill.
        keyring = check_keyring(instance, kind, old_token)
        interrupted_active = keyring.active(kind).id
        rotated = interrupted_active != before
        audited = bool(events_since(instance, seq, "keys:rotate"))
        phases[("complete" if audited else "manifest, no event") if rotated
               else "before manifest"] += 1  # fmt: skip
        unaudited += rotated and not audited
        assert audited or not rotated, "a rotation took effect without its audit event"
        # jwks.json never lags the manifest (it may name a key about to become active).
        assert published_kids(keys_dir) >= trusted_kids(keyring), "jwks.json lags"
        jwks_ahead += published_kids(keys_dir) != trusted_kids(keyring)

        # Running it again rotates once more, cleanly, with its event.
        seq = last_seq(instance)
        ok(instance, "keys", "rotate", "--kind", kind.value)
        keyring = check_keyring(instance, kind, old_token)
        assert keyring.active(kind).id not in (before, interrupted_active)
        assert len(events_since(instance, seq, "keys:rotate")) == 1
        assert published_kids(keys_dir) == trusted_kids(keyring)

    # A token issued now is signed by the active JWT key and verifies; all keys load.
    keyring = Keyring.open(keys_dir)
    with session_scope(session_factory(instance.engine)) as session:
        issued = tokens.issue(session, keyring, instance.settings, subject="alice",
                              ttl=timedelta(minutes=5), actor="tests")  # fmt: skip
    verifier = Verifier(instance.engine, instance.settings)
    assert verifier.verify(issued.token).subject == "alice"
    assert verifier.verify(old_token).subject == "alice"
    ok(instance, "keys", "check")
    every_artifact_opens(instance)
    checked = audit_intact(instance)

    kills = sum(phases.values())
    named = {name for r in keyring.records for name in (r.private_file, r.public_file) if name}
    orphans = sorted(
        name for name in os.listdir(keys_dir)
        if name.endswith((".key", ".pub", ".tmp")) and name not in named
    )  # fmt: skip
    report.note(
        "process faults",
        f"keys rotate SIGKILLed {kills}x (at its first new file, or its manifest replaced): "
        f"{dict(phases)}; keyring whole, artifacts open, tokens verify every time; each re-run "
        f"rotated cleanly with its event and a true JWKS; jwks.json never lagged the manifest "
        f"({jwks_ahead}x a step ahead). Found: {unaudited} rotation(s) in effect without a "
        f"keys:rotate event; {len(orphans)} key file(s) no manifest names left in keys/ "
        f"(never trusted); chain of {checked} verifies",
    )
    report.figure("rotate_kills", kills)
    report.figure("rotate_unaudited", unaudited)
    report.figure("rotate_jwks_ahead", jwks_ahead)
    report.figure("rotate_orphan_key_files", len(orphans))
