"""Build the federation's components from a loaded plan.

The CLI and the simulator call these; nothing here starts a network server. The aggregator's
builders import no ML framework: only the collaborator's task runner and data loader may.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedrun.aggregation.base import AggregationFunction, all_finite
from fedrun.compression.base import CompressionPipeline
from fedrun.constants import (
    COLLABORATOR_TIMEOUT_SECONDS,
    RECONNECT_MAX_SECONDS,
    RECONNECT_TIMEOUT_SECONDS,
)
from fedrun.errors import ExperimentFinished, PlanError, StateError, WorkspaceError, shown
from fedrun.federation.aggregator import Aggregator, check_best_model_metric, require_collaborators
from fedrun.federation.assigner import Assigner
from fedrun.federation.collaborator import AggregatorConnection, Collaborator
from fedrun.federation.stragglers import StragglerPolicy
from fedrun.metrics.records import (
    CallbackSink,
    JsonlMetricWriter,
    MetricHub,
    TensorBoardSink,
    read_metrics,
)
from fedrun.plan.loader import Plan, did_you_mean
from fedrun.storage.finished_results import FinishedResults
from fedrun.storage.model_file import open_model_view
from fedrun.storage.model_store import ModelStore
from fedrun.storage.sqlite_state import SqliteStateStore, unflatten_rule_states
from fedrun.storage.state_store import InMemoryStateStore, SavedState, StateStore

log = logging.getLogger("fedrun")


def compression_pipeline(plan: Plan) -> CompressionPipeline:
    """The plan's compression pipeline instance."""
    return plan.build("compression_pipeline")


def aggregation_functions(plan: Plan) -> dict[str, AggregationFunction]:
    """One aggregation rule instance per task (default WeightedAverage)."""
    from fedrun.aggregation import WeightedAverage

    out: dict[str, AggregationFunction] = {}
    for name, spec in plan.tasks.items():
        agg = spec.aggregation_type
        if agg is None:
            out[name] = WeightedAverage()
            continue
        cls_ = plan.import_template(str(agg["template"]), f"tasks.{name}.aggregation_type")
        instance = cls_(**dict(agg.get("settings") or {}))
        if not isinstance(instance, AggregationFunction):
            raise PlanError(
                "FX-PLAN-025",
                f"tasks.{name}.aggregation_type {agg['template']!r} is not an AggregationFunction",
                "subclass fedrun.aggregation.base.AggregationFunction",
            )
        try:
            if plan.cols:  # none yet (before certification): nothing to hold the rule to
                instance.check_federation(len(plan.cols))
        except ValueError as exc:
            raise PlanError(
                "FX-PLAN-037",
                f"tasks.{name}.aggregation_type: {exc}",
                "certify more collaborators (fx simulate: --collaborators), lower the rule's "
                "num_byzantine if it is above 0, or give the task a rule without that need "
                "(WeightedAverage, Median)",
            ) from None
        out[name] = instance
    return out


def assigner(plan: Plan, task_group: str | None = None) -> Assigner:
    """The plan's assigner for the authorized collaborators."""
    extra: dict[str, Any] = {"authorized_cols": plan.cols, "rounds_to_train": plan.rounds_to_train}
    seed = plan.settings("aggregator").get("seed")
    if seed is not None:
        extra["seed"] = seed
    settings = plan.section("assigner").get("settings") or {}
    if task_group is not None:
        extra["selected_task_group"] = task_group
        settings = {k: v for k, v in settings.items() if k != "selected_task_group"}
    cls_ = plan.import_template(plan.template("assigner"), "assigner.template")
    built: Assigner = cls_(**settings, **extra)
    for group in getattr(built, "task_groups", []):
        _check_task_order(group, plan.tasks)
    return built


def _check_task_order(group: Mapping[str, Any], tasks: Mapping[str, Any]) -> None:
    """``FX-PLAN-039`` when a group validates the locally trained model before it trains: a
    collaborator runs its tasks in list order, so there is no such model yet."""
    trained = False
    for name in group.get("tasks") or []:
        spec = tasks.get(name)
        if spec is None:
            continue
        if not spec.is_validation:
            trained = True
        elif spec.uses_local_model and not trained:
            raise PlanError(
                "FX-PLAN-039",
                f"assigner task group {group.get('name')!r} runs {name!r} (it validates the "
                "locally trained model) before any training task",
                f"list {name!r} after the group's training task: a collaborator runs its tasks "
                "in this order",
            )


