"""OpenFL 1.9: the torch/mnist federation with its own ``fx`` PKI flow, run in a network namespace.

Usage (from the repository root)::

    python -m benchmarks.openfl_runner [--threads 1|default] [--timeout 900]

Steps, each timed:

1. ``benchmarks/.envs/openfl``: ``openfl==1.9.*``, ``torch==2.14.1``, ``torchvision==0.29.1`` and
   ``numpy<2.4`` (OpenFL 1.9's aggregator crashes on numpy 2.4).
2. 13 ``fx`` calls: workspace create (torch/mnist), workspace certify, aggregator
   generate-cert-request/certify, plan initialize, and for each collaborator create,
   generate-cert-request, certify --request-pkg (CA side), certify --import (collaborator side).
3. MNIST gunzipped into ``<ws>/data/MNIST/raw/`` (torchvision's layout, so nothing downloads).
4. ``fx aggregator start`` + two ``fx collaborator start`` inside ``unshare -n`` (OpenFL binds
   ``[::]``; the namespace has only loopback).
5. Figures from the processes (wall, CPU, peak RSS, idle) and from OpenFL's logs (per-round times,
   accuracies); ``save/last.pbuf`` converted to ``.npz`` and scored on the full test set.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from benchmarks import common

ENV_NAME = "openfl"
REQUIREMENTS = ["openfl==1.9.*", "torch==2.14.1", "torchvision==0.29.1", "numpy<2.4"]
COLLABORATORS = ("collaborator1", "collaborator2")
FQDN = "localhost"


def fx(tool: str = "fx") -> str:
    return str(common.venv_bin(ENV_NAME, tool))


def env_vars() -> dict[str, str]:
    venv_bin = str(common.venv_bin(ENV_NAME, "fx").parent)
    import os

    return {"PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""), "PYTHONNOUSERSITE": "1"}


def setup_workspace(
    work: Path,
    collaborators: tuple[str, ...] = COLLABORATORS,
    noop: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Create the workspace and its PKI with OpenFL's own ``fx`` calls; time every call.

    ``noop`` (``{"model_bytes":, "tensor_count":, "rounds":}``) swaps the torch/mnist task runner
    for ``benchmarks/openfl_noop/noop.py`` (the round-overhead benchmark).
    """
    common.ensure_venv(ENV_NAME, REQUIREMENTS)
    ws = work / "openfl_ws"
    env = env_vars()
    calls: list[dict[str, Any]] = []

    def call(*args: str, cwd: Path = ws) -> None:
        res = common.run_timed([fx(), *args], cwd=cwd, env=env, timeout=600)
        calls.append({"cmd": "fx " + " ".join(args), "s": round(res.seconds, 3)})

    t0 = common.now()
    call("workspace", "create", "--prefix", str(ws), "--template", "torch/mnist", cwd=work)
    # the only change to the template: write_logs on, so that OpenFL writes its per-round
    # metrics (accuracies, elapsed seconds) to logs/aggregator_metrics.txt
    plan = ws / "plan" / "plan.yaml"
    plan.write_text(plan.read_text().replace("write_logs: false", "write_logs: true"))
    if noop is not None:
        from benchmarks.fedrun_runner import edit_plan

        shutil.copy2(common.BENCH_DIR / "openfl_noop" / "noop.py", ws / "src" / "noop.py")
        edit_plan(
            plan,
            {
                "task_runner.template": "src.noop.NoOpTaskRunner",
                "task_runner.settings": {
                    "model_bytes": int(noop["model_bytes"]),
                    "tensor_count": int(noop["tensor_count"]),
                },
                "data_loader.template": "src.noop.NoOpDataLoader",
                "data_loader.settings": {"batch_size": 1},
                "aggregator.settings.rounds_to_train": int(noop["rounds"]),
            },
        )
    call("workspace", "certify")
    call("aggregator", "generate-cert-request", "--fqdn", FQDN)
    call("aggregator", "certify", "--fqdn", FQDN, "--silent")
    call("plan", "initialize", "-a", FQDN)
    for i, name in enumerate(collaborators, start=1):
        common.certify_collaborator(call, name, str(i))
    setup_s = common.now() - t0
    common.mnist_raw_into(ws / "data" / "MNIST" / "raw")
    return {"workspace": str(ws), "setup_s": setup_s, "fx_calls": calls}


