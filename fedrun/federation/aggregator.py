"""The Aggregator: a pure round state machine, driven by method calls.

It knows nothing of the network. The gRPC server calls :meth:`Aggregator.get_tasks` (a long
poll), :meth:`Aggregator.get_global_model` and :meth:`Aggregator.open_result`; the same object
runs in-process in tests. Results are spooled to disk tensor by tensor as they stream in, checked,
made durable and recorded, so nothing acknowledged is lost (see
:mod:`fedrun.federation.result_upload`; the round's bookkeeping is
:mod:`fedrun.federation.round_state`); when the round closes they are read
back name by name, in collaborator order, into the rules' accumulators (see
:mod:`fedrun.federation.round_aggregation`), and the new model is written out tensor by tensor,
so memory stays near one tensor's sums whatever the model size and number of collaborators.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from fedrun import failpoints
from fedrun.aggregation.base import AggregationFunction, all_finite
from fedrun.buffers import POOL
from fedrun.constants import (
    END_GRACE_SECONDS,
    OPTIMIZER_PREFIX,
    OPTIMIZER_STATE_FACTOR,
    UPLOAD_STALL_SECONDS,
)
from fedrun.errors import (
    ExperimentFinished,
    FedrunError,
    PlanError,
    ProtocolError,
    StateError,
    shown,
)
from fedrun.federation.assigner import Assigner
from fedrun.federation.result_upload import (
    MAX_DATA_SIZE,
    ResultUpload,
    check_metrics,
)
from fedrun.federation.round_aggregation import TaskUpdates
from fedrun.federation.round_state import RoundState, RoundSummary
from fedrun.federation.stragglers import StragglerPolicy, WaitForAllPolicy
from fedrun.federation.tasks import TaskAssignment, TaskSpec
from fedrun.metrics.records import MetricHub
from fedrun.storage.model_file import (
    TensorPieces,
    TensorSequence,
    open_model_view,
    spool_problem,
)
from fedrun.storage.spool import Spool
from fedrun.storage.sqlite_state import flatten_rule_states
from fedrun.storage.state_store import AcceptedResult, InMemoryStateStore, StateStore
from fedrun.units import human_bytes

log = logging.getLogger("fedrun.aggregator")

#: round summaries kept for the end-of-run table (every round is in metrics.jsonl)
ROUND_HISTORY_KEPT = 50

#: while a round waits for collaborators reported gone, the log says so again this often
WAITING_REMINDER_SECONDS = 600.0

#: metrics a round's log line lists (all of them are in metrics.jsonl)
METRICS_PER_LOG_LINE = 24
#: a collaborator's `fx collaborator ping` is logged at most this often
PROBE_LINE_SECONDS = 60.0
#: how long a collaborator asking to resume an upload still open here waits for that upload's
#: stream to end and keep what arrived
SETTLE_SECONDS = 5.0


class ModelSink:
    """Where the aggregator's models go; the default keeps nothing (tests)."""

    #: True when :meth:`save_last` writes the model to a file and returns it: the aggregator
    #: then hands the new model over tensor by tensor (a TensorSequence) and keeps none of it
    writes_last = False

    def save_last(
        self, tensors: Mapping[str, np.ndarray] | TensorSequence, round_num: int
    ) -> Path | None:
        """Save the newest aggregate; returns the file written, if any."""
        return None

    def save_best(
        self, tensors: Mapping[str, np.ndarray], round_num: int, score: float, metric: str
    ) -> None: ...

    def finish(self, best_round: int | None) -> None: ...


