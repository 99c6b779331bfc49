"""Many collaborators with a small model: does a round still complete, how long does it take, and
what does it cost the aggregator?

Usage (from the repository root, fedrun's venv active; root for ``unshare -n``)::

    python -m benchmarks.many_collaborators [--systems fedrun,flower] [--collaborators 8,32,64]
        [--model-bytes 1MB] [--rounds 3]

Every collaborator is its own process (fedrun: ``fx collaborator start``; Flower: a SuperNode on the
deployment engine), all on this 2-core machine, with mutual TLS (Flower: TLS + SuperNode
authentication) in a loopback-only network namespace. The task runner is the no-op one of
``round_overhead`` (it returns the model it receives). Reported: whether every round completed,
round times (first round, later rounds), aggregator CPU seconds in all and per round, aggregator
peak RSS, setup time (the PKI flow through the CLI for every collaborator).

Aggregator CPU per collaborator-round, steady state: fedrun's aggregator logs the CPU its process
spent in each round; the median over the training rounds after the first (which carries the
connections and TLS handshakes), divided by N. In the same run, :mod:`benchmarks.grpc_floor`
measures a bare gRPC server (mutual TLS, the same N clients, the same five calls and bytes per
collaborator-round, handlers that only touch the bytes) the same way: fedrun's figure minus the
floor is what fedrun itself adds to what the transport must do (``--no-floor`` skips it).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Any

from benchmarks import common, grpc_floor, limits, round_overhead


def marginal_cpu_ms(cells: list[dict[str, Any]], rounds: int) -> dict[str, float]:
    """Aggregator CPU that one more collaborator adds per round: the slope between the smallest
    and the largest N that completed (start-up cost cancels out)."""
    out: dict[str, float] = {}
    for system in sorted({c["system"] for c in cells}):
        done = sorted(
            (c["collaborators"], c["summary"]["aggregator_cpu_s"])
            for c in cells
            if c["system"] == system and c["summary"]["ok"]
        )
        if len(done) >= 2 and done[-1][0] > done[0][0]:
            (n0, cpu0), (n1, cpu1) = done[0], done[-1]
            out[system] = 1000 * (cpu1 - cpu0) / ((n1 - n0) * (rounds + 1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--systems", default="fedrun")
    ap.add_argument("--collaborators", default="8,32,64")
    ap.add_argument("--model-bytes", default="1MB")
    ap.add_argument("--tensor-count", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--no-floor", action="store_true", help="skip the bare gRPC floor")
    args = ap.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    size = limits.parse_size(args.model_bytes)
    counts = [int(c) for c in args.collaborators.split(",")]
    work = common.new_work_dir("many_collaborators")
    cells: list[dict[str, Any]] = []
    for n in counts:
        for system in systems:
            print(f"[bench] {system}: {n} collaborators, {limits.human(size)} model", flush=True)
            cell_work = work / f"{system}-{n}"
            cell_work.mkdir()
            try:
                runner = {"fedrun": round_overhead.run_fedrun, "flower": round_overhead.run_flower}[
                    system
                ]
                res = runner(size, n, args.rounds, args.tensor_count, cell_work, args.timeout)
            except Exception:  # noqa: BLE001 - keep the other cells
                res = {"ok": False, "error": traceback.format_exc()}
                print(res["error"], file=sys.stderr)
            common.drop_large_files(cell_work)
            sm = round_overhead.cell_summary(res, size, args.rounds)
            aggs = [p for p in res.get("group", {}).get("procs", []) if p["role"] == "aggregator"]
            sm["aggregator_cpu_s"] = sum((p["cpu_s"] or 0.0) for p in aggs)
            sm["setup_s"] = (res.get("setup") or {}).get("setup_s")
            sm["rounds_completed"] = len(sm["rounds_s"])
            steady = sm.get("steady_aggregator_round_cpu_s")
            sm["cpu_ms_per_collaborator_round"] = 1000 * steady / n if steady is not None else None
            if system == "fedrun" and not args.no_floor:
                try:
                    floor = grpc_floor.collaborator_round_cpu(n, size, args.tensor_count)
                except Exception:  # noqa: BLE001 - the federation's figures still count
                    floor = {"error": traceback.format_exc()}
                    print(floor["error"], file=sys.stderr)
                sm["grpc_floor"] = floor
                floor_ms = floor.get("cpu_ms_per_collaborator_round")
                sm["grpc_floor_ms"] = floor_ms
                if floor_ms is not None and sm["cpu_ms_per_collaborator_round"] is not None:
                    sm["beyond_floor_ms"] = sm["cpu_ms_per_collaborator_round"] - floor_ms
            cells.append({"system": system, "collaborators": n, "summary": sm, "result": res})
            print(
                f"[bench]   ok={sm['ok']} rounds={[round(t, 3) for t in sm['rounds_s']]} agg CPU={common.fmt(sm['aggregator_cpu_s'])} s"
                f" per collaborator-round={common.fmt(sm['cpu_ms_per_collaborator_round'])} ms"
                f" (bare gRPC {common.fmt(sm.get('grpc_floor_ms'))} ms)",
                flush=True,
            )
    common.print_table(
        f"Many collaborators, {limits.human(size)} no-op model, {args.rounds} rounds (shared machine)",
        ["system", "N", "ok", "rounds done", "round 1 s", "later rounds s", "agg CPU s", "agg CPU s/round", "agg RSS MiB", "wall s", "setup s"],
        [
            [c["system"], c["collaborators"], c["summary"]["ok"], c["summary"]["rounds_completed"], c["summary"]["first_round_s"],
             c["summary"]["steady_round_s"], c["summary"]["aggregator_cpu_s"], c["summary"]["aggregator_cpu_s_per_round"],
             c["summary"]["aggregator_peak_rss_mib"], c["summary"]["wall_s"], c["summary"]["setup_s"]]
            for c in cells
        ],
    )  # fmt: skip
    common.print_table(
        "Aggregator CPU per collaborator-round, steady state (training rounds after the first)",
        ["system", "N", "agg CPU s/round", "ms per collaborator-round", "bare gRPC ms", "beyond bare gRPC ms"],
        [
            [c["system"], c["collaborators"], c["summary"].get("steady_aggregator_round_cpu_s"),
             c["summary"].get("cpu_ms_per_collaborator_round"), c["summary"].get("grpc_floor_ms"),
             c["summary"].get("beyond_floor_ms")]
            for c in cells
        ],
    )  # fmt: skip
    marginal = marginal_cpu_ms(cells, args.rounds)
    for system, ms in marginal.items():
        print(
            f"[bench] {system}: aggregator CPU per extra collaborator per round (incl. the final "
            f"validation round, handshake and start-up shared out): {common.fmt(ms)} ms"
        )
    path = common.write_results(
        "many_collaborators",
        {
            "machine": common.machine_info(),
            "args": vars(args),
            "marginal_cpu_ms_per_collaborator_round": marginal,
            "cells": cells,
        },
    )
    print(f"written {path}")
    return 0 if all(c["summary"]["ok"] for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
