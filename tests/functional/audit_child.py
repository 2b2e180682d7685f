"""A writer process for the concurrency tests: `python -m tests.functional.audit_child URL N T
[KEYS_DIR]` (with KEYS_DIR, the keyring's audit keys instead of the test key).

Appends N events through an `AuditWriter` from T threads and prints each acknowledged seq on
its own line, flushed at once, so that a parent that kills this process knows exactly which
events were acknowledged before it died. N = 0 appends until killed. It prints `ready` and waits
for a line on stdin before appending, so that a parent can start several children at once.
"""

from __future__ import annotations

import itertools
import sys
import threading

from secure_maas.audit import AuditKeys, AuditWriter, KeyringAuditKeys
from secure_maas.db import create_engine
from secure_maas.keys import Keyring
from tests.functional.audit_support import KEYS, event


def main(url: str, count: int, threads: int, keys: AuditKeys = KEYS) -> None:
    engine = create_engine(url)
    lock = threading.Lock()
    numbers = itertools.count() if count == 0 else iter(range(count))

    def work(writer: AuditWriter) -> None:
        while True:
            with lock:
                i = next(numbers, None)
            if i is None:
                return
            record = writer.append(event(i))
            with lock:
                sys.stdout.write(f"{record.seq}\n")
                sys.stdout.flush()

    with AuditWriter(engine, keys, checkpoint_every=50) as writer:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        sys.stdin.readline()
        workers = [threading.Thread(target=work, args=(writer,)) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    engine.dispose()


if __name__ == "__main__":
    if len(sys.argv) > 4:
        from pathlib import Path

        keyring = KeyringAuditKeys(Keyring.open(Path(sys.argv[4])))
        main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), keyring)
    else:
        main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