class Aggregator:
    """Round logic of the federation.

    Parameters
    ----------
    plan_hash, federation_id:
        Identify the experiment; requests for another plan are refused.
    collaborators:
        Authorized collaborator names.
    tasks:
        The plan's tasks by name.
    assigner:
        Decides each collaborator's tasks per round.
    rounds_to_train:
        Training rounds in the experiment.
    initial_model:
        The model collaborators start round ``initial_round`` from.
    aggregation_functions:
        Rule per task name for the tensors that task returns.
    spool_dir:
        Folder where incoming results are written while they stream in.
    """

    def __init__(
        self,
        *,
        plan_hash: str,
        federation_id: str,
        collaborators: list[str],
        tasks: Mapping[str, TaskSpec],
        assigner: Assigner,
        rounds_to_train: int,
        initial_model: Mapping[str, np.ndarray],
        aggregation_functions: Mapping[str, AggregationFunction],
        spool_dir: str | Path,
        initial_round: int = 0,
        best_score: float | None = None,
        best_round: int | None = None,
        rule_states: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]] | None = None,
        straggler_policy: StragglerPolicy | None = None,
        model_sink: ModelSink | None = None,
        metrics: MetricHub | None = None,
        state_store: StateStore | None = None,
        best_model_metric: str | None = None,
        best_model_mode: str | None = None,
        final_validation: bool = True,
        accept_optimizer_state: bool = False,
        save_models: bool = True,
        collaborator_timeout: float = 300.0,
        durable: bool = False,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] | None = None,
    ) -> None:
        require_collaborators(collaborators)
        self.plan_hash = plan_hash
        self.federation_id = federation_id
        self.collaborators = list(collaborators)
        self.tasks = dict(tasks)
        self.assigner = assigner
        self.rounds_to_train = int(rounds_to_train)
        self.aggregation_functions = dict(aggregation_functions)
        self.spool_dir = Path(spool_dir)
        self.spool = Spool(self.spool_dir)
        self.policy = straggler_policy or WaitForAllPolicy()
        self.model_sink = model_sink or ModelSink()
        self.metrics = metrics or MetricHub()
        self.state_store = state_store or InMemoryStateStore()
        #: this run of the experiment (kept across resumes, new after a reset)
        self.run_id = self.state_store.run_id()
        self._announced: int | None = None  # the round "round N started" was logged for
        self._best_metric_warned = False
        #: results being received, by (collaborator, task): watched for stalls by tick()
        self._uploads: dict[tuple[str, str], ResultUpload] = {}
        #: uploads that broke off, by (collaborator, task): their whole tensors, kept for an
        #: upload of the same result to resume until the round ends
        self._suspended: dict[tuple[str, str], ResultUpload] = {}
        #: uploads dropped keeping what arrived, until their stream's thread settles them
        self._settling: dict[tuple[str, str], ResultUpload] = {}
        #: when each collaborator's `fx collaborator ping` was last logged
        self._probes_said: dict[str, float] = {}
        #: (collaborator, task) pairs already warned about a result lacking model tensors
        self._partial_warned: set[tuple[str, str]] = set()
        self.best_model_mode = best_model_mode
        self.final_validation_enabled = final_validation
        self.accept_optimizer_state = accept_optimizer_state
        self.save_models = save_models
        self.collaborator_timeout = float(collaborator_timeout)
        self.durable = durable
        self.clock = clock
        #: when this aggregator started: a listed collaborator that never connects is reported
        #: collaborator_timeout seconds after it
        self.started_at = clock()
        self.cpu_clock = cpu_clock
        check_best_model_metric(best_model_metric, self.tasks, assigner)
        self.best_metric = best_model_metric or self._default_best_metric()
        self._best_metric_chosen = bool(best_model_metric)  # set in the plan, not derived
        if self.best_metric is None and save_models:
            log.warning(
                "no task of the plan validates the global model (a task whose kwargs carry "
                "`apply: global`): no best model will be saved, only the last one"
            )
        self.best_score: float | None = best_score
        self.best_round: int | None = best_round
        for task, state in (rule_states or {}).items():
            fn = self.aggregation_functions.get(task)
            if fn is not None and hasattr(fn, "load_state_dict"):
                fn.load_state_dict(state)

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self.global_model: dict[str, np.ndarray] = {
            k: v if isinstance(v, np.ndarray) else np.asarray(v) for k, v in initial_model.items()
        }
        self._optimizer_budget: tuple[Mapping[str, np.ndarray], int, int] | None = None
        self.round_num = int(initial_round)
        # a stop between a round's commit and the retiring of its files leaves them behind
        self.spool.drop_before(self.round_num)
        self.done = False
        self.done_at: float | None = None
        self.finished_event = threading.Event()
        #: the signal (SIGINT, SIGTERM) that stopped the process serving this aggregator early
        self.stopped_by_signal: int | None = None
        self.quit_sent: set[str] = set()
        #: the error a round's end failed with: nothing more is aggregated in this process
        self.broken: BaseException | None = None
        #: the process stops (Ctrl-C, SIGTERM): no result is taken and no round closed any
        #: more, so that nothing is half done when the state is closed (see begin_stop)
        self.stopping = False
        #: the last closed round and the tasks each collaborator finished in it: a result of
        #: it sent again (its acknowledgement lost in a restart) is a duplicate, not a late one
        self._last_closed: tuple[int, dict[str, set[str]]] = (-1, {})
        #: set when this aggregator serves an experiment that had already finished (see
        #: :meth:`say_farewell`): the error that says so once the farewell is over
        self.farewell_of: ExperimentFinished | None = None
        self._farewell: tuple[float, float] | None = None  # (quiet seconds, at most seconds)
        #: collaborators whose tasks of the last round are all in: they leave without asking
        self.released: set[str] = set()
        self.last_seen: dict[str, float] = {}
        self.reported_gone: set[str] = set()
        self._reminded_at: float | None = None  # when the wait for gone ones was last logged
        self.listeners: list[Callable[[RoundSummary], None]] = []
        #: the last ROUND_HISTORY_KEPT rounds this process closed (all are in metrics.jsonl)
        self.round_history: list[RoundSummary] = []
        self.round: RoundState = self._open_round(self.round_num)

    # ------------------------------------------------------------------ setup helpers
    def _default_best_metric(self) -> str | None:
        """The first metric of aggregated_model_validation, else of the first task validating
        the global model."""
        candidates = [name for name, spec in self.tasks.items() if spec.validates_global_model]
        if "aggregated_model_validation" in candidates:
            return "aggregated_model_validation/"
        return f"{candidates[0]}/" if candidates else None

    def _global_validation_tasks(self) -> list[str]:
        return global_validation_tasks(self.tasks, self.assigner)

    def _open_round(self, number: int) -> RoundState:
        final = number >= self.rounds_to_train
        if final:
            keep = set(self._global_validation_tasks())
            assigned = {
                c: [t for t in self.assigner.tasks_for(c, number) if t in keep]
                for c in self.collaborators
            }
        else:
            assigned = {c: self.assigner.tasks_for(c, number) for c in self.collaborators}
        # the final validation, or the last training round when no final validation is planned
        # (if one is planned but the round leaves the model unchanged, the experiment still ends
        # there, and collaborators hear "quit" when they ask)
        last = final or (
            number + 1 >= self.rounds_to_train
            and not (self.final_validation_enabled and self._global_validation_tasks())
        )
        state = RoundState(
            number=number,
            assigned=assigned,
            final_validation=final,
            last=last,
            opened_at=self.clock(),
            cpu_at_open=self.cpu_clock() if self.cpu_clock is not None else None,
        )
        for col in self.collaborators:
            state.done[col] = set()
        assigned_tasks = {t for ts in assigned.values() for t in ts}
        # only tasks that produce a model (training) have accumulators; validation tasks send
        # metrics only, and tensors attached to them are refused. Ordered as the assigner's
        # task list so that several training tasks update the model in a fixed order.
        for task in self.assigner.all_tasks():
            spec = self.tasks.get(task)
            fn = self.aggregation_functions.get(task)
            if (
                task in assigned_tasks
                and fn is not None
                and spec is not None
                and not spec.is_validation
            ):
                state.accumulators[task] = fn.begin_round(number, self.global_model)
        return state

    def resume(self, results: list[AcceptedResult], *, restarted: bool = True) -> int:
        """Replay results accepted before a restart (their spool files hold the tensors, read
        when the round closes). ``restarted``: an earlier run of the aggregator opened the
        current round (its times then count from now, and say so)."""
        self.round.resumed = restarted
        replayed = 0
        for result in results:
            if result.round != self.round_num:
                continue
            if result.spool_path:
                # the file in this workspace's spool, whatever folder the workspace was in when
                # the result was saved (moved or copied since, the old path names another
                # workspace's file, or none)
                result = replace(
                    result, spool_path=str(self.spool.folder / Path(result.spool_path).name)
                )
            if result.collaborator not in self.collaborators:
                # removed from cols.yaml since: its work no longer counts (kept on disk, so it
                # counts again if the collaborator is authorized again before the round ends)
                log.warning(
                    "round %d: the saved %s result of %s is not counted: %s is no longer in "
                    "plan/cols.yaml",
                    result.round,
                    result.task,
                    result.collaborator,
                    result.collaborator,
                )
                continue
            problem = spool_problem(result.spool_path) if result.spool_path else None
            if problem is not None:
                log.warning(
                    "round %d: the saved %s result of %s cannot be read back (%s); it is "
                    "dropped and %s will be asked to do the task again",
                    result.round,
                    result.task,
                    result.collaborator,
                    problem,
                    result.collaborator,
                )
                self.state_store.drop_result(result.round, result.collaborator, result.task)
                Path(result.spool_path).unlink(missing_ok=True)
                continue
            with self._lock:
                self._apply_result(result, replay=True)
            replayed += 1
        with self._lock:
            if replayed and self.round.started_at is None:
                # the round was open before the restart, and a collaborator that finished its
                # tasks asks for none now: a cut-off policy counts from the restart
                self.round.started_at = self.clock()
            self._maybe_close_round()
        return replayed

    # ------------------------------------------------------------------ identity checks
    def check_member(self, collaborator: str) -> None:
        """Refuse a name that is not in cols.yaml (ProtocolError FX-AUTH-003)."""
        if collaborator not in self.collaborators:
            raise ProtocolError(
                "FX-AUTH-003",
                f"collaborator {shown(collaborator)} is not in this federation's plan/cols.yaml",
                "on the aggregator, certify it with `fx collaborator certify` or add it to "
                "cols.yaml; if it is listed there already, restart the aggregator (it reads "
                "cols.yaml when it starts, and resumes where it stopped)",
            )

    def check_identity(self, collaborator: str, plan_hash: str, federation_id: str) -> None:
        """Refuse unknown collaborators and other experiments (ProtocolError)."""
        self.check_member(collaborator)
        if plan_hash != self.plan_hash or federation_id != self.federation_id:
            raise ProtocolError(
                "FX-AUTH-004",
                f"collaborator {collaborator!r} runs a different plan (hash {shown(plan_hash[:12])}, "
                f"aggregator {self.plan_hash[:12]})",
                "use the same plan.yaml (and defaults) on every node: copy the aggregator's plan",
            )

    def touch(self, collaborator: str) -> None:
        """``collaborator`` called: logged when it is its first call to this aggregator (a
        collaborator pings before it asks for tasks) or its first since it was reported gone."""
        with self._lock:
            first = collaborator not in self.last_seen
            self.last_seen[collaborator] = self.clock()
            if first:
                self.reported_gone.discard(collaborator)  # "has not connected" was said
                if self.farewell_of is None:
                    log.info("collaborator %s joined (round %d)", collaborator, self.round_num)
            elif collaborator in self.reported_gone:
                self.reported_gone.discard(collaborator)
                log.info("collaborator %s is back", collaborator)

    def probed(self, collaborator: str) -> None:
        """``collaborator`` checked its connection (`fx collaborator ping`): said, at most once
        a minute per collaborator, but it has not joined (it may never start)."""
        now = self.clock()
        with self._lock:
            said = self._probes_said.get(collaborator)
            if said is not None and now - said < PROBE_LINE_SECONDS:
                return
            self._probes_said[collaborator] = now
        log.info(
            "collaborator %s checked its connection to this aggregator (fx collaborator ping)",
            collaborator,
        )

    # ------------------------------------------------------------------ tasks (long poll)
    def get_tasks(self, collaborator: str, wait: float = 0.0, process: str = "") -> TaskAssignment:
        """Tasks for ``collaborator`` (asked by its process ``process``); waits up to ``wait``
        seconds for work to exist."""
        # the long poll waits in real time whatever clock drives round deadlines
        deadline = time.monotonic() + max(0.0, wait)
        with self._lock:
            self.touch(collaborator)
            if process:
                self._end_uploads_of_earlier_processes(collaborator, process)
            while True:
                if self.done:
                    if collaborator not in self.quit_sent:
                        self.quit_sent.add(collaborator)
                        log.info("collaborator %s told to stop", collaborator)
                        self._check_finished()
                    return TaskAssignment(self.round_num, [], quit=True)
                state = self.round
                if collaborator not in state.stragglers:
                    pending = [
                        t
                        for t in state.assigned.get(collaborator, [])
                        if t not in state.done.get(collaborator, set())
                        and (collaborator, t) not in state.in_progress
                    ]
                    if pending:
                        if state.started_at is None:
                            state.started_at = self.clock()
                        return TaskAssignment(
                            state.number,
                            pending,
                            final_validation=state.final_validation,
                            last=state.last,
                            run=self.run_id,
                        )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return TaskAssignment(state.number, [])
                self._changed.wait(remaining)

    def get_global_model(self, collaborator: str, round_num: int) -> dict[str, np.ndarray]:
        """The global model a collaborator starts ``round_num`` from (current round only)."""
        with self._lock:
            self.touch(collaborator)
            if round_num != self.round_num or self.done:
                raise ProtocolError(
                    "FX-ROUND-001",
                    f"collaborator {collaborator!r} asked for the model of round {round_num}, "
                    f"but the aggregator is at round {self.round_num}"
                    + (" (experiment finished)" if self.done else ""),
                    "the collaborator will ask for new tasks",
                )
            return dict(self.global_model)  # the round may close (and replace it) while sent

    # ------------------------------------------------------------------ results
    def open_result(
        self,
        collaborator: str,
        round_num: int,
        task: str,
        data_size: int,
        metrics: Mapping[str, float],
        tensor_count: int,
        run: str = "",
        *,
        result_id: str = "",
        held: Collection[str] = (),
        process: str = "",
    ) -> ResultUpload:
        """Start receiving one task result; checks it belongs to this run and the current round
        (``run`` empty: sent by a client that does not say, accepted as before). With ``held``
        the upload resumes one of the same result (``result_id``) that broke off
        (:meth:`result_progress` said which tensors it kept)."""
        with self._lock:
            self.touch(collaborator)
            state = self.round
            if run and run != self.run_id:
                raise ProtocolError(
                    "FX-ROUND-006",
                    f"result of {collaborator!r} for task {shown(task)} of round {round_num} refused: "
                    "it answers tasks of an earlier run of this experiment (the aggregator was "
                    "started over with --reset-state since)",
                    "nothing to do: the collaborator asks for the current run's tasks",
                )
            if self.farewell_of is not None:
                raise ProtocolError(
                    "FX-ROUND-002",
                    f"result of {collaborator!r} for task {shown(task)} of round {round_num} is not "
                    "needed: the experiment finished (the aggregator stopped before it "
                    "acknowledged every result)",
                    "nothing to do: the collaborator asks for tasks and is told to stop",
                )
            if self.stopping:
                raise self.stopping_error()
            closed, closed_done = self._last_closed
            if round_num == closed and task in closed_done.get(collaborator, ()):
                # counted in the round, whose end the collaborator did not hear (the aggregator
                # stopped after storing it; started again, it closed the round from its state)
                raise ProtocolError(
                    "FX-ROUND-005",
                    f"duplicate result from {collaborator!r} for task {shown(task)} in round "
                    f"{round_num}: it was counted before round {round_num} closed",
                    "nothing to do: the first result counts",
                )
            if self.done or round_num != state.number:
                raise ProtocolError(
                    "FX-ROUND-002",
                    f"result of {collaborator!r} for task {shown(task)} of round {round_num} refused: "
                    f"round {round_num} is closed (aggregator at round {self.round_num})",
                    "nothing to do: the collaborator joins the next round",
                )
            if collaborator in state.stragglers:
                raise ProtocolError(
                    "FX-ROUND-003",
                    f"result of {collaborator!r} for round {round_num} refused: it was cut off "
                    "as a straggler this round",
                    "nothing to do: it joins the next round",
                )
            if task not in state.assigned.get(collaborator, []):
                raise ProtocolError(
                    "FX-ROUND-004",
                    f"{collaborator!r} sent a result for task {shown(task)}, which it was not assigned "
                    f"in round {round_num}",
                    "run the tasks the aggregator hands out",
                )
            key = (collaborator, task)
            if task in state.done.get(collaborator, set()):
                raise ProtocolError(
                    "FX-ROUND-005",
                    f"duplicate result from {collaborator!r} for task {shown(task)} in round {round_num}",
                    "nothing to do: the first result counts",
                )
            earlier = self._uploads.get(key)
            if earlier is not None:
                # the collaborator sends a result again only after its call failed on its side
                # (a network cut): the earlier stream will never be acknowledged, and calling
                # this one a duplicate would tell the collaborator "accepted" for a result that
                # may never be. The newest upload counts
                log.info(
                    "round %d: %s sends its %s result again; its earlier upload, still open "
                    "here, is dropped",
                    round_num,
                    collaborator,
                    task,
                )
                self._forget_upload(earlier)
                earlier.drop("the collaborator sent the result again")
            check_metrics(collaborator, task, metrics)
            if not 0 <= data_size <= MAX_DATA_SIZE:
                raise ProtocolError(
                    "FX-DATA-011",
                    f"{collaborator!r} sent data_size {data_size} for {shown(task)}: not a number of "
                    "samples",
                    "the task runner's data loader reports how many samples it trained or "
                    f"validated on (0 to {MAX_DATA_SIZE})",
                )
            if tensor_count and task not in state.accumulators:
                raise ProtocolError(
                    "FX-DATA-012",
                    f"{collaborator!r} sent tensors for task {shown(task)}, which produces none",
                )
            kept = self._suspended.pop(key, None)  # resumed now, or replaced
            if held:
                resumable = (
                    kept is not None
                    and kept.result_id == result_id
                    and kept.data_size == data_size
                    and kept.metrics == dict(metrics)
                    and kept.tensor_count == tensor_count
                    and kept.names == set(held)
                )
                if not resumable:
                    if kept is not None:
                        kept.discard()
                    raise ProtocolError(
                        "FX-ROUND-021",
                        f"{collaborator!r} resumed its upload of {shown(task)} (round "
                        f"{round_num}) but the aggregator no longer holds what arrived of it "
                        "(it was started again, or the upload was replaced)",
                        "nothing to do: the collaborator sends the whole result again",
                    )
                assert kept is not None
                kept.resume()
                kept.process = process
                state.in_progress.add(key)
                self._uploads[key] = kept
                log.info(
                    "round %d: %s resumes its upload of %s: %d of %d tensors (%s) were already "
                    "here",
                    round_num,
                    collaborator,
                    task,
                    len(kept.names),
                    tensor_count,
                    human_bytes(kept.nbytes),
                )
                return kept
            if kept is not None:
                kept.discard()  # sent whole again: what was kept of an earlier upload is moot
            state.in_progress.add(key)
            upload = ResultUpload(
                self,
                state.number,
                collaborator,
                task,
                int(data_size),
                dict(metrics),
                tensor_count,
                result_id,
                process,
            )
            self._uploads[key] = upload
        return upload

    def _end_uploads_of_earlier_processes(self, collaborator: str, process: str) -> None:
        """A collaborator's process asks for tasks while another process's upload of its is
        still open here (lock held): the collaborator was started again, and its earlier
        process (frozen, or cut off with no reset) will not finish it. Held open, the upload
        kept the task from being handed out until it timed out; ended, what arrived whole is
        kept for the new process to resume. (Two live processes are refused apart.)"""
        for (name, task), upload in list(self._uploads.items()):
            if name == collaborator and upload.process and upload.process != process:
                log.info(
                    "round %d: %s was started again: its earlier process's upload of %s is "
                    "ended (what arrived of it is kept)",
                    upload.round,
                    collaborator,
                    task,
                )
                self._drop_keeping(upload, "the collaborator was started again")

    def result_progress(
        self, collaborator: str, result_id: str, round_num: int, task: str
    ) -> tuple[list[str], int]:
        """The tensors (and their bytes) kept of result ``result_id`` for ``task`` whose upload
        broke off, which need not be sent again; none when nothing was kept. An upload of it
        still open here (its break not noticed yet: the collaborator gave up on it) is ended
        first, keeping what arrived whole."""
        key = (collaborator, task)
        with self._lock:
            self.touch(collaborator)
            if self.done or round_num != self.round.number:
                return [], 0
            open_upload = self._uploads.get(key)
            if open_upload is not None and result_id and open_upload.result_id == result_id:
                self._drop_keeping(open_upload, "the collaborator resumes it")
            settling = self._settling.get(key)
            if settling is not None:
                self._changed.wait_for(lambda: settling.settled, timeout=SETTLE_SECONDS)
                if settling.settled:
                    del self._settling[key]
            kept = self._suspended.get(key)
            # only the running round's uploads are kept (_discard_suspended at its end)
            if kept is None or not result_id or kept.result_id != result_id:
                return [], 0
            return sorted(kept.names), kept.nbytes

    def _drop_keeping(self, upload: ResultUpload, reason: str) -> None:
        """End an open upload, keeping what arrived of it whole (lock held): its stream's
        thread suspends it (:meth:`_suspend_result`); a resume asking meanwhile waits for it."""
        self._forget_upload(upload)
        self._settling[(upload.collaborator, upload.task)] = upload
        upload.drop(reason, keep=True)

    def _suspend_result(self, upload: ResultUpload) -> bool:
        """Keep a broken-off upload's whole tensors for its collaborator to resume; False (it
        is aborted) when its round is over."""
        key = (upload.collaborator, upload.task)
        with self._lock:
            self._forget_upload(upload)
            state = self.round
            if (
                self.done
                or self.stopping  # a restarted aggregator keeps nothing
                or state.number != upload.round
                or upload.collaborator in state.stragglers
                or upload.task in state.done.get(upload.collaborator, set())
            ):
                return False
            earlier = self._suspended.pop(key, None)
            if earlier is not None and earlier is not upload:
                earlier.discard()
            upload.suspended = True
            self._suspended[key] = upload
            self._changed.notify_all()
            return True

    def _discard_suspended(self) -> None:
        """The round ended: uploads that broke off in it will not be resumed (lock held)."""
        kept, self._suspended = self._suspended, {}
        self._settling.clear()
        for upload in kept.values():
            upload.discard()

    def discard_kept(self) -> None:
        """The aggregator stops: delete what it kept of uploads that broke off (a restarted
        aggregator keeps nothing; the collaborators send those results whole)."""
        with self._lock:
            self._discard_suspended()

    def _check_layout(
        self,
        upload: ResultUpload,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        delta: bool,
    ) -> None:
        """Refuse a tensor the global model has not, or of another shape or dtype."""
        where = f"{upload.collaborator!r}, task {shown(upload.task)}, round {upload.round}"
        reference = self.global_model.get(name)
        if self.accept_optimizer_state and name.startswith(OPTIMIZER_PREFIX):
            if not delta:
                # optimizer state has no trusted reference (the first round's comes from the
                # collaborators themselves): the layout most results share is aggregated at
                # the round's end (TaskUpdates.layout); its size is bounded as it arrives
                return
            if reference is None:
                raise ProtocolError(
                    "FX-DATA-016", f"delta for {shown(name)} from {where} has no base tensor"
                )
        elif reference is None:
            raise ProtocolError(
                "FX-DATA-013",
                f"unknown tensor {shown(name)} from {where}: not part of the global model",
                "the collaborator's model must have the same layers as the aggregator's",
            )
        ref_shape, ref_dtype = reference.shape, reference.dtype
        if shape != ref_shape:
            raise ProtocolError(
                "FX-DATA-014",
                f"tensor {shown(name)} from {where} has shape {shape}, expected {ref_shape}",
                "the collaborator's model must match the plan's initial model",
            )
        if dtype != ref_dtype:
            raise ProtocolError(
                "FX-DATA-015",
                f"tensor {shown(name)} from {where} has dtype {dtype}, expected {ref_dtype}",
                "the collaborator's model must match the plan's initial model",
            )

    def _warn_if_partial(self, upload: ResultUpload) -> None:
        """Say once per collaborator and task when a result of a task that updates the model
        lacks some of the model's tensors: they are averaged without it, which is rarely meant."""
        key = (upload.collaborator, upload.task)
        if upload.task not in self.round.accumulators or key in self._partial_warned:
            return
        weights = [n for n in self.global_model if not n.startswith(OPTIMIZER_PREFIX)]
        missing = [n for n in weights if n not in upload.names]
        if missing and not upload.names:
            self._partial_warned.add(key)
            spec = self.tasks.get(upload.task)
            log.warning(
                "%s's result for %s holds no model tensors, so it counts in no average: "
                "fedrun treats %s as a training task (function %r, no `apply` in its kwargs); "
                "if it only validates, give it `apply: global` (or `local`) in the plan (said "
                "once per collaborator)",
                upload.collaborator,
                upload.task,
                upload.task,
                spec.function if spec else "?",
            )
        elif missing:
            self._partial_warned.add(key)
            log.warning(
                "%s's result for %s lacks %d of the model's %d tensors (e.g. %r): those are "
                "averaged without it (said once per collaborator)",
                upload.collaborator,
                upload.task,
                len(missing),
                len(weights),
                missing[0],
            )

    def optimizer_state_budget(self) -> tuple[int, int]:
        """Most optimizer-state bytes and tensors one result may carry: a multiple
        (:data:`OPTIMIZER_STATE_FACTOR`) of the global model's own weights, plus slack."""
        model = self.global_model
        cached = self._optimizer_budget
        if cached is None or cached[0] is not model:
            weights = [a for n, a in model.items() if not n.startswith(OPTIMIZER_PREFIX)]
            nbytes = sum(int(a.nbytes) for a in weights)
            cached = (
                model,
                OPTIMIZER_STATE_FACTOR * nbytes + (1 << 20),
                OPTIMIZER_STATE_FACTOR * len(weights) + 64,
            )
            self._optimizer_budget = cached
        return cached[1], cached[2]

    def _check_tensor(
        self, upload: ResultUpload, name: str, array: np.ndarray, delta: bool
    ) -> None:
        self._check_layout(upload, name, array.shape, array.dtype, delta)
        where = f"{upload.collaborator!r}, task {shown(upload.task)}, round {upload.round}"
        if array.dtype.kind == "f" and not all_finite(array):
            raise ProtocolError(
                "FX-DATA-010",
                f"tensor {shown(name)} from {where} holds NaN or infinite values",
                "the collaborator's training diverged; lower its learning rate",
            )

    def _commit_result(self, upload: ResultUpload, spool: Path | None, nbytes: int) -> None:
        result = AcceptedResult(
            round=upload.round,
            collaborator=upload.collaborator,
            task=upload.task,
            data_size=upload.data_size,
            metrics=upload.metrics,
            spool_path=str(spool) if spool else "",
            tensor_bytes=nbytes,
            raw_bytes=upload.raw_bytes,
        )
        with self._lock:
            state = self.round
            if upload.dropped or self.stopping:
                if spool:
                    spool.unlink(missing_ok=True)
                self._changed.notify_all()  # a resume may wait for this upload to settle
                raise upload.dropped_error() if upload.dropped else self.stopping_error()
            self._forget_upload(upload)
            if self.done or state.number != upload.round or upload.collaborator in state.stragglers:
                if spool:
                    spool.unlink(missing_ok=True)
                raise ProtocolError(
                    "FX-ROUND-002",
                    f"result of {upload.collaborator!r} for round {upload.round} arrived after the "
                    "round closed",
                    "nothing to do: the collaborator joins the next round",
                )
            if not self.state_store.record_result(result):
                raise ProtocolError(
                    "FX-ROUND-005",
                    f"duplicate result from {upload.collaborator!r} for task {shown(upload.task)}",
                )
            failpoints.hit("result_recorded")
            self._apply_result(result, replay=False)
            self._maybe_close_round()

    def _abort_result(self, upload: ResultUpload) -> None:
        with self._lock:
            self._forget_upload(upload)
            self._changed.notify_all()

    def _forget_upload(self, upload: ResultUpload) -> None:
        key = (upload.collaborator, upload.task)
        if self._uploads.get(key) is upload:
            del self._uploads[key]
            self.round.in_progress.discard(key)

    def _upload_progress(self) -> dict[str, float]:
        """When each collaborator's open uploads last delivered data (lock held): a result
        streaming in for longer than the collaborator timeout (a large model on a slow link)
        means the collaborator is there, though it makes no new request meanwhile."""
        progress: dict[str, float] = {}
        for upload in self._uploads.values():
            col = upload.collaborator
            progress[col] = max(progress.get(col, upload.last_progress), upload.last_progress)
        return progress

    def _remind_of_waiting(self, now: float) -> None:
        """Say again, every WAITING_REMINDER_SECONDS, that the round waits for collaborators
        reported gone (lock held): one line when they went left an operator reading the log's
        end later with no clue why nothing moves."""
        waited_for = sorted(
            c
            for c in self.reported_gone
            if c in self.round.participants and not self.round.finished(c)
        )
        if not waited_for:
            self._reminded_at = None
            return
        if self._reminded_at is None:
            self._reminded_at = now  # the "gone" line was just said
            return
        if now - self._reminded_at < WAITING_REMINDER_SECONDS:
            return
        self._reminded_at = now
        log.warning(
            "round %d still waits for %s (open for %.0f min): start %s again, or give the "
            "plan a straggler_handling_policy (e.g. PercentageBasedStragglerHandling) so rounds "
            "close without them and restart the aggregator (it resumes the round)",
            self.round_num,
            ", ".join(waited_for),
            (now - self.round.opened_at) / 60,
            "it" if len(waited_for) == 1 else "them",
        )

    def _drop_stalled_uploads(self, now: float) -> None:
        """Give up on uploads that sent nothing for too long (lock held): a peer that keeps its
        stream open but sends no data must not hold the round open (a cut-off policy waits for
        results already streaming in, and only for those that move) nor a server thread."""
        state = self.round
        may_close = self.policy.round_may_close(
            state.finished_count, len(state.participants), state.started_at, now
        )
        limit = (
            min(self.collaborator_timeout, UPLOAD_STALL_SECONDS)
            if may_close
            else self.collaborator_timeout
        )
        for upload in list(self._uploads.values()):
            idle = now - upload.last_progress
            if idle > limit:
                log.warning(
                    "round %d: dropped %s's upload of %s: no data for %.0f s (it may send the "
                    "result again%s)",
                    state.number,
                    upload.collaborator,
                    upload.task,
                    idle,
                    " while the round is open" if not may_close else "",
                )
                self._drop_keeping(upload, f"no data for {idle:.0f} s")

    def _retains(self, task: str) -> bool:
        return bool(getattr(self.aggregation_functions.get(task), "needs_all_updates", True))

    def _apply_result(self, result: AcceptedResult, replay: bool) -> None:
        """Count an accepted result in the round: metrics, bytes, progress (lock held); its
        tensors stay in the spool until the round closes."""
        state = self.round
        if result.task in state.done.get(result.collaborator, set()):
            return
        state.accepted.append(result)
        for metric, value in result.metrics.items():
            self.metrics.emit(state.number, result.collaborator, result.task, metric, value)
        state.count_metrics(result)
        state.bytes_received += result.tensor_bytes
        state.raw_bytes += result.raw_bytes
        if result.tensor_bytes:
            self.metrics.emit(
                state.number,
                result.collaborator,
                "communication",
                "bytes_sent",
                result.tensor_bytes,
            )
        if not replay:
            log.debug("accepted %s/%s round %d", result.collaborator, result.task, state.number)
        if state.mark_done(result.collaborator, result.task):
            log.info(
                "round %d: %s finished its tasks (%d/%d)",
                state.number,
                result.collaborator,
                state.finished_count,
                len(state.participants),
            )
            if state.last:
                self.released.add(result.collaborator)
        # no wake-up for the long polls here: a result gives no one new tasks; the round's end
        # (or an aborted upload, whose task is pending again) does

    # ------------------------------------------------------------------ stopping
    def begin_stop(self, timeout: float) -> bool:
        """Take no more results and close no more rounds (the process stops). Waits up to
        ``timeout`` seconds for a round's end in progress (it holds the aggregator's lock while
        it saves the new model and commits); False when it is still running."""
        if not self._lock.acquire(timeout=timeout):
            return False
        try:
            self.stopping = True
            self._changed.notify_all()
        finally:
            self._lock.release()
        return True

    def stopping_error(self) -> StateError:
        """Why a result is not taken while the aggregator stops (the collaborator retries)."""
        return StateError(
            "FX-STATE-032",
            "the aggregator is stopping: the result was not taken",
            "nothing to do: the collaborator sends it again once the aggregator is started again",
        )

    # ------------------------------------------------------------------ round end
    def _maybe_close_round(self) -> None:
        if self.stopping:
            return  # the results are stored: the round closes when the aggregator starts again
        state = self.round
        total = len(state.participants)
        done = state.finished_count
        if done >= total or self.policy.round_may_close(
            done, total, state.started_at, self.clock()
        ):
            if state.in_progress and done < total:
                return  # a result is streaming in; close once it lands or fails
            self._close_round()

    def tick(self) -> float | None:
        """Check cut-off deadlines and silent collaborators; returns the next deadline.

        Raises the error a round's end failed with (:attr:`broken`): the serving loop stops."""
        with self._lock:
            if self.broken is not None:
                raise self.broken
            if self.done:
                self._check_finished()
                return None
            now = self.clock()
            uploading = self._upload_progress()
            for col in self.collaborators:
                seen = max(
                    (t for t in (self.last_seen.get(col), uploading.get(col)) if t is not None),
                    default=None,
                )
                if (
                    col in self.reported_gone
                    or col in self.quit_sent
                    or self.round.finished(col)
                    or now - (seen if seen is not None else self.started_at)
                    <= self.collaborator_timeout
                ):
                    continue
                self.reported_gone.add(col)
                if seen is None:
                    log.warning(
                        "collaborator %s has not connected in the %.0f s since the aggregator "
                        "started (round %d waits for it unless the straggler policy closes the "
                        "round; remove it from plan/cols.yaml if it is not part of the federation)",
                        col,
                        now - self.started_at,
                        self.round_num,
                    )
                else:
                    log.warning(
                        "collaborator %s is gone: nothing heard from it for %.0f s (round %d waits for it "
                        "unless the straggler policy closes the round)",
                        col,
                        now - seen,
                        self.round_num,
                    )
            self._remind_of_waiting(now)
            self._drop_stalled_uploads(now)
            self._maybe_close_round()
            deadline = self.policy.deadline(self.round.started_at)
            return deadline

    def _close_round(self) -> None:
        if self.broken is not None:
            raise self.broken
        try:
            self._end_round()
        except BaseException as error:
            # the round's end failed partway (best model, new model or commit): what is in
            # memory (the global model, a rule's state, the best score) may be ahead of what is
            # committed, and closing the round again here would aggregate onto the new model.
            # The aggregator stops; started again, it resumes from the last commit
            stop: BaseException = error
            if isinstance(error, Exception) and not isinstance(error, (OSError, FedrunError)):
                # a fault of the aggregator's own (its traceback goes to the log): still a round
                # the next start finishes from its saved results, so the collaborators, told it
                # is unavailable, wait for it instead of giving up
                log.error("round %d failed at the aggregator", self.round.number, exc_info=error)
                stop = StateError(
                    "FX-STATE-033",
                    f"round {self.round.number} could not be finished: {error}",
                    "see the traceback in logs/aggregator.log, then start the aggregator again "
                    "with the same command: it resumes the round from its saved results",
                )
                stop.__cause__ = error
            if isinstance(error, OSError):
                # reading a saved result back (an I/O error...): a state error like any other
                # of the disk, said with what to do, not a file error of whatever command
                stop = StateError(
                    "FX-STATE-005",
                    f"cannot use {error.filename or 'a file'} ({error.strerror or error}) to "
                    f"finish round {self.round.number}",
                    "check the disk (free space, errors in the system log), then start the "
                    "aggregator again with the same command: it resumes the round from its "
                    "saved results",
                )
                stop.__cause__ = error
            self.broken = stop
            if isinstance(stop, Exception):
                log.error(
                    "round %d could not be finished, the aggregator stops: %s",
                    self.round.number,
                    stop.render().replace("\n  fix: ", "; fix: ")
                    if isinstance(stop, FedrunError)
                    else stop,
                )
            if stop is error:
                raise
            raise stop from error

    def _end_round(self) -> None:
        state = self.round
        stragglers = [c for c in state.participants if not state.finished(c)]
        if stragglers:
            state.stragglers.update(stragglers)
            log.warning(
                "round %d closed without waiting for its stragglers: %s",
                state.number,
                ", ".join(stragglers),
            )
        summary_metrics: dict[str, float] = {}
        for (task, metric), (wsum, weight, count) in sorted(state.metric_sums.items()):
            value = wsum / weight if weight > 0 else float("nan")
            if weight <= 0 and count:
                continue
            summary_metrics[f"{task}/{metric}"] = value
            self.metrics.emit(state.number, "aggregator", task, metric, value)
        if state.bytes_received:
            summary_metrics["communication/bytes_received"] = float(state.bytes_received)
            self.metrics.emit(
                state.number, "aggregator", "communication", "bytes_received", state.bytes_received
            )
            if state.raw_bytes:
                ratio = state.bytes_received / state.raw_bytes
                summary_metrics["communication/compression_ratio"] = ratio
                self.metrics.emit(
                    state.number, "aggregator", "communication", "compression_ratio", ratio
                )
        self._save_best(state.number, summary_metrics)
        aggregation_started = self.clock()
        updated, last_file = self._aggregate(state)
        aggregation_seconds = self.clock() - aggregation_started
        # a round that changed nothing needs no final validation
        finished_experiment = state.last or (
            state.number + 1 >= self.rounds_to_train and not updated
        )
        failpoints.hit("round_end_models_saved")
        self.state_store.finish_round(
            state.number,
            self.best_score,
            self.best_round,
            finished_experiment,
            next_model=self.global_model,
            aggregation_state=flatten_rule_states(self.rule_states()),
            next_model_file=last_file,
        )
        failpoints.hit("round_end_committed")
        self._last_closed = (
            state.number,
            {c: set(t) for c, t in state.done.items()},
        )
        self._discard_suspended()
        self.spool.retire_round(state.number)
        summary = RoundSummary(
            number=state.number,
            metrics=summary_metrics,
            # the round ends once its model is saved and committed, not when its results are in
            duration=self.clock() - state.opened_at,
            aggregation_seconds=aggregation_seconds,
            collaborators=[c for c in state.participants if state.finished(c)],
            stragglers=stragglers,
            bytes_received=state.bytes_received,
            final_validation=state.final_validation,
            resumed=state.resumed,
            cpu_seconds=(
                self.cpu_clock() - state.cpu_at_open
                if self.cpu_clock is not None and state.cpu_at_open is not None
                else None
            ),
        )
        self.round_history.append(summary)
        del self.round_history[:-ROUND_HISTORY_KEPT]
        self.metrics.forget_before(state.number + 1)
        label = "final validation" if state.final_validation else f"round {state.number}"
        items = list(summary_metrics.items())
        listed = ", ".join(
            f"{k}={v:.0f}" if k.startswith("communication/bytes") else f"{k}={v:.4f}"
            for k, v in items[:METRICS_PER_LOG_LINE]
        )
        if len(items) > METRICS_PER_LOG_LINE:
            listed += f" and {len(items) - METRICS_PER_LOG_LINE} more in logs/metrics.jsonl"
        cpu = "" if summary.cpu_seconds is None else f", aggregator CPU {summary.cpu_seconds:.2f} s"
        log.info(
            "%s finished in %.2f s%s (%s received, new model in %.2f s%s): %s",
            label,
            summary.duration,
            " since the restart" if state.resumed else "",
            human_bytes(summary.bytes_received),
            aggregation_seconds,
            cpu,
            listed or "no metrics",
        )
        for listener in self.listeners:
            listener(summary)
        self.round_num = state.number + 1
        if finished_experiment:
            self.done = True
            self.done_at = self.clock()
            self.spool.drop_free()
            self.model_sink.finish(self.best_round)
            log.info("experiment finished after %d rounds", self.rounds_to_train)
            self._check_finished()
        else:
            self.round = self._open_round(self.round_num)
            if self.round.final_validation:
                log.info("validating the final model (round %d)", self.round_num)
            else:
                self.announce_round()
        self._changed.notify_all()

    def announce_round(self) -> None:
        """Log "round N started" for the round in progress, once per round (a resume that
        closes the saved round at once opens the next one before the server reports it)."""
        if self._announced != self.round_num:
            self._announced = self.round_num
            if self.round.resumed:
                log.info("round %d resumed (it began before the restart)", self.round_num)
            else:
                log.info("round %d started", self.round_num)

    def _save_best(self, round_num: int, summary_metrics: Mapping[str, float]) -> None:
        """Save the round's input model as ``best`` when its validation score improved."""
        score_key = self._score_key(summary_metrics)
        if score_key is None and self._best_metric_chosen and not self._best_metric_warned:
            global_tasks = set(self._global_validation_tasks())
            metric_names = [k for k in summary_metrics if k.partition("/")[0] in global_tasks]
            if metric_names:  # a round that reported metrics, none of them the chosen one
                self._best_metric_warned = True
                log.warning(
                    "aggregator.settings.best_model_metric %r is not among the round's metrics "
                    "(%s): no best model is saved; set it to one of them",
                    self.best_metric,
                    ", ".join(sorted(metric_names)),
                )
        if score_key is None or not self.save_models:
            return
        score = summary_metrics[score_key]
        if self._better(score, score_key):
            self.best_score, self.best_round = score, round_num
            self.model_sink.save_best(self.global_model, round_num, score, score_key)
            log.info("round %d: new best model saved (%s = %.4f)", round_num, score_key, score)

    def _aggregate(self, state: RoundState) -> tuple[bool, Path | None]:
        """Form the new global model from the round's spooled results and save it; returns
        whether the model changed and the file it was saved to (if any)."""
        updates: dict[str, TaskUpdates] = {}
        try:
            for task, acc in state.accumulators.items():
                results = [r for r in state.accepted if r.task == task]
                fn = self.aggregation_functions[task]
                updates[task] = TaskUpdates(
                    acc,
                    results,
                    self.global_model,
                    self._retains(task),
                    fresh=functools.partial(fn.begin_round, state.number, self.global_model),
                )
            if len(updates) == 1 and self.save_models and self.model_sink.writes_last:
                ((task, only),) = updates.items()
                if only.accumulator.finishes_by_name:
                    return self._aggregate_to_file(state.number, task, only)
            return self._aggregate_in_memory(state, updates)
        finally:
            for task_updates in updates.values():
                task_updates.close()

    def _aggregate_to_file(
        self, round_num: int, task: str, updates: TaskUpdates
    ) -> tuple[bool, Path | None]:
        """Aggregate name by name straight into the new ``last`` file: one tensor's sums are
        in memory at a time, and the aggregator then serves the model from that file."""
        model_in = self.global_model
        produced = [n for n in updates.names() if n in model_in or n.startswith(OPTIMIZER_PREFIX)]
        if not produced:
            return False, None
        wanted = set(produced)
        stale = _stale_optimizer_state(model_in, wanted)
        names = [n for n in model_in if n not in stale]
        names += [n for n in produced if n not in model_in]

        def tensors() -> Iterator[tuple[str, np.ndarray | TensorPieces]]:
            for name in names:
                if name not in wanted:
                    yield name, model_in[name]
                    continue
                value = updates.finished(name)
                yield name, value
                if isinstance(value, np.ndarray):
                    POOL.give(value)  # written out: its memory serves the next name
                failpoints.hit("round_end_model_partly_written")

        try:
            last_file = self.model_sink.save_last(
                TensorSequence(len(names), tensors()), round_num + 1
            )
        except ValueError as exc:
            raise self._rule_failed(round_num, task, exc) from exc
        if last_file is None:
            raise RuntimeError(f"{type(self.model_sink).__name__}.save_last wrote no file")
        self.global_model = open_model_view(last_file).tensors
        return True, last_file

    def _rule_failed(self, round_num: int, task: str, exc: ValueError) -> PlanError:
        """A task's aggregation rule could not aggregate the round's results: the aggregator
        stops (a round that changed nothing must not pass for a trained one)."""
        rule = type(self.aggregation_functions.get(task)).__name__
        return PlanError(
            "FX-ROUND-020",
            f"round {round_num}: the aggregation rule {rule} of task {shown(task)} failed: {exc}",
            "give the task a rule that suits this federation (tasks.<task>.aggregation_type), "
            "then start over with `fx aggregator start --reset-state` (a changed plan cannot "
            "resume this run; the models of the rounds before are moved to save/previous-*)",
        )

    def _aggregate_in_memory(
        self, state: RoundState, updates: Mapping[str, TaskUpdates]
    ) -> tuple[bool, Path | None]:
        """Aggregate every task whole (several training tasks, rules that finish all names
        together, or no model file), then save the model."""
        model_in = self.global_model
        new_model = dict(model_in)
        updated = False
        for task, task_updates in updates.items():
            try:
                for name in task_updates.names():
                    task_updates.fold(name)
                result = task_updates.accumulator.result()
            except ValueError as exc:
                raise self._rule_failed(state.number, task, exc) from exc
            produced = {n for n in result if n in new_model or n.startswith(OPTIMIZER_PREFIX)}
            for name in _stale_optimizer_state(new_model, produced):
                del new_model[name]
            for name in produced:
                new_model[name] = result[name]
                updated = True
        last_file: Path | None = None
        if updated:
            self.global_model = new_model
            if self.save_models:
                last_file = self.model_sink.save_last(new_model, state.number + 1)
            if last_file is not None:
                # serve the new model from its file: the aggregator keeps no resident copy, and
                # the memory the results were finished in goes back to the pool for next round
                self.global_model = open_model_view(last_file).tensors
                del new_model
                for acc in state.accumulators.values():
                    acc.release()
        return updated, last_file

    def rule_states(self) -> dict[str, dict[str, dict[str, np.ndarray]]]:
        """State of stateful aggregation rules (FedOpt moments), keyed by task."""
        out = {}
        for task, fn in self.aggregation_functions.items():
            state_dict = getattr(fn, "state_dict", None)
            if callable(state_dict):
                state = state_dict()
                if state:
                    out[task] = state
        return out

    def _score_key(self, metrics: Mapping[str, float]) -> str | None:
        if not self.best_metric:
            return None
        if self.best_metric.endswith("/"):
            for key in metrics:
                if key.startswith(self.best_metric):
                    return key
            return None
        return self.best_metric if self.best_metric in metrics else None

    def _better(self, score: float, key: str) -> bool:
        if not math.isfinite(score):
            return False
        mode = self.best_model_mode
        if mode is None:
            mode = "min" if looks_like_a_loss(key) else "max"
            self.best_model_mode = mode
            log.info(
                "best model: the %s %s (best_model_mode %s, from the metric's name; set "
                "aggregator.settings.best_model_mode to choose)",
                "lowest" if mode == "min" else "highest",
                key,
                mode,
            )
        if self.best_score is None:
            return True
        return score < self.best_score if mode == "min" else score > self.best_score

    def _check_finished(self) -> None:
        left = self.quit_sent | self.released | self._gone_after_done()
        if self.done and set(self.collaborators) <= left:
            self.finished_event.set()

    def say_farewell(self, finished: ExperimentFinished, quiet: float, at_most: float) -> None:
        """Serve an experiment that already finished, whose aggregator stopped before every
        collaborator heard it: each one that calls is told to stop (a result it resends is
        refused as of a closed round), until nobody called for ``quiet`` seconds, every
        collaborator was told, or ``at_most`` seconds passed."""
        with self._lock:
            self.done = True
            self.done_at = self.clock()
            self.farewell_of = finished
            self._farewell = (quiet, at_most)

    def _gone_after_done(self) -> set[str]:
        """Collaborators the end no longer waits for: silent too long, or never seen at all
        within END_GRACE_SECONDS of the end."""
        now = self.clock()
        if self._farewell is not None:
            # a collaborator still retrying calls at least every client_reconnect_interval
            quiet, at_most = self._farewell
            began = self.done_at if self.done_at is not None else now
            last_call = max([began, *self.last_seen.values()])
            over = now - last_call >= quiet or now - began >= at_most
            return set(self.collaborators) if over else set()
        grace_over = now - (self.done_at or now) >= END_GRACE_SECONDS
        return {
            c
            for c in self.collaborators
            if (c not in self.last_seen and grace_over)
            or (c in self.last_seen and now - self.last_seen[c] > self.collaborator_timeout)
        }

    def wait_finished(self, timeout: float | None = None) -> bool:
        return self.finished_event.wait(timeout)


