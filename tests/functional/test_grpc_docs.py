"""The gRPC docs say what the server serves: every method the README's conformance table and
docs/grpc.md call supported is a method the gRPC server registers, every registered method is
in both, and every method the table calls UNIMPLEMENTED is registered by no one; `serve
--help` names the option."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from secure_maas.serving.grpc.server import method_paths

ROOT = Path(__file__).resolve().parents[2]


def _conformance() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Conformance with TF Serving and Triton", 1)[1].split("\n## ", 1)[0]


def _rows(section: str, service: str) -> tuple[set[str], set[str]]:
    """The methods a row of the table calls supported and those it calls unsupported."""
    [row] = [line for line in section.splitlines() if line.startswith(f"| {service}")]
    _, _, supported, unsupported, _ = row.split("|")
    names = re.compile(r"`([A-Z][A-Za-z]+)`")
    return set(names.findall(supported)), set(names.findall(unsupported))


def test_the_conformance_table_names_exactly_the_grpc_methods_served() -> None:
    served = {path.rsplit("/", 1)[1] for path in method_paths()}
    section = _conformance()
    triton_ok, triton_not = _rows(section, "Triton gRPC")
    tfs_ok, tfs_not = _rows(section, "TF Serving gRPC")
    types = {"Any", "BYTES", "TensorProto", "SignatureDefMap"}  # message types, not methods
    assert (triton_ok | tfs_ok) - types == served
    assert not (triton_not | tfs_not) & served
    assert {"Classify", "Regress", "ModelStreamInfer"} <= triton_not | tfs_not


def test_docs_grpc_lists_every_method_and_the_serve_option() -> None:
    from secure_maas.cli import cli

    guide = (ROOT / "docs" / "grpc.md").read_text()
    for path in method_paths():
        service, method = path.strip("/").split("/")
        assert f"`{service}`" in guide, service
        assert f"`{method}`" in guide, method
    assert "--grpc-port" in guide
    help_text = CliRunner().invoke(cli, ["serve", "--help"]).output
    assert "--grpc-port" in help_text and "GRPCInferenceService" in help_text
