"""Flower 1.42: the torch/mnist workload (``benchmarks/flower_app``) on the simulation engine and on
the deployment engine, inside a loopback-only network namespace.

Usage (from the repository root, fedrun's venv active)::

    python -m benchmarks.flower_runner [--engine sim|deploy|both] [--timeout 900]

* venv ``benchmarks/.envs/flower``: ``flwr[simulation]==1.42.*`` (Ray backend) and ``torch==2.14.1``.
* The app is staged into the run's work folder with ``flower_bench/task.py`` copied from
  ``benchmarks/mnist_task.py``; ``FLWR_HOME`` points into the work folder, so nothing is written to
  the user's Flower configuration and no detached local SuperLink is left running.
* **Simulation engine**: ``flower-superlink --simulation`` + ``flwr run APP sim --stream`` with
  ``num-supernodes=2`` and ``client-resources-num-cpus=1`` (two Ray actors, one core each).
* **Deployment engine**: ``flower-superlink`` with TLS (CA, server certificate) and
  ``--enable-supernode-auth``; two ``flower-supernode`` with ``--root-certificates`` and
  ``--auth-supernode-private-key`` (EC P-384 keys registered beforehand with ``flwr supernode
  register``), then ``flwr run APP deploy --stream``. Flower 1.42 has no client certificates
  (its TLS is server-authenticated only), so SuperNode authentication by registered keys is the
  closest it comes to mutual TLS.
* The run ends when ``flwr run --stream`` returns; the long-lived SuperLink and SuperNodes are then
  stopped (SIGTERM). Wall time is from launching the first process to ``flwr run`` exiting.
* Setup (certificates and keys made with ``cryptography`` because Flower ships no PKI tool, SuperLink
  start, two ``flwr supernode register``, SuperLink stop) is timed separately.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import ProcSpec

ENV_NAME = "flower"
REQUIREMENTS = ["flwr[simulation]==1.42.*", "torch==2.14.1", "numpy<2.4"]
SIM_PORT = 9310
DEPLOY_PORT = 9300
FLEET_GRPC_PORT = 9392  # legacy gRPC Fleet API the SuperLink still opens when not simulating
SUPERNODE_PORT_BASE = 9400  # SuperNode i serves its ClientApp runtime API on 9400 + i
NODES = 2


def tool(name: str) -> str:
    return str(common.venv_bin(ENV_NAME, name))


def flower_env(flwr_home: Path, threads: str = "1") -> dict[str, str]:
    env = {
        "PATH": str(common.venv_bin(ENV_NAME, "flwr").parent)
        + os.pathsep
        + os.environ.get("PATH", ""),
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONNOUSERSITE": "1",
    }
    if threads != "default":
        env.update({k: threads for k in common.ONE_THREAD_ENV})
    return env


def stage_app(work: Path) -> Path:
    """Copy the app and its workload module into ``work/flower_app``."""
    src = common.BENCH_DIR / "flower_app"
    dst = work / "flower_app"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(common.BENCH_DIR / "mnist_task.py", dst / "flower_bench" / "task.py")
    return dst


def write_flower_config(flwr_home: Path, ca: Path | None) -> None:
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = [
        "[superlink]",
        'default = "sim"',
        "",
        "[superlink.sim]",
        f'address = "127.0.0.1:{SIM_PORT}"',
        "insecure = true",
        "",
    ]
    if ca is not None:
        lines += [
            "[superlink.deploy]",
            f'address = "127.0.0.1:{DEPLOY_PORT}"',
            f'root-certificates = "{ca}"',
            "",
        ]
    (flwr_home / "config.toml").write_text("\n".join(lines))


def setup(work: Path, nodes: int = NODES) -> dict[str, Any]:
    """venv, staged app, Flower config, TLS files, SuperNode keys and their registration."""
    common.ensure_venv(ENV_NAME, REQUIREMENTS)
    app = stage_app(work)
    flwr_home = work / "flwr_home"
    pki = work / "pki"
    calls: list[dict[str, Any]] = []
    t0 = common.now()
    with common.stopwatch() as sw:
        files = common.make_tls_files(pki)
        for i in range(1, nodes + 1):
            common.make_ssh_ec_keypair(pki / f"node{i}.key", pki / f"node{i}.pub")
    calls.append(
        {"cmd": "certificates and node keys (python cryptography)", "s": round(sw["s"], 3)}
    )
    write_flower_config(flwr_home, files["ca"])
    db = work / "superlink-state.db"
    # register the SuperNodes' public keys in a SuperLink whose state persists in db (inside a
    # loopback-only namespace, as every Flower process here)
    env = flower_env(flwr_home)
    env["PYTHONPATH"] = str(common.REPO_DIR)
    specs = [
        ProcSpec(
            "superlink",
            superlink_argv(files, db),
            str(work),
            env,
            str(work / "setup-superlink.log"),
            "aggregator",
        )
    ]
    for i in range(1, nodes + 1):
        argv = [tool("flwr"), "supernode", "register", str(pki / f"node{i}.pub"), "deploy"]
        specs.append(
            ProcSpec(
                f"register{i}",
                _waitport(DEPLOY_PORT, argv),
                str(work),
                env,
                str(work / f"setup-register{i}.log"),
                "cli",
            )
        )
    group = common.launch_group_in_netns(
        specs, 300, work / "setup-netns", wait_for=[s.name for s in specs[1:]]
    )
    for p in group.procs[1:]:
        calls.append(
            {
                "cmd": f"flwr supernode register (incl. wait for SuperLink) [{p.name}]",
                "s": round(p.wall_s or 0, 3),
                "rc": p.returncode,
            }
        )
        if p.returncode != 0:
            raise RuntimeError(f"{p.name} failed; see {p.log}")
    return {
        "app": str(app),
        "flwr_home": str(flwr_home),
        "pki": {k: str(v) for k, v in files.items()},
        "db": str(db),
        "setup_s": common.now() - t0,
        "calls": calls,
        "nodes": nodes,
    }


def superlink_argv(files: dict[str, Path], db: Path) -> list[str]:
    return [
        tool("flower-superlink"),
        "--ssl-ca-certfile", str(files["ca"]),
        "--ssl-certfile", str(files["cert"]),
        "--ssl-keyfile", str(files["key"]),
        "--enable-supernode-auth",
        "--database", str(db),
        "--host", "127.0.0.1",
        "--port", str(DEPLOY_PORT),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip


def _waitport(port: int, argv: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "benchmarks.common",
        "waitport",
        "127.0.0.1",
        str(port),
        "120",
        "--",
        *argv,
    ]


def run_engine(
    engine: str,
    st: dict[str, Any],
    work: Path,
    timeout: float = 900,
    threads: str = "1",
    run_config: dict[str, Any] | None = None,
    tag: str = "",
) -> dict[str, Any]:
    """One federation on ``engine`` ("sim" or "deploy"); returns the measured figures.

    ``run_config`` adds to / overrides the app's run config (e.g. ``mode="noop"``).
    """
    nodes = int(st.get("nodes", NODES))
    flwr_home = Path(st["flwr_home"])
    app = Path(st["app"])
    logs = work / f"logs-{engine}{tag}"
    if logs.exists():
        shutil.rmtree(logs)
    logs.mkdir(parents=True)
    result_dir = logs / "server-results"
    env = flower_env(flwr_home, threads)
    env["PYTHONPATH"] = str(common.REPO_DIR)  # for the waitport helper only
    cfg: dict[str, Any] = {
        "result-dir": str(result_dir),
        "threads": 1 if threads == "default" else int(threads),
        "num-nodes": nodes,
    }
    cfg.update(run_config or {})
    run_cfg = " ".join(f"{k}={json.dumps(v)}" for k, v in cfg.items())
    specs: list[ProcSpec] = []
    if engine == "sim":
        specs.append(
            ProcSpec(
                "superlink",
                [tool("flower-superlink"), "--simulation", "--insecure", "--host", "127.0.0.1", "--port", str(SIM_PORT),
                 "--disable-runtime-dependency-installation"],
                str(work), env, str(logs / "superlink.log"), "aggregator",
            )
        )  # fmt: skip
        specs.append(
            ProcSpec(
                "flwr-run",
                _waitport(SIM_PORT, [tool("flwr"), "run", str(app), "sim", "--stream", "--run-config", run_cfg,
                                     "--federation-config", f"num-supernodes={nodes} client-resources-num-cpus=1"]),
                str(work), env, str(logs / "flwr-run.log"), "driver",
            )
        )  # fmt: skip
    else:
        pki = {k: Path(v) for k, v in st["pki"].items()}
        specs.append(
            ProcSpec(
                "superlink",
                superlink_argv(pki, Path(st["db"])),
                str(work),
                env,
                str(logs / "superlink.log"),
                "aggregator",
            )
        )
        for i in range(1, nodes + 1):
            argv = [
                tool("flower-supernode"),
                "--root-certificates", str(pki["ca"]),
                "--superlink", f"127.0.0.1:{DEPLOY_PORT}",
                "--auth-supernode-private-key", str(Path(st["pki"]["ca"]).parent / f"node{i}.key"),
                "--node-config", f"partition-id={i - 1} num-partitions={nodes}",
                "--port", str(SUPERNODE_PORT_BASE + i),
                "--max-wait-time", "300",
            ]  # fmt: skip
            specs.append(
                ProcSpec(
                    f"supernode{i}",
                    _waitport(DEPLOY_PORT, argv),
                    str(work),
                    env,
                    str(logs / f"supernode{i}.log"),
                    "collaborator",
                )
            )
        specs.append(
            ProcSpec(
                "flwr-run",
                _waitport(DEPLOY_PORT, [tool("flwr"), "run", str(app), "deploy", "--stream", "--run-config", run_cfg]),
                str(work), env, str(logs / "flwr-run.log"), "driver",
            )
        )  # fmt: skip
    group = common.launch_group_in_netns(specs, timeout=timeout, work=logs, wait_for=["flwr-run"])
    driver = next(p for p in group.procs if p.name == "flwr-run")
    out: dict[str, Any] = {
        "system": "flower",
        "config": f"{'simulation' if engine == 'sim' else 'deployment'} engine, OMP_NUM_THREADS={threads}",
        "engine": engine,
        "group": group.to_json(),
        "wall_s": group.wall_s,
        "ok": (not group.timed_out)
        and driver.returncode == 0
        and (result_dir / "server_events.json").exists()
        and (
            bool((run_config or {}).get("mode") == "noop")
            or (result_dir / "final_model.npz").exists()
        ),
    }
    out.update(parse_server_events(result_dir / "server_events.json"))
    if (result_dir / "final_model.npz").exists():
        out["final_model_npz"] = str(result_dir / "final_model.npz")
    return out


def parse_server_events(path: Path) -> dict[str, Any]:
    """Round times from the ServerApp's own time stamps (train sent -> evaluation aggregated)."""
    if not path.exists():
        return {"rounds": [], "server_events_missing": str(path)}
    data = json.loads(path.read_text())
    ev_at: dict[tuple[str, int], float] = {
        (ev["event"], ev["round"]): ev["time"] for ev in data.get("events", [])
    }
    rounds = []
    for (what, r), t_sent in sorted(ev_at.items(), key=lambda kv: kv[0][1]):
        if what != "train_sent":
            continue
        end = ev_at.get(("round_end", r), ev_at.get(("train_aggregated", r)))
        row: dict[str, Any] = {"round": r, "s": None if end is None else end - t_sent}
        if ("train_replies", r) in ev_at and ("train_aggregated", r) in ev_at:
            row["aggregation_s"] = ev_at[("train_aggregated", r)] - ev_at[("train_replies", r)]
            row["train_phase_s"] = ev_at[("train_aggregated", r)] - t_sent
        rounds.append(row)
    return {
        "rounds": rounds,
        "serverapp_s": data["serverapp_end"] - data["serverapp_start"],
        "metrics_by_round": {
            "evaluate": data.get("evaluate_metrics_clientapp"),
            "train": data.get("train_metrics_clientapp"),
        },
    }


