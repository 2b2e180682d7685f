"""Triton's extensions to the Open Inference Protocol that fit a service with access rules.

    GET  /v2/models/NAME[/versions/V]/config        the model configuration (`model:metadata`)

Each goes through the one guarded pipeline: a token, the rules, the visibility rule (a model
the caller may not see answers exactly like a missing one) and an audit event.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from secure_maas.actions import Action
from secure_maas.serving.formats.triton import model_config
from secure_maas.serving.pipeline import Call, guarded
from secure_maas.serving.refs import Api

bp = Blueprint("triton", __name__, url_prefix="/v2")


@bp.get("/models/<name>/config")
@bp.get("/models/<name>/versions/<version>/config")
@guarded(Action.MODEL_METADATA, api=Api.OIP)
def config(call: Call, name: str, version: str | None = None) -> Response:
    facts = call.model(name, version)
    settings = call.services.settings
    document = model_config(
        facts.name,
        facts.signature,
        max_batch_size=settings.batch_max_size,
        max_queue_delay_us=settings.batch_max_wait_us,
    )
    return jsonify(document)
