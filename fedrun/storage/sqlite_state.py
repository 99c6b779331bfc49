"""SqliteStateStore: the aggregator's durable state, so a killed aggregator resumes.

One SQLite file (WAL journal, ``synchronous=FULL``) holds the experiment's identity, the current
round, the best score, and every result accepted in the current round (its tensors live in a
spool file that was fsync'd before the row was committed). At the end of a round the next
round's global model, and any aggregation-rule state, are written to a checkpoint file *before*
one transaction switches the round, so after a crash at any instant either the old round (with
its accepted results, replayed on restart) or the new round (with its checkpoint) is visible.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedrun.errors import StateError
from fedrun.storage.model_file import load_model, open_model_view, save_model
from fedrun.storage.state_store import AcceptedResult, SavedState, StateStore, new_run_id

log = logging.getLogger("fedrun.aggregator")

SCHEMA_VERSION = 1
STATE_SEPARATOR = "::"


def unreadable_state(path: Path, exc: sqlite3.DatabaseError) -> StateError:
    """FX-STATE-011: the state file cannot be used; a full disk or an I/O error is not damage,
    and the fix must not be to throw the saved progress away."""
    text = str(exc).lower()
    if isinstance(exc, sqlite3.OperationalError) and ("full" in text or "disk i/o" in text):
        fix = (
            f"free space on (or repair) the file system of {path.parent}, then start again: "
            "the saved progress is kept"
        )
    else:
        fix = (
            "restore it from a backup, or start the experiment over with "
            "`fx aggregator start --reset-state` (this discards the saved progress)"
        )
    return StateError("FX-STATE-011", f"the aggregator state file {path} is unreadable: {exc}", fix)


class SqliteStateStore(StateStore):
    """State in ``path`` (``local_state/tensor.db``); checkpoints beside it.

    Parameters
    ----------
    path:
        The SQLite file (``aggregator.settings.persistent_db_path``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoint_dir = self.path.parent / "checkpoints"
        wal = self.path.with_name(self.path.name + "-wal")
        if self.path.is_file() and self.path.stat().st_size == 0 and not wal.exists():
            # SQLite reads an empty file as an empty database: say it, rather than start over
            # as if this were the first run
            log.warning(
                "the aggregator state file %s is empty: no saved progress in it, so the "
                "experiment starts from round 0 (restore it from a backup to resume instead)",
                self.path,
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.checkpoint_dir.mkdir(exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(
                """
                CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS results (
                    round INTEGER NOT NULL,
                    collaborator TEXT NOT NULL,
                    task TEXT NOT NULL,
                    data_size INTEGER NOT NULL,
                    metrics TEXT NOT NULL,
                    spool_path TEXT NOT NULL,
                    tensor_bytes INTEGER NOT NULL,
                    raw_bytes INTEGER NOT NULL DEFAULT 0,
                    PRIMARY KEY (round, collaborator, task)
                );
                """
            )
            version = self._get("schema_version")
            if version is None:
                self._set_many({"schema_version": str(SCHEMA_VERSION)})
            elif int(version) != SCHEMA_VERSION:
                raise StateError(
                    "FX-STATE-010",
                    f"{self.path} was written by another fedrun version (schema {version})",
                    "finish that experiment with its fedrun version, or start over with --reset-state",
                )
        except sqlite3.DatabaseError as exc:
            raise unreadable_state(self.path, exc) from exc
        except OSError as exc:
            raise StateError(
                "FX-STATE-012",
                f"cannot create the aggregator state file {self.path}: {exc.strerror}",
                "make local_state/ writable, or set aggregator.settings.persistent_db_path",
            ) from exc
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ helpers
    def _get(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_many(self, values: Mapping[str, str]) -> None:
        self._db.executemany(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            list(values.items()),
        )

    def checkpoint_path(self, round_num: int) -> Path:
        return self.checkpoint_dir / f"global_r{round_num}.pbuf"

    def state_path(self, round_num: int) -> Path:
        return self.checkpoint_dir / f"aggregation_r{round_num}.pbuf"

    # ------------------------------------------------------------------ contract
    def load(self) -> SavedState:
        with self._lock:
            try:
                plan_hash = self._get("plan_hash") or ""
                state = SavedState(
                    plan_hash=plan_hash,
                    round=int(self._get("round") or 0),
                    experiment_done=self._get("experiment_done") == "1",
                    best_score=_float_or_none(self._get("best_score")),
                    best_round=_int_or_none(self._get("best_round")),
                    finished_at=_float_or_none(self._get("finished_at")),
                    ended=self._get("ended") == "1",
                )
                rows = self._db.execute(
                    "SELECT round, collaborator, task, data_size, metrics, spool_path, tensor_bytes, raw_bytes "
                    "FROM results WHERE round = ? ORDER BY rowid",
                    (state.round,),
                ).fetchall()
            except sqlite3.DatabaseError as exc:
                raise unreadable_state(self.path, exc) from exc
        if not plan_hash:
            self._refuse_lost_progress()
        self._drop_stale_checkpoints(None if state.experiment_done else state.round)
        for row in rows:
            # a result whose spool file is gone or damaged is dropped by the aggregator when it
            # resumes (the collaborator redoes the task), not refused here
            state.results.append(
                AcceptedResult(
                    row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], row[6], row[7]
                )
            )
        return state

    def start(self, plan_hash: str, round_num: int) -> None:
        with self._lock:
            if self._get("plan_hash") is None:
                self._db.execute("BEGIN IMMEDIATE")
                self._set_many(
                    {"plan_hash": plan_hash, "round": str(round_num), "experiment_done": "0"}
                )
                self._db.execute("COMMIT")

    def run_id(self) -> str:
        with self._lock:
            run = self._get("run_id")
            if not run:  # a new experiment, or state written before runs had an identity
                run = new_run_id()
                self._db.execute("BEGIN IMMEDIATE")
                self._set_many({"run_id": run})
                self._db.execute("COMMIT")
            return run

    def record_result(self, result: AcceptedResult) -> bool:
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO results(round, collaborator, task, data_size, metrics, spool_path, tensor_bytes, raw_bytes) "
                    "VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        result.round,
                        result.collaborator,
                        result.task,
                        result.data_size,
                        json.dumps(result.metrics),
                        # the name alone: the spool is the workspace's, wherever it is moved
                        os.path.basename(result.spool_path),
                        result.tensor_bytes,
                        result.raw_bytes,
                    ),
                )
            except sqlite3.IntegrityError:
                return False
            except sqlite3.DatabaseError as exc:
                # disk full, I/O error: the result is not acknowledged, the collaborator retries
                raise StateError(
                    "FX-STATE-005",
                    f"cannot record {result.collaborator!r}'s {result.task} result in {self.path}: "
                    f"{exc}",
                    f"free space on (or fix the permissions of) {self.path.parent}; work already "
                    "acknowledged is on disk, and the collaborator sends this result again",
                ) from exc
            return True

    def drop_result(self, round_num: int, collaborator: str, task: str) -> None:
        with self._lock:
            self._db.execute(
                "DELETE FROM results WHERE round = ? AND collaborator = ? AND task = ?",
                (round_num, collaborator, task),
            )

    def finish_round(
        self,
        finished_round: int,
        best_score: float | None,
        best_round: int | None,
        experiment_done: bool,
        next_model: Mapping[str, np.ndarray] | None = None,
        aggregation_state: Mapping[str, np.ndarray] | None = None,
        next_model_file: Path | None = None,
    ) -> None:
        next_round = finished_round + 1
        if experiment_done:
            next_model = aggregation_state = None  # nothing will resume from them
        if next_model is not None and not self._link_checkpoint(next_model_file, next_round):
            save_model(
                self.checkpoint_path(next_round),
                next_model,
                round_num=next_round,
                kind="checkpoint",
            )
        if aggregation_state:
            save_model(
                self.state_path(next_round),
                aggregation_state,
                round_num=next_round,
                kind="aggregation",
            )
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                values = {
                    "round": str(next_round),
                    "experiment_done": "1" if experiment_done else "0",
                    "best_score": "" if best_score is None else repr(float(best_score)),
                    "best_round": "" if best_round is None else str(best_round),
                }
                if experiment_done:
                    values["finished_at"] = repr(time.time())
                self._set_many(values)
                self._db.execute("DELETE FROM results WHERE round <= ?", (finished_round,))
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                # disk full, I/O error: nothing of the round's end is committed; the saved
                # progress (its accepted results) stays, and a restart closes the round again
                with contextlib.suppress(sqlite3.DatabaseError):
                    self._db.execute("ROLLBACK")
                raise StateError(
                    "FX-STATE-005",
                    f"cannot record the end of round {finished_round} in {self.path}: {exc}",
                    f"free space on (or repair) {self.path.parent}, then start the aggregator "
                    "again with the same command: it resumes the round from its saved results",
                ) from exc
        for old in (self.checkpoint_path(finished_round), self.state_path(finished_round)):
            old.unlink(missing_ok=True)

    def _refuse_lost_progress(self) -> None:
        """A state file with no experiment in it beside checkpoints of a later round: the file
        (or its -wal file, which holds the latest commits) was deleted or replaced, e.g. by a
        backup that copied tensor.db alone. Starting over would delete those checkpoints."""
        rounds = sorted(
            int(m[1])
            for p in self.checkpoint_dir.glob("global_r*.pbuf")
            if (m := re.fullmatch(r"global_r(\d+)\.pbuf", p.name)) and int(m[1]) > 0
        )
        if rounds:
            raise StateError(
                "FX-STATE-022",
                f"{self.path} holds no experiment, but {self.checkpoint_dir} holds the "
                f"checkpoint of round {rounds[-1]} of one: {self.path.name} or its "
                f"{self.path.name}-wal file (which holds the latest commits) was deleted or "
                "replaced",
                f"to resume, restore {self.path.parent} from a backup ({self.path.name} together "
                f"with {self.path.name}-wal); to start over, `fx aggregator start --reset-state`",
            )

    def _drop_stale_checkpoints(self, current: int | None) -> None:
        """Delete checkpoints of rounds other than ``current`` (None: all) and temporaries a
        kill left in the checkpoint folder: a stop between a round's commit and the removal
        of the old checkpoint, or during a checkpoint's write, leaves them behind."""
        keep = (
            set()
            if current is None
            else {self.checkpoint_path(current).name, self.state_path(current).name}
        )
        for pattern in ("global_r*.pbuf", "aggregation_r*.pbuf", ".global_r*", ".aggregation_r*"):
            for path in self.checkpoint_dir.glob(pattern):
                if path.name not in keep:
                    path.unlink(missing_ok=True)

    def _link_checkpoint(self, source: Path | None, round_num: int) -> bool:
        """Make the checkpoint a hard link to a just-written model file of that round (no second
        write); the caller replaces that file by rename, so the link keeps this content."""
        if source is None or not source.is_file():
            return False
        target = self.checkpoint_path(round_num)
        staging = target.with_name(f".{target.name}.link")
        try:
            staging.unlink(missing_ok=True)
            os.link(source, staging)
            os.replace(staging, target)
        except OSError:
            staging.unlink(missing_ok=True)
            return False
        return True

    def load_checkpoint(
        self, round_num: int
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The global model (and aggregation-rule state) saved for ``round_num``."""
        path = self.checkpoint_path(round_num)
        if not path.is_file():
            raise StateError(
                "FX-STATE-014",
                f"the checkpoint of round {round_num} ({path}) is missing",
                "do not delete local_state/ while an experiment runs; start over with --reset-state",
            )
        try:
            model = open_model_view(path).tensors
        except StateError as exc:
            if exc.code != "FX-STATE-002":
                raise
            shared = path.stat().st_nlink > 1
            raise StateError(
                "FX-STATE-002",
                f"the checkpoint of round {round_num} ({path}) is damaged"
                + (
                    " (it is one file with the model of that round in save/, last.pbuf unless "
                    "the plan names another: a change to either is a change to both)"
                    if shared
                    else ""
                )
                + f": {exc.message}",
                f"restore {self.path.parent} and save/ from a backup to resume, or start over "
                "with `fx aggregator start --reset-state`",
            ) from exc
        state_file = self.state_path(round_num)
        agg_state = load_model(state_file).tensors if state_file.is_file() else {}
        return model, agg_state

    def record_ended(self) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._set_many({"ended": "1"})
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                # only costs a later restart a short wait for collaborators that are not there
                with contextlib.suppress(sqlite3.DatabaseError):
                    self._db.execute("ROLLBACK")
                log.warning("could not note the experiment's end in %s: %s", self.path, exc)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _float_or_none(text: str | None) -> float | None:
    return float(text) if text else None


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text else None


def flatten_rule_states(
    states: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
) -> dict[str, np.ndarray]:
    """``{task: {tensor: {key: array}}}`` to flat names ``task::tensor::key``."""
    out: dict[str, np.ndarray] = {}
    for task, per_tensor in states.items():
        for tensor, entries in per_tensor.items():
            for key, value in entries.items():
                out[STATE_SEPARATOR.join((task, tensor, key))] = np.asarray(value)
    return out


def unflatten_rule_states(
    flat: Mapping[str, np.ndarray],
) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Inverse of :func:`flatten_rule_states`."""
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for name, value in flat.items():
        task, tensor, key = name.split(STATE_SEPARATOR, 2)
        out.setdefault(task, {}).setdefault(tensor, {})[key] = value
    return out
