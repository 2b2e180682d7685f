"""Regression (issue 8, process faults): `keys rotate --kind jwt` killed between its two writes
left a manifest whose new active JWT key `jwks.json` did not list, so consumers of the published
key set refused every token issued after it until the next rotation (`keys init` only writes a
missing `jwks.json`). The key set is now written before the manifest: whatever stops a rotation
between the two, `jwks.json` covers every JWT key the manifest trusts.

The interruption is made real without a mock: `jwks.json` is replaced by a folder, so writing
it fails; the rotation must then not have taken effect.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secure_maas.keys import KeyKind, Keyring


def published_kids(folder: Path) -> set[str]:
    return {key["kid"] for key in json.loads((folder / "jwks.json").read_text())["keys"]}


def test_a_rotation_whose_key_set_cannot_be_written_does_not_take_effect(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    keyring, _ = Keyring.init(folder)
    before = keyring.active(KeyKind.JWT).id
    (folder / "jwks.json").unlink()
    (folder / "jwks.json").mkdir()
    (folder / "jwks.json" / "blocker").write_text("x")

    with pytest.raises(OSError):
        keyring.rotate(KeyKind.JWT)

    assert Keyring.open(folder).active(KeyKind.JWT).id == before
    (folder / "jwks.json" / "blocker").unlink()
    (folder / "jwks.json").rmdir()


def test_after_every_change_the_key_set_covers_the_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    keyring, _ = Keyring.init(folder)
    old = keyring.active(KeyKind.JWT).id
    new = keyring.rotate(KeyKind.JWT).id
    assert published_kids(folder) == {old, new}
    Keyring.open(folder).retire(old)
    assert published_kids(folder) == {new}
