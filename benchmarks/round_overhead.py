"""Per-round framework overhead against model size: a no-op task runner that returns its input.

Usage (from the repository root, fedrun's venv active; root for ``unshare -n``)::

    python -m benchmarks.round_overhead [--systems fedrun,flower] [--sizes 10MB,100MB,1GB,4GB]
        [--collaborators 2,4,8] [--rounds 3] [--tensor-count 4]

For every (system, model size P, collaborator count N) whose estimated memory fits this machine:

* **fedrun**: template ``no-op`` with ``task_runner.settings.model_bytes = P`` and ``tensor_count``,
  N collaborator processes, mutual TLS, in a loopback-only namespace; round times from the
  aggregator's log ("round r finished in s").
* **flower**: ``benchmarks/flower_app`` in ``mode="noop"`` on the deployment engine (SuperLink + N
  SuperNodes, TLS + SuperNode authentication); round and aggregation times from the ServerApp.
* **openfl**: OpenFL 1.9's own ``no-op`` template carries no model (one scalar,
  ``rounds_to_train: 0``), so its torch/mnist workspace gets ``benchmarks/openfl_noop/noop.py``
  (a PyTorchTaskRunner whose model is P bytes and whose tasks compute nothing); full ``fx`` PKI
  flow, mutual TLS, namespace as for fedrun. Round times from OpenFL's metric log (its own
  per-round clock). Cells above its 1 GiB gRPC message cap (``--openfl-max-bytes``) are skipped.

Reported per cell: round time (first round, and the median of the later ones), effective
throughput per stream (each collaborator downloads and uploads P per round: 2P / round time),
aggregation time where the system exposes it (fedrun: from the last result to the new model
saved, i.e. aggregating from the spool and writing ``last.pbuf``; part of the round time), aggregator and collaborator peak RSS, aggregator CPU
per round. Measured in the same run, the limits for the same bytes: a mutual-TLS socket copy on
loopback (1 stream, and N concurrent streams; the fastest of up to 5 runs, about 2 GB copied in
all, since a copy of a few MB lasts milliseconds) and a numpy weighted sum of N arrays (single
thread). The round's limit is 2P at the N-stream copy's per-stream rate; a last table judges every
fedrun cell against the issue's targets (round <= 2x that limit, aggregator RSS <= 3x the model,
>= 1 GB/s per stream at 1 GB, the 4 GB model completes).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from benchmarks import common, fedrun_runner, flower_runner, limits, openfl_runner

DEFAULT_SIZES = "10MB,100MB,1GB,4GB"
DEFAULT_COLLABORATORS = "2,4,8"


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def estimate_bytes(system: str, size: int, n: int) -> int:
    """Rough peak memory of one cell, from runs on this kind of machine: fedrun's
    collaborators hold ~1.3 copies each (the received model) and its aggregator a few hundred
    MiB whatever the model (it sums slices read back from its spool; ~2.4 copies before this
    session's change); OpenFL's and Flower's collaborators ~2 and their servers one copy per
    collaborator plus two (they keep every reply)."""
    if system == "fedrun":
        return int(1.35 * n * size + 0.1 * size + (512 << 20))
    return 2 * n * size + (n + 2) * size


def run_fedrun(
    size: int, n: int, rounds: int, tensor_count: int, work: Path, timeout: float
) -> dict[str, Any]:
    names = tuple(f"collaborator{i}" for i in range(1, n + 1))
    st = fedrun_runner.setup_workspace(
        work,
        template="no-op",
        collaborators=names,
        plan_edits={
            "task_runner.settings.model_bytes": size,
            "task_runner.settings.tensor_count": tensor_count,
            "aggregator.settings.rounds_to_train": rounds,
        },
    )
    res = fedrun_runner.run_federation(
        Path(st["workspace"]), "1", timeout, collaborators=names, export_model=False
    )
    res["setup"] = {"setup_s": st["setup_s"], "fx_calls": len(st["fx_calls"])}
    return res


def run_openfl(
    size: int, n: int, rounds: int, tensor_count: int, work: Path, timeout: float
) -> dict[str, Any]:
    names = tuple(f"collaborator{i}" for i in range(1, n + 1))
    noop = {"model_bytes": size, "tensor_count": tensor_count, "rounds": rounds}
    st = openfl_runner.setup_workspace(work, collaborators=names, noop=noop)
    res = openfl_runner.run_federation(
        Path(st["workspace"]), "1", timeout, collaborators=names, export_model=False
    )
    res["setup"] = {"setup_s": st["setup_s"], "fx_calls": len(st["fx_calls"])}
    return res


def run_flower(
    size: int, n: int, rounds: int, tensor_count: int, work: Path, timeout: float
) -> dict[str, Any]:
    st = flower_runner.setup(work, nodes=n)
    cfg = {
        "mode": "noop",
        "model-bytes": size,
        "tensor-count": tensor_count,
        "num-server-rounds": rounds,
    }
    res = flower_runner.run_engine("deploy", st, work, timeout, run_config=cfg, tag="-noop")
    res["setup"] = {"setup_s": st["setup_s"]}
    return res


#: what the issue asks of every cell
ROUND_LIMIT_FACTOR = 2.0  # round time <= 2x the time the TLS copy needs for the same bytes
RSS_MODEL_FACTOR = 3.0  # aggregator peak RSS <= 3x the model
STREAM_GBPS_AT_1GB = 1.0  # per collaborator stream, with a 1 GB model


def copy_repeats(size: int, streams: int) -> int:
    """How many times to run the TLS copy of ``size`` bytes per stream: about 2 GB in all, 1 to 5
    runs (small copies are short and noisy, large ones steady and slow)."""
    return max(1, min(5, math.ceil(2e9 / (size * streams))))


def round_limit_s(size: int, per_stream_gbps: float | None) -> float | None:
    """The time the TLS copy needs to move what each collaborator moves per round: the model
    down and back up, at the per-stream rate measured with the same number of streams."""
    if not per_stream_gbps:
        return None
    return 2 * size / (per_stream_gbps * 1e9)


def target_rows(cells: list[dict[str, Any]]) -> list[list[Any]]:
    """``[target, cell, value, limit, met]`` for every target the issue sets and every cell."""
    rows: list[list[Any]] = []

    def judge(target: str, where: str, value: Any, limit: float, at_least: bool = False) -> None:
        met = None if value is None else (value >= limit if at_least else value <= limit)
        rows.append([target, where, value, limit, met])

    for c in cells:
        sm = c.get("summary")
        if not sm or c.get("system") != "fedrun":
            continue
        where = f"{limits.human(c['bytes'])} x{c['collaborators']}"
        judge("round <= 2x the TLS copy", where, sm.get("round_to_limit"), ROUND_LIMIT_FACTOR)
        rss = sm.get("aggregator_peak_rss_mib")
        judge("aggregator RSS <= 3x model", where, rss / sm["model_mib"] if rss else None,
              RSS_MODEL_FACTOR)  # fmt: skip
        if c["bytes"] == 10**9:
            judge("GB/s per stream at 1 GB >= 1", where, sm.get("per_stream_gbps"),
                  STREAM_GBPS_AT_1GB, at_least=True)  # fmt: skip
        if c["bytes"] >= 4 * 10**9:
            rows.append(["4 GB model completes", where, sm.get("ok"), True, bool(sm.get("ok"))])
    return rows


def cell_summary(res: dict[str, Any], size: int, rounds: int) -> dict[str, Any]:
    procs = res.get("group", {}).get("procs", [])
    aggs = [p for p in procs if p["role"] == "aggregator"]
    cols = [p for p in procs if p["role"] == "collaborator"]
    times = [
        r["s"]
        for r in res.get("rounds", [])
        if isinstance(r.get("round"), int) and r.get("s") is not None
    ]
    later = times[1:] if len(times) > 1 else times
    steady = common.median(later)
    agg_times = [
        r["aggregation_s"] for r in res.get("rounds", []) if r.get("aggregation_s") is not None
    ]
    agg_cpu = sum((p["cpu_s"] or 0.0) for p in aggs)
    # the aggregator's own figure per training round (fedrun logs it); round 0 carries start-up
    round_cpu = [
        r["aggregator_cpu_s"]
        for r in res.get("rounds", [])
        if isinstance(r.get("round"), int) and r.get("aggregator_cpu_s") is not None
    ]
    return {
        "ok": res.get("ok"),
        "wall_s": res.get("wall_s"),
        "rounds_s": times,
        "first_round_s": times[0] if times else None,
        "steady_round_s": steady,
        "per_stream_gbps": (2 * size / steady / 1e9) if steady else None,
        "aggregation_s": common.median(agg_times[1:] or agg_times) if agg_times else None,
        "aggregator_peak_rss_mib": max((p["peak_rss_mib"] or 0.0) for p in aggs) if aggs else None,
        "aggregator_tree_peak_rss_mib": max((p["tree_peak_rss_mib"] or 0.0) for p in aggs)
        if aggs
        else None,
        "collaborator_peak_rss_mib": max(
            (p["tree_peak_rss_mib"] or p["peak_rss_mib"] or 0.0) for p in cols
        )
        if cols
        else None,
        "aggregator_cpu_s_per_round": agg_cpu / rounds if rounds else None,
        "aggregator_round_cpu_s": round_cpu,
        "steady_aggregator_round_cpu_s": common.median(round_cpu[1:] or round_cpu)
        if round_cpu
        else None,
        "model_mib": size / common.MIB,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--systems", default="fedrun", help="comma separated: fedrun, openfl, flower")
    ap.add_argument("--sizes", default=DEFAULT_SIZES)
    ap.add_argument("--collaborators", default=DEFAULT_COLLABORATORS)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tensor-count", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per federation")
    ap.add_argument("--openfl-max-bytes", type=int, default=1 << 30, help="OpenFL's message cap")
    ap.add_argument(
        "--memory-fraction", type=float, default=0.8, help="of MemAvailable a cell may use"
    )
    ap.add_argument("--no-limits", action="store_true", help="skip the TLS copy and numpy limits")
    ap.add_argument(
        "--keep-work", action="store_true", help="keep each cell's model and spool files"
    )
    args = ap.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    sizes = [limits.parse_size(s) for s in args.sizes.split(",")]
    counts = [int(c) for c in args.collaborators.split(",")]
    work = common.new_work_dir("round_overhead")
    cells: list[dict[str, Any]] = []
    lim: dict[str, Any] = {}
    budget = int(mem_available() * args.memory_fraction)
    for size in sizes:
        for n in counts:
            if not args.no_limits:
                key = f"{size}/{n}"
                lim[key] = {}
                try:
                    if size * 3 <= budget:
                        lim[key]["tls_1_stream"] = limits.tls_copy(
                            size, 1, repeats=copy_repeats(size, 1)
                        )
                        lim[key]["tls_n_streams"] = (
                            limits.tls_copy(size, n, repeats=copy_repeats(size, n))
                            if n > 1
                            else lim[key]["tls_1_stream"]
                        )
                        lim[key]["weighted_sum"] = limits.weighted_sum(
                            n, size, memory_budget=budget // 2
                        )
                    else:
                        lim[key]["skipped"] = "model too large for the memory budget"
                except Exception:  # noqa: BLE001
                    lim[key]["error"] = traceback.format_exc()
            for system in systems:
                cell: dict[str, Any] = {"system": system, "bytes": size, "collaborators": n}
                need = estimate_bytes(system, size, n)
                if system == "openfl" and size > args.openfl_max_bytes:
                    cell["skipped"] = "above OpenFL's 1 GiB gRPC message cap"
                    cells.append(cell)
                    continue
                if need > budget:
                    cell["skipped"] = (
                        f"needs about {need / 2**30:.1f} GiB, budget {budget / 2**30:.1f} GiB"
                    )
                    print(
                        f"[bench] {system} {limits.human(size)} x{n}: skipped ({cell['skipped']})",
                        flush=True,
                    )
                    cells.append(cell)
                    continue
                print(f"[bench] {system} {limits.human(size)} x{n} collaborators", flush=True)
                cell_work = work / f"{system}-{size}-{n}"
                cell_work.mkdir()
                try:
                    runner = {"fedrun": run_fedrun, "openfl": run_openfl, "flower": run_flower}[
                        system
                    ]
                    res = runner(size, n, args.rounds, args.tensor_count, cell_work, args.timeout)
                except Exception:  # noqa: BLE001 - keep the other cells
                    res = {"ok": False, "error": traceback.format_exc()}
                    print(res["error"], file=sys.stderr)
                cell["summary"] = sm = cell_summary(res, size, args.rounds)
                copy_n = (lim.get(f"{size}/{n}") or {}).get("tls_n_streams") or {}
                sm["limit_s"] = round_limit_s(size, copy_n.get("per_stream_gbps"))
                sm["round_to_limit"] = common.ratio(sm["steady_round_s"], sm["limit_s"])
                cell["result"] = res
                cells.append(cell)
                if not args.keep_work:
                    common.drop_large_files(cell_work)
                print(
                    f"[bench]   ok={sm['ok']} rounds={[round(t, 3) for t in sm['rounds_s']]} "
                    f"agg RSS={common.fmt(sm['aggregator_peak_rss_mib'], 0)} MiB",
                    flush=True,
                )
    rows = []
    for c in cells:
        sm = c.get("summary") or {}
        li = lim.get(f"{c['bytes']}/{c['collaborators']}", {})
        rows.append(
            [
                c["system"],
                limits.human(c["bytes"]),
                c["collaborators"],
                "skipped" if "skipped" in c else common.fmt(sm.get("ok")),
                sm.get("first_round_s"),
                sm.get("steady_round_s"),
                sm.get("per_stream_gbps"),
                (li.get("tls_1_stream") or {}).get("per_stream_gbps"),
                (li.get("tls_n_streams") or {}).get("per_stream_gbps"),
                sm.get("limit_s"),
                sm.get("round_to_limit"),
                sm.get("aggregation_s"),
                (li.get("weighted_sum") or {}).get("seconds"),
                sm.get("aggregator_peak_rss_mib"),
                None
                if not sm.get("aggregator_peak_rss_mib")
                else sm["aggregator_peak_rss_mib"] / sm["model_mib"],
                sm.get("collaborator_peak_rss_mib"),
                sm.get("steady_aggregator_round_cpu_s"),
            ]
        )
    common.print_table(
        "Round overhead, no-op task runner (shared machine)",
        ["system", "model", "N", "ok", "round 1 s", "later rounds s", "GB/s/stream", "TLS copy GB/s (1)",
         "TLS copy GB/s/stream (N)", "limit s", "round/limit", "aggregation s", "numpy wsum s",
         "agg RSS MiB", "agg RSS/model", "collab RSS MiB", "agg CPU s (later rounds)"],
        rows,
    )  # fmt: skip
    targets = target_rows(cells)
    common.print_table(
        "fedrun against the targets of issue #7",
        ["target", "cell", "value", "limit", "met"],
        targets,
    )
    path = common.write_results(
        "round_overhead",
        {
            "machine": common.machine_info(),
            "args": vars(args),
            "memory_budget": budget,
            "limits": lim,
            "cells": cells,
            "targets": [
                dict(zip(("target", "cell", "value", "limit", "met"), t, strict=True))
                for t in targets
            ],  # fmt: skip
        },
    )
    print(f"written {path}")
    return 0 if all(c.get("summary", {}).get("ok", True) for c in cells) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
