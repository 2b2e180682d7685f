"""End-to-end serving benchmark: secure-maas against a bare Flask + `tf.function` baseline.

    .venv/bin/python bench/serve.py                   # 2 workers x 4 threads, 10 s per level
    .venv/bin/python bench/serve.py --duration 3      # a smoke run
    .venv/bin/python bench/serve.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test

Both servers run under gunicorn (gthread, same workers, threads, keep-alive and timeout) on
127.0.0.1 with the same Keras model (a 64 -> 256 -> 10 MLP) and TF_NUM_INTEROP_THREADS /
TF_NUM_INTRAOP_THREADS / OMP_NUM_THREADS = 1:

(a) baseline: `baseline_app()` below, a bare Flask app calling the model through a
    `tf.function`, no token, no rules, no audit, no batching;
(b) secure-maas: `secure-maas serve --workers W --threads T` on a scratch instance (init,
    model imported as `bench`, principal `bench-user` granted `model:predict`, a bearer token),
    i.e. the full pipeline (JWT, rules, audit, micro-batching).

Each is driven by the same load generator, run in a separate process (`_load`): N threads, each
with its own keep-alive `http.client` connection, POSTing `{"instances": [[64 floats]]}` to
/v1/models/bench:predict for a fixed duration. Throughput, p50/p99 latency and non-200 counts
are printed per concurrency level, with the ratios secure/baseline, then a final line
`RESULT thr_ratio_c1=... thr_ratio_c16=... thr_ratio_c64=... p99_ratio_c16=... p99_ratio_c64=...`.
Goals (issue 7): throughput ratio >= 0.9 at 16 and >= 1.3 at 64, p99 ratio <= 1.5.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PATH_PREDICT = "/v1/models/bench:predict"
N_INPUTS = 64
MODEL_ENV = "BENCH_SERVE_MODEL"
THREAD_ENV = {"TF_NUM_INTEROP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "OMP_NUM_THREADS": "1"}


# --- the baseline app (imported by gunicorn: `serve:baseline_app()` with --chdir bench) -------


def baseline_app() -> Any:
    """A bare Flask app serving the Keras model at $BENCH_SERVE_MODEL through a tf.function."""
    import numpy as np
    import tensorflow as tf
    from flask import Flask, jsonify, request

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    model = tf.keras.models.load_model(os.environ[MODEL_ENV], compile=False)

    @tf.function(reduce_retracing=True)
    def infer(x: Any) -> Any:
        return model(x, training=False)

    infer(tf.zeros((1, N_INPUTS), tf.float32))  # trace before the first request
    app = Flask("bench-baseline")

    @app.post(PATH_PREDICT)
    def predict() -> Any:
        body = request.get_json(force=True)
        x = np.asarray(body["instances"], dtype=np.float32)
        y = infer(tf.constant(x)).numpy()
        return jsonify(predictions=y.tolist())

    return app


# --- the load generator (run in its own process) ---------------------------------------------


def run_load(url_port: int, token: str | None, concurrency: int, duration: float) -> dict:
    """Drive 127.0.0.1:port with `concurrency` keep-alive connections for `duration` seconds."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    rng = random.Random(0)
    bodies = [
        json.dumps({"instances": [[rng.uniform(-1, 1) for _ in range(N_INPUTS)]]}).encode()
        for _ in range(64)
    ]
    start_gate = threading.Barrier(concurrency + 1)
    results: list[tuple[list[float], dict[int, int], int]] = []
    lock = threading.Lock()
    stop_at = [0.0]

    def worker(i: int) -> None:
        lat: list[float] = []
        statuses: dict[int, int] = {}
        conn_errors = 0
        conn = http.client.HTTPConnection("127.0.0.1", url_port, timeout=30)
        n = i
        start_gate.wait()
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at[0]:
                break
            try:
                conn.request("POST", PATH_PREDICT, body=bodies[n % len(bodies)], headers=headers)
                resp = conn.getresponse()
                resp.read()
                t1 = time.perf_counter()
                lat.append(t1 - t0)
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
            except (OSError, http.client.HTTPException):
                conn_errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", url_port, timeout=30)
            n += 1
        conn.close()
        with lock:
            results.append((lat, statuses, conn_errors))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    t_start = time.perf_counter()
    stop_at[0] = t_start + duration
    start_gate.wait()
    for t in threads:
        t.join(duration + 60)
    elapsed = time.perf_counter() - t_start
    lat_all = sorted(x for r in results for x in r[0])
    statuses_all: dict[str, int] = {}
    for r in results:
        for k, v in r[1].items():
            statuses_all[str(k)] = statuses_all.get(str(k), 0) + v
    ok = statuses_all.get("200", 0)

    def pct(p: float) -> float:
        if not lat_all:
            return float("nan")
        return lat_all[min(len(lat_all) - 1, int(p * len(lat_all)))] * 1000

    return {
        "requests": len(lat_all),
        "ok": ok,
        "errors": len(lat_all) - ok + sum(r[2] for r in results),
        "statuses": statuses_all,
        "conn_errors": sum(r[2] for r in results),
        "throughput": ok / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def load_in_subprocess(port: int, token: str | None, concurrency: int, duration: float) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "_load",
        "--port",
        str(port),
        "--concurrency",
        str(concurrency),
    ]
    cmd += ["--duration", str(duration)]
    env = dict(os.environ)
    if token:
        env["BENCH_SERVE_TOKEN"] = token
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=duration + 120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- set-up and servers ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def save_model(path: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential(
        [
            tf.keras.Input(shape=(N_INPUTS,)),
            tf.keras.layers.Dense(256, activation="relu"),
            tf.keras.layers.Dense(10),
        ]
    )
    model.save(path)


def cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [str(VENV_BIN / "secure-maas"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0:
        raise RuntimeError(f"secure-maas {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
    return out.stdout.strip()


def wait_ready(proc: subprocess.Popen, port: int, token: str | None, timeout: float = 180) -> None:
    """Wait until a predict answers 200, then warm every worker up a little."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps({"instances": [[0.0] * N_INPUTS]}).encode()
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", PATH_PREDICT, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read()
            conn.close()
            if resp.status == 200:
                break
            last = f"{resp.status} {text[:300]!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.5)
    else:
        raise RuntimeError(f"server on port {port} not ready: {last}")
    # Warm-up: fresh connections land on different workers; each loads/traces its model.
    for _ in range(3):
        conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=120) for _ in range(16)]
        threads = []
        for c in conns:

            def go(c: http.client.HTTPConnection = c) -> None:
                for _ in range(5):
                    c.request("POST", PATH_PREDICT, body=body, headers=headers)
                    c.getresponse().read()

            threads.append(threading.Thread(target=go))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for c in conns:
            c.close()


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(40)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def fmt(x: float) -> str:
    return f"{x:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--levels", default="1,16,64", help="concurrency levels, comma-separated")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="run secure-maas on this PostgreSQL database (a fresh schema, dropped after) "
        "instead of SQLite, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test",
    )
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",") if x.strip()]

    tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
    work = Path(tmp.name)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MAAS_")}
    base_env.update(THREAD_ENV)
    base_env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env = dict(base_env)
    env["SECURE_MAAS_DATABASE_URL"] = f"sqlite:///{work / 'secure_maas.db'}"
    schema = None
    if args.postgres:
        schema = f"bench_serve_{os.getpid()}"
        postgres(args.postgres, f'CREATE SCHEMA "{schema}"')
        sep = "&" if "?" in args.postgres else "?"
        env["SECURE_MAAS_DATABASE_URL"] = f"{args.postgres}{sep}options=-csearch_path%3D{schema}"
    env["SECURE_MAAS_KEYS_DIR"] = str(work / "keys")
    env["SECURE_MAAS_STORE_DIR"] = str(work / "store")
    env["SECURE_MAAS_LOG_LEVEL"] = "WARNING"
    model_path = work / "bench.keras"
    logs = {name: open(work / f"{name}.log", "wb") for name in ("baseline", "secure")}  # noqa: SIM115

    procs: dict[str, subprocess.Popen | None] = {"baseline": None, "secure": None}
    try:
        print(f"setting up in {work} ...", flush=True)
        save_model(model_path)
        cli(env, "init")
        cli(env, "models", "import", str(model_path), "--name", "bench")
        cli(env, "principal", "add", "bench-user")
        cli(env, "policy", "grant", "--subject", "user:bench-user", "--model", "bench",
            "--action", "model:predict")  # fmt: skip
        token = cli(env, "token", "issue", "--subject", "bench-user", "--ttl", "1h")

        ports = {"baseline": free_port(), "secure": free_port()}
        benv = dict(base_env, **{MODEL_ENV: str(model_path)})
        procs["baseline"] = subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "--chdir", str(ROOT / "bench"), "-k", "gthread",
             "-w", str(args.workers), "--threads", str(args.threads), "--keep-alive", "5",
             "--timeout", "120", "--no-control-socket", "--error-logfile", "-",
             "-b", f"127.0.0.1:{ports['baseline']}", "serve:baseline_app()"],
            env=benv, cwd=ROOT, stdout=logs["baseline"], stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        procs["secure"] = subprocess.Popen(
            [str(VENV_BIN / "secure-maas"), "serve", "--workers", str(args.workers),
             "--threads", str(args.threads), "--port", str(ports["secure"]),
             "--preload", "bench"],
            env=env, cwd=ROOT, stdout=logs["secure"], stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        tokens = {"baseline": None, "secure": token}
        for name in ("baseline", "secure"):
            proc = procs[name]
            assert proc is not None
            wait_ready(proc, ports[name], tokens[name])
        print(
            f"servers ready: baseline :{ports['baseline']}, secure-maas :{ports['secure']} "
            f"({args.workers} workers x {args.threads} threads, {args.duration:g} s per level)",
            flush=True,
        )

        result: dict[str, float] = {}
        total_errors = 0
        print(
            f"{'conc':>4} {'server':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'requests':>9} {'errors':>6}"
        )
        for c in levels:
            r: dict[str, dict] = {}
            for name in ("baseline", "secure"):
                r[name] = load_in_subprocess(ports[name], tokens[name], c, args.duration)
                m = r[name]
                total_errors += m["errors"]
                extra = "" if not m["errors"] else f"  statuses={m['statuses']}"
                print(
                    f"{c:>4} {name:<8} {m['throughput']:>9.1f} {m['p50_ms']:>8.2f} "
                    f"{m['p99_ms']:>8.2f} {m['requests']:>9} {m['errors']:>6}{extra}",
                    flush=True,
                )
            b, s = r["baseline"], r["secure"]
            thr = s["throughput"] / b["throughput"] if b["throughput"] else float("nan")
            p99 = s["p99_ms"] / b["p99_ms"] if b["p99_ms"] else float("nan")
            result[f"thr_ratio_c{c}"] = thr
            result[f"p99_ratio_c{c}"] = p99
            print(f"{c:>4} ratio    throughput x{thr:.3f}  p99 x{p99:.3f}", flush=True)

        print(f"all responses 200: {total_errors == 0} (errors: {total_errors})")
        keys = [f"thr_ratio_c{c}" for c in levels] + [f"p99_ratio_c{c}" for c in levels if c > 1]
        print(
            "RESULT " + " ".join(f"{k}={fmt(result[k])}" for k in keys) + f" errors={total_errors}"
        )
        return 0 if total_errors == 0 else 1
    except BaseException:
        for name, f in logs.items():
            f.flush()
            tail = (work / f"{name}.log").read_text(errors="replace")[-3000:]
            print(f"--- {name} server log (tail) ---\n{tail}", file=sys.stderr)
        raise
    finally:
        for name in ("secure", "baseline"):
            stop(procs[name])
        for f in logs.values():
            f.close()
        tmp.cleanup()
        if schema is not None:
            postgres(args.postgres, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def postgres(url: str, statement: str) -> None:
    """Run one statement on the PostgreSQL database at `url` (schema set-up and clean-up)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(statement))
    finally:
        engine.dispose()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        p = argparse.ArgumentParser()
        p.add_argument("_load")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--concurrency", type=int, required=True)
        p.add_argument("--duration", type=float, required=True)
        a = p.parse_args()
        res = run_load(a.port, os.environ.get("BENCH_SERVE_TOKEN"), a.concurrency, a.duration)
        print(json.dumps(res))
        sys.exit(0)
    sys.exit(main())
