"""The same federated MNIST training run by fedrun, OpenFL 1.9 and Flower 1.42, side by side.

Usage (from the repository root, fedrun's venv active; needs root for ``unshare -n``)::

    python -m benchmarks.mnist_vs_peers [--repetitions 3] [--systems fedrun,openfl-1t,...]

Workload (every system): OpenFL's torch/mnist CNN, Adam lr 1e-4, batch 64, raw 0..255 pixels, two
collaborators each holding half of the MNIST train and test sets (``/work/shared/data/mnist``),
one epoch per round, two rounds, weighted FedAvg, validation of the global and the locally
trained model every round, one thread per collaborator. Federations run with mutual TLS (Flower:
TLS plus SuperNode key authentication, its closest equivalent) inside a loopback-only network
namespace.

Systems (``--systems``, comma separated; the order is rotated every repetition so that no system
always runs first or last on a machine whose load drifts):

* ``fedrun``          fedrun, ``fx`` commands, ``OMP_NUM_THREADS=1``
* ``fedrun-simulate`` fedrun's one command, ``fx simulate --template torch/mnist --rounds 2``:
  workspace, CA, certificates, initial model and the federation (mutual TLS, one thread per
  collaborator on 2 cores) in one process tree, its set-up inside its wall time; the like of
  Flower's simulation engine (which needs no set-up), so it is compared with that too
* ``openfl-1t``       OpenFL 1.9, ``OMP_NUM_THREADS=1`` (its best configuration here)
* ``openfl-default``  OpenFL 1.9 as shipped (torch picks its thread count)
* ``flower-sim``      Flower 1.42 simulation engine (Ray), one CPU per client
* ``flower-deploy``   Flower 1.42 deployment engine, SuperLink + 2 SuperNodes, TLS + node auth
* ``floor``           plain torch scripts, one process per collaborator (fedrun's torch)
* ``floor-openfl-torch``  the same with the torch build OpenFL and Flower use

Setup (workspace and PKI through each system's CLI, every call timed) is done once per system and
reported separately; between repetitions only run state is cleared. Results: a table on stdout and
``benchmarks/results/mnist_vs_peers-<time>.json``. Numbers from a shared machine are noisy: compare
systems within one run, not across runs.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Any

from benchmarks import common, compute_floor, fedrun_runner, flower_runner, openfl_runner

ALL_SYSTEMS = [
    "fedrun",
    "fedrun-simulate",
    "openfl-1t",
    "openfl-default",
    "flower-sim",
    "flower-deploy",
    "floor",
    "floor-openfl-torch",
]
DEFAULT_SYSTEMS = ALL_SYSTEMS


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    """The per-run figures the table shows, from one runner's result."""
    procs = res.get("group", {}).get("procs", [])
    aggs = [p for p in procs if p["role"] == "aggregator"]
    cols = [p for p in procs if p["role"] == "collaborator"]
    tree = res.get("processes_by_role")  # fx simulate: one process tree, its members by role
    if tree is not None:
        # each member is one process: its own peak is its tree's; idle is not sampled per member
        aggs = [
            {"peak_rss_mib": d["peak_rss_mib"], "tree_peak_rss_mib": d["peak_rss_mib"]}
            for d in tree["aggregator"]
        ]
        cols = [
            {"peak_rss_mib": d["peak_rss_mib"], "tree_peak_rss_mib": d["peak_rss_mib"]}
            for d in tree["collaborator"]
        ]
    rounds = [
        r["s"]
        for r in res.get("rounds", [])
        if isinstance(r.get("round"), int) and r.get("s") is not None
    ]
    acc = res.get("final_accuracy_full_test") or {}
    return {
        "ok": res.get("ok"),
        "wall_s": res.get("wall_s"),
        "rounds_s": rounds,
        "collaborator_idle_s": max((p["idle_s"] or 0.0) for p in cols)
        if cols and tree is None
        else None,
        # fedrun only (read from its aggregator log): idle not spent waiting for a slower peer
        "collaborator_idle_excl_peer_wait_s": max(
            (
                p["idle_excl_peer_wait_s"]
                for p in cols
                if p.get("idle_excl_peer_wait_s") is not None
            ),
            default=None,
        ),
        "cpu_s_total": sum((p["cpu_s"] or 0.0) for p in procs),
        "aggregator_peak_rss_mib": max((p["peak_rss_mib"] or 0.0) for p in aggs) if aggs else None,
        "aggregator_tree_peak_rss_mib": max((p["tree_peak_rss_mib"] or 0.0) for p in aggs)
        if aggs
        else None,
        "collaborator_peak_rss_mib": max((p["peak_rss_mib"] or 0.0) for p in cols)
        if cols
        else None,
        "collaborator_tree_peak_rss_mib": max((p["tree_peak_rss_mib"] or 0.0) for p in cols)
        if cols
        else None,
        "final_accuracy": acc.get("accuracy"),
        "per_process": [common.proc_summary(common.ProcResult(**p)) for p in procs],
    }