def _stale_optimizer_state(model: Iterable[str], produced: set[str]) -> set[str]:
    """The global model's optimizer-state tensors that this round's results, which brought
    optimizer state, no longer hold: their optimizer state replaces the old one whole, so names
    no optimizer has any more do not pile up in the model round after round."""
    if not any(n.startswith(OPTIMIZER_PREFIX) for n in produced):
        return set()
    return {n for n in model if n.startswith(OPTIMIZER_PREFIX) and n not in produced}


#: words (of a metric's name) that mark a loss or an error: lower is better
LOSS_WORDS = frozenset(
    {
        "loss",
        "error",
        "err",
        "mse",
        "mae",
        "rmse",
        "mape",
        "msle",
        "nll",
        "perplexity",
        "entropy",
        "crossentropy",
        "hinge",
        "kld",
        "divergence",
    }
)


def looks_like_a_loss(metric: str) -> bool:
    """True when a metric's name (``task/metric``) names a loss or an error (``val_mse``,
    ``mean_squared_error``, ``cross_entropy``...), whose best value is the lowest."""
    name = metric.rpartition("/")[2].lower()
    return any(word in LOSS_WORDS for word in re.split(r"[^a-z]+", name))


def global_validation_tasks(tasks: Mapping[str, TaskSpec], assigner: Assigner) -> list[str]:
    """The assigner's tasks that validate the global model, in its order."""
    return [t for t in assigner.all_tasks() if t in tasks and tasks[t].validates_global_model]


