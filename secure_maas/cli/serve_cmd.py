"""`secure-maas serve`: the HTTP service, as a development server or under gunicorn.

Flask and gunicorn are imported when the command runs, never for `--help`.

Under gunicorn the instance's metrics are one view: before anything imports prometheus_client
(which reads `PROMETHEUS_MULTIPROC_DIR` once, at import), `serve` makes a fresh folder of its
own, 0700, names it in that variable for the workers to inherit, and removes it on exit. A
folder named in the inherited environment is never used (nor wiped): it may be another
instance's. The development server runs without one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import click

from secure_maas.cli.context import AppContext
from secure_maas.config import Settings
from secure_maas.db import migrate
from secure_maas.db.migrate import SchemaDrift


def _settings(app: AppContext, **given: int | None) -> Settings:
    """The instance's settings with the options given on the command line in place."""
    chosen: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    return dataclasses.replace(app.settings, **chosen)


def _preflight(app: AppContext) -> None:
    """Refuse to start on a database that is unreachable or not at the newest schema."""
    at, newest = migrate.current(app.engine()), migrate.head()
    if at != newest:
        raise SchemaDrift(
            f"database is at revision {at or 'none'}, head is {newest}: "
            "run `secure-maas db upgrade` (or `secure-maas init`)"
        )
    app.engine().dispose()  # the server builds its own engine (per worker, after the fork)


#: prometheus_client's variables naming its multiprocess folder (the lower-case one is its
#: deprecated spelling, still read).
MULTIPROC_VARS = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")


def metrics_folder() -> Path:
    """A new, empty folder (0700) for this instance's multiprocess metrics, named in
    `PROMETHEUS_MULTIPROC_DIR`; call it before prometheus_client is imported."""
    folder = Path(tempfile.mkdtemp(prefix="smaas-metrics-"))
    for name in MULTIPROC_VARS:
        os.environ.pop(name, None)
    os.environ[MULTIPROC_VARS[0]] = str(folder)
    return folder


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8501, show_default=True, type=click.IntRange(0, 65535), help="TCP port."
)
@click.option(
    "--preload",
    multiple=True,
    metavar="NAME",
    help="Load this model (NAME, NAME:VERSION or NAME@LABEL) at start; repeatable.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    help="Run under gunicorn with this many worker processes (without: development server).",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 1024),
    default=4,
    show_default=True,
    help="Threads per gunicorn worker (concurrent requests meet in the micro-batcher).",
)
@click.option(
    "--batch-max-size",
    type=click.IntRange(1, 4096),
    help="Most rows in one model call (default: SECURE_MAAS_BATCH_MAX_SIZE).",
)
@click.option(
    "--batch-max-wait-us",
    type=click.IntRange(0, 1_000_000),
    help="Longest wait for batch-mates in microseconds (default: SECURE_MAAS_BATCH_MAX_WAIT_US).",
)
@click.option(
    "--model-processes",
    type=click.IntRange(0, 64),
    help="Model processes under gunicorn, 0 for one per visible GPU, at least one "
    "(default: SECURE_MAAS_MODEL_PROCESSES).",
)
@click.option(
    "--access-log",
    is_flag=True,
    help="Under gunicorn, log each request to standard error (method, path without its query "
    "string, status, size, time); the development server always logs them at INFO.",
)
@click.option(
    "--grpc-port",
    type=click.IntRange(1, 65535),
    help="Also serve gRPC on this port (same host): Triton's GRPCInferenceService and TF "
    "Serving's PredictionService, bearer token in the 'authorization' metadata; under "
    "gunicorn every worker serves it (SO_REUSEPORT).",
)
@click.option(
    "--graceful-timeout",
    type=click.IntRange(1, 3600),
    default=30,
    show_default=True,
    help="Seconds gunicorn lets in-flight requests finish after SIGTERM.",
)
@click.pass_obj
def serve(
    app: AppContext,
    host: str,
    port: int,
    preload: tuple[str, ...],
    workers: int | None,
    threads: int,
    batch_max_size: int | None,
    batch_max_wait_us: int | None,
    model_processes: int | None,
    access_log: bool,
    grpc_port: int | None,
    graceful_timeout: int,
) -> None:
    """Serve the TF Serving and Open Inference Protocol APIs over HTTP (and gRPC).

    Binds 127.0.0.1 by default: put a TLS-terminating reverse proxy in front to expose it.
    Without --workers this is the development server (one process, threaded); with
    --workers N --threads M it runs under gunicorn, each worker its own app after the fork,
    and SIGTERM drains in-flight requests before the workers stop. Logs never hold a query
    string (tokens sent as ?access_token= stay out of them).

    \b
    Example:
        secure-maas serve --preload digits                      # http://127.0.0.1:8501
        secure-maas serve --workers 4 --threads 8 --port 8501   # production (gunicorn)
        secure-maas serve --workers 4 --port 8501 --grpc-port 8500   # and gRPC on 8500
    """
    settings = _settings(
        app,
        batch_max_size=batch_max_size,
        batch_max_wait_us=batch_max_wait_us,
        model_processes=model_processes,
    )
    from secure_maas.audit.text import EscapingFormatter

    # Log lines quote what callers sent (paths, names): never a raw control character.
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level, handlers=[handler])
    _preflight(app)
    if workers is None:
        for name in MULTIPROC_VARS:
            os.environ.pop(name, None)
        _development(settings, host, port, preload, grpc_port)
        return
    folder, master = metrics_folder(), os.getpid()
    try:
        _gunicorn(
            settings, host, port, preload, workers, threads, access_log, graceful_timeout, grpc_port
        )
    finally:
        if os.getpid() == master:  # a worker leaves through here too (gunicorn's SystemExit)
            shutil.rmtree(folder, ignore_errors=True)


