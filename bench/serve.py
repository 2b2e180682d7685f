"""End-to-end serving benchmark: secure-maas against a bare Flask + `tf.function` baseline.

    .venv/bin/python bench/serve.py                   # 2 workers x 4 threads, about 8 minutes
    .venv/bin/python bench/serve.py --duration 3 --repeat 1 --skip heavy,memory   # a smoke run
    .venv/bin/python bench/serve.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test

Both servers run under gunicorn (gthread, same workers, threads, keep-alive and timeout) on
127.0.0.1 with TF_NUM_INTEROP_THREADS / TF_NUM_INTRAOP_THREADS / OMP_NUM_THREADS = 1:

(a) baseline: `baseline_app()` below, a bare Flask app calling the model through a
    `tf.function`, no token, no rules, no audit, no batching;
(b) secure-maas: `secure-maas serve --workers W --threads T` on a scratch instance (init,
    model imported, principal `bench-user` granted `model:predict`, a bearer token), i.e. the
    full pipeline (JWT, rules, audit, micro-batching).

The load comes from `wrk` (a C load generator, Debian's package `wrk`; `make bench-tools`
installs it), so the client does not hold the faster server back: W keep-alive connections
POST `{"instances": [[64 floats]]}` for `--duration` seconds. For each concurrency level the
two servers are run `--repeat` times, alternating which goes first; the median of each
server's throughput and p99 latency gives the ratios, and the spread (min-max over the
repeats) is printed. Three parts (`--skip` drops any):

- small: the small MLP (64 -> 256 -> 10) at levels 1, 16, 64. Goals (issue 16): throughput
  ratio >= 0.9 at 16 and >= 1.3 at 64, p99 ratio <= 1.5.
- heavy: a weight-bound MLP (64 -> 4 x 2048 -> 10, 51 MB) whose one-row call takes about 4 ms
  here (the set-up measures and prints it) at levels 16 and 64: batching across requests is
  what can win. Goal >= 1.5x.
- grpc: the small model through secure-maas's gRPC port (`serve --grpc-port`) with
  `tritonclient.grpc`, against its baseline in the same run: the same server's HTTP port with
  `tritonclient.http` (binary tensors), the same rows, at levels 1 and 16. Both loads come from
  this process (C client threads, each with its own client, for `--duration` seconds): a
  like-for-like comparison of the two transports of one server, not a measure of either
  against the bare baseline. Goal: gRPC at least as fast (ratio >= 1).
- memory: secure-maas with 4 workers serving one 200 MB model: the proportional set size
  (PSS, from /proc/PID/smaps_rollup) of the whole instance (every process of its group) over
  that of one bare Python process holding the same model in TensorFlow. Goal <= 1.5.

Every answer must be a 200 and every secure answer audited (model:predict events counted in
the database against the answers wrk saw). The last line is
`RESULT thr_ratio_c1=... thr_ratio_c16=... thr_ratio_c64=... p99_ratio_c16=... p99_ratio_c64=...
heavy_thr_ratio_c16=... heavy_thr_ratio_c64=... grpc_thr_ratio_c1=... grpc_thr_ratio_c16=...
grpc_p99_ratio_c16=... rss_ratio=... errors=...`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import shutil
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


# --- the load generator: wrk, with a Lua script for the body, the token and a JSON summary ----

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
%(auth)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, "write": %%d, '
    .. '"status": %%d, "timeout": %%d, "p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_script(folder: Path, token: str | None) -> Path:
    """The Lua script that makes wrk POST one row (with `token`) and print a JSON summary."""
    rng = random.Random(0)
    body = json.dumps({"instances": [[round(rng.uniform(-1, 1), 6) for _ in range(N_INPUTS)]]})
    auth = f'wrk.headers["Authorization"] = "Bearer {token}"' if token else ""
    path = folder / ("secure.lua" if token else "baseline.lua")
    path.write_text(WRK_SCRIPT % {"body": json.dumps(body), "auth": auth})
    return path


def run_wrk(
    port: int, path: str, script: Path, concurrency: int, duration: float
) -> dict[str, float]:
    """One wrk run: throughput of 200s, p50/p99 latency (ms), and every kind of error."""
    command = ["wrk", "-t", str(min(2, concurrency)), "-c", str(concurrency),
               "-d", f"{duration:g}s", "--timeout", "30s", "-s", str(script),
               f"http://127.0.0.1:{port}{path}"]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    lines = [line for line in out.stdout.splitlines() if line.startswith("WRK ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-800:]}{out.stderr[-800:]}")
    w = json.loads(lines[-1][4:])
    errors = w["connect"] + w["read"] + w["write"] + w["status"] + w["timeout"]
    ok = w["requests"] - w["status"]
    return {
        "answers": w["requests"],
        "ok": ok,
        "errors": errors,
        "throughput": ok / (w["duration_us"] / 1e6),
        "p50_ms": w["p50_us"] / 1000,
        "p99_ms": w["p99_us"] / 1000,
    }


# --- set-up and servers ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def save_model(path: Path, widths: Sequence[int]) -> None:
    """A Keras MLP 64 -> widths... -> 10 (ReLU), fixed seed, saved at `path`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    layers = [tf.keras.layers.Dense(w, activation="relu") for w in widths]
    model = tf.keras.Sequential(
        [tf.keras.Input(shape=(N_INPUTS,)), *layers, tf.keras.layers.Dense(10)]
    )
    model.save(path)