def metric_callback(plan: Plan) -> Any | None:
    """The plan's ``aggregator.settings.log_metric_callback`` function, imported, or None."""
    callback = plan.settings("aggregator").get("log_metric_callback")
    if not callback:
        return None
    template = callback.get("template") if isinstance(callback, dict) else callback
    return plan.import_template(str(template), "aggregator.settings.log_metric_callback")


def check_aggregator_parts(plan: Plan) -> None:
    """Build what the aggregator builds from the plan without an ML framework (the assigner and
    its task groups, the metric callback, the tasks' aggregation rules, the straggler policy),
    so that `fx plan validate` refuses what `fx aggregator start` would refuse (PlanError)."""
    chosen = assigner(plan)
    plan.build("straggler_handling_policy")
    metric_callback(plan)
    aggregation_functions(plan)
    check_best_model_metric(
        plan.settings("aggregator").get("best_model_metric"), plan.tasks, chosen
    )


def metric_hub(plan: Plan, *, resuming: bool = False, from_round: int = 0) -> MetricHub:
    """Metric sinks the plan asks for: metrics.jsonl always, TensorBoard and callback on demand.

    A resumed experiment appends to its metrics.jsonl (skipping what it already holds of the
    rounds from ``from_round`` on, the only ones that can be logged again); a new one moves an
    older file aside as metrics.<time>.jsonl.
    """
    settings = plan.settings("aggregator")
    path = plan.workspace / "logs" / "metrics.jsonl"
    seen: set[tuple[int, str, str, str]] = set()
    if resuming:
        seen = {
            (r.round, r.origin, r.task, r.metric)
            for r in read_metrics(path)
            if r.round >= from_round
        }
    else:
        # a new experiment: an earlier one's files go aside, TensorBoard would otherwise draw
        # both experiments' curves over each other
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if path.is_file() and path.stat().st_size:
            path.rename(path.with_name(f"metrics.{stamp}.jsonl"))
        board = plan.workspace / "logs" / "tensorboard"
        if board.is_dir() and any(board.iterdir()):
            board.rename(board.with_name(f"tensorboard.{stamp}"))
    sinks: list[Any] = [JsonlMetricWriter(path)]
    if settings.get("write_logs"):
        board = plan.workspace / "logs" / "tensorboard"
        log.info("TensorBoard event files go to %s (tensorboard --logdir %s)", board, board)
        sinks.append(TensorBoardSink(board))
    callback = metric_callback(plan)
    if callback is not None:
        sinks.append(CallbackSink(callback))
    return MetricHub(sinks, on_error=log.warning, seen=seen)


def state_store(plan: Plan, *, persist: bool = True, reset: bool = False) -> StateStore:
    """SQLite state when ``persist_checkpoint`` is on (default), else in memory."""
    settings = plan.settings("aggregator")
    if not (persist and settings.get("persist_checkpoint")):
        if persist:  # nothing persisted: every start is a new run, which overwrites the models
            keep_previous_models(_model_paths(plan))
        return InMemoryStateStore()
    path = plan.resolve_path(settings["persistent_db_path"])
    if reset:
        reset_state(plan)
    return SqliteStateStore(path)


def reset_state(plan: Plan) -> None:
    """Delete the persisted aggregator state (database, checkpoints, spooled results).

    The previous run's models (``best``/``last`` and their native exports) are not deleted: they
    move to a ``previous-<UTC time>/`` folder beside them, since the new run would overwrite them.
    """
    settings = plan.settings("aggregator")
    path = plan.resolve_path(settings["persistent_db_path"])
    keep_previous_models(_model_paths(plan))
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    for folder in (path.parent / "checkpoints", plan.workspace / "local_state" / "spool"):
        if folder.is_dir():
            for item in folder.iterdir():
                if item.is_file():
                    item.unlink()
    log.info("aggregator state reset (as asked): %s removed", path)


