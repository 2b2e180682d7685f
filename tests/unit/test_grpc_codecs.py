"""The pure parts of the gRPC frontend: HTTP statuses to gRPC codes, peer addresses as the
audit log records them, TensorProto to numpy and back (numbers, strings, halves, one value
filling a shape, every wrong count or range refused), and Triton's typed contents turned into
the binary layout HTTP's parser reads (and refused where they do not fit the datatype)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from secure_maas.registry.signature import TensorSpec
from secure_maas.serving.formats.oip import parse_infer
from secure_maas.serving.formats.tensors import BadRequest
from secure_maas.serving.grpc import schema
from secure_maas.serving.grpc.calls import code_of, peer_address
from secure_maas.serving.grpc.tensorproto import from_array, tf_dtype, to_array
from secure_maas.serving.grpc.triton import infer_body

SPEC = TensorSpec(name="x", shape=(None, 4), dtype="float32")


def test_status_codes() -> None:
    assert code_of(401) is grpc.StatusCode.UNAUTHENTICATED
    assert code_of(403) is grpc.StatusCode.PERMISSION_DENIED
    assert code_of(404) is grpc.StatusCode.NOT_FOUND
    assert code_of(413) is code_of(429) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code_of(503) is grpc.StatusCode.UNAVAILABLE
    assert code_of(418) is grpc.StatusCode.UNKNOWN


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:50123", "127.0.0.1"),
        ("ipv6:[::1]:50123", "::1"),
        ("ipv6:[fe80::1%eth0]:7", "fe80::1"),
        ("unix:/tmp/socket", "unix:/tmp/socket"),
        ("", None),
    ],
)
def test_peer_addresses(peer: str, address: str | None) -> None:
    assert peer_address(peer) == address


def tensor_proto(dtype: str, shape: tuple[int, ...], **fields: object) -> object:
    made = schema.message("tensorflow.TensorProto")()
    made.dtype = tf_dtype(dtype)
    for size in shape:
        made.tensor_shape.dim.add().size = size
    for name, value in fields.items():
        if isinstance(value, bytes):
            setattr(made, name, value)
        else:
            getattr(made, name).extend(value)
    return made


def test_tensor_protos_round_trip() -> None:
    values = np.arange(8, dtype=np.float32).reshape(2, 4)
    for array in (values, values.astype(np.int64), np.array([[True, False]])):
        made = schema.message("tensorflow.TensorProto")()
        from_array(array, made)
        spec = TensorSpec(name="x", shape=(None, array.shape[1]), dtype=array.dtype.name)
        back = to_array(made, spec, max_string_bytes=16, what="x")
        np.testing.assert_array_equal(back, array)
        assert back.dtype == array.dtype
    strings = np.array([[b"a", b"\xff"]], dtype=object)
    made = schema.message("tensorflow.TensorProto")()
    from_array(strings, made)
    assert list(made.string_val) == [b"a", b"\xff"]
    back = to_array(
        made, TensorSpec(name="s", shape=(None, 2), dtype="string"), max_string_bytes=4, what="s"
    )
    assert back.tolist() == strings.tolist()


def test_typed_values_halves_and_one_value_filling_the_shape() -> None:
    filled = to_array(tensor_proto("float32", (2, 2), float_val=[1.5]), SPEC, max_string_bytes=1,
                      what="x")  # fmt: skip
    assert filled.tolist() == [[1.5, 1.5], [1.5, 1.5]]
    half = np.array([0.5, -2.0], dtype=np.float16)
    bits = half.view(np.uint16).astype(int).tolist()
    found = to_array(tensor_proto("float16", (2,), half_val=bits), SPEC, max_string_bytes=1,
                     what="x")  # fmt: skip
    assert found.tolist() == [0.5, -2.0] and found.dtype == np.float16


@pytest.mark.parametrize(
    ("made", "fragment"),
    [
        (lambda: tensor_proto("float32", (2, 2), float_val=[1.0, 2.0]), "holds 2 value(s)"),
        (lambda: tensor_proto("float32", (2, 2), tensor_content=b"\0" * 12), "holds 12 bytes"),
        (lambda: tensor_proto("int8", (1,), int_val=[300]), "out of range for int8"),
        (lambda: tensor_proto("string", (1,), string_val=[b"x" * 9]), "more than 8"),
        (lambda: tensor_proto("string", (1,), tensor_content=b"ab"), "go in string_val"),
        (lambda: tensor_proto("float16", (1,), half_val=[70000]), "float16 bit pattern"),
        (lambda: tensor_proto("float32", (-1,)), "negative dimension"),
    ],
)
def test_bad_tensor_protos(made: object, fragment: str) -> None:
    with pytest.raises(BadRequest, match=None) as caught:
        to_array(made(), SPEC, max_string_bytes=8, what="x")  # type: ignore[operator]
    assert fragment in str(caught.value)


def test_an_unsupported_dtype_is_named() -> None:
    made = schema.message("tensorflow.TensorProto")()
    made.dtype = schema.enum_value("tensorflow.DataType", "DT_COMPLEX64")
    with pytest.raises(BadRequest, match="dtype DT_COMPLEX64 is not supported"):
        to_array(made, SPEC, max_string_bytes=8, what="x")


def infer_request(datatype: str, **contents: list[object]) -> object:
    request = schema.message("inference.ModelInferRequest")(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[1, 4])
    for name, values in contents.items():
        getattr(tensor.contents, name).extend(values)
    return request


def test_typed_contents_become_the_http_body() -> None:
    from secure_maas.registry.signature import ServingSignature

    signature = ServingSignature.from_dict(
        {"inputs": [{"name": "x", "dtype": "float32", "shape": [None, 4]}],
         "outputs": [{"name": "y", "dtype": "float32", "shape": [None, 1]}]}
    )  # fmt: skip
    for request in (
        infer_request("FP32", fp32_contents=[1.0, 2.0, 3.0, 4.0]),
        infer_request("INT32", int_contents=[1, 2, 3, 4]),
        infer_request("FP64", fp64_contents=[1.0, 2.0, 3.0, 4.0]),
    ):
        head, tail = infer_body(request)
        parsed = parse_infer(head + tail, signature, header_length=len(head), allow_nan=True)
        assert parsed.inputs["x"].tolist() == [[1.0, 2.0, 3.0, 4.0]]
        assert parsed.inputs["x"].dtype == np.float32


@pytest.mark.parametrize(
    ("request_of", "fragment"),
    [
        (lambda: infer_request("FP32", int_contents=[1, 2, 3, 4]), "go in fp32_contents"),
        (lambda: infer_request("INT8", int_contents=[1, 2, 3, 999]), "out of range for INT8"),
        (lambda: infer_request("FP16"), "has no typed contents: send it raw"),
    ],
)
def test_typed_contents_that_do_not_fit(request_of: object, fragment: str) -> None:
    with pytest.raises(BadRequest) as caught:
        infer_body(request_of())  # type: ignore[operator]
    assert fragment in str(caught.value)
