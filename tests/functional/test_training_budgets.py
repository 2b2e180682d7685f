"""A budget belongs to the data: duplicates refused, shared budgets, non-private runs, two
processes racing for the last of a budget, and datasets registered before identities existed.
On both databases."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from secure_maas.config import Settings
from secure_maas.db import create_engine, migrate
from secure_maas.db.session import session_factory, session_scope
from secure_maas.training import accounting, dataset_catalog, ledger
from secure_maas.training.dataset_catalog import DuplicateData, InvalidBudget
from secure_maas.training.datasets import fingerprint_v1, load_dataset
from secure_maas.training.ledger import NonPrivateRefused, RunPlan
from secure_maas.training.models import RegisteredDataset
from tests.functional.training_support import (
    audit_keys,
    audit_rows,
    datasets,
    initialised,
    plan,
    reserve_in_child,
    run_statuses,
)


@pytest.fixture
def instance(settings: Settings) -> Iterator[Engine]:
    engine = initialised(settings)
    yield engine
    engine.dispose()


def register(engine: Engine, settings: Settings, name: str, source: str, **options):
    return dataset_catalog.register_dataset(
        engine, audit_keys(settings), name=name, source=source, actor="tester", **options
    )


def cancer_csv(path: Path, *, seed: int, numeric_labels: bool) -> str:
    """breast cancer written as CSV with its rows shuffled and, optionally, 0/1 labels."""
    ds = load_dataset("sklearn:breast_cancer")
    order = np.random.default_rng(seed).permutation(ds.n)
    names = [f"feature {i}" for i in range(ds.x.shape[1])]
    lines = [",".join(["diagnosis", *names])]
    raw = load_raw_cancer()
    for i in order:
        label = str(ds.y[i]) if numeric_labels else ds.classes[ds.y[i]]
        lines.append(",".join([label, *(repr(float(v)) for v in raw[i])]))
    path.write_text("\n".join(lines) + "\n")
    return f"csv:{path}"


def load_raw_cancer() -> np.ndarray:
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer().data


def non_private_plan() -> RunPlan:
    return RunPlan(
        model_name="m",
        arch="mlp",
        privacy=None,
        requested_epsilon=None,
        batch_size=64,
        epochs=5,
        steps=10,
        seed=0,
        test_fraction=0.2,
    )


def spend(engine: Engine, name: str) -> ledger.Spend:
    with session_scope(session_factory(engine)) as session:
        return ledger.report(session, name)[0].spend


def test_the_same_data_under_another_name_is_refused_naming_the_first(
    instance: Engine, settings: Settings, tmp_path: Path
) -> None:
    register(instance, settings, "bc", "sklearn:breast_cancer", epsilon_budget=1.0)
    attempts = [
        ("bc-again", "sklearn:breast_cancer"),
        ("bc-shuffled", cancer_csv(tmp_path / "a.csv", seed=1, numeric_labels=False)),
        ("bc-relabelled", cancer_csv(tmp_path / "b.csv", seed=2, numeric_labels=True)),
    ]
    for name, source in attempts:
        label = {"label_column": "diagnosis"} if source.startswith("csv:") else {}
        with pytest.raises(DuplicateData, match="already registered as 'bc'") as refused:
            register(instance, settings, name, source, epsilon_budget=1.0, **label)
        assert refused.value.existing == "bc" and "--budget-of bc" in str(refused.value)
    assert datasets(instance) == 1
    denied = [e for e in audit_rows(instance, "dataset:register") if e["decision"] == "deny"]
    assert [e["reason_code"] for e in denied] == ["duplicate-data"] * 3
    # One record fewer is other data (overlaps need --budget-of, which no hash can see).
    fewer = tmp_path / "fewer.csv"
    fewer.write_text("".join((tmp_path / "a.csv").read_text().splitlines(True)[:-1]))
    register(
        instance,
        settings,
        "bc-minus-one",
        f"csv:{fewer}",
        label_column="diagnosis",
        epsilon_budget=1.0,
    )


def test_budget_of_shares_one_budget_and_one_ledger(
    instance: Engine, settings: Settings, tmp_path: Path
) -> None:
    one = plan(2.0)
    both = accounting.compose_rdp([one.privacy.rdp] * 2, 1e-5)
    three = accounting.compose_rdp([one.privacy.rdp] * 3, 1e-5)
    budget = (both + three) / 2  # room for two runs, not for three
    register(instance, settings, "bc", "sklearn:breast_cancer", epsilon_budget=budget)
    copy = cancer_csv(tmp_path / "copy.csv", seed=3, numeric_labels=True)
    shared = register(instance, settings, "bc-copy", copy, label_column="diagnosis", budget_of="bc")
    assert shared.owner.name == "bc" and shared.row.epsilon_budget is None
    keys = audit_keys(settings)
    ledger.reserve(instance, keys, "bc", one, actor="tester")
    ledger.reserve(instance, keys, "bc-copy", one, actor="tester")
    for name in ("bc", "bc-copy"):
        assert spend(instance, name).epsilon_rdp == pytest.approx(both)
        assert spend(instance, name).dataset == "bc" and spend(instance, name).counted == 2
    with pytest.raises(ledger.BudgetExceeded):
        ledger.reserve(instance, keys, "bc-copy", one, actor="tester")
    # Joining needs the budget the data already has, and takes nothing of its own.
    register(instance, settings, "wine", "sklearn:wine", epsilon_budget=5.0)
    with pytest.raises(DuplicateData, match="--budget-of wine is another budget"):
        register(instance, settings, "bc-3", "sklearn:breast_cancer", budget_of="wine")
    for extra in ({"epsilon_budget": 1.0}, {"delta": 1e-6}, {"allow_non_private": True}):
        with pytest.raises(InvalidBudget, match="takes its ε, δ and allow-non-private"):
            register(instance, settings, "bc-4", "sklearn:breast_cancer", budget_of="bc", **extra)
    with pytest.raises(dataset_catalog.UnknownDataset):
        register(instance, settings, "bc-5", "sklearn:breast_cancer", budget_of="nope")
    assert datasets(instance) == 3


def test_runs_without_a_guarantee_need_data_that_allows_them(
    instance: Engine, settings: Settings
) -> None:
    keys = audit_keys(settings)
    register(instance, settings, "wine", "sklearn:wine", epsilon_budget=1.0)
    with pytest.raises(NonPrivateRefused, match="without --allow-non-private"):
        ledger.reserve(instance, keys, "wine", non_private_plan(), actor="tester")
    assert run_statuses(instance) == ["refused"]
    denied = audit_rows(instance, "train:run")[-1]
    assert denied["decision"] == "deny" and denied["reason_code"] == "non-private-refused"

    register(
        instance,
        settings,
        "bc",
        "sklearn:breast_cancer",
        epsilon_budget=1.0,
        allow_non_private=True,
    )
    ledger.reserve(instance, keys, "bc", non_private_plan(), actor="tester")
    assert run_statuses(instance) == ["refused", "started"]
    assert spend(instance, "bc").non_private == 1 and spend(instance, "bc").epsilon_rdp == 0.0


def test_two_processes_racing_for_the_last_of_a_budget_one_passes(
    instance: Engine, settings: Settings
) -> None:
    one = plan(2.0)
    two = accounting.compose_rdp([one.privacy.rdp, one.privacy.rdp], 1e-5)
    register(
        instance, settings, "wine", "sklearn:wine", epsilon_budget=(one.privacy.epsilon + two) / 2
    )
    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(2), context.Queue()
    children = [
        context.Process(
            target=reserve_in_child,
            args=(settings.database_url, str(settings.keys_dir), "wine", 2.0, barrier, out),
        )
        for _ in range(2)
    ]
    for child in children:
        child.start()
    outcomes = sorted(out.get(timeout=300) for _ in children)
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert outcomes == ["refused", "reserved"]
    assert sorted(run_statuses(instance)) == ["refused", "started"]
    assert spend(instance, "wine").epsilon_rdp <= spend(instance, "wine").budget


def test_a_dataset_registered_before_identities_still_trains_on_its_v1_fingerprint(
    engine: Engine, settings: Settings
) -> None:
    migrate.upgrade(engine, "0005")
    from sklearn.datasets import load_wine

    raw = load_wine()  # the float64 values parsed at registration, as v1 hashed them
    legacy = fingerprint_v1(raw.data, raw.target, ("class_0", "class_1", "class_2"))
    assert load_dataset("sklearn:wine").fingerprint_v1 == legacy
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO datasets (name, source, fingerprint, n, feature_shape, classes, "
                "epsilon_budget, delta, created_by, created_at) VALUES ('wine', 'sklearn:wine', "
                ":fp, 178, '[13]', '[\"class_0\", \"class_1\", \"class_2\"]', 2.0, 1e-5, 'old', "
                "'2026-11-28 00:00:00')"
            ),
            {"fp": legacy},
        )
    migrate.upgrade(engine)
    migrate.check(engine)
    with session_scope(session_factory(engine)) as session:
        row = dataset_catalog.get_dataset(session, "wine")
        assert row.identity is None and row.allow_non_private is False
        assert len(row.split_key) == 64 and row.budget_owner_id is None
        data = dataset_catalog.load_registered(row)
        assert data.split_key == bytes.fromhex(row.split_key)
        row.fingerprint = "0" * 64
        with pytest.raises(dataset_catalog.DataChanged):
            dataset_catalog.load_registered(row)
    migrate.downgrade(engine, "0005")
    migrate.upgrade(engine)
    other = create_engine(settings.database_url)
    try:
        with other.connect() as connection:
            count = connection.execute(sa.select(sa.func.count()).select_from(RegisteredDataset))
            assert count.scalar_one() == 1
    finally:
        other.dispose()


def test_dp_versions_whose_preprocessing_was_not_covered_lose_their_label(engine: Engine) -> None:
    """Before 0006, `auto` standardised every dataset without a public range with exact
    statistics, and the model was still labelled DP: the upgrade relabels those non-private
    and records the covered preprocessing of the others."""
    migrate.upgrade(engine, "0005")
    now = "2026-11-28 00:00:00"
    with engine.begin() as connection:
        for i, (source, dataset) in enumerate((("sklearn:wine", "wine"), ("sklearn:digits", "d"))):
            connection.execute(
                sa.text(
                    "INSERT INTO datasets (id, name, source, fingerprint, n, feature_shape, "
                    "classes, epsilon_budget, delta, created_by, created_at) VALUES "
                    "(:id, :name, :source, 'f', 10, '[1]', '[\"a\", \"b\"]', 5, 1e-5, 'o', :now)"
                ),
                {"id": i + 1, "name": dataset, "source": source, "now": now},
            )
            connection.execute(
                sa.text(
                    "INSERT INTO models (id, name, created_at, created_by) "
                    "VALUES (:id, :name, :now, 'o')"
                ),
                {"id": i + 1, "name": f"{dataset}-dp", "now": now},
            )
            connection.execute(
                sa.text(
                    "INSERT INTO model_versions (model_id, version, status, artifact_path, "
                    "plaintext_sha256, ciphertext_digest, size_bytes, plaintext_bytes, "
                    "publisher_key_id, service_key_id, signature, privacy, dp_epsilon, "
                    "created_at, created_by) VALUES (:id, 1, 'active', 'x', 'p', 'c', 1, 1, "
                    "'pub', 'svc', '{}', 'dp', 1.0, :now, 'o')"
                ),
                {"id": i + 1, "now": now},
            )
            connection.execute(
                sa.text(
                    "INSERT INTO training_runs (dataset_id, model_name, status, dp, arch, "
                    "batch_size, epochs, steps, seed, test_fraction, config, model_version, "
                    "created_by, started_at) VALUES (:id, :model, 'finished', true, 'mlp', 8, "
                    "1, 1, 0, 0.2, '{\"preprocessing\": \"auto\"}', 1, 'o', :now)"
                ),
                {"id": i + 1, "model": f"{dataset}-dp", "now": now},
            )
    migrate.upgrade(engine)
    with engine.connect() as connection:
        labels = dict(
            connection.execute(
                sa.text(
                    "SELECT m.name, v.privacy || '/' || COALESCE(v.dp_preprocessing, '-') "
                    "FROM model_versions v JOIN models m ON m.id = v.model_id"
                )
            ).all()
        )
    assert labels == {"wine-dp": "non-private/-", "d-dp": "dp/public-range"}
