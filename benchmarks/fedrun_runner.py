"""fedrun: the torch/mnist federation through its ``fx`` commands, in a fresh workspace.

Usage (from the repository root, fedrun's venv active)::

    python -m benchmarks.fedrun_runner [--threads 1] [--timeout 900]

The same 13 ``fx`` calls as OpenFL's flow (each timed), MNIST gunzipped into ``<ws>/data/mnist``,
then ``fx aggregator start`` + two ``fx collaborator start`` with ``OMP_NUM_THREADS=1`` inside a
loopback-only network namespace (as OpenFL is run). ``save/last.pbuf`` is exported to ``.npz``
with fedrun's own reader and scored on the full test set.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from benchmarks import common

COLLABORATORS = ("collaborator1", "collaborator2")
FQDN = "localhost"


def fx_path() -> str:
    """The ``fx`` next to the running interpreter (fedrun's venv), else on PATH."""
    here = Path(sys.executable).parent / "fx"
    return str(here) if here.exists() else (shutil.which("fx") or "fx")


def fx_env() -> dict[str, str]:
    return {
        "PATH": str(Path(fx_path()).parent) + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONNOUSERSITE": "1",
    }


@functools.cache
def compile_package() -> None:
    """Byte-compile fedrun once, as ``pip install`` does for an installed package: this checkout
    is an editable install, and with PYTHONDONTWRITEBYTECODE set (as on these machines) every
    ``fx`` process would otherwise compile fedrun's modules from source, which no user's
    installed fedrun does (the peers' venvs were compiled by pip)."""
    import compileall

    import fedrun

    compileall.compile_dir(Path(fedrun.__file__).parent, quiet=1)


def setup_workspace(
    work: Path,
    template: str = "torch/mnist",
    collaborators: tuple[str, ...] = COLLABORATORS,
    plan_edits: dict[str, Any] | None = None,
    data_paths: list[str] | None = None,
) -> dict[str, Any]:
    """Create a workspace and its PKI with fedrun's ``fx`` (13 calls for two collaborators).

    ``plan_edits`` maps dotted plan keys (``task_runner.settings.model_bytes``) to values, applied
    to ``plan/plan.yaml`` after ``workspace create``.
    """
    ws = work / "fedrun_ws"
    env = fx_env()
    calls: list[dict[str, Any]] = []
    compile_package()

    def call(*args: str, cwd: Path = ws) -> None:
        res = common.run_timed([fx_path(), *args], cwd=cwd, env=env, timeout=600)
        calls.append({"cmd": "fx " + " ".join(args), "s": round(res.seconds, 3)})

    t0 = common.now()
    call("workspace", "create", "--prefix", str(ws), "--template", template, cwd=work)
    if plan_edits:
        edit_plan(ws / "plan" / "plan.yaml", plan_edits)
    call("workspace", "certify")
    call("aggregator", "generate-cert-request", "--fqdn", FQDN)
    call("aggregator", "certify", "--fqdn", FQDN, "--silent")
    call("plan", "initialize", "-a", FQDN)
    for i, name in enumerate(collaborators, start=1):
        common.certify_collaborator(call, name, data_paths[i - 1] if data_paths else str(i))
    setup_s = common.now() - t0
    if template.endswith("mnist"):
        common.mnist_raw_into(ws / "data" / "mnist")
    return {"workspace": str(ws), "setup_s": setup_s, "fx_calls": calls}


def reset_workspace(ws: Path) -> None:
    """Forget a previous run (state DB, saved models, logs) so the next one starts at round 0."""
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


def edit_plan(plan: Path, edits: dict[str, Any]) -> None:
    import yaml

    doc = yaml.safe_load(plan.read_text())
    for dotted, value in edits.items():
        node = doc
        keys = dotted.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    plan.write_text(yaml.safe_dump(doc, sort_keys=False))


def fx_startup() -> dict[str, Any]:
    return common.time_command([fx_path(), "--help"], repeats=3, env=fx_env())


def run_federation(
    ws: Path,
    threads: str = "1",
    timeout: float = 900,
    collaborators: tuple[str, ...] = COLLABORATORS,
    netns: bool = True,
    sample_interval: float = 0.1,
    export_model: bool = True,
) -> dict[str, Any]:
    reset_workspace(ws)
    logs = ws / "bench-logs"
    logs.mkdir(parents=True)
    env: dict[str, str | None] = dict(fx_env())
    common.thread_env(env, threads)
    env["FEDRUN_NUM_THREADS"] = None if threads == "default" else threads
    specs = common.fx_federation_specs(fx_path(), ws, collaborators, env, logs)
    if netns:
        group = common.launch_group_in_netns(
            specs, timeout=timeout, work=logs, sample_interval=sample_interval
        )
    else:
        group = common.launch_group(specs, timeout=timeout, sample_interval=sample_interval)
    out: dict[str, Any] = {
        "system": "fedrun",
        "config": f"OMP_NUM_THREADS={threads}",
        "group": group.to_json(),
        "wall_s": group.wall_s,
        "ok": (not group.timed_out) and all(p.returncode == 0 for p in group.procs),
    }
    out.update(parse_metrics(ws))
    split_idle(out["group"], ws / "logs" / "aggregator.log")
    if export_model:
        out.update(export_final_model(ws, logs))
    return out


def export_final_model(ws: Path, logs: Path) -> dict[str, str]:
    """``save/last.pbuf`` as ``logs/last.npz`` for scoring: ``final_model_npz``, or
    ``final_model_error`` (reported, never failing the benchmark); nothing when no model."""
    last = ws / "save" / "last.pbuf"
    if not last.exists():
        return {}
    npz = logs / "last.npz"
    try:
        pbuf_to_npz(last, npz)
    except Exception as exc:  # noqa: BLE001 - report, do not fail the benchmark
        return {"final_model_error": repr(exc)}
    return {"final_model_npz": str(npz)}


def run_simulate(
    work: Path,
    timeout: float = 900,
    rounds: int = 2,
    template: str = "torch/mnist",
    sample_interval: float = 0.1,
) -> dict[str, Any]:
    """The same federation through fedrun's one command, ``fx simulate``: it creates the
    workspace, its CA and certificates and the initial model itself, then runs one aggregator
    and two collaborator processes over mutual TLS on 127.0.0.1 (one thread each on 2 cores:
    it gives each collaborator ``cores // 2``). Its wall time therefore includes its set-up.

    Each call uses a fresh workspace under ``work`` (a new initial model each time, as the
    peers' simulation engines draw one); MNIST comes gunzipped from ``work/mnist``, as the
    ``fx`` flow's workspace holds it.
    """
    compile_package()
    work.mkdir(parents=True, exist_ok=True)
    mnist = common.mnist_raw_into(work / "mnist")
    n = 1
    while (work / f"simulate-{n}").exists():
        n += 1
    ws = work / f"simulate-{n}"
    logs = work / f"simulate-{n}-logs"
    logs.mkdir()
    env: dict[str, str | None] = dict(fx_env())
    env["FEDRUN_MNIST_DIR"] = str(mnist)
    argv = [fx_path(), "simulate", "--template", template, "--rounds", str(rounds)]
    spec = common.ProcSpec(
        "fx simulate",
        [*argv, "--prefix", str(ws)],
        str(work),
        env,
        str(logs / "simulate.log"),
        "driver",
    )
    group = common.launch_group_in_netns(
        [spec], timeout=timeout, work=logs, sample_interval=sample_interval
    )
    driver = group.procs[0]
    out: dict[str, Any] = {
        "system": "fedrun (fx simulate)",
        "config": " ".join(argv[1:]) + " (set-up included)",
        "group": group.to_json(),
        "wall_s": group.wall_s,
        "ok": (not group.timed_out) and driver.returncode == 0,
        "processes_by_role": _simulate_roles(driver.descendants),
    }
    out.update(parse_metrics(ws, ws / "logs" / "aggregator.log"))
    threads = re.findall(r"trains with (\d+) threads?", _read_logs(ws / "logs", "collaborator_"))
    out["collaborator_threads"] = sorted({int(t) for t in threads})
    out.update(export_final_model(ws, logs))
    return out


def _read_logs(folder: Path, prefix: str) -> str:
    return "".join(
        p.read_text(errors="replace") for p in sorted(folder.glob(f"{prefix}*.log")) if p.is_file()
    )


def _simulate_roles(descendants: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """``fx simulate``'s own processes by role (from the sampled process tree)."""
    roles: dict[str, list[dict[str, Any]]] = {"aggregator": [], "collaborator": [], "driver": []}
    for d in descendants:
        cmd = d.get("cmd", "")
        role = (
            "aggregator"
            if "aggregator start" in cmd
            else "collaborator"
            if "collaborator start" in cmd
            else "driver"
        )
        roles[role].append(d)
    return roles


def parse_metrics(ws: Path, aggregator_log: Path | None = None) -> dict[str, Any]:
    """Per-round times and accuracies from fedrun's ``logs/metrics.jsonl`` (when written) and
    its aggregator's log (default: the one the benchmark captured, ``bench-logs/``)."""
    path = ws / "logs" / "metrics.jsonl"
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    by_task: dict[str, dict[int, float]] = {}
    for rec in records:
        if rec.get("origin") == "aggregator":
            by_task.setdefault(f"{rec.get('task')}/{rec.get('metric')}", {})[int(rec["round"])] = (
                rec["value"]
            )
    # round durations as the aggregator reports them: "round N finished in X s"
    rounds = []
    log = aggregator_log or ws / "bench-logs" / "aggregator.log"
    if log.exists():
        text = log.read_text(errors="replace")
        for m in _ROUND_FINISHED.finditer(text):
            label = "final validation" if m.group(1) == "final validation" else int(m.group(2))
            cpu = float(m.group("cpu")) if m.group("cpu") else None
            model = float(m.group("model")) if m.group("model") else None
            rounds.append(
                {
                    "round": label,
                    "s": float(m.group(3)),
                    "aggregator_cpu_s": cpu,
                    "aggregation_s": model,
                }
            )
    return {"rounds": rounds, "metrics_by_task": by_task, "metrics_records": len(records)}


#: "round N finished in X s (... received, new model in Z s, aggregator CPU Y s)" (the CPU
#: part since session 4, the new model's time since session 6)
_ROUND_FINISHED = re.compile(
    r"(round (\d+)|final validation) finished in ([0-9.]+) s \([^)]*?"
    r"(?:, new model in (?P<model>[0-9.]+) s)?(?:, aggregator CPU (?P<cpu>[0-9.]+) s)?\)"
)

_FINISHED_TASKS = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [+-]\d{4}) \S+ \S+ round (\d+): (\S+) finished "
    r"its tasks",
    re.MULTILINE,
)