class Bench:
    """Holds each system's one-time setup and runs one repetition of a system on demand."""

    def __init__(self, work: Path, timeout: float) -> None:
        self.work = work
        self.timeout = timeout
        self.setups: dict[str, Any] = {}
        self.cli: dict[str, Any] = {}

    def setup(self, systems: list[str]) -> None:
        if "fedrun" in systems:
            (self.work / "fedrun").mkdir(exist_ok=True)
            self.setups["fedrun"] = fedrun_runner.setup_workspace(self.work / "fedrun")
            self.cli["fedrun: fx --help"] = fedrun_runner.fx_startup()
        if any(s.startswith("openfl") for s in systems) or "floor-openfl-torch" in systems:
            (self.work / "openfl").mkdir(exist_ok=True)
            self.setups["openfl"] = openfl_runner.setup_workspace(self.work / "openfl")
            self.cli["openfl: fx --help"] = openfl_runner.fx_startup()
        if any(s.startswith("flower") for s in systems):
            (self.work / "flower").mkdir(exist_ok=True)
            self.setups["flower"] = flower_runner.setup(self.work / "flower")
            self.cli["flower: flwr --help"] = flower_runner.cli_startup(
                Path(self.setups["flower"]["flwr_home"])
            )

    def run(self, system: str) -> dict[str, Any]:
        if system == "fedrun":
            res = fedrun_runner.run_federation(
                Path(self.setups["fedrun"]["workspace"]), "1", self.timeout
            )
            return self._score(res, sys.executable)
        if system == "fedrun-simulate":
            res = fedrun_runner.run_simulate(self.work / "fedrun-simulate", self.timeout)
            return self._score(res, sys.executable)
        if system in ("openfl-1t", "openfl-default"):
            threads = "1" if system == "openfl-1t" else "default"
            res = openfl_runner.run_federation(
                Path(self.setups["openfl"]["workspace"]), threads, self.timeout
            )
            return self._score(res, str(common.venv_python(openfl_runner.ENV_NAME)))
        if system in ("flower-sim", "flower-deploy"):
            engine = "sim" if system == "flower-sim" else "deploy"
            res = flower_runner.run_engine(
                engine, self.setups["flower"], self.work / "flower", self.timeout
            )
            return self._score(res, str(common.venv_python(flower_runner.ENV_NAME)))
        if system == "floor":
            return compute_floor.run_floor(sys.executable, timeout=self.timeout)
        if system == "floor-openfl-torch":
            return compute_floor.run_floor(
                str(common.venv_python(openfl_runner.ENV_NAME)), timeout=self.timeout
            )
        raise ValueError(f"unknown system {system!r}")

    @staticmethod
    def _score(res: dict[str, Any], python: str) -> dict[str, Any]:
        if res.get("final_model_npz"):
            res["final_accuracy_full_test"] = common.score_model(
                python, Path(res["final_model_npz"])
            )
        return res


def med(runs: list[dict[str, Any]], key: str) -> float | None:
    return common.median(r["summary"].get(key) for r in runs if r["summary"].get("ok"))


