"""`tritonclient.grpc` on this stack: its code unchanged, its message modules from our protos.

tritonclient 2.73's gRPC extra ships message modules generated for protobuf 6, which refuse to
import under protobuf 4 (TensorFlow 2.15's pin). The wire format does not depend on that:
`install_tritonclient_grpc()` puts modules of the same names and contents in `sys.modules`
(`tritonclient.grpc.service_pb2`, `model_config_pb2`, `service_pb2_grpc`), made from the
vendored Triton protos the server serves, before tritonclient's own `__init__` imports them.
A user on protobuf 6 runs tritonclient as it is. The bench uses this too.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from secure_maas.serving.grpc import schema


def _module(name: str, proto: str) -> types.ModuleType:
    made = types.ModuleType(name)
    found = schema.pool().FindFileByName(proto)
    for message in found.message_types_by_name.values():
        setattr(made, message.name, schema.message(message.full_name))
    for enum in found.enum_types_by_name.values():
        for value in enum.values:
            setattr(made, value.name, value.number)
    made.DESCRIPTOR = found
    return made


def _stub_module(name: str) -> types.ModuleType:
    service = schema.service(schema.TRITON_SERVICE)

    class GRPCInferenceServiceStub:
        def __init__(self, channel: Any) -> None:
            for method in service.methods:
                request = schema.message(method.input_type.full_name)
                response = schema.message(method.output_type.full_name)
                path = f"/{service.full_name}/{method.name}"
                make = channel.stream_stream if method.client_streaming else channel.unary_unary
                setattr(
                    self,
                    method.name,
                    make(
                        path,
                        request_serializer=request.SerializeToString,
                        response_deserializer=response.FromString,
                    ),
                )

    made = types.ModuleType(name)
    made.GRPCInferenceServiceStub = GRPCInferenceServiceStub  # type: ignore[attr-defined]
    return made


def install_tritonclient_grpc() -> None:
    """Make `import tritonclient.grpc` work here (idempotent)."""
    prefix = "tritonclient.grpc"
    if f"{prefix}.service_pb2" in sys.modules:
        return
    sys.modules[f"{prefix}.model_config_pb2"] = _module(
        f"{prefix}.model_config_pb2", "model_config.proto"
    )
    sys.modules[f"{prefix}.service_pb2"] = _module(f"{prefix}.service_pb2", "grpc_service.proto")
    sys.modules[f"{prefix}.service_pb2_grpc"] = _stub_module(f"{prefix}.service_pb2_grpc")
