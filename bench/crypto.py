"""Benchmarks of the sealed-artifact recipes, each against a baseline measured in the same run.

    .venv/bin/python bench/crypto.py                      # the issue's sizes: 256 MiB, 1 GiB
    .venv/bin/python bench/crypto.py --size-mib 32 --mem-size-mib 64 --repeat 3   # quick

Figures (one function each; `main` prints them and a final `RESULT key=value ...` line):
1. open throughput: `open_artifact` on a sealed file vs one-shot `AESGCM.decrypt` of the same
   number of bytes already in memory, interleaved, best of `--repeat`: `open_ratio` (goal
   >= 0.8). `open_artifact` reads and hashes on a second thread while it decrypts; the same
   figure measured again in a child process pinned to one CPU, where that thread has no core
   of its own, is `open_ratio_one_cpu` (printed for honesty, not judged). Also printed: one-shot
   decryption plus the one BLAKE3 over the ciphertext that the signature requires, the least
   work a reader on one core must do.
2. memory: peak RSS of a fresh child process while sealing (the plaintext is its input) and
   while opening an artifact of `--mem-size-mib`, as a multiple of the artifact size:
   `seal_mem_x`, `open_mem_x` (goal <= 2.2).
3. Keras load: a ~50 MB MLP loaded from its sealed artifact (open + decode) vs decoded from the
   same plaintext bytes already in memory, after one untimed warm-up of each, interleaved in
   alternating order with the garbage collected between (untimed), median of `--repeat`:
   `load_ratio` (goal <= 1.3). The median of the pairs' ratios is printed too.

The baseline imports `cryptography` directly: it is the library's own one-shot AEAD, the thing
the recipe is compared with, and bench/ is not library code.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from blake3 import blake3
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secure_maas.crypto import Algorithm, PrivateKey, generate, load_private, open_artifact, seal

MIB = 1 << 20


def make_keys() -> dict[str, bytes]:
    """PEM private keys, so that child processes can load the same keys."""
    return {
        "svc-bench": generate(Algorithm.X25519).private,
        "pub-bench": generate(Algorithm.ED25519).private,
    }


def load_keys(pems: dict[str, bytes]) -> tuple[PrivateKey, PrivateKey]:
    service = load_private(Algorithm.X25519, pems["svc-bench"], name="svc-bench")
    publisher = load_private(Algorithm.ED25519, pems["pub-bench"], name="pub-bench")
    return service, publisher


def seal_file(plaintext: bytes, path: Path, pems: dict[str, bytes]) -> None:
    service, publisher = load_keys(pems)
    with path.open("wb") as out:
        seal(
            plaintext, out, model="bench", version=1, metadata={"bench": True},
            recipient=service.public_key(), recipient_key_id="svc-bench",
            signer=publisher, signer_key_id="pub-bench",
        )  # fmt: skip


def open_file(path: Path, pems: dict[str, bytes]) -> int:
    service, publisher = load_keys(pems)
    with path.open("rb") as src:
        opened = open_artifact(
            src, private_keys={"svc-bench": service},
            trusted_publishers={"pub-bench": publisher.public_key()},
            expect_model="bench", expect_version=1,
        )  # fmt: skip
    size = opened.header.plaintext_length
    opened.wipe()  # timed; the baseline frees its output untimed, so this errs against us
    return size


def figure_open_throughput(size_mib: int, repeat: int, folder: Path) -> dict[str, float]:
    """Open a sealed `size_mib` artifact vs one-shot AESGCM decryption of as many bytes."""
    size = size_mib * MIB
    plaintext = os.urandom(size)
    pems = make_keys()
    path = folder / "throughput.sealed"
    seal_file(plaintext, path, pems)
    os.sync()  # untimed: the kernel writing this file back would compete with the runs
    key, nonce, aad = AESGCM.generate_key(256), os.urandom(12), os.urandom(32)
    aead = AESGCM(key)
    ciphertext = aead.encrypt(nonce, plaintext, aad)
    del plaintext
    opens, baselines, floors = [], [], []
    for _ in range(repeat):
        start = time.perf_counter()
        result = aead.decrypt(nonce, ciphertext, aad)
        baselines.append(time.perf_counter() - start)
        del result
        start = time.perf_counter()
        if open_file(path, pems) != size:
            raise SystemExit("open returned the wrong size")
        opens.append(time.perf_counter() - start)
        start = time.perf_counter()
        result = aead.decrypt(nonce, ciphertext, aad)
        blake3(ciphertext, max_threads=1).digest()
        floors.append(time.perf_counter() - start)
        del result
    best_open, best_base, best_floor = min(opens), min(baselines), min(floors)
    pairs = [base / opened for base, opened in zip(baselines, opens, strict=True)]
    print(f"[open throughput] {size_mib} MiB, best of {repeat}")
    print(f"  one-shot AESGCM.decrypt    {size / best_base / 1e9:6.2f} GB/s")
    print(f"  open_artifact (from file)  {size / best_open / 1e9:6.2f} GB/s")
    print(f"  decrypt + BLAKE3 in line   {size / best_floor / 1e9:6.2f} GB/s")
    print(
        f"  open_ratio {best_base / best_open:.2f} (median of pairs {statistics.median(pairs):.2f})"
    )
    path.unlink()
    return {"open_ratio": best_base / best_open}


def _child_throughput(size_mib: int, repeat: int, folder: str, cpu: int, pipe: Any) -> None:
    os.sched_setaffinity(0, {cpu})
    pipe.send(figure_open_throughput(size_mib, repeat, Path(folder))["open_ratio"])


def figure_open_one_cpu(size_mib: int, repeat: int, folder: Path) -> dict[str, float]:
    """The open throughput figure again, in a fresh process allowed only one CPU."""
    if not hasattr(os, "sched_setaffinity"):
        return {}
    print("[open throughput, pinned to one CPU]")
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    cpu = min(os.sched_getaffinity(0))
    args = (size_mib, repeat, str(folder), cpu, sender)
    child = context.Process(target=_child_throughput, args=args)
    child.start()
    ratio = float(receiver.recv())
    child.join()
    return {"open_ratio_one_cpu": ratio}


def _child_peak(task: str, path: str, pems: dict[str, bytes], size: int, pipe: Any) -> None:
    """Run in a fresh interpreter: seal or open, then report this process's peak RSS."""
    if task == "seal":
        block = os.urandom(MIB)
        plaintext = block * (size // MIB) + block[: size % MIB]
        seal_file(plaintext, Path(path), pems)
    else:
        open_file(Path(path), pems)
    pipe.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # KiB on Linux


def _peak_in_child(task: str, path: Path, pems: dict[str, bytes], size: int) -> int:
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_peak, args=(task, str(path), pems, size, sender))
    child.start()
    peak = int(receiver.recv())
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"{task} child failed with exit code {child.exitcode}")
    return peak


