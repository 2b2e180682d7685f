"""The model processes: started beside the HTTP workers, watched, restarted when they die.

`ModelProcess.start` forks it from the gunicorn master before the workers exist (the master
has not imported TensorFlow, so neither has the child until it loads a model). The child
resets the master's signal handling, closes the listening sockets (it never takes HTTP
connections), names itself `smaas-model` (as `ps` and `/proc/PID/comm` show it), serves the
data plane on a socket in a private 0700 folder, and exits if the master goes away.

The master calls `check()` about once a second from its loop: a child that died (OOM killer,
`kill -9`, a crash in native code) is restarted, at once the first time and then with a
back-off that doubles up to `MAX_BACKOFF_S` while it keeps dying within a minute of its start.
Meanwhile workers answer 503 (audited by their local fallback writer, see `client`).
`on_exit(pid)` is called in the master for each child found dead or stopped (the server marks
its metrics dead with it, so that its live gauges leave the instance's sums).

An instance has one model process per accelerator (`devices.plan`; one when there is no GPU);
`ModelProcesses` starts, checks and stops them together, and each loads only the models
`devices.route` gives it (its `--preload` share included).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from secure_maas.config import Settings
from secure_maas.dataplane.client import DataPlaneUnavailable, RemoteDataPlane
from secure_maas.dataplane.devices import VISIBLE, Placement, plan, route, visible_accelerators
from secure_maas.registry.catalog import ModelRef

log = logging.getLogger(__name__)

#: The one model process of an instance without GPUs.
ON_CPU = Placement(0, None)

NAME = "smaas-model"
SOCKET_NAME = "data-plane.sock"
MAX_BACKOFF_S = 30.0
#: A child that lived this long before dying is restarted at once.
STABLE_AFTER_S = 60.0
_RESET = (
    "SIGTERM",
    "SIGINT",
    "SIGHUP",
    "SIGQUIT",
    "SIGUSR1",
    "SIGUSR2",
    "SIGWINCH",
    "SIGCHLD",
    "SIGTTIN",
    "SIGTTOU",
)


class ModelProcess:
    """One instance's model process, owned by the process that calls `start` (the master)."""

    def __init__(
        self,
        settings: Settings,
        preload: Sequence[str] = (),
        placement: Placement = ON_CPU,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.preload = tuple(preload)
        self.placement = placement
        self.on_exit = on_exit
        self.folder = Path(tempfile.mkdtemp(prefix="secure-maas-"))  # 0700
        self.path = self.folder / SOCKET_NAME
        self.pid: int | None = None
        self.restarts = 0
        self._started_at = 0.0
        self._backoff = 0.0
        self._next_start = 0.0
        self._close_in_child: tuple[int, ...] = ()

    def start(self, close_in_child: Iterable[int] = ()) -> None:
        """Fork the model process (`close_in_child`: descriptors the child must not keep)."""
        self._close_in_child = tuple(close_in_child)
        self._spawn()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the model process answers (models preloaded); False if it died or did
        not answer within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        client = RemoteDataPlane(self.path, timeout=5.0)
        try:
            while time.monotonic() < deadline:
                if not self.alive():
                    return False
                try:
                    client.ping()
                    return True
                except DataPlaneUnavailable:
                    time.sleep(0.1)
            return False
        finally:
            client.close()

    def alive(self) -> bool:
        """Whether the child runs (a dead one is reaped here, or was by gunicorn's reaper)."""
        if self.pid is None:
            return False
        try:
            pid, _status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return pid == 0

    def check(self) -> None:
        """Restart the child if it died (with back-off); called from the master's loop."""
        now = time.monotonic()
        if self.pid is not None:
            if self.alive():
                return
            lived = now - self._started_at
            self._backoff = (
                0.0 if lived >= STABLE_AFTER_S else min(MAX_BACKOFF_S, max(1.0, 2 * self._backoff))
            )
            log.error(
                "model process %d exited after %.0f s; restarting in %.0f s",
                self.pid,
                lived,
                self._backoff,
            )
            self._exited(self.pid)
            self.pid = None
            self._next_start = now + self._backoff
        if now >= self._next_start:
            self.restarts += 1
            self._spawn()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (queued audit events are written, models unloaded), SIGKILL after
        `timeout` seconds; then remove the socket's folder."""
        pid, self.pid = self.pid, None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _running(pid):
                time.sleep(0.05)
            if _running(pid):
                log.error("model process %d did not stop in %.0f s: killing it", pid, timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            self._exited(pid)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _exited(self, pid: int) -> None:
        if self.on_exit is not None:
            try:
                self.on_exit(pid)
            except Exception:  # the master's loop must go on
                log.exception("on_exit of model process %d failed", pid)

    def _spawn(self) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            _child(
                self.settings, self.path, self.preload, parent, self._close_in_child, self.placement
            )
        self.pid = pid
        self._started_at = time.monotonic()
        log.info(
            "model process %d (#%d) started on %s (socket %s)",
            pid,
            self.placement.index,
            self.placement.describe(),
            self.path,
        )


class ModelProcesses:
    """An instance's model processes, one per `devices.plan` placement, handled together."""

    def __init__(
        self,
        settings: Settings,
        preload: Sequence[str] = (),
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        placements = plan(settings.model_processes, visible_accelerators())
        shares: list[list[str]] = [[] for _ in placements]
        for ref in preload:
            shares[route(ModelRef.parse(ref).name, len(placements))].append(ref)
        self.members = [
            ModelProcess(settings, share, placement, on_exit)
            for share, placement in zip(shares, placements, strict=True)
        ]

    @property
    def paths(self) -> list[Path]:
        """Each process's socket, in route order (what workers are given)."""
        return [member.path for member in self.members]

    @property
    def pids(self) -> list[int | None]:
        return [member.pid for member in self.members]

    def start(self, close_in_child: Iterable[int] = ()) -> None:
        keep_out = tuple(close_in_child)
        for member in self.members:
            member.start(keep_out)

    def wait_ready(self, timeout: float) -> bool:
        """Whether every process answered within `timeout` seconds (each waited for in turn)."""
        deadline = time.monotonic() + timeout
        return all([m.wait_ready(max(0.0, deadline - time.monotonic())) for m in self.members])

    def check(self) -> None:
        for member in self.members:
            member.check()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM them all at once, then wait for each within the one `timeout`."""
        for pid in self.pids:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for member in self.members:
            member.stop(max(0.0, deadline - time.monotonic()))


def _running(pid: int) -> bool:
    try:
        found, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return found == 0


def _child(
    settings: Settings,
    path: Path,
    preload: Sequence[str],
    parent: int,
    close: Sequence[int],
    placement: Placement,
) -> None:
    """The model process's whole life; never returns into the master's code."""
    code = 1
    try:
        if placement.accelerator is not None:
            # Before anything imports TensorFlow: its only GPU is this one, seen as /GPU:0.
            os.environ[VISIBLE] = placement.accelerator
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)
        for name in _RESET:
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        for fd in close:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            Path("/proc/self/comm").write_text(NAME)
        from secure_maas.dataplane.server import DataPlaneServer

        server = DataPlaneServer.build(settings, path)
        server.preload(preload)
        server.listen()

        def stop(_signum: int, _frame: object) -> None:
            server.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the master, which stops us
        threading.Thread(target=_orphan_watch, args=(parent,), daemon=True).start()
        server.serve_forever()
        server.close()
        code = 0
    except BaseException:
        log.exception("model process failed")
    finally:
        logging.shutdown()
        os._exit(code)


def _orphan_watch(parent: int) -> None:
    """Stop when the master is gone (it was killed: nobody else would stop us)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