def one_row_ms(path: Path) -> float:
    """Median time of one single-row call of the model at `path` through a tf.function, here."""
    import numpy as np
    import tensorflow as tf

    model = tf.keras.models.load_model(path, compile=False)
    infer = tf.function(lambda x: model(x, training=False))
    x = tf.zeros((1, N_INPUTS))
    infer(x)
    times = []
    for _ in range(50):
        started = time.perf_counter()
        infer(x).numpy()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [str(VENV_BIN / "secure-maas"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"secure-maas {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
    return out.stdout.strip()


def wait_ready(
    proc: subprocess.Popen, port: int, token: str | None, path: str = PATH_PREDICT
) -> None:
    """Wait (at most 300 s) until a predict answers 200, then warm every worker up a little."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps({"instances": [[0.0] * N_INPUTS]}).encode()
    deadline = time.monotonic() + 300
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", path, body=body, headers=headers)
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
                    c.request("POST", path, body=body, headers=headers)
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


def group_pss_kib(leader: int) -> int:
    """The proportional set size of every process in `leader`'s process group, in KiB."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            if os.getpgid(int(entry.name)) != leader:
                continue
            for line in (entry / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total


def bare_pss_kib(path: Path) -> int:
    """PSS of one bare Python process that holds the model at `path` in TensorFlow and has
    called it once (run as `serve.py _bare PATH`, so nothing else of this script is counted)."""
    command = [sys.executable, __file__, "_bare", str(path)]
    env = {**os.environ, **THREAD_ENV}
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


def bare_main(path: str) -> None:
    import tensorflow as tf

    model = tf.keras.models.load_model(path, compile=False)
    model(tf.zeros((1, N_INPUTS)), training=False).numpy()
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            print(int(line.split()[1]))
            return
    raise RuntimeError("no Pss line in /proc/self/smaps_rollup")


def fmt(x: float) -> str:
    return f"{x:.3f}"


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


class Bench:
    """A scratch secure-maas instance and the servers the parts start on it."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MAAS_")}
        self.base_env.update(THREAD_ENV)
        self.base_env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        self.env = dict(self.base_env)
        self.env["SECURE_MAAS_DATABASE_URL"] = f"sqlite:///{work / 'secure_maas.db'}"
        self.schema: str | None = None
        if args.postgres:
            self.schema = f"bench_serve_{os.getpid()}"
            postgres(args.postgres, f'CREATE SCHEMA "{self.schema}"')
            sep = "&" if "?" in args.postgres else "?"
            self.env["SECURE_MAAS_DATABASE_URL"] = (
                f"{args.postgres}{sep}options=-csearch_path%3D{self.schema}"
            )
        self.env["SECURE_MAAS_KEYS_DIR"] = str(work / "keys")
        self.env["SECURE_MAAS_STORE_DIR"] = str(work / "store")
        self.env["SECURE_MAAS_LOG_LEVEL"] = "WARNING"
        self.procs: list[subprocess.Popen] = []
        self.handles: list[Any] = []
        self.errors = 0  # non-200 answers, failed connections and unaudited answers
        self.logs: list[Path] = []
        cli(self.env, "init")
        cli(self.env, "principal", "add", "bench-user")
        self.token = cli(self.env, "token", "issue", "--subject", "bench-user", "--ttl", "2h")
        self.scripts = {"baseline": wrk_script(work, None), "secure": wrk_script(work, self.token)}

    def model(self, name: str, widths: Sequence[int]) -> Path:
        """Save an MLP, import it into the instance as `name`, grant bench-user predict."""
        path = self.work / f"{name}.keras"
        save_model(path, widths)
        cli(self.env, "models", "import", str(path), "--name", name)
        cli(self.env, "policy", "grant", "--subject", "user:bench-user", "--model", name,
            "--action", "model:predict")  # fmt: skip
        return path

    def _log(self, label: str) -> Any:
        path = self.work / f"{label}-{len(self.logs)}.log"
        self.logs.append(path)
        handle = open(path, "wb")  # noqa: SIM115 (closed with the part's servers)
        self.handles.append(handle)
        return handle

    def baseline(self, path: Path, workers: int) -> tuple[subprocess.Popen, int]:
        port = free_port()
        proc = subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "--chdir", str(ROOT / "bench"), "-k", "gthread",
             "-w", str(workers), "--threads", str(self.args.threads), "--keep-alive", "5",
             "--timeout", "120", "--no-control-socket", "--error-logfile", "-",
             "-b", f"127.0.0.1:{port}", "serve:baseline_app()"],
            env=dict(self.base_env, **{MODEL_ENV: str(path)}), cwd=ROOT,
            stdout=self._log("baseline"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.procs.append(proc)
        wait_ready(proc, port, None)
        return proc, port

    def secure(
        self, name: str, workers: int, extra: Sequence[str] = ()
    ) -> tuple[subprocess.Popen, int]:
        port = free_port()
        proc = subprocess.Popen(
            [str(VENV_BIN / "secure-maas"), "serve", "--workers", str(workers),
             "--threads", str(self.args.threads), "--port", str(port), "--preload", name,
             *extra],
            env=self.env, cwd=ROOT, stdout=self._log("secure"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.procs.append(proc)
        wait_ready(proc, port, self.token, path=f"/v1/models/{name}:predict")
        return proc, port

    def audited(self) -> int:
        """Allowed model:predict events in the instance's audit log."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.env["SECURE_MAAS_DATABASE_URL"])
        try:
            with engine.connect() as connection:
                where = "action = 'model:predict' AND decision = 'allow'"
                query = sa.text(f"SELECT count(*) FROM audit_events WHERE {where}")
                return int(connection.execute(query).scalar_one())
        finally:
            engine.dispose()

    def close(self) -> None:
        """Stop every server started so far (a part's servers end with the part)."""
        for proc in self.procs:
            stop(proc)
        for handle in self.handles:
            handle.close()
        self.procs.clear()
        self.handles.clear()

    def drop(self) -> None:
        if self.schema is not None:
            postgres(self.args.postgres, f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    def tails(self) -> None:
        for path in self.logs:
            tail = path.read_text(errors="replace")[-3000:]
            print(f"--- {path.name} (tail) ---\n{tail}", file=sys.stderr)


def compare(
    bench: Bench, label: str, baseline: int, secure: tuple[int, str], levels: Sequence[int]
) -> dict[str, float]:
    """Run both servers at each level `--repeat` times, alternating which goes first; print
    each run and the medians; return the ratios. Counts errors and unaudited answers."""
    args = bench.args
    ratios: dict[str, float] = {}
    audited_before = bench.audited()
    secure_ok = 0
    targets = {"baseline": (baseline, PATH_PREDICT), "secure": secure}
    print(f"{label}: {'conc':>4} {'server':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'answers':>8} {'errors':>6}", flush=True)  # fmt: skip
    for c in levels:
        runs: dict[str, list[dict[str, float]]] = {"baseline": [], "secure": []}
        for repeat in range(args.repeat):
            order = ("baseline", "secure") if repeat % 2 == 0 else ("secure", "baseline")
            for name in order:
                port, path = targets[name]
                m = run_wrk(port, path, bench.scripts[name], c, args.duration)
                runs[name].append(m)
                bench.errors += int(m["errors"])
                if name == "secure":
                    secure_ok += int(m["ok"])
                print(f"{label}: {c:>4} {name:<8} {m['throughput']:>9.1f} {m['p50_ms']:>8.2f} "
                      f"{m['p99_ms']:>8.2f} {int(m['answers']):>8} {int(m['errors']):>6}",
                      flush=True)  # fmt: skip
        thr = {n: [m["throughput"] for m in r] for n, r in runs.items()}
        p99 = {n: [m["p99_ms"] for m in r] for n, r in runs.items()}
        ratios[f"thr_ratio_c{c}"] = median(thr["secure"]) / median(thr["baseline"])
        ratios[f"p99_ratio_c{c}"] = median(p99["secure"]) / median(p99["baseline"])
        spread = [s / b for s, b in zip(thr["secure"], thr["baseline"], strict=True)]
        print(f"{label}: {c:>4} ratio    throughput x{ratios[f'thr_ratio_c{c}']:.3f} "
              f"(pairs {min(spread):.2f}-{max(spread):.2f})  p99 x{ratios[f'p99_ratio_c{c}']:.3f}",
              flush=True)  # fmt: skip
    audited = bench.audited() - audited_before
    print(f"{label}: secure answers 200: {secure_ok}, audited: {audited}", flush=True)
    if audited < secure_ok:
        bench.errors += secure_ok - audited
    return ratios


def part_small(bench: Bench) -> dict[str, float]:
    path = bench.model("bench", [256])
    levels = [int(x) for x in bench.args.levels.split(",") if x.strip()]
    _, baseline = bench.baseline(path, bench.args.workers)
    _, secure = bench.secure("bench", bench.args.workers)
    ratios = compare(bench, "small", baseline, (secure, "/v1/models/bench:predict"), levels)
    bench.close()
    wanted = [f"thr_ratio_c{c}" for c in levels] + [f"p99_ratio_c{c}" for c in levels if c > 1]
    return {k: ratios[k] for k in wanted}


def part_heavy(bench: Bench) -> dict[str, float]:
    path = bench.model("heavy", [2048] * 4)
    print(f"heavy: one single-row call of the model takes {one_row_ms(path):.2f} ms here "
          "(median of 50)", flush=True)  # fmt: skip
    _, baseline = bench.baseline(path, bench.args.workers)
    _, secure = bench.secure("heavy", bench.args.workers)
    ratios = compare(bench, "heavy", baseline, (secure, "/v1/models/heavy:predict"), [16, 64])
    bench.close()
    return {f"heavy_thr_ratio_c{c}": ratios[f"thr_ratio_c{c}"] for c in (16, 64)}


def part_memory(bench: Bench) -> dict[str, float]:
    path = bench.model("large", [4096] * 4)
    bare = bare_pss_kib(path)
    proc, _ = bench.secure("large", 4)
    time.sleep(2.0)  # let every worker settle after the warm-up
    instance = group_pss_kib(proc.pid)
    bench.close()
    ratio = instance / bare
    print(f"memory: 4 workers serving a {path.stat().st_size / 1e6:.0f} MB model: instance PSS "
          f"{instance / 1024:.0f} MiB, one bare TF process {bare / 1024:.0f} MiB: x{ratio:.2f}",
          flush=True)  # fmt: skip
    return {"rss_ratio": ratio}


def client_load(
    kind: str, port: int, token: str, target: tuple[str, str], c: int, seconds: float
) -> dict:
    """`c` threads, each with its own tritonclient (`kind`: grpc or http), calling the model
    `target` (its name and input name) with one row for `seconds`: answers, errors,
    throughput and latency percentiles."""
    model, input_name = target
    import numpy as np

    if kind == "grpc":
        sys.path.insert(0, str(ROOT))
        from tests.grpc_clients import install_tritonclient_grpc

        install_tritonclient_grpc()
        import tritonclient.grpc as triton
    else:
        import tritonclient.http as triton  # type: ignore[no-redef]
    row = np.random.default_rng(0).normal(size=(1, N_INPUTS)).astype(np.float32)
    latencies: list[list[float]] = [[] for _ in range(c)]
    errors = [0] * c
    ready = threading.Barrier(c + 1)
    go = threading.Event()
    deadline = [0.0]

    def work(index: int) -> None:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        given = triton.InferInput(input_name, [1, N_INPUTS], "FP32")
        given.set_data_from_numpy(row)
        headers = {"authorization": f"Bearer {token}"}
        try:
            client.infer(model, [given], headers=dict(headers))  # connect and warm up
            ready.wait()
            go.wait()
            while time.perf_counter() < deadline[0]:
                began = time.perf_counter()
                try:
                    client.infer(model, [given], headers=dict(headers))
                except Exception:
                    errors[index] += 1
                    continue
                latencies[index].append(time.perf_counter() - began)
        finally:
            client.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(c)]
    for thread in threads:
        thread.start()
    ready.wait(timeout=120)
    began = time.perf_counter()
    deadline[0] = began + seconds
    go.set()
    for thread in threads:
        thread.join(timeout=seconds + 120)
    took = time.perf_counter() - began
    every = sorted(x for per in latencies for x in per)
    ok = len(every)
    return {
        "answers": ok + sum(errors),
        "ok": ok,
        "errors": sum(errors),
        "throughput": ok / took,
        "p50_ms": every[ok // 2] * 1000 if ok else 0.0,
        "p99_ms": every[min(ok - 1, int(ok * 0.99))] * 1000 if ok else 0.0,
    }


def part_grpc(bench: Bench) -> dict[str, float]:
    bench.model("bench_grpc", [256])
    cli(
        bench.env,
        "policy",
        "grant",
        "--subject",
        "user:bench-user",
        "--model",
        "bench_grpc",
        "--action",
        "model:metadata",
    )  # fmt: skip (the input's name, from the metadata)
    grpc_port = free_port()
    _, http_port = bench.secure("bench_grpc", bench.args.workers, ("--grpc-port", str(grpc_port)))
    target = ("bench_grpc", _input_name(http_port, bench.token, "bench_grpc"))
    audited_before = bench.audited()
    ok_total = 0
    ratios: dict[str, float] = {}
    print(f"grpc: {'conc':>4} {'client':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'answers':>8} {'errors':>6}", flush=True)  # fmt: skip
    for c in (1, 16):
        runs: dict[str, list[dict[str, float]]] = {"http": [], "grpc": []}
        for repeat in range(bench.args.repeat):
            order = ("http", "grpc") if repeat % 2 == 0 else ("grpc", "http")
            for kind in order:
                port = grpc_port if kind == "grpc" else http_port
                m = client_load(kind, port, bench.token, target, c, bench.args.duration)
                runs[kind].append(m)
                bench.errors += int(m["errors"])
                ok_total += int(m["ok"])
                print(f"grpc: {c:>4} {kind:<8} {m['throughput']:>9.1f} {m['p50_ms']:>8.2f} "
                      f"{m['p99_ms']:>8.2f} {int(m['answers']):>8} {int(m['errors']):>6}",
                      flush=True)  # fmt: skip
        thr = {n: median([m["throughput"] for m in r]) for n, r in runs.items()}
        p99 = {n: median([m["p99_ms"] for m in r]) for n, r in runs.items()}
        ratios[f"grpc_thr_ratio_c{c}"] = thr["grpc"] / thr["http"]
        if c > 1:
            ratios[f"grpc_p99_ratio_c{c}"] = p99["grpc"] / p99["http"]
        print(f"grpc: {c:>4} ratio    throughput x{thr['grpc'] / thr['http']:.3f}  "
              f"p99 x{p99['grpc'] / p99['http']:.3f} (gRPC over HTTP)", flush=True)  # fmt: skip
    # Each client's warm-up call is audited too: c per run.
    warmups = sum(c for c in (1, 16)) * 2 * bench.args.repeat
    audited = bench.audited() - audited_before
    print(f"grpc: answers 200: {ok_total} (+{warmups} warm-ups), audited: {audited}", flush=True)
    if audited < ok_total + warmups:
        bench.errors += ok_total + warmups - audited
    bench.close()
    return ratios


def _input_name(port: int, token: str, model: str) -> str:
    """The model's one input name, from its OIP metadata."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", f"/v2/models/{model}", headers={"Authorization": f"Bearer {token}"})
        document = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return str(document["inputs"][0]["name"])


PARTS = {"small": part_small, "heavy": part_heavy, "grpc": part_grpc, "memory": part_memory}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each server per level")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--levels", default="1,16,64", help="the small model's levels")
    parser.add_argument("--skip", default="", help="parts to leave out: small,heavy,grpc,memory")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="run secure-maas on this PostgreSQL database (a fresh schema, dropped after) "
        "instead of SQLite, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: install it with `make bench-tools` (Debian: apt-get install wrk)",
              file=sys.stderr)  # fmt: skip
        return 2
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            print(f"{args.workers} workers x {args.threads} threads, {args.duration:g} s per run, "
                  f"{args.repeat} runs per server and level, database "
                  f"{'PostgreSQL' if args.postgres else 'SQLite'}", flush=True)  # fmt: skip
            for name, part in PARTS.items():
                if name not in skip:
                    result.update(part(bench))
        except BaseException:
            bench.tails()
            raise
        finally:
            bench.close()
            bench.drop()
    print(f"all answers 200 and audited: {bench.errors == 0} (errors: {bench.errors})")
    print("RESULT " + " ".join(f"{k}={fmt(v)}" for k, v in result.items())
          + f" errors={bench.errors}")  # fmt: skip
    return 0 if bench.errors == 0 else 1


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
    if len(sys.argv) > 2 and sys.argv[1] == "_bare":
        bare_main(sys.argv[2])
        sys.exit(0)
    sys.exit(main())
