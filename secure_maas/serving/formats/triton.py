"""Triton's model configuration extension: `GET /v2/models/NAME[/versions/V]/config`.

tritonclient's `get_model_config` is usually the first call Triton client code makes. The
answer is Triton's `ModelConfig` in its JSON form, built from what a version's publisher signed
(its serving signature) and the instance's micro-batching settings, the same for every caller
who may read the model's metadata. With a batch dimension first (a free dimension, as every
model here has), `max_batch_size` is the micro-batcher's and each tensor's `dims` leave the
batch out, as Triton's do; `dynamic_batching` says how requests are gathered.
"""

from __future__ import annotations

from typing import Any

from secure_maas.registry.signature import ServingSignature, TensorSpec
from secure_maas.serving.formats.oip import PLATFORM, datatype_of


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
