"""Running the app under gunicorn (the production way), from `secure-maas serve --workers N`.

Each worker builds its own app after the fork (`preload_app` is off): database pools, the
audit writer's thread, the model cache and TensorFlow must not be shared across a fork. Workers
are `gthread` (M threads each), so concurrent requests of one worker meet in its micro-batcher.
SIGTERM stops accepting connections and lets in-flight requests finish for up to
`graceful_timeout` seconds; then each worker closes its services (queued audit events are
written, models unloaded).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]

from secure_maas.config import Settings

DEFAULTS: dict[str, Any] = {
    "worker_class": "gthread",
    "preload_app": False,
    # Loading a model (decrypt, decode, TensorFlow start-up) counts against a worker's
    # heartbeat when it happens at boot (--preload): allow for it.
    "timeout": 120,
    "graceful_timeout": 30,
    "keepalive": 5,
    # Headers are small here; refuse oversized request lines and headers early.
    "limit_request_line": 8190,
    "limit_request_field_size": 16384,
    "accesslog": None,
    "errorlog": "-",
}
#: Set when this gunicorn knows them: its control socket (gunicorn 25+) would be a file outside
#: the instance's folders, shared by every instance of the same user.
IF_KNOWN: dict[str, Any] = {"control_socket_disable": True}


class ServingApplication(BaseApplication):  # type: ignore[misc]
    """A gunicorn application that serves `create_app(settings)`, one app per worker."""

    def __init__(
        self,
        settings: Settings,
        options: Mapping[str, Any],
        *,
        preload: Sequence[str] = (),
        app_factory: Callable[..., Flask] | None = None,
    ) -> None:
        self.settings = settings
        self.options = {**DEFAULTS, **options}
        self.preload = tuple(preload)
        self.app_factory = app_factory
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key not in self.cfg.settings:
                raise ValueError(f"unknown gunicorn setting {key!r}")
            self.cfg.set(key, value)
        for key, value in IF_KNOWN.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)
        self.cfg.set("worker_exit", _worker_exit)

    def load(self) -> Flask:
        """Called in each worker after the fork."""
        factory = self.app_factory
        if factory is None:
            from secure_maas.serving.app import create_app

            factory = create_app
        return factory(self.settings, preload=self.preload)


def _worker_exit(_server: Any, worker: Any) -> None:
    from secure_maas.serving.app import close_app

    app = getattr(worker, "wsgi", None)
    if isinstance(app, Flask):
        close_app(app)