def report(
    systems: list[str], runs: dict[str, list[dict[str, Any]]], bench: Bench
) -> dict[str, Any]:
    rows = []
    medians: dict[str, dict[str, Any]] = {}
    for s in systems:
        rs = runs.get(s, [])
        ok = [r for r in rs if r["summary"].get("ok")]
        m = {
            "runs": len(rs),
            "ok_runs": len(ok),
            "wall_s": med(rs, "wall_s"),
            "round_s": [
                common.median(
                    r["summary"]["rounds_s"][i] for r in ok if len(r["summary"]["rounds_s"]) > i
                )
                for i in range(max((len(r["summary"]["rounds_s"]) for r in ok), default=0))
            ],
            "collaborator_idle_s": med(rs, "collaborator_idle_s"),
            "collaborator_idle_excl_peer_wait_s": med(rs, "collaborator_idle_excl_peer_wait_s"),
            "cpu_s_total": med(rs, "cpu_s_total"),
            "aggregator_peak_rss_mib": med(rs, "aggregator_peak_rss_mib"),
            "aggregator_tree_peak_rss_mib": med(rs, "aggregator_tree_peak_rss_mib"),
            "collaborator_peak_rss_mib": med(rs, "collaborator_peak_rss_mib"),
            "collaborator_tree_peak_rss_mib": med(rs, "collaborator_tree_peak_rss_mib"),
            "final_accuracy": med(rs, "final_accuracy"),
        }
        medians[s] = m
        rows.append(
            [
                s,
                f"{m['ok_runs']}/{m['runs']}",
                m["wall_s"],
                " / ".join(common.fmt(x, 1) for x in m["round_s"]) or "-",
                m["collaborator_idle_s"],
                m["collaborator_idle_excl_peer_wait_s"],
                m["cpu_s_total"],
                _rss(m["aggregator_peak_rss_mib"], m["aggregator_tree_peak_rss_mib"]),
                _rss(m["collaborator_peak_rss_mib"], m["collaborator_tree_peak_rss_mib"]),
                None if m["final_accuracy"] is None else f"{m['final_accuracy']:.4f}",
            ]
        )
    common.print_table(
        "MNIST federation, 2 collaborators x 2 rounds (medians; shared machine)",
        [
            "system",
            "ok",
            "wall s",
            "round s",
            "collab idle s",
            "idle w/o peer wait s",
            "CPU s",
            "agg RSS MiB",
            "collab RSS MiB",
            "final acc",
        ],
        rows,
    )
    setup_rows = []
    for name, st in bench.setups.items():
        calls = st.get("fx_calls") or st.get("calls") or []
        times = [c["s"] for c in calls]
        setup_rows.append(
            [
                name,
                st.get("setup_s"),
                len(calls),
                min(times) if times else None,
                max(times) if times else None,
            ]
        )
    common.print_table(
        "Setup (workspace + PKI through the system's CLI)",
        ["system", "total s", "calls", "fastest s", "slowest s"],
        setup_rows,
    )
    common.print_table(
        "CLI start-up (--help, median of 3)",
        ["command", "s"],
        [[k, v["median_s"]] for k, v in bench.cli.items()],
    )

    def r(a: str, b: str) -> float | None:
        return common.ratio(medians.get(a, {}).get("wall_s"), medians.get(b, {}).get("wall_s"))

    # the wall time is set-up + federation: the PKI flow through each system's CLI
    # (Flower's simulation engine needs none; its deployment engine needs certificates and keys)
    setup_of = {
        "fedrun": bench.setups.get("fedrun", {}).get("setup_s"),
        "fedrun-simulate": 0.0,  # its wall time includes its set-up
        "openfl-1t": bench.setups.get("openfl", {}).get("setup_s"),
        "openfl-default": bench.setups.get("openfl", {}).get("setup_s"),
        "flower-sim": 0.0,
        "flower-deploy": bench.setups.get("flower", {}).get("setup_s"),
    }

    def total(system: str) -> float | None:
        wall, setup = medians.get(system, {}).get("wall_s"), setup_of.get(system)
        return None if wall is None or setup is None else wall + setup

    def rt(a: str, b: str) -> float | None:
        return common.ratio(total(a), total(b))

    ratios = {
        "fedrun/openfl-1t setup+wall": rt("fedrun", "openfl-1t"),
        "fedrun/openfl-default setup+wall": rt("fedrun", "openfl-default"),
        "fedrun/flower-sim setup+wall": rt("fedrun", "flower-sim"),
        "fedrun/flower-deploy setup+wall": rt("fedrun", "flower-deploy"),
        "fedrun-simulate/flower-sim setup+wall": rt("fedrun-simulate", "flower-sim"),
        "fedrun-simulate/openfl-1t setup+wall": rt("fedrun-simulate", "openfl-1t"),
        "fedrun/openfl-1t wall": r("fedrun", "openfl-1t"),
        "fedrun/openfl-default wall": r("fedrun", "openfl-default"),
        "fedrun/flower-sim wall": r("fedrun", "flower-sim"),
        "fedrun/flower-deploy wall": r("fedrun", "flower-deploy"),
        "fedrun/floor wall": r("fedrun", "floor"),
        "openfl-1t/floor-openfl-torch wall": r("openfl-1t", "floor-openfl-torch"),
        "fedrun/openfl aggregator RSS": common.ratio(
            medians.get("fedrun", {}).get("aggregator_peak_rss_mib"),
            medians.get("openfl-1t", {}).get("aggregator_peak_rss_mib"),
        ),
        "fedrun/openfl setup": common.ratio(
            bench.setups.get("fedrun", {}).get("setup_s"),
            bench.setups.get("openfl", {}).get("setup_s"),
        ),
    }
    targets = [
        (
            "fedrun setup+wall <= 0.6x OpenFL best config",
            ratios["fedrun/openfl-1t setup+wall"],
            0.6,
        ),
        (
            "fedrun setup+wall <= 0.4x OpenFL default",
            ratios["fedrun/openfl-default setup+wall"],
            0.4,
        ),
        (
            "fedrun setup+wall <= 0.6x Flower simulation",
            ratios["fedrun/flower-sim setup+wall"],
            0.6,
        ),
        (
            "fedrun's one command (fx simulate, set-up included) <= 0.6x Flower simulation",
            ratios["fedrun-simulate/flower-sim setup+wall"],
            0.6,
        ),
        ("fedrun wall <= 1.15x compute floor", ratios["fedrun/floor wall"], 1.15),
        (
            "fedrun collaborator idle between rounds <= 0.1 s (not counting the wait for a "
            "slower peer to finish the round)",
            medians.get("fedrun", {}).get("collaborator_idle_excl_peer_wait_s"),
            0.1,
        ),
        (
            "fedrun collaborator idle <= 0.1 s (all idle, incl. waiting for a slower peer)",
            medians.get("fedrun", {}).get("collaborator_idle_s"),
            0.1,
        ),
        (
            "fedrun aggregator RSS <= 150 MiB",
            medians.get("fedrun", {}).get("aggregator_peak_rss_mib"),
            150,
        ),
        ("fedrun fx --help <= 0.5 s", bench.cli.get("fedrun: fx --help", {}).get("median_s"), 0.5),
    ]
    common.print_table(
        "fedrun against the targets of issue #7",
        ["target", "measured", "limit", "met"],
        [[t, v, lim, None if v is None else v <= lim] for t, v, lim in targets],
    )
    common.print_table("Ratios", ["ratio", "value"], [[k, v] for k, v in ratios.items()])
    return {
        "medians": medians,
        "ratios": ratios,
        "targets": [{"target": t, "value": v, "limit": lim} for t, v, lim in targets],
    }