def _gunicorn(
    settings: Settings,
    host: str,
    port: int,
    preload: tuple[str, ...],
    workers: int,
    threads: int,
    access_log: bool,
    graceful_timeout: int,
    grpc_port: int | None,
) -> None:
    from secure_maas.serving.gunicorn_app import ServingApplication

    options = {
        "bind": _bind(host, port),
        "workers": workers,
        "threads": threads,
        "graceful_timeout": graceful_timeout,
        "loglevel": settings.log_level.lower(),
    }
    if access_log:
        options["accesslog"] = "-"
    click.echo(
        f"secure-maas: gunicorn on http://{_bind(host, port)} "
        f"({workers} workers x {threads} threads)"
        + (f", gRPC on {_bind(host, grpc_port)}" if grpc_port is not None else ""),
        err=True,
    )
    ServingApplication(settings, options, preload=preload, grpc_port=grpc_port).run()


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _development(
    settings: Settings, host: str, port: int, preload: tuple[str, ...], grpc_port: int | None
) -> None:
    from werkzeug.serving import run_simple

    from secure_maas.serving.app import close_app, create_app, development_handler, services_of

    flask_app = create_app(settings, preload=preload)
    grpc_server = None
    if grpc_port is not None:
        from secure_maas.serving.grpc.server import Endpoint, GrpcServer

        endpoint = Endpoint(host, grpc_port)
        grpc_server = GrpcServer.start(services_of(flask_app), endpoint, threads=8)
        click.echo(f"secure-maas: gRPC on {_bind(host, grpc_port)}", err=True)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    click.echo(
        f"secure-maas: development server on http://{_bind(host, port)} "
        "(one process; use --workers N for production)",
        err=True,
    )
    try:
        run_simple(
            host,
            port,
            flask_app,
            threaded=True,
            use_reloader=False,
            use_debugger=False,
            request_handler=development_handler(settings),
        )
    except KeyboardInterrupt:
        pass
    finally:
        if grpc_server is not None:
            grpc_server.stop()
        close_app(flask_app)
