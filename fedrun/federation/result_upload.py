"""One task result arriving at the aggregator: each tensor is checked against the global model
as its header comes, its payload spooled slice by slice, and the whole result made durable and
recorded only when every tensor it announced has arrived (or dropped with nothing counted).

An upload whose stream breaks off keeps the tensors that arrived whole (suspended), until an
upload of the same result (its ``result_id``) resumes it with the rest or its round ends."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from fedrun.aggregation.base import all_finite
from fedrun.constants import OPTIMIZER_PREFIX, OPTIMIZER_STATE_FACTOR
from fedrun.errors import ProtocolError, StateError, shown
from fedrun.protocol import federation_pb2 as pb
from fedrun.storage.model_file import TensorFileWriter
from fedrun.units import human_bytes

if TYPE_CHECKING:
    from fedrun.federation.aggregator import Aggregator

#: the largest data_size (samples a result stands for) a result may claim: exactly representable
#: as the float64 weight it becomes, and far beyond any data set
MAX_DATA_SIZE = 2**53 - 1
#: metrics one result may report, and the longest name one may have
MAX_METRICS_PER_RESULT = 4096
MAX_METRIC_NAME_CHARACTERS = 128


def check_metrics(collaborator: str, task: str, metrics: Mapping[str, float]) -> None:
    """Refuse metrics the aggregator would log, store and show that no task runner reports:
    too many, a name too long or with control characters (it could forge log lines), a value
    that is not finite (ProtocolError)."""
    if len(metrics) > MAX_METRICS_PER_RESULT:
        raise ProtocolError(
            "FX-DATA-043",
            f"{collaborator!r} reported {len(metrics)} metrics for {shown(task)}; at most "
            f"{MAX_METRICS_PER_RESULT} are taken",
            "report fewer metrics from the task runner",
        )
    for name, value in metrics.items():
        if not name or len(name) > MAX_METRIC_NAME_CHARACTERS or not name.isprintable():
            raise ProtocolError(
                "FX-DATA-043",
                f"{collaborator!r} reported a metric for {shown(task)} named {shown(name)}",
                f"name metrics with 1 to {MAX_METRIC_NAME_CHARACTERS} printable characters",
            )
        if not math.isfinite(value):
            raise ProtocolError(
                "FX-DATA-010",
                f"{collaborator!r} reported metric {task}/{name} = {value}",
                "check the collaborator's training: a metric must be finite",
            )


class ResultUpload:
    """One task result being received: check and spool tensors, then commit or abort."""

    def __init__(
        self,
        aggregator: Aggregator,
        round_num: int,
        collaborator: str,
        task: str,
        data_size: int,
        metrics: dict[str, float],
        tensor_count: int,
        result_id: str = "",
        process: str = "",
    ) -> None:
        self.aggregator = aggregator
        self.round = round_num
        self.collaborator = collaborator
        self.task = task
        self.data_size = data_size
        self.metrics = metrics
        self.tensor_count = tensor_count
        #: which result this is (ResultHeader.result_id): only an upload of the same one, from
        #: the process that computed it or one that kept it on disk, can resume it
        self.result_id = result_id
        #: the collaborator process sending it (Header.process)
        self.process = process
        self.names: set[str] = set()
        self.nbytes = 0
        self.raw_bytes = 0
        self.optimizer_bytes = 0
        self.optimizer_tensors = 0
        self._optimizer_sizes: dict[str, int] = {}
        #: clock of the last data received (tick() drops uploads that stall)
        self.last_progress = aggregator.clock()
        #: why the aggregator gave up on this upload (None: it has not), and whether what
        #: arrived whole is kept for the collaborator to resume (a stall, a resume asked for)
        self.dropped: str | None = None
        self.drop_keeps = False
        #: the stream broke off; its whole tensors wait for the collaborator to resume it
        self.suspended = False
        #: called (from another thread) when the upload is dropped: the transport ends the call
        self.on_drop: Callable[[], None] | None = None
        self._writer: TensorFileWriter | None = None
        self._streaming: dict[str, IncomingTensor] = {}
        self._closed = False

    def _check_new(self, name: str) -> None:
        if name in self.names or name in self._streaming:
            raise ProtocolError(
                "FX-DATA-017", f"tensor {shown(name)} sent twice by {self.collaborator!r}"
            )
        if len(self.names) + len(self._streaming) >= self.tensor_count:
            raise ProtocolError(
                "FX-DATA-018",
                f"{self.collaborator!r} sent more tensors than the {self.tensor_count} it announced",
            )

    def _spool(self) -> TensorFileWriter:
        if self._writer is None:
            self._writer = self.aggregator.spool.writer(
                self.round,
                self.collaborator,
                self.task,
                tensor_count=self.tensor_count,
                plan_hash=self.aggregator.plan_hash,
                durable=self.aggregator.durable,
            )
        return self._writer

    def open_tensor(self, header: pb.TensorHeader, dtype: np.dtype) -> IncomingTensor | None:
        """Check a tensor's header (name, shape, dtype against the global model) before any of
        its payload is received; then receive a raw tensor slice by slice straight into the
        spool, checking each slice (no tensor-sized buffer), or return None when it must arrive
        whole through :meth:`add` (compressed or delta tensors: at most the size the header
        declares, which now matches the model)."""
        self.progressed()
        agg = self.aggregator
        name = header.name
        shape = tuple(int(d) for d in header.shape)
        self._check_new(name)
        agg._check_layout(self, name, shape, np.dtype(dtype), bool(header.delta))
        if name.startswith(OPTIMIZER_PREFIX):
            self._count_optimizer_state(name, np.dtype(dtype).itemsize * math.prod(shape))
        if header.encoding not in ("", "none") or header.delta or header.payload_bytes == 0:
            return None
        incoming = IncomingTensor(self, header, np.dtype(dtype))
        self._streaming[name] = incoming
        self._spool().begin_tensor(header)
        return incoming

    @property
    def settled(self) -> bool:
        """No stream writes to it any more: committed, aborted or suspended."""
        return self._closed or self.suspended

    def drop(self, reason: str, *, keep: bool = False) -> None:
        """Give up on this upload (the aggregator's lock held): whatever arrives after is
        refused, and the transport is asked to end the call; with ``keep`` the tensors that
        arrived whole are kept for the collaborator to resume (see :meth:`suspend`)."""
        self.dropped = reason
        self.drop_keeps = keep
        if self.on_drop is not None:
            self.on_drop()

    def suspend(self) -> bool:
        """The stream broke off (or was dropped with ``keep``): keep the tensors that arrived
        whole, so that an upload of the same result resumes it with the rest
        (True); abort as :meth:`abort` does when none did, the drop keeps nothing, or the
        round has moved on (False). Called by the thread that received the stream."""
        if self._closed or self.suspended:
            return self.suspended
        writer = self._writer
        if (
            writer is None
            or not self.names
            or not self.result_id
            or (self.dropped and not self.drop_keeps)
        ):
            self.abort()
            return False
        try:
            writer.cut_back()
        except StateError:
            self.abort()
            return False
        self._streaming.clear()
        sizes = {n: b for n, b in self._optimizer_sizes.items() if n in self.names}
        self._optimizer_sizes = sizes
        self.optimizer_bytes, self.optimizer_tensors = sum(sizes.values()), len(sizes)
        self.on_drop = None
        if not self.aggregator._suspend_result(self):
            self.abort()
            return False
        return True

    def resume(self) -> None:
        """The collaborator sends the rest (the aggregator's lock held)."""
        self.suspended = False
        self.dropped = None
        self.drop_keeps = False
        self.last_progress = self.aggregator.clock()

    def discard(self) -> None:
        """Delete a suspended upload's file (its round ended, or a new upload replaced it;
        the aggregator's lock held)."""
        if self._closed:
            return
        self._closed = True
        self.suspended = False
        if self._writer is not None:
            self._writer.abort()

    def dropped_error(self) -> ProtocolError:
        return ProtocolError(
            "FX-ROUND-007",
            f"the upload of {self.collaborator!r}'s result for {shown(self.task)} (round {self.round}) "
            f"was dropped: {self.dropped}",
            "send the result again; it counts if its round is still open",
        )

    def progressed(self) -> None:
        """Data arrived: refuse it if the upload was dropped or its round has closed, else note
        the time."""
        if self.dropped:
            raise self.dropped_error()
        agg = self.aggregator
        if agg.done or agg.round.number != self.round:
            raise ProtocolError(
                "FX-ROUND-002",
                f"result of {self.collaborator!r} for round {self.round} arrived after the "
                "round closed",
                "nothing to do: the collaborator joins the next round",
            )
        self.last_progress = agg.clock()

    def _count_optimizer_state(self, name: str, nbytes: int) -> None:
        max_bytes, max_tensors = self.aggregator.optimizer_state_budget()
        self._optimizer_sizes[name] = nbytes
        self.optimizer_bytes += nbytes
        self.optimizer_tensors += 1
        if self.optimizer_bytes > max_bytes or self.optimizer_tensors > max_tensors:
            raise ProtocolError(
                "FX-DATA-020",
                f"{self.collaborator!r} sent more optimizer state than the model can have "
                f"(at {shown(name)}: {self.optimizer_tensors} tensors, "
                f"{human_bytes(self.optimizer_bytes)}; at most {max_tensors} tensors, "
                f"{human_bytes(max_bytes)}, {OPTIMIZER_STATE_FACTOR}x the model's weights)",
                "the collaborator's optimizer state must belong to the plan's model; with "
                "another optimizer set task_runner.settings.opt_treatment to RESET",
            )

    def add(self, name: str, array: np.ndarray, delta: bool = False, wire_bytes: int = 0) -> None:
        """Check one whole tensor and spool it."""
        self.progressed()
        self._check_new(name)
        self.aggregator._check_tensor(self, name, array, delta)
        self._spool().write(name, array, delta=delta)
        self.names.add(name)
        self.nbytes += wire_bytes or array.nbytes
        self.raw_bytes += array.nbytes

    def commit(self) -> None:
        """All tensors arrived: make the result durable and record it."""
        if len(self.names) != self.tensor_count:
            self.abort()
            raise ProtocolError(
                "FX-DATA-018",
                f"{self.collaborator!r} announced {self.tensor_count} tensors but sent {len(self.names)}",
            )
        self.aggregator._warn_if_partial(self)
        spool = self._writer.commit() if self._writer is not None else None
        self._closed = True
        try:
            self.aggregator._commit_result(self, spool, self.nbytes)
        except Exception:
            if spool is not None:
                spool.unlink(missing_ok=True)
            raise

    def abort(self) -> None:
        """Drop a partial result (stream broken, bad tensor): nothing of it was counted."""
        if self._closed:
            return
        self._closed = True
        self._streaming.clear()
        if self._writer is not None:
            self._writer.abort()
        self.aggregator._abort_result(self)


class IncomingTensor:
    """A raw tensor arriving chunk by chunk: each chunk is checked (a float tensor must be
    finite) and spooled, then dropped."""

    def __init__(self, upload: ResultUpload, header: pb.TensorHeader, dtype: np.dtype) -> None:
        self.upload = upload
        self.name = header.name
        self.dtype = dtype
        self.expected = int(header.payload_bytes)
        self.received = 0
        self._carry = b""  # a chunk that ended inside an element

    @property
    def complete(self) -> bool:
        return self.received == self.expected

    def write(self, chunk: memoryview) -> bool:
        """Take the next payload chunk; True when it was the last one (the tensor counts)."""
        upload = self.upload
        upload.progressed()
        end = self.received + len(chunk)
        if end > self.expected:
            raise ProtocolError(
                "FX-WIRE-007",
                f"tensor {shown(self.name)} sent more than its declared {self.expected} bytes",
            )
        if self.dtype.kind == "f":
            data: memoryview | bytes = chunk
            if self._carry:
                data = self._carry + bytes(chunk)
            usable = len(data) - len(data) % self.dtype.itemsize
            self._carry = bytes(data[usable:])
            values = np.frombuffer(data, dtype=self.dtype, count=usable // self.dtype.itemsize)
            if not all_finite(values):
                raise ProtocolError(
                    "FX-DATA-010",
                    f"tensor {shown(self.name)} from {upload.collaborator!r}, task {shown(upload.task)}, "
                    f"round {upload.round} holds non-finite value(s) (NaN or inf); "
                    "the update was refused",
                    "the collaborator's training diverged; lower its learning rate",
                )
        assert upload._writer is not None
        upload._writer.write_payload(chunk)
        self.received = end
        if not self.complete:
            return False
        del upload._streaming[self.name]
        upload.names.add(self.name)
        upload.nbytes += self.expected
        upload.raw_bytes += self.expected
        return True