def _model_paths(plan: Plan) -> list[Path]:
    settings = plan.settings("aggregator")
    return [plan.resolve_path(settings[key]) for key in ("best_state_path", "last_state_path")]


def keep_previous_models(models: list[Path]) -> list[Path]:
    """Move ``models`` (and their ``<stem>_native*`` exports) into a ``previous-<UTC time>/``
    folder beside each (renames within one folder: no copy, whatever the file system); returns
    the folders made, none when there was nothing to move."""
    by_folder: dict[Path, list[Path]] = {}
    for model in models:
        for item in [*sorted(model.parent.glob(f"{model.stem}_native*")), model]:
            if item.exists() and item not in by_folder.get(model.parent, []):
                by_folder.setdefault(model.parent, []).append(item)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    made: list[Path] = []
    for parent, items in by_folder.items():
        folder = parent / f"previous-{stamp}"
        suffix = 1
        while folder.exists():
            suffix += 1
            folder = parent / f"previous-{stamp}-{suffix}"
        try:
            folder.mkdir()
            for item in items:
                item.rename(folder / item.name)
        except OSError as exc:
            raise StateError(
                "FX-STATE-016",
                f"cannot move the previous run's models ({', '.join(i.name for i in items)}) "
                f"to {folder}: {exc.strerror}",
                f"make {parent} writable, or move those files away yourself and start again",
            ) from exc
        log.warning(
            "the previous run's models (%s) were moved to %s; delete it when no longer needed",
            ", ".join(item.name for item in items),
            folder,
        )
        made.append(folder)
    return made


def require_finite_model(tensors: Mapping[str, Any], source: object, fix: str) -> None:
    """``FX-MODEL-004`` when a model a federation would start from holds NaN or inf: every
    result trained from it would be refused as diverged, round after round."""
    for name, array in tensors.items():
        if not all_finite(array):
            raise WorkspaceError(
                "FX-MODEL-004",
                f"the model {source} holds non-finite values (NaN or inf) in tensor {shown(name)}; "
                "a federation started from it cannot train",
                fix,
            )


