"""What each plan section may contain: known sections, and typed settings of fedrun's classes.

Settings of user classes (``src.*`` data loaders and task runners) are checked against their
constructor signature where they are built; settings of fedrun's own classes are checked here,
before anything starts, so a typo fails fast with a did-you-mean.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

from fedrun.constants import CHUNK_BYTES, MAX_CHUNK_BYTES
from fedrun.errors import PlanError

SECTIONS = (
    "aggregator",
    "collaborator",
    "assigner",
    "data_loader",
    "task_runner",
    "network",
    "tasks",
    "compression_pipeline",
    "straggler_handling_policy",
)

#: Sections whose settings are the constructor arguments of a user class, checked at build time
USER_SECTIONS = ("data_loader", "task_runner")


@dataclass(frozen=True)
class Setting:
    """One known setting: accepted Python types, default, and what it means."""

    types: tuple[type, ...]
    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    nullable: bool = False
    ignored: bool = False  # accepted for OpenFL compatibility, has no effect
    unsupported: bool = False  # an OpenFL setting fedrun refuses with its help as the reason
    minimum: float | None = None
    maximum: float | None = None


_STR = (str,)
_INT = (int,)
_BOOL = (bool,)
_NUM = (int, float)
_PATH = (str,)

AGGREGATOR: dict[str, Setting] = {
    "init_state_path": Setting(
        _PATH, "save/init.pbuf", "initial weights, written by `fx plan initialize`"
    ),
    "best_state_path": Setting(_PATH, "save/best.pbuf", "best model by best_model_metric"),
    "last_state_path": Setting(
        _PATH, "save/last.pbuf", "newest aggregate, including the final round's"
    ),
    "rounds_to_train": Setting(_INT, 10, "number of federated rounds", minimum=0),
    "db_store_rounds": Setting(
        _INT, 2, "ignored: the aggregator keeps no past models in memory", ignored=True
    ),
    "write_logs": Setting(_BOOL, False, "TensorBoard event files under logs/tensorboard/"),
    "log_metric_callback": Setting(
        (dict, str), None, "{template: module.function} called per metric", nullable=True
    ),
    "persist_checkpoint": Setting(_BOOL, True, "persist accepted results and rounds in SQLite"),
    "persistent_db_path": Setting(_PATH, "local_state/tensor.db", "the SQLite state file"),
    "save_native_model": Setting(_BOOL, False, "also save best/last in the framework's format"),
    "best_model_metric": Setting(
        _STR, None, "task/metric that picks the best model", nullable=True
    ),
    "best_model_mode": Setting(
        _STR,
        None,
        "whether higher or lower is better (default: lower for a loss or error, else higher)",
        choices=("max", "min"),
        nullable=True,
    ),
    "final_validation": Setting(_BOOL, True, "collaborators validate the final aggregate"),
    "seed": Setting(
        _INT, None, "seed for assignment and, via collaborators, training", nullable=True
    ),
    "collaborator_timeout": Setting(
        _NUM, 300.0, "seconds without a call before a collaborator is reported gone"
    ),
    "log_memory_usage": Setting(_BOOL, False, "accepted for OpenFL compatibility", ignored=True),
    "use_delta_updates": Setting(_BOOL, True, "accepted for OpenFL compatibility", ignored=True),
    "callbacks": Setting(
        (list, dict, str),
        None,
        "OpenFL 1.9's aggregator callbacks, which fedrun does not run (metrics reach your code "
        "through aggregator.settings.log_metric_callback)",
        nullable=True,
        unsupported=True,
    ),
    "secure_aggregation": Setting(
        _BOOL,
        False,
        "OpenFL's secure aggregation is not implemented by fedrun; remove the key or set false",
        choices=(False,),
    ),
}

COLLABORATOR: dict[str, Setting] = {
    "use_delta_updates": Setting(_BOOL, False, "send trained - global instead of full weights"),
    "delta_updates": Setting(_BOOL, None, "OpenFL 1.6 name of use_delta_updates", nullable=True),
    "opt_treatment": Setting(
        _STR,
        "RESET",
        "optimizer state policy",
        choices=("RESET", "CONTINUE_LOCAL", "CONTINUE_GLOBAL"),
    ),
    "db_store_rounds": Setting(_INT, 1, "rounds of local tensors kept in memory"),
    "seed": Setting(_INT, None, "seed for local training", nullable=True),
    "polling_interval": Setting(
        _NUM, None, "ignored: fedrun long-polls", nullable=True, ignored=True
    ),
    "epochs_per_round": Setting(
        _NUM, None, "ignored: use tasks.train.kwargs.epochs", nullable=True, ignored=True
    ),
    "device_assignment_policy": Setting(_STR, None, "ignored", nullable=True, ignored=True),
    "log_memory_usage": Setting(_BOOL, False, "ignored", ignored=True),
    "write_logs": Setting(
        _BOOL, False, "ignored: the aggregator writes every metric", ignored=True
    ),
}

NETWORK: dict[str, Setting] = {
    "agg_addr": Setting(_STR, "auto", "aggregator host name; auto = $FQDN or this host's FQDN"),
    "agg_port": Setting((int, str), "auto", "aggregator port; auto = derived from the plan hash"),
    "listen_addr": Setting(
        _STR, None, "address the aggregator binds (default: agg_addr)", nullable=True
    ),
    "use_tls": Setting(_BOOL, True, "TLS on every connection"),
    "require_client_auth": Setting(_BOOL, True, "mutual TLS: collaborators present certificates"),
    "tls": Setting(_BOOL, None, "OpenFL 1.6 name of use_tls", nullable=True),
    "disable_client_auth": Setting(
        _BOOL, None, "OpenFL 1.6 inverse of require_client_auth", nullable=True
    ),
    "client_reconnect_interval": Setting(
        _NUM, 5, "longest wait between reconnection attempts (s)", minimum=0
    ),
    "client_reconnect_timeout": Setting(
        _NUM, 600, "give up after this long without the aggregator (s)", minimum=1
    ),
    "cert_folder": Setting(_STR, "cert", "folder holding certificates"),
    "hash_salt": Setting((str, int), "auto", "ignored (OpenFL compatibility)", ignored=True),
    "chunk_bytes": Setting(
        _INT,
        CHUNK_BYTES,
        "tensor payload bytes per stream message",
        minimum=4 << 10,
        maximum=MAX_CHUNK_BYTES,
    ),
    "long_poll_seconds": Setting(
        _NUM, 20.0, "longest the aggregator holds a task request", minimum=0
    ),
    # in every OpenFL 1.9 workspace's plan/defaults/network.yaml
    "enable_atomic_connections": Setting(
        _BOOL, False, "ignored: fedrun keeps one channel per collaborator", ignored=True
    ),
    "transport_protocol": Setting(
        _STR,
        "grpc",
        "fedrun speaks gRPC only (OpenFL's REST transport is not implemented)",
        choices=("grpc",),
    ),
    "resend_data_on_reconnection": Setting(
        _BOOL, True, "ignored: fedrun always resends an interrupted call", ignored=True
    ),
}

ASSIGNER_RANDOM: dict[str, Setting] = {
    "task_groups": Setting((list,), None, "groups: [{name, percentage, tasks}]"),
    "selected_task_group": Setting(_STR, None, "run only this group", nullable=True),
}
ASSIGNER_STATIC: dict[str, Setting] = {
    "task_groups": Setting((list,), None, "groups: [{name, tasks, collaborators}]"),
    "selected_task_group": Setting(_STR, None, "run only this group", nullable=True),
}
STRAGGLER_CUTOFF: dict[str, Setting] = {
    "straggler_cutoff_time": Setting(_NUM, float("inf"), "seconds after the first task of a round"),
    "minimum_reporting": Setting(_INT, 1, "collaborators that must report before a cut-off"),
}
STRAGGLER_PERCENT: dict[str, Setting] = {
    "percent_collaborators_needed": Setting(
        _NUM, 1.0, "fraction of collaborators that close a round"
    ),
    "minimum_reporting": Setting(_INT, 1, "collaborators that must report"),
}

#: fedrun class path -> its settings schema (None: any settings, checked by signature)
CLASS_SCHEMAS: dict[str, dict[str, Setting]] = {
    "fedrun.federation.aggregator.Aggregator": AGGREGATOR,
    "fedrun.federation.collaborator.Collaborator": COLLABORATOR,
    "fedrun.transport.network.Network": NETWORK,
    "fedrun.federation.assigner.RandomGroupedAssigner": ASSIGNER_RANDOM,
    "fedrun.federation.assigner.StaticGroupedAssigner": ASSIGNER_STATIC,
    "fedrun.federation.stragglers.WaitForAllPolicy": {},
    "fedrun.federation.stragglers.CutoffTimePolicy": STRAGGLER_CUTOFF,
    "fedrun.federation.stragglers.PercentagePolicy": STRAGGLER_PERCENT,
}

TASK_KEYS = ("function", "kwargs", "aggregation_type", "description")


def checked_batch_size(value: Any, where: str) -> int:
    """``value`` as a batch size: a whole number of at least 1 (numpy scalars included).

    Raises
    ------
    PlanError
        Naming ``where`` (the plan key) and the value: a zero or negative size would otherwise
        train on nothing without a word, and a fractional one be cut silently.
    """
    size = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
        if number.is_integer() and number >= 1:
            size = int(number)
    if size is None:
        raise PlanError(
            "FX-PLAN-028",
            f"{where} must be a whole number of at least 1, got {value!r}",
            "set it in plan/plan.yaml to a positive integer such as 32",
        )
    return size
