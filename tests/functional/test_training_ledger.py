"""The privacy ledger on both databases: refusal before training, concurrent reservations,
and composition figures checked against dp_accounting directly."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dp_accounting
import pytest
from sqlalchemy.engine import Engine

from secure_maas.config import Settings
from secure_maas.db.session import session_factory, session_scope
from secure_maas.training import accounting, dataset_catalog, ledger
from secure_maas.training.ledger import BudgetExceeded
from secure_maas.training.models import RunStatus
from secure_maas.training.plan import TrainingRequest
from tests.functional.training_support import (
    audit_keys,
    audit_rows,
    initialised,
    plan,
    run_statuses,
    runs,
    versions,
)


@pytest.fixture
def instance(settings: Settings) -> Iterator[Engine]:
    engine = initialised(settings)
    yield engine
    engine.dispose()


def register(engine: Engine, settings: Settings, budget: float, name: str = "wine") -> None:
    dataset_catalog.register_dataset(
        engine,
        audit_keys(settings),
        name=name,
        source="sklearn:wine",
        epsilon_budget=budget,
        actor="tester",
    )


def spend(engine: Engine, name: str = "wine") -> ledger.Spend:
    with session_scope(session_factory(engine)) as session:
        return ledger.report(session, name)[0].spend


def test_a_run_over_budget_is_refused_with_the_figures_and_recorded(
    instance: Engine, settings: Settings
) -> None:
    register(instance, settings, budget=3.0)
    keys = audit_keys(settings)
    first = ledger.reserve(instance, keys, "wine", plan(3.5), actor="tester")
    spent = first.after.epsilon_rdp
    greedy = plan(1.0)
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve(instance, keys, "wine", greedy, actor="tester")
    message = str(refused.value)
    assert f"spent ε={spent:.4f}" in message
    assert f"remaining ε={3.0 - spent:.4f}" in message
    assert f"requests ε={greedy.privacy.epsilon:.4f}" in message
    assert "RDP-composed total" in message and "plain sum" in message
    assert refused.value.after.epsilon_rdp > 3.0
    assert run_statuses(instance) == ["started", "refused"]
    assert spend(instance).counted == 1  # the refusal spent nothing
    denied = [e for e in audit_rows(instance, "train:run") if e["decision"] == "deny"]
    assert len(denied) == 1 and denied[0]["reason_code"] == "budget-exceeded"
    assert denied[0]["reason"] == message
    assert versions(instance) == 0


def test_refusal_happens_before_any_training(
    instance: Engine, settings: Settings, tmp_path
) -> None:
    pipeline = pytest.importorskip("secure_maas.training.pipeline")
    from secure_maas.keys import Keyring
    from secure_maas.registry.store import ArtifactStore

    register(instance, settings, budget=0.5)

    def no_training(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("training ran although the budget was exceeded")

    request = TrainingRequest(
        dataset="wine", model_name="wine-dp", arch="mlp", target_epsilon=1.0, epochs=2
    )
    with pytest.raises(BudgetExceeded, match="refused before training"):
        pipeline.run_training(
            instance,
            ArtifactStore(settings.store_dir),
            Keyring.open(settings.keys_dir),
            audit_keys(settings),
            request,
            created_by="tester",
            trainer=no_training,
        )
    assert run_statuses(instance) == ["refused"]
    assert versions(instance) == 0
    assert [e["decision"] for e in audit_rows(instance, "train:run")] == ["deny"]


def test_concurrent_runs_whose_sum_exceeds_the_budget_cannot_both_pass(
    instance: Engine, settings: Settings
) -> None:
    one = plan(2.0)
    two = accounting.compose_rdp([one.privacy.rdp, one.privacy.rdp], 1e-5)
    budget = (one.privacy.epsilon + two) / 2  # room for one run, not for two
    assert one.privacy.epsilon < budget < two
    register(instance, settings, budget=budget)
    keys = audit_keys(settings)
    contenders = 6
    barrier = threading.Barrier(contenders)
    outcomes: list[str] = []
    lock = threading.Lock()

    def contend() -> None:
        barrier.wait()
        try:
            ledger.reserve(instance, keys, "wine", one, actor="tester")
            result = "reserved"
        except BudgetExceeded:
            result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=contend) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(outcomes) == ["refused"] * (contenders - 1) + ["reserved"]
    assert sorted(run_statuses(instance)) == ["refused"] * (contenders - 1) + ["started"]
    assert spend(instance).epsilon_rdp <= budget


def test_composition_figures_match_dp_accounting(instance: Engine, settings: Settings) -> None:
    register(instance, settings, budget=50.0)
    keys = audit_keys(settings)
    a = plan(1.5, sampling_rate=0.1, steps=50)
    b = plan(3.0, sampling_rate=0.45, steps=10)
    c = plan(0.9, sampling_rate=0.02, steps=200)
    run_a = ledger.reserve(instance, keys, "wine", a, actor="tester").run_id
    ledger.reserve(instance, keys, "wine", b, actor="tester")  # stays started (killed)
    run_c = ledger.reserve(instance, keys, "wine", c, actor="tester").run_id
    ledger.abort(instance, keys, run_c, "RuntimeError: out of memory", actor="tester")
    with session_scope(session_factory(instance)) as session:
        ledger.finish(
            session,
            keys,
            run_a,
            privacy=a.privacy,
            model_version=1,
            path_used="fast-clipping",
            test_accuracy=0.9,
            actor="tester",
        )
    statuses = {run.id: run.status for run in runs(instance)}
    assert sorted(statuses.values()) == ["aborted", "finished", "started"]

    events = [
        accounting.gaussian_event(1.5, 0.1, 50),
        accounting.gaussian_event(3.0, 0.45, 10),
        accounting.gaussian_event(0.9, 0.02, 200),
    ]
    composed = dp_accounting.rdp.RdpAccountant(list(accounting.RDP_ORDERS))
    for event in events:
        composed.compose(event)
    individual = []
    for event in events:
        rdp = dp_accounting.rdp.RdpAccountant(list(accounting.RDP_ORDERS)).compose(event)
        pld = dp_accounting.pld.PLDAccountant().compose(event)
        individual.append(max(rdp.get_epsilon(1e-5), pld.get_epsilon(1e-5)))

    got = spend(instance)
    assert got.counted == 3  # finished, started and aborted all count
    assert got.epsilon_rdp == pytest.approx(composed.get_epsilon(1e-5), rel=1e-9)
    assert got.epsilon_sum == pytest.approx(sum(individual), rel=1e-6)
    assert got.delta_sum == pytest.approx(3e-5)
    assert got.epsilon_rdp < got.epsilon_sum  # RDP composition is the tighter bound
    assert got.remaining == pytest.approx(50.0 - got.epsilon_rdp)
    assert got.statuses == {
        RunStatus.FINISHED.value: 1,
        RunStatus.STARTED.value: 1,
        RunStatus.ABORTED.value: 1,
    }
    aborted = [e for e in audit_rows(instance, "train:run") if e["reason_code"] == "aborted"]
    assert len(aborted) == 1 and "stays counted" in aborted[0]["reason"]


def _request_and_tools(settings: Settings, **fields):
    from secure_maas.keys import Keyring
    from secure_maas.registry.store import ArtifactStore

    request = TrainingRequest(model_name="m", arch="mlp", target_epsilon=1.0, epochs=2, **fields)
    tools = (
        ArtifactStore(settings.store_dir),
        Keyring.open(settings.keys_dir),
        audit_keys(settings),
    )
    return request, tools


def test_changed_data_is_refused_before_planning(
    instance: Engine, settings: Settings, tmp_path
) -> None:
    pipeline = pytest.importorskip("secure_maas.training.pipeline")
    data = tmp_path / "d.csv"
    data.write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(60)))
    dataset_catalog.register_dataset(
        instance,
        audit_keys(settings),
        name="d",
        source=f"csv:{data}",
        label_column="y",
        epsilon_budget=5,
        actor="tester",
    )
    data.write_text("x,y\n" + "".join(f"{i},{(i + 1) % 2}\n" for i in range(60)))
    request, (store, keyring, keys) = _request_and_tools(settings, dataset="d")
    with pytest.raises(dataset_catalog.DataChanged, match="changed since it was registered"):
        pipeline.run_training(instance, store, keyring, keys, request, created_by="tester")
    assert runs(instance) == []
    denied = audit_rows(instance, "train:run")
    assert [(e["decision"], e["reason_code"]) for e in denied] == [("deny", "dataset-changed")]


def test_a_run_that_fails_while_training_is_aborted_and_stays_counted(
    instance: Engine, settings: Settings
) -> None:
    pipeline = pytest.importorskip("secure_maas.training.pipeline")
    register(instance, settings, budget=5.0)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("device lost")

    request, (store, keyring, keys) = _request_and_tools(settings, dataset="wine")
    with pytest.raises(RuntimeError, match="device lost"):
        pipeline.run_training(
            instance, store, keyring, keys, request, created_by="tester", trainer=broken
        )
    (run,) = runs(instance)
    assert run.status == "aborted" and "device lost" in (run.reason or "")
    assert spend(instance).counted == 1 and spend(instance).epsilon_rdp == pytest.approx(
        run.epsilon
    )
    assert versions(instance) == 0
    codes = [(e["decision"], e["reason_code"]) for e in audit_rows(instance, "train:run")]
    assert codes == [("allow", "started"), ("error", "aborted")]
