"""The message and service types of the vendored protos, compiled when first needed.

`protos/` holds the upstream .proto files (Triton's `grpc_service.proto` and
`model_config.proto`; TF Serving's `prediction_service.proto`, `predict.proto`,
`get_model_metadata.proto`, `model.proto` and the TensorFlow protos they import), with their
licences, trimmed where a header says so but never renamed or renumbered: the wire format and
the `Any` type URLs are upstream's. No generated code is committed: `grpc_tools`' protoc turns
them into descriptors at first use, and the message classes are made from those.

They go into a descriptor pool of our own, not protobuf's default one: the default pool is
process-wide and holds each file name once, and `tensorflow/core/framework/tensor.proto` is
also registered there by TensorFlow itself (in the model process, in a test that uses
`tensorflow-serving-api`'s stubs), which a second registration of the same name would collide
with. This process never imports TensorFlow for it (design rule: web workers stay small).
"""

from __future__ import annotations

import functools
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

PROTOS = Path(__file__).with_name("protos")
#: The files served (their imports come along): Triton's and TF Serving's services, and the
#: well-known Struct type the metadata's `secure_maas` entry is packed in.
ROOTS = (
    "grpc_service.proto",
    "tensorflow_serving/apis/prediction_service.proto",
    "google/protobuf/struct.proto",
)
TRITON_SERVICE = "inference.GRPCInferenceService"
TFSERVING_SERVICE = "tensorflow.serving.PredictionService"


class ProtoError(RuntimeError):
    """The vendored protos could not be compiled (a broken install)."""


@functools.cache
def pool() -> descriptor_pool.DescriptorPool:
    """A descriptor pool holding the vendored protos and what they import."""
    from grpc_tools import protoc  # only here: compiling is a start-up cost, paid once

    include = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory(prefix="smaas-protos-") as folder:
        out = Path(folder) / "descriptors.pb"
        status = protoc.main(
            [
                "protoc",
                f"--proto_path={PROTOS}",
                f"--proto_path={include}",
                "--include_imports",
                f"--descriptor_set_out={out}",
                *ROOTS,
            ]
        )
        if status != 0:
            raise ProtoError(f"protoc could not compile {PROTOS} (exit status {status})")
        found = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    made = descriptor_pool.DescriptorPool()
    for file in found.file:  # --include_imports lists every file after its imports
        made.Add(file)
    return made


@functools.cache
def message(full_name: str) -> type[Message]:
    """The message class of `full_name` (`inference.ModelInferRequest`)."""
    descriptor = pool().FindMessageTypeByName(full_name)
    made: type[Message] = message_factory.GetMessageClass(descriptor)
    return made


def service(full_name: str) -> ServiceDescriptor:
    """The service descriptor of `full_name` (`TRITON_SERVICE`, `TFSERVING_SERVICE`)."""
    found: ServiceDescriptor = pool().FindServiceByName(full_name)
    return found


def enum_value(enum: str, name: str) -> int:
    """The number of `name` in the enum `enum` (`tensorflow.DataType`, `DT_FLOAT`)."""
    number: int = pool().FindEnumTypeByName(enum).values_by_name[name].number
    return number


def enum_name(enum: str, number: int) -> str | None:
    """The name of `number` in `enum`, or None for a number it does not have."""
    found: Any = pool().FindEnumTypeByName(enum).values_by_number.get(number)
    return None if found is None else str(found.name)