def check_best_model_metric(
    metric: str | None, tasks: Mapping[str, TaskSpec], assigner: Assigner
) -> None:
    """``FX-PLAN-038`` unless ``metric`` (``task/metric``) is a metric of a task that validates
    the global model: ``best.pbuf`` is a global model, labelled with the score it had."""
    if not metric:
        return
    task, _, name = metric.partition("/")
    spec = tasks.get(task)
    if name and spec is not None and spec.validates_global_model:
        return
    choices = global_validation_tasks(tasks, assigner)
    if not name:
        problem = "names no task: it is written task/metric"
    else:
        problem = "is not a metric of a task that validates the global model" + (
            f" ({task!r} {spec.kind})" if spec is not None else f" (no task {task!r})"
        )
    example = f"{choices[0]}/{name or task}" if choices else "aggregated_model_validation/accuracy"
    among = ", ".join(choices) or "the tasks with `apply: global`"
    raise PlanError(
        "FX-PLAN-038",
        f"aggregator.settings.best_model_metric {metric!r} {problem}",
        f"write task/metric, the task one of {among} and the metric a name its validation "
        f"reports (logs/metrics.jsonl lists them), e.g. {example}: the best model is a global "
        "model, and only those tasks score it",
    )


def require_collaborators(collaborators: Sequence[str], source: object = "plan/cols.yaml") -> None:
    """``FX-PLAN-021`` when no collaborator is authorized: a federation of nobody never ends."""
    if not collaborators:
        from fedrun.errors import PlanError

        raise PlanError(
            "FX-PLAN-021",
            f"no collaborator is authorized ({source} lists none)",
            "certify collaborators with `fx collaborator certify`, or add names to cols.yaml",
        )