def _rss(own: float | None, tree: float | None) -> str:
    if own is None:
        return "-"
    if tree is not None and tree > own * 1.2:
        return f"{own:.0f} (tree {tree:.0f})"
    return f"{own:.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS))
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per federation run")
    args = ap.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(ALL_SYSTEMS)
    if unknown:
        ap.error(f"unknown systems: {sorted(unknown)}; known: {ALL_SYSTEMS}")
    work = common.new_work_dir("mnist_vs_peers")
    bench = Bench(work, args.timeout)
    print(f"[bench] setting up {systems} in {work}", flush=True)
    bench.setup(systems)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    for rep in range(max(1, args.repetitions)):
        k = rep % len(systems)
        order = systems[k:] + systems[:k]
        for s in order:
            print(f"[bench] repetition {rep + 1}/{args.repetitions}: {s}", flush=True)
            try:
                res = bench.run(s)
            except Exception:  # noqa: BLE001 - one failing system must not lose the others' figures
                res = {"ok": False, "error": traceback.format_exc()}
                print(res["error"], file=sys.stderr)
            res["summary"] = summarize(res)
            res["repetition"] = rep
            runs[s].append(res)
            sm = res["summary"]
            print(
                f"[bench]   ok={sm['ok']} wall={common.fmt(sm['wall_s'])} s rounds={[round(x, 1) for x in sm['rounds_s']]} "
                f"idle={common.fmt(sm['collaborator_idle_s'])} acc={sm['final_accuracy']}",
                flush=True,
            )
    summary = report(systems, runs, bench)
    data = {
        "machine": common.machine_info(),
        "args": vars(args),
        "versions": _versions(systems),
        "setups": bench.setups,
        "cli_startup": bench.cli,
        "summary": summary,
        "runs": runs,
    }
    path = common.write_results("mnist_vs_peers", data)
    print(f"written {path}")
    return 0 if all(m["ok_runs"] == m["runs"] for m in summary["medians"].values()) else 1


def _versions(systems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"fedrun-venv": _own_versions()}
    if any(s.startswith("openfl") for s in systems):
        out["openfl-venv"] = common.pip_versions(
            openfl_runner.ENV_NAME, ["openfl", "torch", "torchvision", "numpy", "grpcio"]
        )
    if any(s.startswith("flower") for s in systems):
        out["flower-venv"] = common.pip_versions(
            flower_runner.ENV_NAME, ["flwr", "torch", "numpy", "ray"]
        )
    return out


def _own_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for p in ("fedrun", "torch", "numpy", "grpcio"):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