def build_aggregator(
    plan: Plan,
    *,
    task_group: str | None = None,
    reset: bool = False,
    reconnect_interval: float = RECONNECT_MAX_SECONDS,
    reconnect_timeout: float = RECONNECT_TIMEOUT_SECONDS,
) -> Aggregator:
    """Everything the aggregator process needs, from the plan (resuming saved state).

    ``reconnect_interval``/``reconnect_timeout`` are the plan's
    ``network.settings.client_reconnect_*``: how often, and how long, collaborators retry a lost
    aggregator. A finished experiment whose aggregator stopped before every collaborator heard
    the end gives an aggregator that tells them (:meth:`Aggregator.say_farewell`) if some may
    still be retrying; otherwise it raises ``FX-STATE-021``."""
    settings = plan.settings("aggregator")
    init_path = plan.resolve_path(settings["init_state_path"])

    checked: list[Path] = []

    def require_init() -> None:
        if not init_path.is_file():
            raise WorkspaceError(
                "FX-WS-010",
                f"the initial model {init_path} does not exist",
                "run `fx plan initialize` in the workspace first",
            )
        if not checked:
            require_finite_model(
                open_model_view(init_path).tensors,
                init_path,
                "initialize again (`fx plan initialize`, or `-i` with a model whose weights are "
                "finite)",
            )
            checked.append(init_path)

    # before any saved state or model is moved or deleted
    require_collaborators(plan.cols, plan.cols_path)
    rules = aggregation_functions(plan)
    if reset or not settings.get("persist_checkpoint"):
        require_init()  # the run starts from it: check before anything is moved or deleted
    chosen = assigner(plan, task_group)
    tasks = plan.tasks
    # a task group that only validates (e.g. "evaluation"): one round, nothing saved or resumed
    evaluation = task_group is not None and all(
        tasks[t].is_validation for t in chosen.all_tasks() if t in tasks
    )
    store = state_store(plan, persist=not evaluation, reset=reset)
    saved = store.load()
    if saved.plan_hash and saved.plan_hash != plan.hash:
        raise StateError(
            "FX-STATE-020",
            f"the saved aggregator state ({settings['persistent_db_path']}) belongs to another "
            f"plan (hash {saved.plan_hash[:12]}, this plan {plan.hash[:12]})",
            "restore the plan it was made with, or start over with `fx aggregator start --reset-state`",
        )
    if saved.experiment_done:
        finished = ExperimentFinished(
            "FX-STATE-021",
            f"experiment {plan.federation_id} already finished; its models are in "
            f"{settings['last_state_path']} and {settings['best_state_path']}",
            "nothing to resume; to run it again use `fx aggregator start --reset-state`",
        )
        at_most = _farewell_seconds(saved, reconnect_timeout)
        if at_most <= 0:
            store.close()
            raise finished
        # a collaborator still retrying calls at least every reconnect_interval
        quiet = 2 * reconnect_interval + 5.0
        agg = _finished_aggregator(plan, chosen, store, saved)
        agg.say_farewell(finished, quiet=quiet, at_most=at_most)
        return agg
    if saved.round == 0:
        require_init()  # a resume past round 0 starts from its checkpoint instead
    rule_states: dict[str, Any] = {}
    if not saved.plan_hash:
        if not evaluation:
            # no saved state: a first start, or local_state/ was lost. Models in save/ belong
            # to an earlier run, which this new one must not overwrite
            keep_previous_models(_model_paths(plan))
        store.start(plan.hash, 0)
    if saved.round > 0:
        tensors, flat = store.load_checkpoint(saved.round)
        rule_states = unflatten_rule_states(flat)
        log.info(
            "resuming experiment %s at round %d (%d accepted results restored)",
            plan.federation_id,
            saved.round,
            len(saved.results),
        )
    else:
        tensors = open_model_view(init_path).tensors
        if saved.results:
            log.info("resuming round 0 (%d accepted results restored)", len(saved.results))
    rounds = 1 if evaluation else plan.rounds_to_train
    best_path = plan.resolve_path(settings["best_state_path"])
    last_path = plan.resolve_path(settings["last_state_path"])
    ensure_writable(best_path.parent, "aggregator.settings.best_state_path")
    ensure_writable(last_path.parent, "aggregator.settings.last_state_path")
    ensure_writable(plan.workspace / "local_state", "the aggregator's local_state/ folder")
    models = ModelStore(
        best_path,
        last_path,
        plan.hash,
        on_finish=native_exporter(plan) if settings.get("save_native_model") else None,
    )
    policy: StragglerPolicy = plan.build("straggler_handling_policy")
    opt = plan.settings("collaborator").get("opt_treatment")
    agg = Aggregator(
        plan_hash=plan.hash,
        federation_id=plan.federation_id,
        collaborators=plan.cols,
        tasks=plan.tasks,
        assigner=chosen,
        rounds_to_train=rounds,
        initial_model=tensors,
        initial_round=saved.round,
        best_score=saved.best_score,
        best_round=saved.best_round,
        rule_states=rule_states,
        aggregation_functions=rules,
        spool_dir=plan.workspace / "local_state" / "spool",
        straggler_policy=policy,
        model_sink=models,
        metrics=metric_hub(plan, resuming=bool(saved.plan_hash), from_round=saved.round),
        state_store=store,
        best_model_metric=settings.get("best_model_metric"),
        best_model_mode=settings.get("best_model_mode"),
        final_validation=bool(settings.get("final_validation", True)) and not evaluation,
        accept_optimizer_state=opt == "CONTINUE_GLOBAL",
        save_models=not evaluation,
        collaborator_timeout=collaborator_timeout(plan),
        durable=isinstance(store, SqliteStateStore),
        # the aggregator has its process to itself: its CPU per round is worth reporting
        cpu_clock=time.process_time,
    )
    agg.resume(saved.results, restarted=bool(saved.plan_hash))
    return agg


