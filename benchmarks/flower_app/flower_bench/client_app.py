"""ClientApp: train and evaluate OpenFL's MNIST CNN on this node's shard.

Per round, like an OpenFL/fedrun collaborator: ``train`` trains one epoch from the received global
model (a fresh Adam optimizer every round, as OpenFL's ``opt_treatment: RESET``) and validates the
locally trained model; ``evaluate`` validates the received (aggregated) model. With one evaluation
per round this is the same work as OpenFL's aggregated_model_validation, train and
locally_tuned_model_validation per round.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flower_bench import task

app = ClientApp()

# (data_dir, shard, count) -> arrays; lives as long as the process (one Ray actor in simulation;
# one ClientApp process per message on the deployment engine)
_SHARDS: dict[tuple[str, int, int], tuple[np.ndarray, ...]] = {}


def _shard(context: Context) -> tuple[np.ndarray, ...]:
    node = context.node_config
    part = int(node.get("partition-id", 0))
    count = int(node.get("num-partitions", 2))
    data_dir = str(context.run_config.get("data-dir", str(task.MNIST_DIR)))
    key = (data_dir, part + 1, count)
    if key not in _SHARDS:
        _SHARDS[key] = task.load_shard(part + 1, count, Path(data_dir))
    return _SHARDS[key]


def _model_from(msg: Message, context: Context) -> Any:
    torch.set_num_threads(int(context.run_config.get("threads", 1)))
    model = task.build_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


@app.train()
def train(msg: Message, context: Context) -> Message:
    t0 = time.time()
    if str(context.run_config.get("mode", "mnist")) == "noop":
        # the round-overhead benchmark: return the received arrays unchanged
        metrics = MetricRecord({"num-examples": 1, "client_task_s": time.time() - t0})
        return Message(
            content=RecordDict({"arrays": msg.content["arrays"], "metrics": metrics}), reply_to=msg
        )
    x_tr, y_tr, x_te, y_te = _shard(context)
    model = _model_from(msg, context)
    opt = torch.optim.Adam(model.parameters(), lr=float(context.run_config.get("lr", 1e-4)))
    batch = int(context.run_config.get("batch-size", 64))
    loss = 0.0
    for _ in range(int(context.run_config.get("local-epochs", 1))):
        loss = task.train_epoch(model, opt, x_tr, y_tr, batch)
    local_acc = task.validate(model, x_te, y_te, batch)
    metrics = MetricRecord(
        {
            "train_loss": float(loss),
            "local_accuracy": float(local_acc),
            "num-examples": len(x_tr),
            "client_task_s": time.time() - t0,
        }
    )
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    t0 = time.time()
    _, _, x_te, y_te = _shard(context)
    model = _model_from(msg, context)
    acc = task.validate(model, x_te, y_te, int(context.run_config.get("batch-size", 64)))
    metrics = MetricRecord(
        {"accuracy": float(acc), "num-examples": len(x_te), "client_task_s": time.time() - t0}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
