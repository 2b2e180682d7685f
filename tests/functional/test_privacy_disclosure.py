"""What a model's callers learn about its privacy, over real HTTP from a real server: the
guarantee and what it covers, never the dataset's fingerprint, its size or the sampling rate.

The demo trains two real DP models (digits, scaled by a public range; breast cancer,
standardised with DP statistics); the operator sees everything with `models show`, and a
caller's metadata answers are checked byte for byte for what must not be there.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from secure_maas.config import Settings
from secure_maas.db import create_engine
from secure_maas.registry.disclosure import PUBLIC_DP_FIELDS
from tests.functional.cli import run_cli
from tests.functional.serving_support import Instance, server

pytest.importorskip("tensorflow")

FORBIDDEN_KEYS = ("fingerprint", "sampling_rate", "batch_size", "number_of_examples", "n_train")


def get(url: str, token: str) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200
        return answer.read()


def lone_number(body: str, number: str) -> bool:
    return re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", body) is not None


def test_callers_see_the_guarantee_never_the_data(
    settings: Settings, cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**cli_env, "TF_CPP_MIN_LOG_LEVEL": "2"}
    demo = run_cli("demo", "--no-serve", "--quick", env=env)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    alice = re.findall(r"Bearer (ey[\w.-]+)", demo.stdout)[0]

    engine = create_engine(settings.database_url)
    try:
        with server(Instance(settings, engine)) as served:
            for model, kind in (("breast_cancer-mlp", "dp-standardize"), ("digits-mlp", None)):
                shown = run_cli("models", "show", f"{model}:1", "--format", "json", env=env)
                operator = json.loads(shown.stdout)[0]
                private = operator["dp"]
                n_train = re.search(r"Training-set size: (\d+)\.", private["statement"])
                assert n_train is not None and operator["dataset_fingerprint"]
                hidden = {
                    "fingerprint": operator["dataset_fingerprint"],
                    "sampling rate": repr(private["sampling_rate"])[:7],
                    "epochs as steps·q": repr(private["epochs"])[:7],
                    "ε in full": repr(private["epsilon"]),
                    "noise multiplier in full": repr(private["noise_multiplier"]),
                }
                answers = {
                    path: get(served.url + path, alice).decode()
                    for path in (
                        f"/v1/models/{model}/metadata",
                        f"/v2/models/{model}",
                        "/v1/models",
                    )
                }
                for path, body in answers.items():
                    for key in FORBIDDEN_KEYS:
                        assert key not in body, (path, key)
                    for what, value in hidden.items():
                        assert value not in body, (path, what)
                    assert not lone_number(body, n_train.group(1)), (path, "training-set size")
                for path in (f"/v1/models/{model}/metadata", f"/v2/models/{model}"):
                    document = json.loads(answers[path])["secure_maas"]
                    dp = document["dp"]
                    assert set(dp) == set(PUBLIC_DP_FIELDS) and document["dataset"] == {
                        "name": operator["dataset"]
                    }
                    assert private["epsilon"] <= dp["epsilon"] <= private["epsilon"] * 1.01
                    assert dp["delta"] == private["delta"] and dp["steps"] == private["steps"]
                    assert dp["preprocessing"]["covered"] is True
                    if kind is not None:
                        assert dp["preprocessing"]["kind"] == kind
                    assert "covering the whole model" in dp["statement"]
                    assert "not published" in dp["statement"]
                listed = json.loads(answers["/v1/models"])["models"]
                (entry,) = [m for m in listed if m["name"] == model]
                assert entry["versions"][0]["epsilon"] == dp["epsilon"]
    finally:
        engine.dispose()