def peer_waits(log_text: str, started_epoch: float) -> dict[str, list[tuple[float, float]]]:
    """Per collaborator, the stretches (group-relative start, end) from its last result of a
    round to the last result of that round from anyone: waiting for a slower peer, which a
    synchronous round cannot avoid. Read from the aggregator's log (millisecond timestamps)."""
    by_round: dict[int, list[tuple[float, str]]] = {}
    for m in _FINISHED_TASKS.finditer(log_text):
        when = _dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f %z").timestamp()
        by_round.setdefault(int(m.group(2)), []).append((when - started_epoch, m.group(3)))
    waits: dict[str, list[tuple[float, float]]] = {}
    for entries in by_round.values():
        closes = max(t for t, _ in entries)
        for t, name in entries:
            waits.setdefault(name, []).append((t, closes))
    return waits


def split_idle(group: dict[str, Any], aggregator_log: Path) -> None:
    """Add ``peer_wait_s`` and ``idle_excl_peer_wait_s`` to each collaborator of ``group``: the
    part of its idle time spent waiting for a slower peer to finish the round, and the rest
    (start-up, model download, the round change: what the framework itself costs)."""
    epoch = group.get("started_epoch")
    if epoch is None or not aggregator_log.exists():
        return
    waits = peer_waits(aggregator_log.read_text(errors="replace"), epoch)
    for proc in group["procs"]:
        if proc["role"] != "collaborator" or proc.get("idle_s") is None:
            continue
        name = proc["name"]
        overlap = 0.0
        for start, seconds in proc.get("idle_periods") or []:
            for a, b in waits.get(name, []):
                overlap += max(0.0, min(start + seconds, b) - max(start, a))
        proc["peer_wait_s"] = round(overlap, 3)
        proc["idle_excl_peer_wait_s"] = round(max(0.0, proc["idle_s"] - overlap), 3)


_PBUF_TO_NPZ = r"""
import sys, numpy as np
from fedrun.storage.model_file import load_model
tensors = load_model(sys.argv[1]).tensors
np.savez(sys.argv[2], **{k: np.asarray(v) for k, v in tensors.items()})
"""


def pbuf_to_npz(pbuf: Path, npz: Path) -> None:
    common.run_timed([sys.executable, "-c", _PBUF_TO_NPZ, str(pbuf), str(npz)], timeout=300)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", default="1")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--no-netns", action="store_true", help="run on the host's loopback instead")
    args = ap.parse_args(argv)
    work = common.new_work_dir("fedrun")
    setup = setup_workspace(work)
    res = run_federation(
        Path(setup["workspace"]), args.threads, args.timeout, netns=not args.no_netns
    )
    res.update({"setup": setup, "fx_help": fx_startup()})
    if "final_model_npz" in res:
        res["final_accuracy_full_test"] = common.score_model(
            sys.executable, Path(res["final_model_npz"])
        )
    return common.report_run("fedrun_runner", res)


if __name__ == "__main__":
    sys.exit(main())
