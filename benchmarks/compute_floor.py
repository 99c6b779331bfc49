"""The bare compute floor: the collaborators' epochs and validations done by plain torch scripts,
one process per collaborator, no federation (no aggregator, no network, no model exchange).

Usage (from the repository root)::

    python -m benchmarks.compute_floor [--python PY] [--rounds 2] [--collaborators 2]

Each worker process (``python benchmarks/compute_floor.py worker ...``, one thread) imports torch,
loads its MNIST shard and runs, per round, the tasks a collaborator runs: validate the global model,
train one epoch (fresh Adam, batch 64), validate the trained model; then, as fedrun does after the
last round, one more validation (``--final-validation``, on by default; OpenFL does not do it).
Wall time is from launching the workers to the last one exiting, so it includes Python and torch
start-up, like the federations' figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent


def worker(
    shard: int, count: int, rounds: int, epochs: int, final_validation: bool, threads: int
) -> dict[str, Any]:
    t0 = time.time()
    sys.path.insert(0, str(_HERE))
    import mnist_task as task
    import torch

    torch.set_num_threads(threads)
    t_import = time.time()
    x_tr, y_tr, x_te, y_te = task.load_shard(shard, count)
    t_data = time.time()
    model = task.build_model()
    tasks: list[dict[str, Any]] = []

    def timed(name: str, fn: Any) -> Any:
        a = time.time()
        value = fn()
        tasks.append({"task": name, "s": time.time() - a, "value": value})
        return value

    for r in range(rounds):
        timed(f"r{r}/validate_global", lambda: task.validate(model, x_te, y_te))
        opt = task.make_optimizer(model)
        for _ in range(epochs):
            timed(f"r{r}/train", lambda opt=opt: task.train_epoch(model, opt, x_tr, y_tr, 64))
        timed(f"r{r}/validate_local", lambda: task.validate(model, x_te, y_te))
    if final_validation:
        timed("final/validate", lambda: task.validate(model, x_te, y_te))
    return {
        "shard": shard,
        "import_s": t_import - t0,
        "data_s": t_data - t_import,
        "tasks": tasks,
        "compute_s": sum(t["s"] for t in tasks),
        "total_s": time.time() - t0,
    }


def run_floor(
    python: str | None = None,
    collaborators: int = 2,
    rounds: int = 2,
    epochs: int = 1,
    final_validation: bool = True,
    threads: int = 1,
    timeout: float = 900,
) -> dict[str, Any]:
    from benchmarks import common
    from benchmarks.common import ProcSpec

    python = python or sys.executable
    work = common.new_work_dir("floor")
    env = {k: str(threads) for k in common.ONE_THREAD_ENV}
    specs = []
    for s in range(1, collaborators + 1):
        argv = [python, str(_HERE / "compute_floor.py"), "worker", "--shard", str(s), "--count", str(collaborators),
                "--rounds", str(rounds), "--epochs", str(epochs), "--threads", str(threads),
                "--out", str(work / f"worker{s}.json")]  # fmt: skip
        if not final_validation:
            argv.append("--no-final-validation")
        specs.append(
            ProcSpec(
                f"worker{s}", argv, str(work), env, str(work / f"worker{s}.log"), "collaborator"
            )
        )
    group = common.launch_group(specs, timeout=timeout)
    workers = []
    for s in range(1, collaborators + 1):
        f = work / f"worker{s}.json"
        if f.exists():
            workers.append(json.loads(f.read_text()))
    return {
        "system": "compute floor",
        "config": f"plain torch, {collaborators} processes, OMP_NUM_THREADS={threads}",
        "python": python,
        "wall_s": group.wall_s,
        "ok": (not group.timed_out) and all(p.returncode == 0 for p in group.procs),
        "group": group.to_json(),
        "workers": workers,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="mode")
    w = sub.add_parser("worker")
    w.add_argument("--shard", type=int, required=True)
    w.add_argument("--count", type=int, default=2)
    w.add_argument("--rounds", type=int, default=2)
    w.add_argument("--epochs", type=int, default=1)
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--no-final-validation", action="store_true")
    w.add_argument("--out", required=True)
    ap.add_argument("--python", default=None, help="interpreter with torch (default: this one)")
    ap.add_argument("--collaborators", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-final-validation", action="store_true")
    args = ap.parse_args(argv)
    if args.mode == "worker":
        res = worker(
            args.shard,
            args.count,
            args.rounds,
            args.epochs,
            not args.no_final_validation,
            args.threads,
        )
        Path(args.out).write_text(json.dumps(res, indent=1))
        return 0
    from benchmarks import common

    res = run_floor(
        args.python, args.collaborators, args.rounds, final_validation=not args.no_final_validation
    )
    path = common.write_results("compute_floor", {"machine": common.machine_info(), "result": res})
    for wk in res["workers"]:
        print(
            f"worker {wk['shard']}: import {wk['import_s']:.2f} s, data {wk['data_s']:.2f} s, compute {wk['compute_s']:.2f} s, total {wk['total_s']:.2f} s"
        )
    print(f"wall {res['wall_s']:.2f} s; written {path}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    if __package__ in (None, "") and len(sys.argv) > 1 and sys.argv[1] == "worker":
        sys.exit(main())
    if __package__ in (None, ""):
        sys.path.insert(0, str(_HERE.parent))
    sys.exit(main())
