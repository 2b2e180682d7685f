"""`GET /v1/models`: the models the caller may see (`model:list`), active versions only.

A caller allowed to list nothing gets an empty list, not an error: what it cannot see does not
exist for it. Each version carries its labels, its DP guarantee summary (ε, δ), so a consumer
can pick a model by its privacy before asking for its metadata, and its `state` in the data
plane (TF Serving's: START, LOADING, AVAILABLE, UNLOADING, END); listing loads nothing.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from secure_maas.actions import Action
from secure_maas.dataplane.facts import VersionFacts
from secure_maas.dataplane.plane import DataPlane
from secure_maas.registry.catalog import ModelNotFound, ModelRef
from secure_maas.registry.disclosure import public_guarantee
from secure_maas.serving.pipeline import Call, guarded
from secure_maas.serving.refs import Api

bp = Blueprint("platform", __name__, url_prefix="/v1")


def _version(facts: VersionFacts, models: DataPlane) -> dict[str, Any] | None:
    dp = public_guarantee(facts.privacy, facts.dp) or {}
    try:
        state = models.state(ModelRef(facts.name, version=facts.version))
    except ModelNotFound:  # disabled since the listing was read: as if never there
        return None
    return {
        "version": facts.version,
        "labels": list(facts.labels),
        "privacy": facts.privacy,
        "epsilon": dp.get("epsilon"),
        "delta": dp.get("delta"),
        "created_at": facts.created_at.isoformat(),
        "state": state.state.value,
    }


@bp.get("/models")
@guarded(Action.MODEL_LIST, api=Api.PLATFORM)
def models(call: Call) -> Response:
    active = [facts for facts in call.services.cache.models() if facts.active]
    listed: dict[str, list[dict[str, Any]]] = {}
    for facts in call.visible(active):
        version = _version(facts, call.services.models)
        if version is not None:
            listed.setdefault(facts.name, []).append(version)
    return jsonify(
        {"models": [{"name": name, "versions": versions} for name, versions in listed.items()]}
    )