def reset_workspace(ws: Path) -> None:
    """Forget a previous run (persistent DB, saved models, metric logs); OpenFL would otherwise
    resume from its persistent DB."""
    shutil.rmtree(ws / "bench-logs", ignore_errors=True)
    for sub in ("local_state", "logs"):  # keep the folders (the framework may expect them)
        folder = ws / sub
        if folder.is_dir():
            for item in folder.iterdir():
                if item.is_dir():
                    shutil.rmtree(item)
                else:
                    item.unlink()
    for name in ("best.pbuf", "last.pbuf"):
        (ws / "save" / name).unlink(missing_ok=True)


def fx_startup() -> dict[str, Any]:
    """Wall time of ``fx --help`` (three runs): the CLI's import cost."""
    return common.time_command([fx(), "--help"], repeats=3, env=env_vars())


def run_federation(
    ws: Path,
    threads: str = "1",
    timeout: float = 1200,
    collaborators: tuple[str, ...] = COLLABORATORS,
    export_model: bool = True,
) -> dict[str, Any]:
    """Aggregator + collaborators in a loopback-only namespace; returns the measured figures."""
    reset_workspace(ws)
    logs = ws / "bench-logs"
    env: dict[str, str | None] = dict(env_vars())
    common.thread_env(env, threads)
    specs = common.fx_federation_specs(fx(), ws, collaborators, env, logs)
    group = common.launch_group_in_netns(specs, timeout=timeout, work=logs)
    parsed = parse_logs(logs)
    out: dict[str, Any] = {
        "system": "openfl",
        "config": "OMP_NUM_THREADS=1" if threads == "1" else f"threads={threads}",
        "group": group.to_json(),
        "wall_s": group.wall_s,
        "ok": (not group.timed_out) and all(p.returncode == 0 for p in group.procs),
        **parsed,
    }
    # OpenFL's save/last.pbuf holds the model that *entered* the last round (its _save_model
    # stores the round-r input); the model the last round produced is kept only in its persistent
    # DB (next_round_tensors). Both are exported and scored.
    last = ws / "save" / "last.pbuf"
    if export_model and last.exists():
        try:
            pbuf_to_npz(last, logs / "last_pbuf.npz")
            out["last_pbuf_npz"] = str(logs / "last_pbuf.npz")
        except Exception as exc:  # noqa: BLE001 - report, do not fail the benchmark
            out["last_pbuf_error"] = repr(exc)
    db = ws / "local_state" / "tensor.db"
    if export_model and db.exists():
        try:
            db_to_npz(db, logs / "final_aggregate.npz")
            out["final_model_npz"] = str(logs / "final_aggregate.npz")
        except Exception as exc:  # noqa: BLE001
            out["final_model_error"] = repr(exc)
    return out


# OpenFL's rich log lines look like "[11/29/25 12:01:02] INFO     Starting round 1...  file.py:123";
# continuation lines hold no time stamp. We keep the last time stamp seen for each line.
_TS = re.compile(r"\[?(\d{2}/\d{2}/\d{2}) (\d{2}:\d{2}:\d{2})\]?")
_TS_ISO = re.compile(r"(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2}(?:[.,]\d+)?)")


def _timestamps(text: str) -> list[tuple[float | None, str]]:
    import datetime as dt

    out: list[tuple[float | None, str]] = []
    last: float | None = None
    for line in text.splitlines():
        m = _TS.search(line)
        if m:
            last = dt.datetime.strptime(
                f"{m.group(1)} {m.group(2)}", "%m/%d/%y %H:%M:%S"
            ).timestamp()
        else:
            m2 = _TS_ISO.search(line)
            if m2:
                stamp = m2.group(2).replace(",", ".")
                fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in stamp else "%Y-%m-%d %H:%M:%S"
                last = dt.datetime.strptime(f"{m2.group(1)} {stamp}", fmt).timestamp()
        out.append((last, line))
    return out


