"""Triton's extensions: model configuration, statistics and the model repository.

**Configuration** (`GET /v2/models/NAME[/versions/V]/config`).

tritonclient's `get_model_config` is usually the first call Triton client code makes. The
answer is Triton's `ModelConfig` in its JSON form, built from what a version's publisher signed
(its serving signature) and the instance's micro-batching settings, the same for every caller
who may read the model's metadata. With a batch dimension first (a free dimension, as every
model here has), `max_batch_size` is the micro-batcher's and each tensor's `dims` leave the
batch out, as Triton's do; `dynamic_batching` says how requests are gathered.

**Statistics** (`GET /v2/models[/NAME[/versions/V]]/stats`): Triton's `ModelStatisticsResponse`
from the data plane's counters (`dataplane.statistics`); input and output preparation are not
measured apart from the model call, so their figures stay zero.

**Repository** (`POST /v2/repository/index`, `.../models/NAME/load|unload`): the index's
entries with Triton's state words for ours, and the request bodies Triton's clients send.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from secure_maas.dataplane.loaded import ModelState, VersionState
from secure_maas.dataplane.statistics import Duration, VersionStatistics
from secure_maas.registry.signature import ServingSignature, TensorSpec
from secure_maas.serving.formats.oip import PLATFORM, datatype_of
from secure_maas.serving.formats.tensors import BadRequest


def config_type(dtype: str) -> str:
    """Triton's `DataType` for a tensor dtype: `TYPE_` and the OIP datatype (BYTES is STRING)."""
    datatype = datatype_of(dtype)
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _batched(signature: ServingSignature) -> bool:
    specs = [*signature.inputs, *signature.outputs]
    return bool(specs) and all(spec.shape and spec.shape[0] is None for spec in specs)


def _tensor(spec: TensorSpec, *, batched: bool) -> dict[str, Any]:
    shape = spec.shape[1:] if batched else spec.shape
    return {
        "name": spec.name,
        "data_type": config_type(spec.dtype),
        "dims": [-1 if d is None else d for d in shape],
    }


def model_config(
    name: str,
    signature: ServingSignature,
    *,
    max_batch_size: int,
    max_queue_delay_us: int,
    platform: str = PLATFORM,
) -> dict[str, Any]:
    """The `ModelConfig` of `name` (fields tritonclient and Triton's tools read)."""
    batched = _batched(signature)
    document: dict[str, Any] = {
        "name": name,
        "platform": platform,
        "backend": "tensorflow",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": max_batch_size if batched else 0,
        "input": [_tensor(spec, batched=batched) for spec in signature.inputs],
        "output": [_tensor(spec, batched=batched) for spec in signature.outputs],
    }
    if batched:
        document["dynamic_batching"] = {
            "preferred_batch_size": [max_batch_size],
            "max_queue_delay_microseconds": max_queue_delay_us,
        }
    return document


def _duration(found: Duration) -> dict[str, int]:
    return {"count": found.count, "ns": found.ns}


def version_statistics(found: VersionStatistics) -> dict[str, Any]:
    """One entry of Triton's `ModelStatisticsResponse.model_stats` (a version's figures)."""
    inference = {name: _duration(getattr(found, name)) for name in VersionStatistics.DURATIONS}
    return {
        "name": found.name,
        "version": str(found.version),
        "last_inference": found.last_inference,
        "inference_count": found.inference_count,
        "execution_count": found.execution_count,
        "inference_stats": inference,
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": {"count": 0, "ns": 0},
                "compute_infer": _duration(took),
                "compute_output": {"count": 0, "ns": 0},
            }
            for size, took in sorted(found.batches.items())
        ],
        "memory_usage": [],
    }


def model_statistics(versions: Iterable[VersionStatistics]) -> dict[str, Any]:
    """Triton's `ModelStatisticsResponse` for `versions`."""
    return {"model_stats": [version_statistics(found) for found in versions]}


#: Triton's repository index states for ours: a version not in memory is UNAVAILABLE to
#: Triton (here, a request that needs it loads it first).
INDEX_STATES = {
    ModelState.START: "UNAVAILABLE",
    ModelState.LOADING: "LOADING",
    ModelState.AVAILABLE: "READY",
    ModelState.UNLOADING: "UNLOADING",
    ModelState.END: "UNAVAILABLE",
}


def index_entry(name: str, version: int, found: VersionState) -> dict[str, str]:
    """One entry of Triton's repository index; the reason is a word, never why a load
    failed (that is in the `model:load` event)."""
    if found.refused:
        reason = "unavailable"
    elif found.state is ModelState.START:
        reason = "not loaded"
    elif found.state is ModelState.END:
        reason = "unloaded"
    else:
        reason = ""
    return {
        "name": name,
        "version": str(version),
        "state": INDEX_STATES[found.state],
        "reason": reason,
    }


def index_request(body: bytes) -> bool:
    """The `ready` flag of a repository index request body (`{"ready": bool}`, optional,
    an empty body too); `BadRequest` for anything else."""
    document = _json_object(body, "repository index")
    ready = document.get("ready", False)
    if not isinstance(ready, bool):
        raise BadRequest("'ready' must be true or false")
    return ready


def control_request(body: bytes, action: str) -> None:
    """Check a load or unload body: none, or `{"parameters": {...}}` without a config or
    files (a model comes from the sealed store only, never from a request) and, for unload,
    `unload_dependents` (there are no dependents here)."""
    document = _json_object(body, f"model {action}")
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    allowed = {"unload_dependents"} if action == "unload" else set()
    unknown = sorted(set(parameters) - allowed)
    if unknown:
        raise BadRequest(f"unsupported {action} parameter(s): {', '.join(unknown)[:200]}")


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest(f"the {what} request is not JSON") from None
    if not isinstance(document, dict):
        raise BadRequest(f"the {what} request must be a JSON object")
    extra = sorted(set(document) - {"ready", "parameters"})
    if extra:
        raise BadRequest(f"unknown field(s) in the {what} request: {', '.join(extra)[:200]}")
    return document
