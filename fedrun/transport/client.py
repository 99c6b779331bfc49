"""AggregatorClient: the collaborator's gRPC link to the aggregator.

One long-lived channel; every call carries the collaborator's name, the federation id and the
plan hash. While the aggregator is unreachable the client retries with exponential backoff and
full jitter, up to ``client_reconnect_interval`` between attempts and ``client_reconnect_timeout``
in total, then gives up with a clear error. Refusals (wrong certificate, unknown name, other plan)
are never retried: they fail at once with the aggregator's reason.
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import TypeVar

import grpc
import numpy as np

from fedrun.buffers import POOL
from fedrun.compression.base import CompressionPipeline
from fedrun.constants import (
    RECONNECT_INITIAL_SECONDS,
    STREAM_STALL_SECONDS,
    UNARY_DEADLINE_SECONDS,
)
from fedrun.errors import (
    CertificateError,
    ConnectionFailure,
    ProtocolError,
    RoundClosed,
    peer_details,
)
from fedrun.federation.tasks import TaskAssignment
from fedrun.protocol import federation_pb2 as pb
from fedrun.protocol import federation_pb2_grpc as pb_grpc
from fedrun.protocol.codec import (
    DataChunk,
    ExpectedModel,
    FrameBatch,
    batch_frames,
    decode_frames,
    encode_tensor_wire,
    expand_frames,
    parse_frame,
    serialize_frame,
)
from fedrun.transport.network import Network
from fedrun.transport.server import CHANNEL_OPTIONS, SERVICE
from fedrun.transport.transfer_progress import TransferProgress
from fedrun.units import human_bytes

log = logging.getLogger("fedrun.client")

T = TypeVar("T")

#: sent in every request header: tells the aggregator apart two processes using one name
PROCESS_TOKEN = secrets.token_hex(8)

_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}
_TLS_HINTS = ("ssl", "certificate", "handshake", "tls", "x509")
#: what the aggregator answers a caller it refuses (who it is, which process, which plan)
_REFUSALS = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def _closed_during_handshake(error: grpc.RpcError) -> bool:
    details = (error.details() or "").lower()
    return "socket closed" in details or "handshake" in details or "ssl" in details


def reconnect_options(network: Network) -> list[tuple[str, int]]:
    """gRPC's own reconnection backoff held to ours: by default a channel that failed to
    connect waits up to 120 s before it tries again (failing every call meanwhile), so after a
    long outage a collaborator could miss the aggregator's return by minutes."""
    interval_ms = max(1, int(network.client_reconnect_interval * 1000))
    return [
        (
            "grpc.initial_reconnect_backoff_ms",
            min(interval_ms, int(RECONNECT_INITIAL_SECONDS * 1000)),
        ),
        ("grpc.max_reconnect_backoff_ms", interval_ms),
    ]


#: gRPC's text when the aggregator runs as many calls as its server takes
_SERVER_FULL = "Concurrent RPC limit exceeded"


def _busy(error: grpc.RpcError) -> bool:
    """The aggregator refused the call for now: it runs as many calls as it takes, or this
    collaborator's name has as many open as it may (FX-AUTH-011). Retried, unlike a message
    too large, which gRPC reports with the same status."""
    details = error.details() or ""
    return error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and (
        details.startswith("FX-AUTH-011") or _SERVER_FULL in details
    )