def parse_logs(logs: Path) -> dict[str, Any]:
    """Round times (1-second resolution) from the aggregator's log, and OpenFL's own per-round
    metrics (``logs/aggregator_metrics.txt``: accuracies, elapsed seconds)."""
    agg_log = logs / "aggregator.log"
    lines = _timestamps(agg_log.read_text(errors="replace")) if agg_log.exists() else []
    round_starts: dict[int, float] = {}
    round_ends: dict[int, float] = {}
    first_task: float | None = None
    for ts, line in lines:
        if ts is None:
            continue
        if first_task is None and "Sending tasks to collaborator" in line:
            first_task = ts
        m = re.search(r"Starting round (\d+)", line)
        if m:
            round_starts[int(m.group(1))] = ts
        m = re.search(r"Saving round (\d+) model", line)
        if m:
            round_ends[int(m.group(1))] = ts
    if first_task is not None:
        round_starts.setdefault(0, first_task)  # OpenFL logs "Starting round" from round 1 on
    rounds = [
        {"round": r, "s": round_ends[r] - round_starts[r] if r in round_starts else None}
        for r in sorted(round_ends)
    ]
    acc: dict[str, dict[int, float]] = {}
    metrics_file = logs.parent / "logs" / "aggregator_metrics.txt"
    per_round: list[dict[str, Any]] = []
    if metrics_file.exists():
        for line in metrics_file.read_text().splitlines():
            with contextlib.suppress(ValueError):
                per_round.append(json.loads(line))
    for rec in per_round:
        r = int(rec.get("round_number", -1))
        for key, value in rec.items():
            if key.startswith("aggregator/") and isinstance(value, (int, float)):
                acc.setdefault(key.split("/", 1)[1], {})[r] = value
        for row in rounds:
            if row["round"] == r and rec.get("elapsed_seconds") is not None:
                # OpenFL's own per-round clock (monotonic, sub-second) replaces the 1-s log stamps
                row["log_s"] = row["s"]
                row["s"] = rec["elapsed_seconds"]
    return {"rounds": rounds, "metrics_by_task": acc, "metrics_file": per_round}


_PBUF_TO_NPZ = r"""
import sys, numpy as np
from openfl.protocols import utils
from openfl.pipelines import NoCompressionPipeline
proto = utils.load_proto(sys.argv[1])
tensors, _ = utils.deconstruct_model_proto(proto, NoCompressionPipeline())
np.savez(sys.argv[2], **{k: np.asarray(v) for k, v in tensors.items()})
print(sorted(tensors))
"""


_DB_TO_NPZ = r"""
import sys, numpy as np
from openfl.databases.persistent_db import PersistentTensorDB
db = PersistentTensorDB(sys.argv[1])
keys = db.load_tensors(db.get_next_round_tensors_table_name())
np.savez(sys.argv[2], **{k[0]: np.asarray(v) for k, v in keys.items()})
print(sorted((k[0], k[2]) for k in keys))
"""


def db_to_npz(db: Path, npz: Path) -> None:
    """The final aggregate (next-round model tensors) from OpenFL's persistent DB, via its code."""
    common.run_timed(
        [str(common.venv_python(ENV_NAME)), "-c", _DB_TO_NPZ, str(db), str(npz)], timeout=300
    )


def pbuf_to_npz(pbuf: Path, npz: Path) -> None:
    """Convert OpenFL's saved model to an .npz with its own code (in its venv)."""
    common.run_timed(
        [str(common.venv_python(ENV_NAME)), "-c", _PBUF_TO_NPZ, str(pbuf), str(npz)], timeout=300
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--threads", default="1", help="OMP_NUM_THREADS for every process, or 'default'"
    )
    ap.add_argument("--timeout", type=float, default=1200)
    args = ap.parse_args(argv)
    work = common.new_work_dir("openfl")
    setup = setup_workspace(work)
    startup = fx_startup()
    res = run_federation(Path(setup["workspace"]), args.threads, args.timeout)
    res.update({"setup": setup, "fx_help": startup})
    if "final_model_npz" in res:
        res["final_accuracy_full_test"] = common.score_model(
            str(common.venv_python(ENV_NAME)), Path(res["final_model_npz"])
        )
    if "last_pbuf_npz" in res:
        res["last_pbuf_accuracy_full_test"] = common.score_model(
            str(common.venv_python(ENV_NAME)), Path(res["last_pbuf_npz"])
        )
    return common.report_run("openfl_runner", res)


if __name__ == "__main__":
    sys.exit(main())
