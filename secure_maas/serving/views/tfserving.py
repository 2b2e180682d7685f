"""TF Serving's REST API: model status, metadata and predict, by name, version or label.

    GET  /v1/models/NAME[/versions/V|/labels/L]            status of the version(s)
    GET  /v1/models/NAME[/versions/V|/labels/L]/metadata   signature_def, plus the DP guarantee
    POST /v1/models/NAME[/versions/V|/labels/L]:predict    row or columnar predict
    POST /v1/models/NAME[/versions/V|/labels/L]:classify   examples -> class labels and scores
    POST /v1/models/NAME[/versions/V|/labels/L]:regress    examples -> one value each

Status gives each version's real state, TF Serving's: START (known, not loaded yet), LOADING,
AVAILABLE, UNLOADING, END (unloaded, or its artifact refused: then with an opaque
`UNAVAILABLE` error status). Models load lazily, so that a client polling status until
AVAILABLE gets there, a status request (from a caller allowed `model:metadata` on the model)
starts a background load of the version the request names, or for a bare name the version it
serves, when that version is not in memory and was not refused within the last 30 seconds;
other versions of a bare name are reported as they are.

Classify and regress are predictions (`model:predict`, rows counted as examples) of a model
whose one output fits them (`formats.tfserving_examples`). A predict, classify or regress body
is JSON; `curl -d`'s form content type is read as JSON too, as TF Serving does,
and any other content type is refused with 415.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from secure_maas.actions import Action
from secure_maas.registry.catalog import ModelNotFound, ModelRef
from secure_maas.serving.formats.tfserving import (
    model_metadata,
    model_status,
    parse_predict,
    predict_response,
)
from secure_maas.serving.formats.tfserving_examples import (
    Method,
    classify_response,
    parse_examples,
    regress_response,
)
from secure_maas.serving.headers import JSON_TYPES
from secure_maas.serving.pipeline import Call, guarded
from secure_maas.serving.refs import Api

bp = Blueprint("tfserving", __name__, url_prefix="/v1")


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
@bp.get("/models/<name>/labels/<label>")
@guarded(Action.MODEL_METADATA, api=Api.TFSERVING)
def status(call: Call, name: str, version: str | None = None, label: str | None = None) -> Response:
    facts = call.model(name, version, label)
    if version is not None or label is not None:
        versions = [facts.version]
    else:
        every = call.services.cache.versions(facts.name)
        versions = [v.version for v in every if v.active and call.may_see(v)]
    states: dict[int, str] = {}
    refused: set[int] = set()
    for number in versions:
        ref = ModelRef(facts.name, version=number)
        try:
            found = call.services.models.state(ref, load=number == facts.version)
        except ModelNotFound:  # disabled since it was listed: as if never there
            continue
        states[number] = found.state.value
        if found.refused:
            refused.add(number)
    shown = sorted(states, reverse=True)
    return jsonify(model_status(shown, states=states, refused=refused))


@bp.get("/models/<name>/metadata")
@bp.get("/models/<name>/versions/<version>/metadata")
@bp.get("/models/<name>/labels/<label>/metadata")
@guarded(Action.MODEL_METADATA, api=Api.TFSERVING)
def metadata(
    call: Call, name: str, version: str | None = None, label: str | None = None
) -> Response:
    facts = call.model(name, version, label)
    document = model_metadata(
        facts.name, facts.version, facts.signature, secure_maas=facts.guarantee()
    )
    return jsonify(document)


@bp.post("/models/<name>:predict")
@bp.post("/models/<name>/versions/<version>:predict")
@bp.post("/models/<name>/labels/<label>:predict")
@guarded(Action.MODEL_PREDICT, api=Api.TFSERVING)
def predict(
    call: Call, name: str, version: str | None = None, label: str | None = None
) -> Response:
    facts = call.model(name, version, label)
    parsed = call.parse(
        lambda body: parse_predict(
            body,
            facts.signature,
            allow_nan=True,
            max_string_bytes=call.services.settings.max_string_bytes,
        ),
        JSON_TYPES,
    )
    outputs, _served = call.predict(parsed)
    return jsonify(predict_response(parsed, outputs))


@bp.post("/models/<name>:classify")
@bp.post("/models/<name>/versions/<version>:classify")
@bp.post("/models/<name>/labels/<label>:classify")
@guarded(Action.MODEL_PREDICT, api=Api.TFSERVING)
def classify(
    call: Call, name: str, version: str | None = None, label: str | None = None
) -> Response:
    return _examples(call, Method.CLASSIFY, name, version, label)


@bp.post("/models/<name>:regress")
@bp.post("/models/<name>/versions/<version>:regress")
@bp.post("/models/<name>/labels/<label>:regress")
@guarded(Action.MODEL_PREDICT, api=Api.TFSERVING)
def regress(
    call: Call, name: str, version: str | None = None, label: str | None = None
) -> Response:
    return _examples(call, Method.REGRESS, name, version, label)


def _examples(
    call: Call, method: Method, name: str, version: str | None, label: str | None
) -> Response:
    facts = call.model(name, version, label)
    limit = call.services.settings.max_string_bytes
    parsed = call.parse(
        lambda body: parse_examples(body, facts.signature, method, max_string_bytes=limit),
        JSON_TYPES,
    )
    outputs, _served = call.predict(parsed)
    if method is Method.CLASSIFY:
        return jsonify(classify_response(parsed, outputs))
    return jsonify(regress_response(parsed, outputs))