def collaborator_timeout(plan: Plan) -> float:
    """``aggregator.settings.collaborator_timeout`` in seconds (default 300)."""
    value = plan.settings("aggregator").get("collaborator_timeout")
    return float(value or COLLABORATOR_TIMEOUT_SECONDS)


def _farewell_seconds(saved: SavedState, reconnect_timeout: float) -> float:
    """How long collaborators may still be waiting for the end of a finished experiment whose
    aggregator stopped before telling them all (0: nobody can be): they retry for
    ``reconnect_timeout`` seconds after losing the aggregator."""
    if saved.ended or saved.finished_at is None:
        return 0.0
    return reconnect_timeout - max(0.0, time.time() - saved.finished_at)


def _finished_aggregator(
    plan: Plan, chosen: Assigner, store: StateStore, saved: SavedState
) -> Aggregator:
    """An aggregator of a finished experiment: no model, no metrics, nothing written but the
    note that the end was heard."""
    return Aggregator(
        plan_hash=plan.hash,
        federation_id=plan.federation_id,
        collaborators=plan.cols,
        tasks=plan.tasks,
        assigner=chosen,
        rounds_to_train=plan.rounds_to_train,
        initial_model={},
        initial_round=saved.round,
        aggregation_functions={},
        spool_dir=plan.workspace / "local_state" / "spool",
        state_store=store,
        collaborator_timeout=collaborator_timeout(plan),
        durable=True,
    )


def ensure_writable(folder: Path, what: str) -> None:
    """Fail at start, not at the end of round 1, when results could not be saved."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".fedrun-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StateError(
            "FX-STATE-004",
            f"cannot write to {folder} ({what}): {exc.strerror}",
            f"make {folder} writable by this user, or point the plan at another folder",
        ) from exc


def native_exporter(plan: Plan) -> Any:
    """At the end, write best/last in the framework's format through `fx model save`.

    It runs in a child process so that the aggregator process never imports the ML framework.
    """
    import subprocess
    import sys

    def export(best: Path, last: Path) -> None:
        for source, folder in ((best, "best_native"), (last, "last_native")):
            if not source.is_file():
                continue
            target = source.parent / folder
            target.mkdir(exist_ok=True)  # a folder: the native model file goes inside
            cmd = [
                sys.executable,
                "-m",
                "fedrun.cli.main",
                "model",
                "save",
                "-i",
                str(source),
                "-o",
                str(target),
                "--force",
                "-p",
                str(plan.path),
            ]
            proc = subprocess.run(cmd, cwd=plan.workspace, capture_output=True, text=True)
            if proc.returncode == 0:
                log.info("saved the native model %s", target)
            else:
                log.error(
                    "could not save the native model %s:\n%s", target, proc.stderr.strip()[-1500:]
                )

    return export


def seed_everything(seed: int | None) -> None:
    """Seed Python and numpy now, and the ML framework when its task runner is built."""
    from fedrun.seeding import set_seed

    set_seed(seed)


def build_data_loader(plan: Plan, collaborator: str | None) -> Any:
    """The data loader for ``collaborator`` (None: model-initialisation mode, no data)."""
    data_path = None
    if collaborator is not None:
        if collaborator not in plan.data_paths:
            raise no_data_entry(plan, collaborator)
        data_path = plan.data_paths[collaborator]
    return plan.build("data_loader", data_path=data_path)


def collaborator_seed(plan: Plan, collaborator: str | None) -> int | None:
    """Per-collaborator seed derived from the plan's seed, stable across runs."""
    seed = plan.settings("collaborator").get("seed")
    if seed is None:
        seed = plan.settings("aggregator").get("seed")
    if seed is None:
        return None
    import zlib

    return (int(seed) * 1_000_003 + zlib.crc32((collaborator or "").encode())) % (2**31)


def build_task_runner(plan: Plan, collaborator: str | None) -> Any:
    """Data loader plus task runner for ``collaborator`` (imports the ML framework)."""
    seed_everything(collaborator_seed(plan, collaborator))
    loader = build_data_loader(plan, collaborator)
    return plan.build("task_runner", data_loader=loader)


#: arguments every task method receives from the collaborator, never from the plan
TASK_CALL_ARGUMENTS = ("col_name", "round_num", "input_tensor_dict")


