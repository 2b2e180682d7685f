"""Regenerate the sealed-artifact known-answer vectors next to this file.

    .venv/bin/python tests/unit/vectors/make_vectors.py

Running this is a FORMAT CHANGE, never a way to make a failing test pass. The vectors pin the
byte layouts (`secure_maas/crypto/envelope.py`) of v2, what `seal` writes (envelope-v2.json,
`v2-*.sealed`), and of v1, the legacy format still opened (envelope-v1.json, the other
`*.sealed`; v1 files must never change again). If `test_envelope.py`'s vector tests fail, the
code changed a format, and artifacts already in stores would no longer open. Regenerate only
together with a new format version (new magic, new `FORMAT_VERSION`) and a migration path for
old artifacts, and say so in the commit.

Everything here is deterministic: test-only keys are read from the `*.pem` files (generated
once, when missing), and each artifact's data key, nonce prefix and plaintext derive from its
name. The one random part of an artifact is its HPKE keyblock (HPKE draws a fresh ephemeral
key and cryptography offers no way to fix it), so an existing keyblock is kept whenever the
header it is bound to is unchanged: re-running the script on an unchanged format rewrites
identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from secure_maas.crypto import Algorithm, PrivateKey, generate, load_private
from secure_maas.crypto.envelope import _body_key, _chunk_nonce, _commitment, _seal
from secure_maas.crypto.framing import U32, canonical

HERE = Path(__file__).resolve().parent
FORMATS = {1: ("envelope-v1.json", ""), 2: ("envelope-v2.json", "v2-")}  # json, file prefix
KEYS = {
    "svc-vector-x25519": (Algorithm.X25519, "test-only-service-x25519.pem"),
    "svc-vector-mlkem768-x25519": (Algorithm.MLKEM768_X25519, "test-only-service-mlkem.pem"),
    "pub-vector": (Algorithm.ED25519, "test-only-publisher-ed25519.pem"),
}
CASES = [
    # name, service key id, plaintext length, chunk size, model, version, metadata
    ("x25519-three-chunks", "svc-vector-x25519", 150, 64, "digits-mlp", 3,
     {"dp": {"epsilon": 2.5, "delta": 1e-05}, "note": "naïve ✓"}),
    ("x25519-empty", "svc-vector-x25519", 0, 64, "empty", 0, {}),
    ("x25519-exact-chunk", "svc-vector-x25519", 64, 64, "exact", 1, {"k": [1, 2, 3]}),
    ("mlkem768-x25519-two-chunks", "svc-vector-mlkem768-x25519", 100, 64, "wine-pq", 7,
     {"suite": "post-quantum"}),
]  # fmt: skip
NONCES = [(bytes(range(7)), 0, False), (bytes(range(7)), 1, True), (b"\xff" * 7, 0xFFFFFFFF, True)]


def derive(label: str, name: str, length: int) -> bytes:
    return hashlib.shake_256(f"secure-maas/vectors/{label}/{name}".encode()).digest(length)


def load_keys() -> dict[str, PrivateKey]:
    keys = {}
    for key_id, (algorithm, file_name) in KEYS.items():
        path = HERE / file_name
        if not path.exists():
            path.write_bytes(generate(algorithm).private)
        keys[key_id] = load_private(algorithm, path.read_bytes(), name=str(path))
    return keys


def split(blob: bytes) -> tuple[bytes, bytes, bytes]:
    """(magic + header block, keyblock block, body + trailer) of an artifact."""
    header_end = 12 + U32.unpack_from(blob, 8)[0]
    keyblock_end = header_end + 4 + U32.unpack_from(blob, header_end)[0]
    return blob[:header_end], blob[header_end:keyblock_end], blob[keyblock_end:]


def main() -> None:
    keys = load_keys()
    for format_version, (json_name, prefix) in FORMATS.items():
        write_format(keys, format_version, HERE / json_name, prefix)


def write_format(
    keys: dict[str, PrivateKey], format_version: int, vectors_path: Path, prefix: str
) -> None:
    artifacts = []
    for case_name, key_id, length, chunk_size, model, version, metadata in CASES:
        name = prefix + case_name
        plaintext = derive("plaintext", name, length)
        data_key, nonce_prefix = derive("data-key", name, 32), derive("nonce-prefix", name, 7)
        out = io.BytesIO()
        info = _seal(
            plaintext, out, model=model, version=version, metadata=metadata,
            recipient=keys[key_id].public_key(), recipient_key_id=key_id,
            signer=keys["pub-vector"], signer_key_id="pub-vector", chunk_size=chunk_size,
            data_key=data_key, nonce_prefix=nonce_prefix, format_version=format_version,
        )  # fmt: skip
        blob = out.getvalue()
        path = HERE / f"{name}.sealed"
        if path.exists():
            old_head, old_keyblock, _ = split(path.read_bytes())
            head, _, rest = split(blob)
            if old_head == head:
                blob = head + old_keyblock + rest
        path.write_bytes(blob)
        header_bytes = canonical(info.header.as_dict())
        derived = {}
        if format_version != 1:
            derived = {
                "body_key_hex": _body_key(info.header, data_key).hex(),
                "key_commitment_hex": _commitment(data_key).hex(),
            }
        artifacts.append(
            {
                "name": name,
                "file": path.name,
                "service_key_id": key_id,
                "publisher_key_id": "pub-vector",
                "model": model,
                "version": version,
                "metadata": metadata,
                "chunk_size": chunk_size,
                "plaintext_hex": plaintext.hex(),
                "data_key_hex": data_key.hex(),
                "nonce_prefix_hex": nonce_prefix.hex(),
                "header_hex": header_bytes.hex(),
                "header_sha256": hashlib.sha256(header_bytes).hexdigest(),
                "plaintext_sha256": info.plaintext_sha256,
                "ciphertext_digest": info.ciphertext_digest,
                **derived,
            }
        )
    vectors = {
        "about": f"secure-maas sealed artifact v{format_version} known answers; "
        "see make_vectors.py",
        "keys": {
            key_id: {
                "algorithm": alg,
                "file": file,
                "fingerprint": keys[key_id].public_key().fingerprint,
            }
            for key_id, (alg, file) in KEYS.items()
        },
        "artifacts": artifacts,
        "nonces": [
            {
                "prefix_hex": p.hex(),
                "index": i,
                "last": last,
                "nonce_hex": _chunk_nonce(p, i, last).hex(),
            }
            for p, i, last in NONCES
        ],
    }
    vectors_path.write_text(json.dumps(vectors, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(artifacts)} artifacts and {vectors_path.name}")


if __name__ == "__main__":
    main()
