"""`secure-maas dataset register|list|show` on both databases, and bad input changing nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import Engine

from secure_maas.cli import cli
from secure_maas.config import Settings
from secure_maas.training.datasets import load_dataset
from tests.functional.training_support import audit_rows, datasets, initialised


@pytest.fixture
def instance(settings: Settings, cli_env: dict[str, str]) -> Iterator[Engine]:
    engine = initialised(settings)
    yield engine
    engine.dispose()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def ok(*args: str) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def test_register_list_show(instance: Engine) -> None:
    out = ok("dataset", "register", "wine", "--source", "sklearn:wine", "--epsilon-budget", "3")
    assert "178 examples" in out.output and "δ=1e-05" in out.output

    listed = json.loads(ok("dataset", "list", "--format", "json").output)
    assert [(d["name"], d["n"], d["spent"], d["remaining"]) for d in listed] == [
        ("wine", 178, 0.0, 3.0)
    ]
    shown = json.loads(ok("dataset", "show", "wine", "--format", "json").output)[0]
    assert shown["fingerprint"] == load_dataset("sklearn:wine").fingerprint
    assert shown["feature_shape"] == [13] and shown["class_names"] == [
        "class_0",
        "class_1",
        "class_2",
    ]
    assert shown["epsilon_budget"] == 3.0 and shown["delta"] == 1e-5
    assert shown["spend"]["composition_rule"] == "RDP"
    table = ok("dataset", "show", "wine").output
    assert "remaining ε=3" in table

    events = audit_rows(instance, "dataset:register")
    assert len(events) == 1 and events[0]["actor_kind"] == "os"
    assert "wine" in events[0]["reason"]


def test_csv_source_is_stored_with_an_absolute_path(
    instance: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = ["a,b,label"] + [f"{i},{i % 3},{'yes' if i % 2 else 'no'}" for i in range(40)]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    ok(
        "dataset",
        "register",
        "small",
        "--source",
        "csv:data.csv",
        "--label-column",
        "label",
        "--epsilon-budget",
        "1",
        "--delta",
        "1e-3",
    )
    shown = json.loads(ok("dataset", "show", "small", "--format", "json").output)[0]
    assert shown["source"] == f"csv:{tmp_path / 'data.csv'}"
    assert shown["class_names"] == ["no", "yes"] and shown["delta"] == 1e-3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "sklearn:wine", "--delta", "0.01"], "δ must be in (0, 1/n)"),
        (["--source", "sklearn:wine", "--delta", str(1 / 178)], "δ must be in (0, 1/n)"),
        (["--source", "sklearn:iris"], "unknown bundled dataset 'iris'"),
        (["--source", "parquet:x.parquet"], "unknown dataset source kind"),
        (["--source", "csv:/no/such/file.csv", "--label-column", "y"], "no such file"),
        (["--source", "sklearn:wine", "--label-column", "y"], "csv: sources only"),
    ],
    ids=["delta-over-1/n", "delta-at-1/n", "unknown-bundled", "unknown-kind", "missing-file",
         "label-column-not-csv"],
)  # fmt: skip
def test_bad_input_is_refused_and_changes_nothing(
    instance: Engine, args: list[str], message: str
) -> None:
    result = invoke("dataset", "register", "bad", "--epsilon-budget", "1", *args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert datasets(instance) == 0 and audit_rows(instance) == []


def test_bad_label_column_budget_name_and_duplicates(instance: Engine, tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("x,y\n1,0\n2,1\n3,0\n4,1\n")
    source = f"csv:{tmp_path / 'd.csv'}"
    refused = [
        (["ok", "--source", source, "--label-column", "z"], "no column 'z'"),
        (["ok", "--source", source], "needs the name of its label column"),
        (["ok", "--source", "sklearn:wine", "--epsilon-budget", "0"], "must be a positive"),
        (["ok", "--source", "sklearn:wine", "--epsilon-budget", "nan"], "must be a positive"),
        (["../x", "--source", "sklearn:wine"], "invalid dataset name"),
    ]
    for args, message in refused:
        budget = [] if "--epsilon-budget" in args else ["--epsilon-budget", "1"]
        result = invoke("dataset", "register", *args, *budget)
        assert result.exit_code == 1 and message in result.output, (args, result.output)
    assert datasets(instance) == 0

    ok("dataset", "register", "wine", "--source", "sklearn:wine", "--epsilon-budget", "1")
    again = invoke(
        "dataset", "register", "wine", "--source", "sklearn:wine", "--epsilon-budget", "9"
    )
    assert again.exit_code == 1 and "already registered" in again.output
    assert datasets(instance) == 1 and len(audit_rows(instance)) == 1
    missing = invoke("dataset", "show", "nope")
    assert missing.exit_code == 1 and "no dataset named 'nope'" in missing.output