def classify_rpc_error(error: grpc.RpcError, target: str) -> Exception:
    """Turn a gRPC error into the fedrun error a person can act on."""
    code = error.code()
    details = peer_details(error.details() or "")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return ConnectionFailure("FX-AUTH-010", f"the aggregator at {target} refused us: {details}")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return RoundClosed("FX-ROUND-010", details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ProtocolError("FX-WIRE-020", f"the aggregator rejected our data: {details}")
    if _busy(error):
        return ConnectionFailure(
            "FX-NET-014",
            f"the aggregator at {target} is taking no more calls now: {details}",
            "it takes calls again as soon as others end; if this lasts, see the aggregator's "
            "log for a peer holding many calls",
        )
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ProtocolError(
            "FX-WIRE-021",
            f"a message to or from the aggregator at {target} was too large: {details}",
            "use the same fedrun version and plan (network.settings.chunk_bytes) on every node",
        )
    if code == grpc.StatusCode.INTERNAL and details.startswith("Exception deserializing"):
        # gRPC's words when this side could not parse a reply: the aggregator did not fail
        return ProtocolError(
            "FX-WIRE-022",
            f"a reply from the aggregator at {target} is not fedrun's wire format: {details}",
            "check that agg_addr/agg_port point at a fedrun aggregator of the same version as "
            "this collaborator",
        )
    if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
        return ProtocolError(
            "FX-NET-012",
            f"the aggregator at {target} failed while handling our request: {details}",
            # the aggregator's own message may carry this fix already
            ""
            if "fix:" in details
            else "see the aggregator's log (logs/aggregator.log) for the cause",
        )
    if code == grpc.StatusCode.UNAVAILABLE and any(h in details.lower() for h in _TLS_HINTS):
        # gRPC's words for a connection that broke off or timed out mid-handshake ("tcp
        # handshaker shutdown", "Handshake read failed") are the same on a congested or broken
        # network as with a wrong certificate: only diagnose(), which makes a handshake of its
        # own and reads the aggregator's verdict, may call it a certificate problem
        return ConnectionFailure(
            "FX-TLS-010",
            f"the connection to the aggregator at {target} broke off during the TLS handshake: "
            f"{details}",
            "check the network path to the aggregator (a link that drops or stalls connections "
            "gives this error); if the network is fine, check that cert/cert_chain.crt is this "
            "federation's chain and that agg_addr matches the aggregator's certificate name",
        )
    return ConnectionFailure(
        "FX-NET-010",
        f"cannot reach the aggregator at {target}: {code.name} {details}",
        "check that the aggregator is running and that network.settings.agg_addr/agg_port are right",
    )


class StallWatch:
    """Calls ``on_stall(idle seconds)`` once, from a thread of its own, when :meth:`progress`
    has not been called for ``seconds`` while inside ``with``."""

    def __init__(self, seconds: float, on_stall: Callable[[float], None]) -> None:
        self.seconds = seconds
        self.on_stall = on_stall
        #: whether on_stall was called
        self.fired = False
        self._last = time.monotonic()
        self._done = threading.Event()

    def progress(self) -> None:
        self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.seconds)):
            idle = time.monotonic() - self._last
            if idle > self.seconds:
                self.fired = True
                self.on_stall(idle)
                return

    def __enter__(self) -> StallWatch:
        self._last = time.monotonic()
        threading.Thread(target=self._watch, name="fedrun-stall-watch", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()


class StalledCall(grpc.RpcError):
    """A call this side cancelled because it made no progress: retried like a broken one."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return f"no progress for {self.seconds:.0f} s"


class AggregatorClient:
    """Implements the collaborator's ``AggregatorConnection`` over gRPC."""

    def __init__(
        self,
        network: Network,
        collaborator_name: str,
        plan_hash: str,
        federation_id: str,
        credentials: grpc.ChannelCredentials | None,
        *,
        pipeline: CompressionPipeline | None = None,
        pipelines: Mapping[str, CompressionPipeline] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.network = network
        self.name = collaborator_name
        self.header = pb.Header(
            collaborator=collaborator_name,
            federation_id=federation_id,
            plan_hash=plan_hash,
            process=PROCESS_TOKEN,
        )
        self.pipeline = pipeline
        self.pipelines = dict(pipelines or {})
        self.sleep = sleep
        #: a tensor stream that moves nothing for this long is given up (and asked again)
        self.stall_seconds = STREAM_STALL_SECONDS
        self.target = network.target
        options = [*CHANNEL_OPTIONS, *reconnect_options(network)]
        if credentials is None:
            self.channel = grpc.insecure_channel(self.target, options=options)
        else:
            self.channel = grpc.secure_channel(self.target, credentials, options=options)
        self.stub = pb_grpc.FederationStub(self.channel)
        # tensor streams use the fast frame (de)serializers; same bytes on the wire
        self._get_tensors = self.channel.unary_stream(
            f"/{SERVICE}/GetTensors",
            request_serializer=pb.GetTensorsRequest.SerializeToString,
            response_deserializer=parse_frame,
        )
        self._submit_results = self.channel.stream_unary(
            f"/{SERVICE}/SubmitResults",
            request_serializer=serialize_frame,
            response_deserializer=pb.SubmitResultsResponse.FromString,
        )
        #: the aggregator keeps the start of an upload that broke off (older ones do not)
        self._resumes_uploads = True
        self.bytes_sent = 0
        #: the run of the experiment whose tasks this client was last given (GetTasksResponse.run)
        self.run = ""
        self.bytes_received = 0
        self._heartbeat: threading.Thread | None = None
        #: called (from the heartbeat's thread) with the error when the aggregator refuses this
        #: collaborator while it works between calls
        self.on_refused: Callable[[Exception], None] | None = None
        self._heartbeat_stop = threading.Event()
        self._was_down = False
        #: the aggregator answered a call of this client once: later failures are outages
        self._answered = False
        #: guards _was_down, which the retry loop and the connectivity watch both change
        self._outage_lock = threading.Lock()
        self._watching_return = False

    def close(self) -> None:
        self._heartbeat_stop.set()
        self._stop_watching_return()
        self.channel.close()

    def _returned(self) -> None:
        """The aggregator is back: say so once per outage."""
        with self._outage_lock:
            if self._was_down and self._answered:
                log.info("reconnected to the aggregator at %s", self.target)
            self._was_down = False

    def _on_connectivity(self, state: grpc.ChannelConnectivity) -> None:
        if state == grpc.ChannelConnectivity.READY:
            self._returned()
            self._stop_watching_return()

    def _watch_for_return(self) -> None:
        """While the aggregator is out of reach, say it is back as soon as the channel connects
        again (its TLS handshake done), not when the retried call completes: that call may be
        a transfer of minutes. gRPC polls the channel for this, so only during an outage."""
        with self._outage_lock:
            if self._watching_return:
                return
            self._watching_return = True
        self.channel.subscribe(self._on_connectivity, try_to_connect=False)

    def _stop_watching_return(self) -> None:
        with self._outage_lock:
            if not self._watching_return:
                return
            self._watching_return = False
        self.channel.unsubscribe(self._on_connectivity)

    def start_heartbeat(self, interval: float) -> None:
        """Ping every ``interval`` seconds in the background, so a collaborator busy with a long
        task is not mistaken for a gone one (the aggregator only sees calls)."""
        if self._heartbeat is not None or interval <= 0:
            return

        def beat() -> None:
            while not self._heartbeat_stop.wait(interval):
                try:
                    self.stub.Ping(
                        pb.PingRequest(header=self.header), timeout=UNARY_DEADLINE_SECONDS
                    )
                except grpc.RpcError as error:
                    # outages are not ours to report (the task loop sees them); a refusal is:
                    # the aggregator will refuse this process's work (another process works
                    # under its name...), so it must stop now, not after the task it runs
                    if error.code() in _REFUSALS and self.on_refused is not None:
                        self.on_refused(classify_rpc_error(error, self.target))
                        return

        self._heartbeat = threading.Thread(target=beat, name="fedrun-heartbeat", daemon=True)
        self._heartbeat.start()

    # ------------------------------------------------------------------ retry
    def _retry(self, what: str, call: Callable[[], T]) -> T:
        # the allowance (client_reconnect_timeout) counts from the call's first failure: counted
        # from its start, a long transfer used it up while data flowed, and a short outage late
        # in a large upload or download ended the collaborator without a single retry
        failed_at: float | None = None
        delay = RECONNECT_INITIAL_SECONDS
        attempt = 0
        while True:
            try:
                result = call()
                self._stop_watching_return()
                self._returned()
                self._answered = True
                return result
            except grpc.RpcError as error:
                code = error.code()
                fedrun_error = classify_rpc_error(error, self.target)
                retryable = code in _RETRYABLE or _busy(error)
                if not retryable or isinstance(fedrun_error, CertificateError):
                    raise fedrun_error from None
                if _closed_during_handshake(error):
                    # raises when the cause is ours to fix (certificates); a ConnectionFailure
                    # means the aggregator is down or restarting: an outage, keep retrying
                    with contextlib.suppress(ConnectionFailure):
                        self.diagnose()
                if failed_at is None:
                    failed_at = time.monotonic()
                elapsed = time.monotonic() - failed_at
                if elapsed >= self.network.client_reconnect_timeout:
                    raise ConnectionFailure(
                        "FX-NET-011",
                        f"gave up on the aggregator at {self.target}: no answer for "
                        f"{elapsed:.0f} s ({what}: {code.name})",
                        "check that the aggregator runs and that this machine reaches it "
                        "(agg_addr/agg_port, firewall, network), then restart this collaborator; "
                        "raise network.settings.client_reconnect_timeout to ride out longer "
                        f"outages{self.network.port_hint}. If the aggregator, started again, "
                        "says the experiment already finished (FX-STATE-021), its models are "
                        "complete: nothing to redo",
                    ) from None
                if isinstance(error, StalledCall):
                    self._was_down = True  # said when the stalled call was cancelled
                elif not self._was_down:
                    details = peer_details(error.details() or "")
                    if details.startswith("FX-") or _busy(error):
                        # the aggregator answered: it cannot take the call now (disk full...)
                        log.warning(
                            "the aggregator at %s cannot take our %s now (%s); retrying",
                            self.target,
                            what,
                            details.splitlines()[0],
                        )
                    elif not self._answered:
                        # not an outage: the aggregator is not up yet (nodes are started in
                        # any order), or this node's address or port is not its
                        log.info(
                            "aggregator at %s not reachable yet (%s); waiting for it for up to "
                            "%.0f s%s",
                            self.target,
                            code.name,
                            self.network.client_reconnect_timeout,
                            self.network.port_hint,
                        )
                    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
                        # connected, but no answer in time: not the same trouble as no route
                        log.warning(
                            "aggregator at %s did not answer our %s in time (%s); retrying",
                            self.target,
                            what,
                            code.name,
                        )
                    elif code == grpc.StatusCode.CANCELLED and self._answered:
                        # the aggregator ended the call: it stops, or it gave up on a stream
                        # that brought it nothing for too long (our host was slow or frozen)
                        log.warning(
                            "the aggregator at %s ended our %s (it is stopping, or it had no "
                            "data from us for too long); retrying",
                            self.target,
                            what,
                        )
                    else:
                        log.warning(
                            "aggregator at %s unreachable (%s); retrying", self.target, code.name
                        )
                    with self._outage_lock:
                        self._was_down = True
                    if code == grpc.StatusCode.UNAVAILABLE and self._answered:
                        self._watch_for_return()
                attempt += 1
                pause = random.uniform(0, delay)
                remaining = self.network.client_reconnect_timeout - elapsed
                self.sleep(max(0.0, min(pause, remaining)))
                delay = min(delay * 2, self.network.client_reconnect_interval)

    # ------------------------------------------------------------------ calls
    def ping(self) -> pb.PingResponse:
        """One Ping, no retries: for `fx collaborator ping` (the aggregator does not take it
        for the collaborator joining)."""
        try:
            return self.stub.Ping(
                pb.PingRequest(header=self.header, probe=True), timeout=UNARY_DEADLINE_SECONDS
            )
        except grpc.RpcError as error:
            fedrun_error = classify_rpc_error(error, self.target)
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                self.diagnose()
            raise fedrun_error from None

    def diagnose(self) -> None:
        """Raise the precise reason a connection fails (certificates, TLS, address), if any."""
        from fedrun.transport.diagnose import diagnose

        diagnose(self.network, self.name)

    def wait_for_aggregator(self) -> pb.PingResponse:
        """Ping until the aggregator answers (within the reconnect budget)."""
        return self._retry(
            "ping",
            lambda: self.stub.Ping(
                pb.PingRequest(header=self.header),
                timeout=UNARY_DEADLINE_SECONDS,
                wait_for_ready=False,
            ),
        )

    def get_tasks(self) -> TaskAssignment:
        wait_ms = int(self.network.long_poll_seconds * 1000)
        deadline = self.network.long_poll_seconds + UNARY_DEADLINE_SECONDS

        def call() -> pb.GetTasksResponse:
            return self.stub.GetTasks(
                pb.GetTasksRequest(header=self.header, wait_ms=wait_ms), timeout=deadline
            )

        reply = self._retry("get tasks", call)
        # results answer the tasks of this run: stamped with it, so that an aggregator started
        # over since (--reset-state) refuses them instead of counting work on another model
        self.run = reply.run
        return TaskAssignment(
            reply.round,
            list(reply.tasks),
            reply.quit,
            reply.final_validation,
            reply.last,
            reply.run,
        )

    def get_global_model(
        self, round_num: int, expected: ExpectedModel | None = None
    ) -> dict[str, np.ndarray]:
        """The global model of ``round_num`` (each tensor header held to ``expected``). A
        download that breaks off is resumed: the tensors already received are kept and not
        asked for again."""
        out: dict[str, np.ndarray] = {}
        progress = TransferProgress(
            f"round {round_num}: model download", expected.model_bytes if expected else 0
        )

        def call() -> dict[str, np.ndarray]:
            held = len(out), sum(int(a.nbytes) for a in out.values())
            progress.done = held[1]  # a tensor cut off midway comes again whole
            request = pb.GetTensorsRequest(header=self.header, round=round_num, held=list(out))
            frames = self._watched(
                self._get_tensors(request), f"the model download of round {round_num}", progress
            )
            for tensor in decode_frames(
                expand_frames(frames), self.pipelines, pool=POOL, expected=expected, held=out
            ):
                if held[0] and len(out) == held[0]:  # said when data flows again, not per try
                    log.info(
                        "resumed the model download of round %d: %d tensors (%s) were already here",
                        round_num,
                        held[0],
                        human_bytes(held[1]),
                    )
                out[tensor.name] = tensor.array
                self.bytes_received += tensor.payload_bytes
            return out

        return self._retry("get model", call)

    def _watched(
        self, call: Iterator[T], what: str, progress: TransferProgress | None = None
    ) -> Iterator[T]:
        """The messages of a streamed reply; the call is cancelled (:class:`StalledCall`, and so
        retried) when none arrives for ``stall_seconds``: without it a stream the aggregator
        keeps open but never feeds held this collaborator forever, saying nothing. Their
        payload bytes are counted in ``progress``."""

        def stalled(idle: float) -> None:
            log.warning(
                "%s from %s stalled (no data for %.0f s); asking again", what, self.target, idle
            )
            call.cancel()  # type: ignore[attr-defined]

        with StallWatch(self.stall_seconds, stalled) as watch:
            try:
                for message in call:
                    watch.progress()
                    if progress is not None and isinstance(message, (DataChunk, FrameBatch)):
                        progress.add(len(message.view))
                    yield message
            except grpc.RpcError:
                if watch.fired:
                    raise StalledCall(self.stall_seconds) from None
                raise

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
        """Send one task's result; returns its size on the wire. An upload that breaks off is
        retried and resumes where it stopped: the tensors the aggregator kept of it
        (GetResultProgress) are not sent again. ``result_id`` names the result (one made up
        when empty): an upload of a result kept on disk by a process that stopped resumes
        that process's upload."""
        # a result named by the caller may have been sent in part by an earlier process
        result_id_was_kept = bool(result_id)
        result_id = result_id or secrets.token_hex(8)
        header = pb.ResultHeader(
            header=self.header,
            round=round_num,
            task=task,
            data_size=int(data_size),
            metrics={k: float(v) for k, v in metrics.items()},
            tensor_count=len(tensors),
            run=self.run,
            result_id=result_id,
        )
        sent = [0]
        attempts = [0]
        held: set[str] = set()
        held_bytes = [0]
        compressed = self.pipeline is not None and bool(deltas)
        progress = TransferProgress(
            f"round {round_num}: upload of the {task} result",
            sum(int(np.asarray(a).nbytes) for a in tensors.values()),
            at_most=compressed,
        )

        failure: list[BaseException] = []

        def frames() -> Iterator[pb.TensorFrame | bytes]:
            progress.done = held_bytes[0]
            try:
                yield pb.TensorFrame(result=header)
                for name, array in tensors.items():
                    if name in held:
                        continue
                    is_delta = name in deltas
                    for frame in encode_tensor_wire(
                        name,
                        array,
                        pipeline=self.pipeline if is_delta else None,
                        delta=is_delta,
                        chunk_bytes=self.network.chunk_bytes,
                    ):
                        if isinstance(frame, bytes):
                            sent[0] += len(frame)
                            progress.add(len(frame))
                        yield frame
            except Exception as exc:  # gRPC would only say "Exception iterating requests"
                failure.append(exc)
                raise

        def call() -> int:
            attempts[0] += 1
            held.clear()
            held_bytes[0] = 0
            if attempts[0] > 1 or result_id_was_kept:
                names, held_bytes[0] = self._kept_of_result(round_num, task, result_id)
                held.update(names)
            try:
                return send()
            except grpc.RpcError as error:
                if not held or "FX-ROUND-021" not in (error.details() or ""):
                    raise
            # what the aggregator kept is gone since it said so (it was started again...)
            log.info("the aggregator no longer holds the start of our %s result", task)
            held.clear()
            held_bytes[0] = 0
            return send()

        def send() -> int:
            sent[0] = 0
            failure.clear()
            del header.held[:]
            header.held.extend(sorted(held))
            watch: StallWatch

            def watched() -> Iterator[pb.TensorFrame | bytes]:
                for frame in batch_frames(frames(), self.network.chunk_bytes):
                    watch.progress()
                    yield frame
                watch.progress()  # all sent: the answer has as long again to come

            def stalled(idle: float) -> None:
                log.warning(
                    "the result of %s (round %d) to %s stalled (nothing sent or answered for "
                    "%.0f s); sending it again",
                    task,
                    round_num,
                    self.target,
                    idle,
                )
                future.cancel()

            with StallWatch(self.stall_seconds, stalled) as watch:
                future = self._submit_results.future(watched())
                try:
                    future.result()
                except grpc.FutureCancelledError:
                    raise StalledCall(self.stall_seconds) from None
                except grpc.RpcError:
                    if failure:
                        raise failure[0] from None  # our own encoding failed, not the aggregator
                    raise
            return sent[0]

        try:
            nbytes = self._retry("send result", call)
        except RoundClosed as error:
            if "FX-ROUND-005" in error.message:
                # our earlier attempt landed but its acknowledgement was lost
                log.info("result for %s round %d was already accepted", task, round_num)
                return sent[0] + held_bytes[0]
            raise
        self.bytes_sent += nbytes
        return nbytes + held_bytes[0]

    def _kept_of_result(self, round_num: int, task: str, result_id: str) -> tuple[list[str], int]:
        """The tensors of our result ``result_id`` for ``task`` the aggregator kept from an
        upload that broke off, and their bytes (none from an aggregator too old to keep any)."""
        if not self._resumes_uploads:
            return [], 0
        try:
            progress = self.stub.GetResultProgress(
                pb.ResultProgressRequest(
                    header=self.header, round=round_num, task=task, result_id=result_id
                ),
                timeout=UNARY_DEADLINE_SECONDS,
            )
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            self._resumes_uploads = False
            return [], 0
        if progress.held:
            log.info(
                "resuming the upload of our %s result (round %d): %d tensors (%s) are at the "
                "aggregator already",
                task,
                round_num,
                len(progress.held),
                human_bytes(progress.held_bytes),
            )
        return list(progress.held), int(progress.held_bytes)
