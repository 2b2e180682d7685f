"""What a tensor's trip to the model process and back costs: the data plane's frames against
JSON and pickle over the same Unix socket, in the same run.

    .venv/bin/python bench/dataplane_rtt.py          # about a minute

A forked echo server answers each frame with the arrays it received, as the model process
answers a prediction with its outputs; the client measures the round trip (send, server
decode, server encode, receive, decode) for three sizes: one row of 64 floats (a small
prediction), 64 x 1024 float32 (256 KiB) and 1024 x 1024 float32 (4 MiB). Baselines, over the
same socket and length-prefixed the same way: the arrays as JSON lists (what a JSON API
between processes would send), and pickled (`multiprocessing`'s default). Each case runs
`--repeat` rounds of N trips, alternating the three encodings; the figures are the median
round trip and its spread over rounds. The last line is `RESULT ...` with the frame's round
trip in microseconds and each baseline's time over the frame's.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from secure_maas.dataplane.wire import receive, send

SIZES = {"small": (1, 64), "256k": (64, 1024), "4m": (1024, 1024)}
TRIPS = {"small": 2000, "256k": 100, "4m": 5}
_LEN = struct.Struct("!I")


def _send_blob(sock: socket.socket, blob: bytes) -> None:
    sock.sendall(_LEN.pack(len(blob)) + blob)


def _recv_exact(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError
        got += n
    return buffer


def _recv_blob(sock: socket.socket) -> bytearray:
    (size,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    return _recv_exact(sock, size)


def _json_encode(arrays: dict[str, np.ndarray]) -> bytes:
    return json.dumps({name: value.tolist() for name, value in arrays.items()}).encode()


def _json_decode(blob: bytes | bytearray) -> dict[str, np.ndarray]:
    return {name: np.asarray(v, dtype=np.float32) for name, v in json.loads(blob).items()}


def serve(sock: socket.socket) -> None:
    """The echo server: answers each message in the encoding it came in."""
    while True:
        try:
            (kind,) = _recv_exact(sock, 1)
        except EOFError:
            return
        if kind == ord("f"):
            frame = receive(sock)
            if frame is None:
                return
            head, arrays = frame
            send(sock, head, arrays)
        elif kind == ord("j"):
            _send_blob(sock, _json_encode(_json_decode(_recv_blob(sock))))
        else:
            _send_blob(sock, pickle.dumps(pickle.loads(_recv_blob(sock)), protocol=5))


def trips(sock: socket.socket, kind: str, arrays: dict[str, np.ndarray], n: int) -> float:
    """Microseconds per round trip of `arrays` in encoding `kind`."""
    head = {"op": "predict", "ref": "bench", "allowed": [1], "request_id": "r"}
    one: Callable[[], Any]
    if kind == "frame":

        def one() -> Any:
            sock.sendall(b"f")
            send(sock, head, arrays)
            return receive(sock)

    elif kind == "json":

        def one() -> Any:
            sock.sendall(b"j")
            _send_blob(sock, _json_encode(arrays))
            return _json_decode(_recv_blob(sock))

    else:

        def one() -> Any:
            sock.sendall(b"p")
            _send_blob(sock, pickle.dumps((head, arrays), protocol=5))
            return pickle.loads(_recv_blob(sock))

    started = time.perf_counter()
    for _ in range(n):
        one()
    return (time.perf_counter() - started) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds of each case")
    args = parser.parse_args()
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        client.close()
        serve(server)
        os._exit(0)
    server.close()
    rng = np.random.default_rng(7)
    result: dict[str, float] = {}
    try:
        print(f"{'size':<6} {'encoding':<8} {'median us':>10} {'spread':>16}")
        for size, shape in SIZES.items():
            arrays = {"x": rng.normal(size=shape).astype(np.float32)}
            times: dict[str, list[float]] = {"frame": [], "json": [], "pickle": []}
            for _ in range(args.repeat):
                for kind in times:
                    times[kind].append(trips(client, kind, arrays, TRIPS[size]))
            frame = statistics.median(times["frame"])
            for kind, values in times.items():
                median = statistics.median(values)
                spread = f"{min(values):.0f}-{max(values):.0f}"
                print(f"{size:<6} {kind:<8} {median:>10.1f} {spread:>16}")
                if kind == "frame":
                    result[f"rtt_us_{size}"] = median
                else:
                    result[f"{kind}_x_{size}"] = median / frame
    finally:
        client.close()
        os.waitpid(pid, 0)
    print("RESULT " + " ".join(f"{k}={v:.3g}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
