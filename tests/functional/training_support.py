"""Helpers shared by the training tests: an initialised instance, plans, ledger and audit rows."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from secure_maas.audit import KeyringAuditKeys
from secure_maas.audit.models import events_table
from secure_maas.config import Settings
from secure_maas.db import create_engine
from secure_maas.instance import initialise
from secure_maas.keys import Keyring
from secure_maas.registry.models import ModelVersion
from secure_maas.training import accounting
from secure_maas.training.ledger import RunPlan
from secure_maas.training.models import RegisteredDataset, TrainingRun


def initialised(settings: Settings) -> Engine:
    """Keys in place and the database at head, as `secure-maas init` leaves them."""
    initialise(settings)
    return create_engine(settings.database_url)


def audit_keys(settings: Settings) -> KeyringAuditKeys:
    return KeyringAuditKeys(Keyring.open(settings.keys_dir))


def plan(
    noise_multiplier: float,
    *,
    sampling_rate: float = 64 / 142,
    steps: int = 10,
    delta: float = 1e-5,
    model: str = "m",
    requested: float | None = None,
) -> RunPlan:
    """A DP run's plan with its exact privacy report (no TensorFlow needed)."""
    privacy = accounting.epsilon(noise_multiplier, sampling_rate, steps, delta)
    return RunPlan(
        model_name=model,
        arch="mlp",
        privacy=privacy,
        requested_epsilon=requested,
        batch_size=64,
        epochs=5,
        steps=steps,
        seed=0,
        test_fraction=0.2,
    )


def audit_rows(engine: Engine, action: str | None = None) -> list[dict[str, Any]]:
    query = sa.select(events_table).order_by(events_table.c.seq)
    if action is not None:
        query = query.where(events_table.c.action == action)
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def runs(engine: Engine) -> list[TrainingRun]:
    with Session(engine, expire_on_commit=False) as session:
        return list(session.execute(sa.select(TrainingRun).order_by(TrainingRun.id)).scalars())


def run_statuses(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(
            connection.execute(sa.select(TrainingRun.status).order_by(TrainingRun.id)).scalars()
        )


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def versions(engine: Engine) -> int:
    return count(engine, ModelVersion)


def datasets(engine: Engine) -> int:
    return count(engine, RegisteredDataset)


def reserve_in_child(
    database_url: str, keys_dir: str, dataset: str, noise: float, barrier: Any, out: Any
) -> None:
    """A second process's reservation, started at once with its rival through `barrier`;
    puts "reserved" or "refused" on `out` (a multiprocessing queue)."""
    from pathlib import Path

    from secure_maas.training import ledger

    engine = create_engine(database_url)
    keys = KeyringAuditKeys(Keyring.open(Path(keys_dir)))
    run_plan = plan(noise)
    engine.connect().close()  # connect before the race, not during it
    barrier.wait(timeout=120)
    try:
        ledger.reserve(engine, keys, dataset, run_plan, actor=f"process-{noise}")
        out.put("reserved")
    except ledger.BudgetExceeded:
        out.put("refused")
    finally:
        engine.dispose()
