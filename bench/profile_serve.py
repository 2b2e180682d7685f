"""Where a secure prediction's CPU goes: py-spy samples of one serving worker under wrk load.

    .venv/bin/pip install py-spy && .venv/bin/python bench/profile_serve.py   # about 1 minute

One `secure-maas serve` worker (4 threads, SQLite, the small MLP of bench/serve.py) is driven by
wrk over 16 keep-alive connections while `py-spy record` samples every thread of the worker
(on-CPU samples only, native frames off). Each sample is charged to a stage by the innermost
frame of ours on its stack (a sample with none of ours goes to the HTTP server or to
TensorFlow), so a SQLAlchemy insert under the audit writer counts as audit and a json.dumps
under the response formatter as serialising. The worker's CPU time over the requests answered
gives the CPU cost per request, split by those shares. The last line is
`RESULT cpu_ms_per_request=... <stage>_ms=...`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve  # bench/serve.py: the scratch instance and the wrk driver

#: Stages by the path of the innermost frame of ours, first match wins (most specific first).
STAGES = (
    ("secure_maas/auth/", "token"),
    ("secure_maas/policy/quota", "quota"),
    ("secure_maas/policy/", "decide"),
    ("secure_maas/audit/", "audit"),
    ("secure_maas/serving/formats/", "parse+serialise"),
    ("secure_maas/serving/batcher", "model call"),
    ("secure_maas/serving/cache", "model call"),
    ("secure_maas/serving/bodies", "read body"),
    ("secure_maas/registry/codec", "model call"),
    ("secure_maas/db/", "database begin"),
    ("secure_maas/serving/headers", "headers"),
    ("secure_maas/serving/gunicorn_app", "http server"),
    ("secure_maas/cli/serve_cmd", "http server"),
    ("secure_maas/", "pipeline+views"),
)
OUTSIDE = (("tensorflow", "model call"), ("keras", "model call"))


def stage_of(frames: list[str]) -> str:
    """The stage of one sampled stack (frames outermost first, `name (path:line)`)."""
    for frame in reversed(frames):
        for marker, stage in STAGES:
            if marker in frame:
                return stage
    for frame in reversed(frames):
        for marker, stage in OUTSIDE:
            if marker in frame:
                return stage
    return "http server"


def innermost_ours(frames: list[str]) -> str:
    """`function (module)` of the innermost frame of ours, and the library frame under it."""
    for index in range(len(frames) - 1, -1, -1):
        if "secure_maas/" in frames[index]:
            ours = frames[index].split(" (")[0]
            module = frames[index].split("secure_maas/")[1].split(":")[0]
            below = frames[index + 1].split(" (")[0] if index + 1 < len(frames) else "-"
            return f"{ours} ({module}) -> {below}"
    return "-"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_of(leader: int) -> int:
    """The one gunicorn worker under `leader` (the arbiter)."""
    for _ in range(100):
        children = Path(f"/proc/{leader}/task/{leader}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.1)
    raise RuntimeError("no worker process found")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of sampled load")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(serve.VENV_BIN / "py-spy")
    if not Path(spy).exists() or shutil.which("wrk") is None:
        print("needs py-spy (pip install py-spy) and wrk (make bench-tools)", file=sys.stderr)
        return 2
    options = argparse.Namespace(postgres=None, threads=4, workers=1)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        bench = serve.Bench(options, Path(tmp))
        try:
            bench.model("bench", [256])
            proc, port = bench.secure("bench", 1)
            worker = worker_of(proc.pid)
            raw = Path(tmp) / "samples.txt"
            command = [spy, "record", "--pid", str(worker), "--format", "raw", "--output",
                       str(raw), "--duration", f"{args.duration:g}", "--rate", "200",
                       "--nonblocking"]  # fmt: skip
            quiet = subprocess.DEVNULL
            spying = subprocess.Popen(command, stdout=quiet, stderr=quiet)
            time.sleep(1.0)
            before = cpu_seconds(worker)
            load = serve.run_wrk(port, "/v1/models/bench:predict", bench.scripts["secure"], 16,
                                 args.duration - 2)  # fmt: skip
            used = cpu_seconds(worker) - before
            spying.wait(timeout=args.duration + 60)
            counts: Counter[str] = Counter()
            glue: Counter[str] = Counter()  # what "pipeline+views" samples are in
            for line in raw.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                frames = stack.split(";")
                stage = stage_of(frames)
                counts[stage] += int(count)
                if stage == "pipeline+views":
                    glue[innermost_ours(frames)] += int(count)
        finally:
            bench.close()
            bench.drop()
    total = sum(counts.values())
    per_request = used * 1000 / max(load["ok"], 1)
    print(f"one worker x 4 threads, 16 connections: {load['throughput']:.0f} req/s, "
          f"{load['errors']:.0f} errors, worker CPU {per_request:.2f} ms per request")  # fmt: skip
    print(f"{'stage':<16} {'share':>6} {'ms/request':>10}")
    result = {"cpu_ms_per_request": per_request}
    for stage, count in counts.most_common():
        share = count / total
        print(f"{stage:<16} {share:>6.1%} {share * per_request:>10.3f}")
        result[stage.replace("+", "_").replace(" ", "_") + "_ms"] = share * per_request
    print("pipeline+views, by the innermost function of ours -> the call under it:")
    for place, count in glue.most_common(12):
        print(f"  {count / total:>6.1%}  {place}")
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in result.items()))
    return 0 if load["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
