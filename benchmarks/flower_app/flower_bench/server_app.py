"""ServerApp: FedAvg (weighted by sample count) over all nodes, evaluation after every round.

Records wall-clock time stamps of every phase and writes, into the run config's ``result-dir``,
``server_events.json`` (per-round times and metrics) and ``final_model.npz`` (the final global
model, scored later on the full test set).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flower_bench import task

app = ServerApp()


class TimedFedAvg(FedAvg):
    """FedAvg that notes when each phase of each round starts and ends."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events: list[dict[str, Any]] = []

    def _note(self, what: str, rnd: int, **extra: Any) -> None:
        self.events.append({"event": what, "round": rnd, "time": time.time(), **extra})

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._note("train_sent", server_round)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
        replies = list(replies)
        self._note("train_replies", server_round, replies=len(replies))
        out = super().aggregate_train(server_round, replies)
        self._note("train_aggregated", server_round, metrics=_metrics(out[1]))
        return out

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._note("evaluate_sent", server_round)
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> Any:
        replies = list(replies)
        self._note("evaluate_replies", server_round, replies=len(replies))
        out = super().aggregate_evaluate(server_round, replies)
        self._note("round_end", server_round, metrics=_metrics(out))
        return out


def _metrics(rec: MetricRecord | None) -> dict[str, Any] | None:
    return None if rec is None else {k: v for k, v in rec.items()}


def noop_arrays(model_bytes: int, tensor_count: int) -> ArrayRecord:
    """``tensor_count`` float32 arrays holding ``model_bytes`` in all (the no-op model)."""
    count = max(1, tensor_count)
    per = max(1, model_bytes // 4 // count)
    rng = np.random.default_rng(0)
    return ArrayRecord(
        {f"layer{i}": Array(rng.standard_normal(per, dtype=np.float32)) for i in range(count)}
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    t_start = time.time()
    cfg = context.run_config
    n = int(cfg.get("num-nodes", 2))
    noop = str(cfg.get("mode", "mnist")) == "noop"
    strategy = TimedFedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0 if noop else 1.0,
        min_train_nodes=n,
        min_evaluate_nodes=0 if noop else n,
        min_available_nodes=n,
    )
    if noop:
        initial = noop_arrays(int(cfg.get("model-bytes", 1 << 20)), int(cfg.get("tensor-count", 4)))
    else:
        initial = ArrayRecord(task.build_model().state_dict())
    result = strategy.start(
        grid=grid, initial_arrays=initial, num_rounds=int(cfg["num-server-rounds"])
    )
    out_dir = str(cfg.get("result-dir", ""))
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if not noop:
            state = result.arrays.to_torch_state_dict()
            np.savez(out / "final_model.npz", **{k: v.numpy() for k, v in state.items()})
        summary = {
            "serverapp_start": t_start,
            "serverapp_end": time.time(),
            "events": strategy.events,
            "evaluate_metrics_clientapp": {
                str(k): _metrics(v) for k, v in result.evaluate_metrics_clientapp.items()
            },
            "train_metrics_clientapp": {
                str(k): _metrics(v) for k, v in result.train_metrics_clientapp.items()
            },
        }
        (out / "server_events.json").write_text(json.dumps(summary, indent=1))