def cli_startup(flwr_home: Path) -> dict[str, Any]:
    return common.time_command([tool("flwr"), "--help"], repeats=3, env=flower_env(flwr_home))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--engine", choices=["sim", "deploy", "both"], default="both")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--threads", default="1")
    args = ap.parse_args(argv)
    work = common.new_work_dir("flower")
    st = setup(work)
    results: dict[str, Any] = {"setup": st, "flwr_help": cli_startup(Path(st["flwr_home"]))}
    ok = True
    for engine in ["sim", "deploy"] if args.engine == "both" else [args.engine]:
        res = run_engine(engine, st, work, args.timeout, args.threads)
        if "final_model_npz" in res:
            res["final_accuracy_full_test"] = common.score_model(
                str(common.venv_python(ENV_NAME)), Path(res["final_model_npz"])
            )
        results[engine] = res
        ok = ok and res["ok"]
        print(json.dumps({k: v for k, v in res.items() if k != "group"}, indent=1, default=str))
        for p in res["group"]["procs"]:
            print(engine, p["name"], p["returncode"], round(p["wall_s"] or 0, 1), "s cpu", round(p["cpu_s"] or 0, 1),
                  "rss", round(p["peak_rss_mib"] or 0), "tree rss", round(p["tree_peak_rss_mib"] or 0), "idle", p["idle_s"])  # fmt: skip
    path = common.write_results(
        "flower_runner", {"machine": common.machine_info(), "result": results}
    )
    print("written", path)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
