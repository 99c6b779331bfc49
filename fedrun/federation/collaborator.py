"""The Collaborator: a pure task loop, driven by an aggregator connection.

It asks for tasks (a long poll), fetches the global model of the round once, runs each task
through its task runner, and sends back metrics and tensors (deltas when ``use_delta_updates``).
It never imports an ML framework or the network stack: both come in through small interfaces.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

import numpy as np

from fedrun import failpoints
from fedrun.buffers import POOL
from fedrun.constants import OPTIMIZER_PREFIX
from fedrun.errors import PlanError, ProtocolError, RoundClosed, shown
from fedrun.federation.tasks import (
    OPT_TREATMENTS,
    TaskAssignment,
    TaskResult,
    TaskRunnerInterface,
    TaskSpec,
    sample_count,
)
from fedrun.federation.tensor_store import TensorStore
from fedrun.protocol.codec import ExpectedModel
from fedrun.seeding import seed_task
from fedrun.storage.finished_results import FinishedResult, FinishedResults
from fedrun.units import human_bytes

log = logging.getLogger("fedrun.collaborator")

#: a model download taking at least this long is logged as information (else for debugging)
DOWNLOAD_LINE_SECONDS = 1.0
#: an answer with no tasks that comes back sooner than this is followed by a pause (the
#: aggregator holds a request for tasks until it has some: only a faulty one answers at once)
QUICK_ANSWER_SECONDS = 0.5
#: the pause after the first quick empty answer, doubled after each one in a row, up to the most
EMPTY_ANSWER_PAUSE_SECONDS = 0.05
EMPTY_ANSWER_PAUSE_MAX_SECONDS = 2.0
#: the pause before asking for tasks again after rounds closed twice in a row under this
#: collaborator with no task done in between, doubled each time after, up to the most
ROUND_CLOSED_PAUSE_SECONDS = 0.1
ROUND_CLOSED_PAUSE_MAX_SECONDS = 5.0


def doubling_pause(step: int, first: float, most: float) -> float:
    """The ``step``-th (from 0) of pauses that start at ``first`` and double up to ``most``."""
    return min(most, first * 2.0 ** min(step, 64))


class AggregatorConnection(Protocol):
    """What the collaborator needs from its link to the aggregator (gRPC or in-process)."""

    def get_tasks(self) -> TaskAssignment: ...

    def get_global_model(
        self, round_num: int, expected: ExpectedModel | None = None
    ) -> dict[str, np.ndarray]:
        """The global model of ``round_num``; its tensors held to ``expected`` as they come."""
        ...

    def submit(
        self,
        round_num: int,
        task: str,
        data_size: int,
        metrics: Mapping[str, float],
        tensors: Mapping[str, np.ndarray],
        deltas: Collection[str],
        result_id: str = "",
    ) -> int:
        """Send one result (``deltas`` names the tensors sent as trained - global; ``result_id``
        names a result kept on disk, whose upload by an earlier process may be resumed);
        returns the payload bytes sent."""
        ...


class Collaborator:
    """Runs the tasks the aggregator hands out until told to stop.

    Parameters
    ----------
    collaborator_name:
        This collaborator's name (its certificate's common name).
    connection:
        Link to the aggregator.
    task_runner:
        The model and training code (PyTorch, Keras or user-written).
    tasks:
        The plan's tasks by name.
    use_delta_updates:
        Send ``trained - global`` instead of the trained weights.
    opt_treatment:
        RESET, CONTINUE_LOCAL or CONTINUE_GLOBAL.
    db_store_rounds:
        Rounds of local tensors kept in memory.
    rounds_to_train:
        The plan's rounds: the aggregator may not assign rounds beyond them (its final
        validation is round ``rounds_to_train``). None: not checked.
    finished:
        Where results of the running round are kept, so that this collaborator, started again
        in the middle of a round, sends them instead of computing them again. None: nowhere.
    """

    def __init__(
        self,
        *,
        collaborator_name: str,
        connection: AggregatorConnection,
        task_runner: TaskRunnerInterface,
        tasks: Mapping[str, TaskSpec],
        use_delta_updates: bool = False,
        lossy_updates: bool = False,
        opt_treatment: str = "RESET",
        db_store_rounds: int = 1,
        rounds_to_train: int | None = None,
        finished: FinishedResults | None = None,
        **ignored: Any,
    ) -> None:
        if opt_treatment not in OPT_TREATMENTS:
            raise PlanError(
                "FX-PLAN-012",
                f"collaborator.settings.opt_treatment is {opt_treatment!r}",
                f"use one of {', '.join(OPT_TREATMENTS)}",
            )
        self.name = collaborator_name
        self.connection = connection
        self.runner = task_runner
        self.tasks = dict(tasks)
        self.use_delta_updates = bool(use_delta_updates)
        # a lossy compression pipeline only ever carries updates, never whole weights
        self.send_deltas = self.use_delta_updates or bool(lossy_updates)
        self.opt_treatment = opt_treatment
        self.store = TensorStore(db_store_rounds)
        self.runner.set_optimizer_treatment(opt_treatment)
        self.rounds_done: list[int] = []
        self.rounds_to_train = rounds_to_train
        self.finished = finished
        #: tasks whose results the aggregator acknowledged
        self.tasks_done = 0
        self.sleep: Callable[[float], None] = time.sleep
        self._expected: ExpectedModel | None = None
        #: whether this collaborator validated the final model (after the last training round)
        self.final_validation_done = False
        self.bytes_sent = 0
        self.idle_seconds = 0.0
        #: seconds the last task's result took to send (retries included)
        self.send_seconds = 0.0
        #: seconds the last task waited for the global model to download (retries included)
        self.fetch_seconds = 0.0
        self._started = False
        for name, spec in self.tasks.items():
            if not callable(getattr(task_runner, spec.function, None)):
                raise PlanError(
                    "FX-PLAN-016",
                    f"tasks.{name}.function: {type(task_runner).__name__} has no method "
                    f"{spec.function!r}",
                    "name a method the task runner defines (train_task, validate_task, ...)",
                )

    def work(self) -> None:
        """Work until the aggregator says the experiment is over, asking for new tasks when a
        round closed while this collaborator worked on it."""
        closed_in_a_row = 0
        while True:
            done_before = self.tasks_done
            try:
                self.run()
                return
            except RoundClosed as closed:
                log.info(
                    "round closed while working (%s); asking for new tasks",
                    closed.message.splitlines()[0],
                )
                # a round closes under a collaborator once in a while; again and again with no
                # task done in between, the aggregator is faulty: ask at a slowing pace
                progressed = self.tasks_done > done_before
                closed_in_a_row = 0 if progressed else closed_in_a_row + 1
                if closed_in_a_row > 1:
                    self.sleep(
                        doubling_pause(
                            closed_in_a_row - 2,
                            ROUND_CLOSED_PAUSE_SECONDS,
                            ROUND_CLOSED_PAUSE_MAX_SECONDS,
                        )
                    )

    def run(self) -> None:
        """Work until the aggregator says the experiment is over (called again after a round
        closed while it worked, see :meth:`work`)."""
        if not self._started:
            self._started = True
            log.info("collaborator %s started", self.name)
        quick_empty = 0
        while True:
            asked = time.monotonic()
            assignment = self.connection.get_tasks()
            if assignment.quit:
                log.info("collaborator %s: experiment finished, stopping", self.name)
                self._forget_finished(None)
                return
            if not assignment.tasks:
                if time.monotonic() - asked < QUICK_ANSWER_SECONDS:
                    self.sleep(
                        doubling_pause(
                            quick_empty, EMPTY_ANSWER_PAUSE_SECONDS, EMPTY_ANSWER_PAUSE_MAX_SECONDS
                        )
                    )
                    quick_empty += 1
                else:
                    quick_empty = 0
                continue
            quick_empty = 0
            log.debug(
                "round %d: tasks %s (asked %.2f s before)",
                assignment.round,
                ", ".join(assignment.tasks),
                time.monotonic() - asked,
            )
            self.idle_seconds += time.monotonic() - asked
            self.run_tasks(assignment)
            if assignment.last:
                # every result is acknowledged (kept on the aggregator's disk): waiting for the
                # slowest peer to hear "quit" would only keep this machine busy for nothing
                log.info("collaborator %s: its last tasks are in, stopping", self.name)
                self._forget_finished(None)
                return

    def _check_assignment(self, assignment: TaskAssignment) -> None:
        """Refuse an assignment the plan does not allow: this node's data is trained on only
        within the rounds and tasks every participant agreed to."""
        round_num = assignment.round
        last = self.rounds_to_train
        beyond = round_num < 0 or (
            last is not None
            and (round_num > last or (round_num == last and not assignment.final_validation))
        )
        if beyond:
            raise ProtocolError(
                "FX-ROUND-011",
                f"the aggregator assigned round {round_num}, outside the plan's rounds "
                f"(0 to {'?' if last is None else last - 1}, then the final validation)",
                "the aggregator runs another plan or is faulty: check that it runs this "
                "plan; this collaborator stops rather than work beyond what the plan agreed",
            )
        repeated = sorted(t for t, n in Counter(assignment.tasks).items() if n > 1)
        if repeated:
            raise ProtocolError(
                "FX-ROUND-012",
                f"the aggregator assigned {', '.join(shown(t) for t in repeated[:3])} more than "
                f"once in round {round_num}",
                "the aggregator is faulty: every task runs once per round",
            )
        for task_name in assignment.tasks:
            spec = self.tasks.get(task_name)
            if spec is None:
                raise PlanError(
                    "FX-PLAN-022",
                    f"the aggregator assigned task {shown(task_name)}, which this "
                    "collaborator's plan does not define",
                    "use the same plan on every node",
                )
            if assignment.final_validation and not spec.is_validation:
                raise ProtocolError(
                    "FX-ROUND-011",
                    f"the aggregator assigned {shown(task_name)}, which trains, in the final "
                    "validation",
                    "the aggregator runs another plan or is faulty: check that it runs this plan",
                )

    def run_tasks(self, assignment: TaskAssignment) -> None:
        """Run one round's tasks in order."""
        self._check_assignment(assignment)
        round_num = assignment.round
        self._forget_finished(round_num)  # an earlier round's results are moot
        label = "final validation" if assignment.final_validation else f"round {round_num}"
        for task_name in assignment.tasks:
            started = time.monotonic()
            self.fetch_seconds = 0.0
            sent = self.do_task(self.tasks[task_name], round_num, assignment.run)
            self.tasks_done += 1
            took = time.monotonic() - started
            # apart: the download and the send include any retries while the aggregator was out
            # of reach
            log.info(
                "%s: %s done in %.2f s, its result (%s) sent in %.2f s",
                label,
                task_name,
                took - self.send_seconds - self.fetch_seconds,
                human_bytes(sent),
                self.send_seconds,
            )
        self.store.clean_up()
        if assignment.final_validation:
            self.final_validation_done = True
        elif round_num not in self.rounds_done:
            self.rounds_done.append(round_num)

    def _global_model(self, round_num: int) -> dict[str, np.ndarray]:
        model = self.store.get(round_num, "global")
        if model is None:
            # the previous round's tensors would be dropped after this one anyway: drop them
            # now and let the download reuse their memory instead of faulting in fresh pages
            self.store.make_room(round_num, POOL)
            started = time.monotonic()
            if self._expected is None:
                self._expected = ExpectedModel.of(self.runner.get_tensor_dict(with_opt_vars=True))
            model = self.connection.get_global_model(round_num, self._expected)
            self.fetch_seconds = time.monotonic() - started
            # a download worth a line of its own on a slow link (the task's time leaves it out)
            log.log(
                logging.INFO if self.fetch_seconds >= DOWNLOAD_LINE_SECONDS else logging.DEBUG,
                "round %d: global model downloaded (%s in %.2f s)",
                round_num,
                human_bytes(sum(int(a.nbytes) for a in model.values())),
                self.fetch_seconds,
            )
            self.store.put(round_num, "global", model)
        return model

    def _forget_finished(self, round_num: int | None) -> None:
        if self.finished is not None:
            self.finished.forget_except(round_num)

    def do_task(self, spec: TaskSpec, round_num: int, run: str = "") -> int:
        """Run one task (of experiment run ``run``) and send its result; returns payload bytes
        sent (the time sending took is :attr:`send_seconds`)."""
        data_size, metrics, tensors, deltas, result_id = self._result(spec, round_num, run)
        started = time.monotonic()
        try:
            return self.connection.submit(
                round_num, spec.name, data_size, metrics, tensors, deltas, result_id
            )
        finally:
            self.send_seconds = time.monotonic() - started

    def _result(
        self, spec: TaskSpec, round_num: int, run: str = ""
    ) -> tuple[int, dict[str, float], dict[str, np.ndarray], set[str], str]:
        """Run one task: what its result sends (data size, metrics, tensors, delta names, and
        the id of a result kept on disk). A result kept from before this collaborator
        restarted is sent instead of computing it again."""
        # results are kept only when the aggregator names its run (an older one does not)
        finished = self.finished if run else None
        kept = finished.find(run, round_num, spec.name) if finished is not None else None
        if kept is not None:
            log.info(
                "round %d: %s was finished before this collaborator restarted: its result is "
                "sent, not computed again",
                round_num,
                spec.name,
            )
            return (
                *self._outcome(round_num, kept.data_size, kept.metrics, kept.tensors),
                kept.result_id,
            )
        function = getattr(self.runner, spec.function)
        if spec.uses_local_model:
            inputs = self.store.get(round_num, "trained")
            if inputs is None and finished is not None:
                training = [t for t, s in self.tasks.items() if not s.is_validation]
                inputs = finished.trained_model(run, round_num, training) or None
                if inputs is not None:
                    self.store.put(round_num, "trained", inputs)
            if inputs is None:
                log.warning(
                    "round %d: no locally trained model for %s (restarted after training?); "
                    "sending an empty result",
                    round_num,
                    spec.name,
                )
                return 0, {}, {}, set(), ""
        else:
            inputs = self._global_model(round_num)
        seed_task(round_num, spec.name, getattr(self.runner, "data_loader", None))
        started = time.monotonic()
        result = function(
            col_name=self.name, round_num=round_num, input_tensor_dict=inputs, **dict(spec.kwargs)
        )
        seconds = time.monotonic() - started
        if not isinstance(result, TaskResult):
            raise PlanError(
                "FX-PLAN-023",
                f"task runner method {spec.function!r} returned {type(result).__name__}, "
                "not a TaskResult",
                "return fedrun.TaskResult(metrics=..., tensors=..., data_size=...)",
            )
        tensors = dict(result.tensors)
        if self.opt_treatment != "CONTINUE_GLOBAL":
            tensors = {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)}
        metrics = {k: float(v) for k, v in result.metrics.items()}
        size = sample_count(
            result.data_size, f"task runner method {spec.function!r} reported data_size"
        )
        result_id = ""
        if finished is not None and finished.worth_keeping(
            seconds, sum(int(np.asarray(a).nbytes) for a in tensors.values())
        ):
            result_id = secrets.token_hex(8)
            finished.keep(
                run, FinishedResult(round_num, spec.name, size, metrics, tensors, result_id)
            )
            failpoints.hit("collaborator_result_kept")
        return (*self._outcome(round_num, size, metrics, tensors), result_id)

    def _outcome(
        self,
        round_num: int,
        data_size: int,
        metrics: dict[str, float],
        tensors: dict[str, np.ndarray],
    ) -> tuple[int, dict[str, float], dict[str, np.ndarray], set[str]]:
        """What a result sends: trained tensors are kept for the round's local validation,
        and sent as deltas when the plan says so."""
        deltas: set[str] = set()
        if tensors:
            self.store.put(round_num, "trained", tensors)
            if self.send_deltas:
                tensors, deltas = self._deltas(round_num, tensors)
        return data_size, metrics, tensors, deltas

    def _deltas(
        self, round_num: int, trained: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], set[str]]:
        """``trained - global`` for every float tensor the global model has; the rest (e.g.
        optimizer state not yet in the global model, integer counters) goes whole."""
        base = self._global_model(round_num)
        out: dict[str, np.ndarray] = {}
        names: set[str] = set()
        for name, value in trained.items():
            ref = base.get(name)
            if ref is not None and value.dtype.kind == "f" and ref.shape == value.shape:
                out[name] = (value - ref).astype(value.dtype)
                names.add(name)
            else:
                out[name] = value
        return out, names