def figure_memory(size_mib: int, folder: Path) -> dict[str, float]:
    """Peak RSS of sealing and of opening a `size_mib` artifact, each in a fresh process."""
    size = size_mib * MIB
    pems = make_keys()
    path = folder / "memory.sealed"
    seal_peak = _peak_in_child("seal", path, pems, size)
    artifact = path.stat().st_size
    open_peak = _peak_in_child("open", path, pems, size)
    path.unlink()
    print(f"[memory] {size_mib} MiB plaintext, artifact {artifact / MIB:.1f} MiB")
    print(f"  seal peak RSS {seal_peak / MIB:8.1f} MiB = {seal_peak / artifact:.2f}x")
    print(f"  open peak RSS {open_peak / MIB:8.1f} MiB = {open_peak / artifact:.2f}x")
    return {"open_mem_x": open_peak / artifact, "seal_mem_x": seal_peak / artifact}


def figure_keras_load(repeat: int, folder: Path) -> dict[str, float]:
    """A ~50 MB Keras model from its sealed file vs from its plaintext bytes in memory."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from secure_maas.registry.codec import decode_model, encode_model

    inputs = tf.keras.Input((2048,), name="x")
    hidden = inputs
    for index in range(3):
        hidden = tf.keras.layers.Dense(2048, activation="relu", name=f"dense{index}")(hidden)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(10, name="logits")(hidden))
    payload = encode_model(model)
    pems = make_keys()
    path = folder / "keras.sealed"
    seal_file(payload, path, pems)
    service, publisher = load_keys(pems)
    sealed_times: list[float] = []
    memory_times: list[float] = []

    def from_memory() -> Any:
        return decode_model(payload)

    def from_sealed() -> Any:
        with path.open("rb") as src:
            opened = open_artifact(
                src, private_keys={"svc-bench": service},
                trusted_publishers={"pub-bench": publisher.public_key()},
                expect_model="bench", expect_version=1,
            )  # fmt: skip
        loaded = decode_model(opened.plaintext)
        opened.wipe()
        return loaded

    from_memory(), from_sealed()  # warm-up, untimed: the first of each is much slower
    for index in range(repeat):
        # Alternate which goes first, and collect the last model's garbage untimed: whichever
        # runs right after a decode otherwise pays for TensorFlow's and the collector's tail.
        order = [(memory_times, from_memory), (sealed_times, from_sealed)]
        for times, load in order[:: 1 if index % 2 == 0 else -1]:
            gc.collect()
            start = time.perf_counter()
            loaded = load()
            times.append(time.perf_counter() - start)
            del loaded
    sealed, memory = statistics.median(sealed_times), statistics.median(memory_times)
    pairs = [s / m for s, m in zip(sealed_times, memory_times, strict=True)]
    print(f"[keras load] {len(payload) / 1e6:.1f} MB model, median of {repeat}")
    print(f"  from plaintext bytes in memory  {memory * 1e3:7.1f} ms")
    print(f"  from the sealed artifact        {sealed * 1e3:7.1f} ms")
    print(f"  load_ratio {sealed / memory:.2f} (median of pairs {statistics.median(pairs):.2f})")
    path.unlink()
    return {"load_ratio": sealed / memory}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=256, help="throughput artifact size")
    parser.add_argument("--mem-size-mib", type=int, default=1024, help="memory artifact size")
    parser.add_argument("--repeat", type=int, default=9, help="interleaved runs per figure")
    args = parser.parse_args(argv)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="smaas-bench-") as tmp:
        folder = Path(tmp)
        results.update(figure_open_throughput(args.size_mib, args.repeat, folder))
        results.update(figure_open_one_cpu(args.size_mib, args.repeat, folder))
        results.update(figure_memory(args.mem_size_mib, folder))
        results.update(figure_keras_load(args.repeat, folder))
    print("RESULT " + " ".join(f"{name}={value:.2f}" for name, value in results.items()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