#: keyword arguments of OpenFL's own task methods that have no meaning in fedrun (a progress
#: bar per batch): OpenFL plans may set them, and fedrun's task methods take them silently
OPENFL_TASK_OPTIONS = frozenset({"use_tqdm"})


def task_kwargs_warnings(plan: Plan, runner: Any) -> list[str]:
    """Compare each task's ``kwargs`` with the task method's parameters (``runner`` a task
    runner or its class) before any training.

    A keyword the method cannot take fails now (FX-PLAN-033) instead of in round 0. A keyword
    that one of fedrun's own task methods would swallow unused (they take ``**kwargs`` so that
    OpenFL plans with extra keys run) comes back as a warning with a did-you-mean: a misspelled
    ``epoch`` would otherwise silently train the default one epoch.
    """
    cls = runner if isinstance(runner, type) else type(runner)
    warnings: list[str] = []
    for task in plan.tasks.values():
        method = getattr(runner, task.function, None)
        if method is None or not task.kwargs:
            continue
        try:
            params = inspect.signature(method).parameters
        except (TypeError, ValueError):
            continue
        named = [
            n
            for n, p in params.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and n not in TASK_CALL_ARGUMENTS
            and n != "self"
        ]
        open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
        owner = f"{cls.__name__}.{task.function}"
        for key in task.kwargs:
            if key in named:
                continue
            where = f"tasks.{task.name}.kwargs.{key}"
            takes = f"it takes {', '.join(named)}" if named else "it takes no keyword arguments"
            if not open_ended:
                raise PlanError(
                    "FX-PLAN-033",
                    f"{where}: {owner} has no parameter {key!r}{did_you_mean(key, named)}",
                    f"remove the key or correct its name ({takes})",
                )
            if key in OPENFL_TASK_OPTIONS:
                continue
            if getattr(method, "__module__", "").startswith("fedrun."):
                warnings.append(
                    f"{where} is not used by {owner} ({takes}){did_you_mean(key, named)}; "
                    "it is ignored"
                )
    return warnings


def check_task_kwargs(plan: Plan, runner: Any) -> None:
    """:func:`task_kwargs_warnings`, its warnings logged."""
    for warning in task_kwargs_warnings(plan, runner):
        log.warning("%s", warning)


def no_data_entry(plan: Plan, name: str) -> PlanError:
    """FX-PLAN-026: collaborator ``name`` has no line in data.yaml: a collaborator not created
    yet, or a name mistyped (a close one is named)."""
    hint = did_you_mean(name, plan.data_paths)
    create = f"`fx collaborator create -n {name} -d <data path or shard>`"
    return PlanError(
        "FX-PLAN-026",
        f"collaborator {name!r} has no entry in {plan.data_path}{hint}",
        f"check the name given with -n; to add {name!r} as a new collaborator, run {create}"
        if hint
        else f"run {create}",
    )


def build_collaborator(
    plan: Plan, name: str, connection: AggregatorConnection, runner: Any = None
) -> Collaborator:
    """The collaborator core for ``name``, talking through ``connection``."""
    if name not in plan.data_paths:
        raise no_data_entry(plan, name)
    runner = runner if runner is not None else build_task_runner(plan, name)
    check_task_kwargs(plan, runner)
    settings = plan.settings("collaborator")
    return Collaborator(
        collaborator_name=name,
        connection=connection,
        task_runner=runner,
        tasks=plan.tasks,
        use_delta_updates=bool(settings.get("use_delta_updates")),
        lossy_updates=compression_pipeline(plan).lossy,
        opt_treatment=str(settings.get("opt_treatment") or "RESET"),
        db_store_rounds=int(settings.get("db_store_rounds") or 1),
        rounds_to_train=plan.rounds_to_train,
        finished=FinishedResults(finished_results_folder(plan, name), plan.hash),
    )


def finished_results_folder(plan: Plan, name: str) -> Path:
    """Where collaborator ``name`` keeps the results of its running round
    (:mod:`fedrun.storage.finished_results`)."""
    return plan.workspace / "local_state" / "collaborators" / name
