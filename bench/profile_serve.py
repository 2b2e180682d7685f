"""Where a secure prediction's CPU goes: py-spy samples of one serving worker under wrk load.

    .venv/bin/pip install py-spy && .venv/bin/python bench/profile_serve.py   # about 1 minute

One `secure-maas serve` worker (4 threads, SQLite, the small MLP of bench/serve.py) and the
instance's model process are driven by wrk over 16 keep-alive connections while `py-spy record`
samples every thread of both (on-CPU samples only, native frames off). Each sample is charged
to a stage by the innermost frame of ours on its stack (a sample with none of ours goes to the
HTTP server or to TensorFlow), so a SQLAlchemy insert under the audit writer counts as audit
and a json.dumps under the response formatter as serialising. Each process's CPU time over the
requests answered gives its CPU cost per request, split by those shares (summed per stage in
the RESULT). `--detail STAGE` (repeatable; default: the pipeline's glue) lists that stage's
samples by the innermost function of ours. The last line is
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
    ("secure_maas/dataplane/batcher", "model call"),
    ("secure_maas/dataplane/cache", "model call"),
    ("secure_maas/dataplane/cached_model", "model call"),
    ("secure_maas/dataplane/loaded", "model call"),
    ("secure_maas/dataplane/catalog_view", "model call"),
    ("secure_maas/dataplane/", "data plane ipc"),
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


def processes_of(leader: int) -> dict[str, int]:
    """The one gunicorn worker and the model process under `leader` (the arbiter)."""
    for _ in range(200):
        found: dict[str, int] = {}
        for child in Path(f"/proc/{leader}/task/{leader}/children").read_text().split():
            name = Path(f"/proc/{child}/comm").read_text().strip()
            found["model process" if name == "smaas-model" else "worker"] = int(child)
        if len(found) == 2:
            return found
        time.sleep(0.1)
    raise RuntimeError("no worker and model process found")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of sampled load")
    parser.add_argument("--detail", action="append", default=[],
                        help="a stage whose samples to list by function (repeatable)")  # fmt: skip
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
            pids = processes_of(proc.pid)
            spies, raws = [], {}
            for role, pid in pids.items():
                raws[role] = Path(tmp) / f"samples-{pid}.txt"
                command = [spy, "record", "--pid", str(pid), "--format", "raw", "--output",
                           str(raws[role]), "--duration", f"{args.duration:g}", "--rate", "200",
                           "--nonblocking", "--gil"]  # fmt: skip
                quiet = subprocess.DEVNULL
                spies.append(subprocess.Popen(command, stdout=quiet, stderr=quiet))
            time.sleep(1.0)
            before = {role: cpu_seconds(pid) for role, pid in pids.items()}
            load = serve.run_wrk(port, "/v1/models/bench:predict", bench.scripts["secure"], 16,
                                 args.duration - 2)  # fmt: skip
            used = {role: cpu_seconds(pid) - before[role] for role, pid in pids.items()}
            for spying in spies:
                spying.wait(timeout=args.duration + 60)
            counts: dict[str, Counter[str]] = {role: Counter() for role in pids}
            detail = args.detail or ["pipeline+views"]
            places: dict[str, Counter[str]] = {stage: Counter() for stage in detail}
            for role, raw in raws.items():
                for line in raw.read_text().splitlines():
                    stack, _, count = line.rpartition(" ")
                    if not count.isdigit():  # py-spy's blank or note lines
                        continue
                    frames = stack.split(";")
                    stage = stage_of(frames)
                    counts[role][stage] += int(count)
                    if stage in places:
                        places[stage][f"{role}: {innermost_ours(frames)}"] += int(count)
        finally:
            bench.close()
            bench.drop()
    ok = max(load["ok"], 1)
    total_ms = sum(used.values()) * 1000 / ok
    print(f"one worker x 4 threads and the model process, 16 connections: "
          f"{load['throughput']:.0f} req/s, {load['errors']:.0f} errors, "
          f"CPU {total_ms:.2f} ms per request")  # fmt: skip
    result = {"cpu_ms_per_request": total_ms}
    every = sum(sum(c.values()) for c in counts.values())
    for role in counts:
        per_request = used[role] * 1000 / ok
        result[role.replace(" ", "_") + "_ms"] = per_request
        total = max(sum(counts[role].values()), 1)
        print(f"{role}: {per_request:.3f} ms per request")
        print(f"  {'stage':<16} {'share':>6} {'ms/request':>10}")
        for stage, count in counts[role].most_common():
            share = count / total
            print(f"  {stage:<16} {share:>6.1%} {share * per_request:>10.3f}")
            key = stage.replace("+", "_").replace(" ", "_") + "_ms"
            result[key] = result.get(key, 0.0) + share * per_request
    for stage, found in places.items():
        print(f"{stage}, by the innermost function of ours -> the call under it:")
        for place, count in found.most_common(12):
            print(f"  {count / max(every, 1):>6.1%}  {place}")
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in result.items()))
    return 0 if load["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
