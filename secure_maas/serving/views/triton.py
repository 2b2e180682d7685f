"""Triton's extensions to the Open Inference Protocol that fit a service with access rules.

    GET  /v2/models/NAME[/versions/V]/config        the model configuration (`model:metadata`)
    GET  /v2/models/stats                           statistics of every version the caller
                                                    may list and read statistics of
    GET  /v2/models/NAME[/versions/V]/stats         statistics of a model (`model:stats`)
    POST /v2/repository/index                       the versions the caller may list and
                                                    their states (`model:list`)
    POST /v2/repository/models/NAME/load|unload     load or unload a model (`model:control`)

Each goes through the one guarded pipeline: a token, the rules, the visibility rule (a model
the caller may not see answers exactly like a missing one) and an audit event. Statistics are
the data plane's (the model process counts the requests of every worker). A bare name loads
the version it serves (Triton's "latest 1" version policy, as the config says); unloading takes
every version of the model the caller may control out of memory, and a later request that
needs one loads it again, as after an eviction (models load on first use here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flask import Blueprint, Response, jsonify

from secure_maas.actions import Action
from secure_maas.dataplane.facts import VersionFacts
from secure_maas.dataplane.loaded import ModelState, ModelUnavailable
from secure_maas.dataplane.plane import Array
from secure_maas.dataplane.statistics import VersionStatistics
from secure_maas.registry.catalog import ModelNotFound, ModelRef
from secure_maas.serving.formats.triton import (
    control_request,
    index_entry,
    index_request,
    model_config,
    model_statistics,
)
from secure_maas.serving.headers import JSON_TYPES
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


# -- statistics ------------------------------------------------------------------------------


def _statistics(call: Call, versions: Iterable[VersionFacts]) -> Response:
    keys = [(facts.name, facts.version) for facts in versions]
    counted = {(s.name, s.version): s for s in call.services.models.stats(keys)}
    found = [counted.get(key) or VersionStatistics(*key) for key in keys]
    return jsonify(model_statistics(found))


def _may_read_stats(call: Call, facts: VersionFacts) -> bool:
    return call.decide(Action.MODEL_STATS, facts, rows=0).allowed


@bp.get("/models/stats")
@guarded(Action.MODEL_STATS, api=Api.OIP)
def every_statistics(call: Call) -> Response:
    active = [facts for facts in call.services.cache.models() if facts.active]
    return _statistics(call, call.visible(f for f in active if _may_read_stats(call, f)))


@bp.get("/models/<name>/stats")
@bp.get("/models/<name>/versions/<version>/stats")
@guarded(Action.MODEL_STATS, api=Api.OIP)
def statistics(call: Call, name: str, version: str | None = None) -> Response:
    facts = call.model(name, version)
    if version is not None:
        return _statistics(call, [facts])
    every = call.services.cache.versions(facts.name)
    return _statistics(call, [v for v in every if v.active and _may_read_stats(call, v)])


# -- the model repository --------------------------------------------------------------------


@dataclass(frozen=True)
class _Body:
    """A repository request's body, as the pipeline's `parse` takes it (no tensors)."""

    value: object = None
    inputs: dict[str, Array] = field(default_factory=dict)
    rows: int = 0


def _body(call: Call, read: Callable[[bytes], object]) -> object:
    parsed = call.parse(lambda body: _Body(read(body)), JSON_TYPES)
    call.rows = None  # no rows: the audit event says none rather than 0
    return parsed.value


@bp.post("/repository/index")
@guarded(Action.MODEL_LIST, api=Api.OIP)
def repository_index(call: Call) -> Response:
    ready_only = _body(call, index_request)
    active = [facts for facts in call.services.cache.models() if facts.active]
    entries = []
    for facts in call.visible(active):
        try:
            state = call.services.models.state(ModelRef(facts.name, version=facts.version))
        except ModelNotFound:  # disabled since the listing was read: as if never there
            continue
        if ready_only and state.state is not ModelState.AVAILABLE:
            continue
        entries.append(index_entry(facts.name, facts.version, state))
    return jsonify(entries)


@bp.post("/repository/models/<name>/load")
@guarded(Action.MODEL_CONTROL, api=Api.OIP)
def load(call: Call, name: str) -> Response:
    facts = call.model(name)
    _body(call, lambda body: control_request(body, "load"))
    state = call.services.models.load(ModelRef(facts.name, version=facts.version))
    if state.state is not ModelState.AVAILABLE:
        raise ModelUnavailable(f"version {facts.version} of {facts.name!r}: {state.state.value}")
    call.reason = f"{call.reason}; loaded version {facts.version}"
    return jsonify({})


@bp.post("/repository/models/<name>/unload")
@guarded(Action.MODEL_CONTROL, api=Api.OIP)
def unload(call: Call, name: str) -> Response:
    facts = call.model(name)
    _body(call, lambda body: control_request(body, "unload"))
    versions = [
        v
        for v in call.services.cache.versions(facts.name)
        if v.active and call.decide(Action.MODEL_CONTROL, v, rows=0).allowed
    ]
    for found in versions:
        call.services.models.unload(ModelRef(found.name, version=found.version))
    unloaded = ", ".join(str(v.version) for v in versions)
    call.reason = f"{call.reason}; unloaded version(s) {unloaded}"
    return jsonify({})
