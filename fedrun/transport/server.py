"""AggregatorServer: the thin gRPC adapter around :class:`~fedrun.federation.aggregator.Aggregator`.

It authenticates every call (certificate common name == claimed name, name in cols.yaml, plan
hash), translates calls into Aggregator method calls, and streams tensors in chunks. Refusals are
logged once per peer and reason, and cost the aggregator nothing beyond the check.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from concurrent import futures
from typing import TYPE_CHECKING, TypeVar

import grpc

from fedrun.buffers import POOL
from fedrun.compression.base import CompressionPipeline
from fedrun.constants import GRPC_MAX_MESSAGE_BYTES
from fedrun.errors import ConnectionFailure, FedrunError, ProtocolError, StateError, shown
from fedrun.federation.aggregator import Aggregator
from fedrun.federation.collaborator_processes import CollaboratorProcesses
from fedrun.federation.result_upload import IncomingTensor, ResultUpload
from fedrun.protocol import federation_pb2 as pb
from fedrun.protocol import federation_pb2_grpc as pb_grpc
from fedrun.protocol.codec import (
    DataChunk,
    FrameBatch,
    TensorAssembler,
    UnreadableFrame,
    batch_frames,
    check_header,
    data_view,
    encode_tensor_wire,
    expand_frames,
    parse_frame,
    serialize_frame,
)
from fedrun.transport.admission import (
    FIRST_MESSAGE_SECONDS,
    CallAdmission,
    SilenceWatchdog,
    call_limit,
    worker_threads,
)
from fedrun.transport.network import Network
from fedrun.transport.tls import peer_common_name
from fedrun.units import human_bytes

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("fedrun.server")
#: ends calls whose first message does not come (see first_message)
WATCHDOG = SilenceWatchdog()
T = TypeVar("T")

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]
SERVER_OPTIONS = [
    *CHANNEL_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),
]
#: the smallest per-stream receive window the aggregator grants an upload
MIN_RECEIVE_WINDOW_BYTES = 4 << 20
#: a global model of at most this many bytes is framed once per round and the same messages go to
#: every collaborator (this much memory at most); a larger one is read from its file per download
FRAMED_MODEL_MAX_BYTES = 64 << 20
#: distinct (peer, reason) refusals logged; later ones are refused without a line
MAX_REFUSALS_LOGGED = 10_000


def peer_address(context: grpc.ServicerContext) -> str:
    """The caller's address as people write it: gRPC gives ``ipv6:%5B::1%5D:5000``."""
    return urllib.parse.unquote(context.peer())


def server_options(chunk_bytes: int) -> list[tuple[str, int]]:
    """gRPC server options for uploads sent in ``chunk_bytes`` frames.

    Each upload gets a fixed receive window of two chunks (at least 4 MiB) instead of gRPC's
    bandwidth-probed one: probing grows the window of every concurrent upload toward what the
    socket could carry, and the aggregator buffers it all. Measured with 1 GB models and 8
    collaborators (benchmarks/round_overhead, two runs each): aggregator peak RSS 3.6-5.3x the
    model with probing, 2.4x with the fixed window, round time within 3 %. The aggregator holds
    about 3.5 windows per concurrent upload; with 2 MiB chunks (4 MiB windows) instead of 4 MiB
    ones (8 MiB windows), alternating runs with 8 collaborators: peak RSS 539/564 -> 408/432 MiB
    at 100 MB and 2299/2265 -> 2183/2159 MiB at 1 GB, steady round times unchanged.
    """
    window = max(MIN_RECEIVE_WINDOW_BYTES, 2 * int(chunk_bytes))
    return [
        *SERVER_OPTIONS,
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", window),
    ]


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


def _label(name: str) -> str:
    """A peer's name as log lines show it: as it is when it is a plain name, quoted, escaped
    and cut short (:func:`fedrun.errors.shown`) otherwise, since the peer chose it."""
    if not name:
        return "?"
    return name if _PLAIN_NAME.fullmatch(name) else shown(name)


def _no_client_certificate(address: str) -> ProtocolError:
    return ProtocolError(
        "FX-AUTH-001",
        f"connection from {address} presented no client certificate",
        "collaborators need a certificate signed by the federation's CA",
    )


def first_message(messages: Iterator[T], context: grpc.ServicerContext) -> T | None:
    """The call's first message, None when the call ends without one. Every call is served as
    a stream (see :func:`register_servicer`), so waiting for it happens here, after the call
    was admitted, and a call that sends nothing for ``FIRST_MESSAGE_SECONDS`` is ended (the
    thread it holds freed): a client sends its request, or an upload its header, at once."""
    token = WATCHDOG.watch(FIRST_MESSAGE_SECONDS, context.cancel)
    try:
        return next(messages, None)
    finally:
        WATCHDOG.heard(token)


def status_for(error: FedrunError) -> grpc.StatusCode:
    """gRPC status code for a refusal, so the client can tell the reasons apart."""
    code = error.code
    if code.startswith("FX-AUTH-00") and code in ("FX-AUTH-001", "FX-AUTH-002"):
        return grpc.StatusCode.UNAUTHENTICATED
    if code == "FX-AUTH-011":
        return grpc.StatusCode.RESOURCE_EXHAUSTED  # too many calls at once: retried
    if code.startswith("FX-AUTH"):
        return grpc.StatusCode.PERMISSION_DENIED
    if code == "FX-ROUND-007":
        return grpc.StatusCode.UNAVAILABLE  # a dropped upload: the collaborator sends it again
    if code.startswith("FX-ROUND"):
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INVALID_ARGUMENT


class FederationServicer(pb_grpc.FederationServicer):
    """Implements the Federation service on top of an Aggregator."""

    def __init__(
        self,
        aggregator: Aggregator,
        *,
        verify_peer_name: bool,
        pipelines: Mapping[str, CompressionPipeline] | None = None,
        chunk_bytes: int,
        long_poll_seconds: float,
        name: str = "aggregator",
    ) -> None:
        self.aggregator = aggregator
        self.verify_peer_name = verify_peer_name
        self.processes = CollaboratorProcesses()
        self.pipelines = dict(pipelines or {})
        self.chunk_bytes = chunk_bytes
        self.long_poll_seconds = long_poll_seconds
        self.name = name
        self._refusals: set[tuple[str, str]] = set()
        self.admission = CallAdmission()
        self._refusal_lock = threading.Lock()
        self.bytes_sent = 0
        #: (round, serialized messages) of the last small global model framed for download
        self._framed: tuple[int, list[bytes]] | None = None
        self._framed_lock = threading.Lock()

    # ------------------------------------------------------------------ auth
    def _refuse(
        self,
        context: grpc.ServicerContext,
        error: FedrunError,
        peer: str,
        identity: str | None = None,
    ) -> None:
        """End the call with ``error``; logged once per ``identity`` (the peer's certificate
        name or host; ``peer`` if not given) and error code, so a peer calling again and again
        cannot fill the log."""
        key = (identity or peer, error.code)
        with self._refusal_lock:
            first = key not in self._refusals and len(self._refusals) < MAX_REFUSALS_LOGGED
            if first:
                self._refusals.add(key)
        if first:
            # expected, not a problem: a result resent after its acknowledgement was lost, an
            # upload resumed after what was kept of it went (it is sent whole), and results
            # resent to a finished experiment's farewell
            expected = (
                error.code in ("FX-ROUND-005", "FX-ROUND-021")
                or self.aggregator.farewell_of is not None
            )
            level = logging.INFO if expected else logging.WARNING
            log.log(level, "refused %s: %s", peer, error.message)
        context.abort(status_for(error), error.render())

    def _admit(self, context: grpc.ServicerContext) -> str | None:
        """Refuse a call before it can hold a server thread when its certificate names no
        collaborator of cols.yaml, or its peer has as many calls open as it may
        (:mod:`fedrun.transport.admission`); count it until it ends otherwise. Returns the
        certificate's name (None without client certificates)."""
        if not self.verify_peer_name:
            return None
        address = peer_address(context)
        cn = peer_common_name(context)
        if cn is None:
            host = address.rpartition(":")[0] or address
            self._refuse(context, _no_client_certificate(address), f"? ({address})", host)
            raise AssertionError("unreachable: abort raises")
        label = f"{_label(cn)} ({address})"
        try:
            self.aggregator.check_member(cn)
        except ProtocolError as error:
            self._refuse(context, error, label, cn)
        if not self.admission.enter(cn):
            self._refuse(
                context,
                ProtocolError(
                    "FX-AUTH-011",
                    f"{cn} has {self.admission.per_peer} calls open at the aggregator already",
                    "a collaborator needs at most five at once: if two processes run under "
                    "this name, stop one; the collaborator retries",
                ),
                label,
                cn,
            )
        if not context.add_callback(functools.partial(self.admission.leave, cn)):
            self.admission.leave(cn)  # the call ended already
        return cn

    def _authenticate(
        self, header: pb.Header, context: grpc.ServicerContext, cn: str | None
    ) -> str:
        """The name the call claims, checked against ``cn`` (its certificate's name, from
        :meth:`_admit`), cols.yaml, the plan and the collaborator's process."""
        claimed = header.collaborator
        address = peer_address(context)
        peer = f"{_label(claimed)} ({address})"
        identity = cn if cn is not None else (address.rpartition(":")[0] or address)
        if self.verify_peer_name and cn != claimed:
            self._refuse(
                context,
                ProtocolError(
                    "FX-AUTH-002",
                    f"certificate of {shown(cn or '')} used to claim the name {shown(claimed)}",
                    "start the collaborator with the name its certificate was issued for",
                ),
                peer,
                identity,
            )
        try:
            self.aggregator.check_identity(claimed, header.plan_hash, header.federation_id)
        except ProtocolError as error:
            self._refuse(context, error, peer, identity)
        try:
            self.processes.heard(claimed, header.process, address, time.monotonic())
        except ProtocolError as error:
            self._refuse(context, error, peer, identity)
        return claimed

    # ------------------------------------------------------------------ RPCs
    def _request(
        self, requests: Iterator[T], context: grpc.ServicerContext
    ) -> tuple[T, str | None]:
        """The one request of a call with a single request (admitted first), and the name on
        the caller's certificate."""
        cn = self._admit(context)
        request = first_message(requests, context)
        if request is None:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "FX-WIRE-016: the call carried no request"
            )
        assert request is not None  # context.abort above raised otherwise
        return request, cn

    def Ping(
        self, requests: Iterator[pb.PingRequest], context: grpc.ServicerContext
    ) -> pb.PingResponse:
        request, cn = self._request(requests, context)
        name = self._authenticate(request.header, context, cn)
        if request.probe:
            self.aggregator.probed(name)
        else:
            self.aggregator.touch(name)
        agg = self.aggregator
        return pb.PingResponse(
            aggregator=self.name,
            federation_id=agg.federation_id,
            plan_hash=agg.plan_hash,
            round=agg.round_num,
            rounds_to_train=agg.rounds_to_train,
            authorized=True,
            message="ok",
        )

    def GetTasks(
        self, requests: Iterator[pb.GetTasksRequest], context: grpc.ServicerContext
    ) -> pb.GetTasksResponse:
        request, cn = self._request(requests, context)
        name = self._authenticate(request.header, context, cn)
        wait = min(request.wait_ms / 1000.0, self.long_poll_seconds)
        remaining = context.time_remaining()
        if remaining is not None:
            wait = max(0.0, min(wait, remaining - 1.0))
        assignment = self.aggregator.get_tasks(name, wait=wait, process=request.header.process)
        return pb.GetTasksResponse(
            round=assignment.round,
            tasks=assignment.tasks,
            quit=assignment.quit,
            final_validation=assignment.final_validation,
            last=assignment.last,
            run=assignment.run,
        )

    def GetTensors(
        self, requests: Iterator[pb.GetTensorsRequest], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        request, cn = self._request(requests, context)
        name = self._authenticate(request.header, context, cn)
        try:
            model = self.aggregator.get_global_model(name, request.round)
        except ProtocolError as error:
            self._refuse(context, error, name)
            return
        if request.names or request.held:
            missing = [n for n in (*request.names, *request.held) if n not in model]
            if missing:
                self._refuse(
                    context,
                    ProtocolError(
                        "FX-DATA-019",
                        f"{name!r} asked for tensors that are not in the global model: "
                        f"{', '.join(shown(n) for n in missing[:5])}",
                        "a collaborator can only fetch the global model's tensors",
                    ),
                    name,
                )
            held = set(request.held)
            wanted = request.names or model
            yield from self._frames({n: model[n] for n in wanted if n not in held})
            return
        yield from self._framed_model(request.round, model)

    def _frames(self, model: Mapping[str, np.ndarray]) -> Iterator[bytes]:
        frames = (
            frame
            for tensor_name, array in model.items()
            for frame in encode_tensor_wire(tensor_name, array, chunk_bytes=self.chunk_bytes)
        )
        return batch_frames(frames, self.chunk_bytes)

    def _framed_model(self, round_num: int, model: Mapping[str, np.ndarray]) -> Iterator[bytes]:
        """The whole global model of ``round_num`` as wire messages. A small model is framed by
        the round's first download and the same bytes serve every other collaborator (a round's
        global model never changes), instead of reading and framing it again each time."""
        if sum(int(a.nbytes) for a in model.values()) > FRAMED_MODEL_MAX_BYTES:
            return self._frames(model)
        with self._framed_lock:
            if self._framed is None or self._framed[0] != round_num:
                self._framed = (round_num, list(self._frames(model)))
            return iter(self._framed[1])

    def SubmitResults(
        self,
        request_iterator: Iterator[pb.TensorFrame | DataChunk | FrameBatch | UnreadableFrame],
        context: grpc.ServicerContext,
    ) -> pb.SubmitResultsResponse:
        cn = self._admit(context)
        frames = expand_frames(request_iterator)
        try:
            # an upload silent from the start is ended; the collaborator sends its result again
            first = first_message(frames, context)
        except ProtocolError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, error.render())
        if (
            first is None
            or not isinstance(first, pb.TensorFrame)
            or first.WhichOneof("body") != "result"
        ):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "FX-WIRE-012: upload must start with a result header",
            )
        assert isinstance(first, pb.TensorFrame)  # context.abort above raised otherwise
        result = first.result
        name = self._authenticate(result.header, context, cn)
        try:
            upload = self.aggregator.open_result(
                name,
                result.round,
                result.task,
                int(result.data_size),
                dict(result.metrics),
                result.tensor_count,
                result.run,
                result_id=result.result_id,
                held=list(result.held),
                process=result.header.process,
            )
        except ProtocolError as error:
            self._refuse(context, error, name)
            raise  # unreachable: abort raises
        upload.on_drop = context.cancel  # a stalled upload's call ends, freeing this thread
        assembler = TensorAssembler(self.pipelines, pool=POOL)
        incoming: IncomingTensor | None = None
        ended_early = False
        try:
            for frame in frames:
                if incoming is not None:
                    view = (
                        frame.view
                        if isinstance(frame, DataChunk)
                        else data_view(frame, incoming.name)
                    )
                    if incoming.write(view):
                        incoming = None
                    continue
                if (
                    not isinstance(frame, DataChunk)
                    and not assembler.busy
                    and frame.WhichOneof("body") == "header"
                ):
                    dtype = check_header(frame.header, assembler.max_bytes)
                    incoming = upload.open_tensor(frame.header, dtype)
                    if incoming is not None:
                        continue
                tensor = assembler.feed(frame)
                if tensor is not None:
                    upload.add(tensor.name, tensor.array, tensor.delta, tensor.payload_bytes)
                    POOL.give(tensor.buffer)  # spooled to disk: the memory serves the next one
            if incoming is not None or assembler.busy or len(upload.names) < upload.tensor_count:
                # gRPC ends the request stream so also when the connection fails (the call's
                # cancellation comes after): treated as a break, what arrived whole is kept
                ended_early = True
                cut = (
                    f"tensor {shown(incoming.name)} ended after {incoming.received} of "
                    f"{incoming.expected} bytes"
                    if incoming is not None
                    else f"{len(upload.names)} of its {upload.tensor_count} tensors arrived"
                )
                raise ProtocolError(
                    "FX-WIRE-007",
                    f"the upload of {name}'s result for {shown(result.task)} ended early: {cut}",
                    "send the result again (a collaborator does so by itself)",
                )
            assembler.close()
            upload.commit()
        except ProtocolError as error:
            if upload.dropped:  # said when it was dropped; what arrived whole may be kept
                upload.suspend()
            elif ended_early:
                _say_cut_off(upload, upload.suspend())
            else:
                upload.abort()
                log.warning("result of %s for %s refused: %s", name, result.task, error.message)
            context.abort(status_for(error), error.render())
        except StateError as error:
            # the aggregator cannot store the result (disk full...), the round it closed could
            # not be committed (the aggregator stops), or the aggregator is stopping: the
            # collaborator retries
            upload.abort()
            if error is not self.aggregator.broken and error.code != "FX-STATE-032":
                log.error("result of %s for %s not stored: %s", name, result.task, error.render())
            context.abort(grpc.StatusCode.UNAVAILABLE, error.render())
        except MemoryError:
            upload.abort()
            exhausted = StateError(
                "FX-STATE-030",
                f"the aggregator ran out of memory receiving the result of {name} for "
                f"{result.task}",
                "give the aggregator more memory, or use a smaller chunk_size_mb; the "
                "collaborator retries",
            )
            log.error("%s", exhausted.render())
            context.abort(grpc.StatusCode.UNAVAILABLE, exhausted.render())
        except grpc.RpcError:
            # the stream broke (the collaborator stopped, the network failed, or the upload
            # was dropped, which was logged then)
            dropped = upload.dropped
            kept = upload.suspend()
            if not dropped:
                _say_cut_off(upload, kept)
            raise
        except Exception as error:
            upload.abort()
            broken = self.aggregator.broken
            if error is broken and isinstance(broken, FedrunError):
                # the round this result closed could not be finished (said when it failed):
                # the aggregator stops; the collaborator waits for it to be started again
                context.abort(grpc.StatusCode.UNAVAILABLE, broken.render())
            # a fault of the aggregator's own: logged here with its traceback; the peer is
            # told where to look, not the aggregator's internals
            log.exception("result of %s for %s failed at the aggregator", name, result.task)
            context.abort(
                grpc.StatusCode.INTERNAL,
                "FX-STATE-031: the aggregator failed storing this result\n  fix: see the "
                "aggregator's log (logs/aggregator.log) for the cause",
            )
        except BaseException:
            upload.abort()
            raise
        return pb.SubmitResultsResponse(accepted=True, message="ok")

    def GetResultProgress(
        self, requests: Iterator[pb.ResultProgressRequest], context: grpc.ServicerContext
    ) -> pb.ResultProgress:
        request, cn = self._request(requests, context)
        name = self._authenticate(request.header, context, cn)
        held, nbytes = self.aggregator.result_progress(
            name, request.result_id, request.round, request.task
        )
        return pb.ResultProgress(held=held, held_bytes=nbytes)


SERVICE = "fedrun.v1.Federation"


def _say_cut_off(upload: ResultUpload, kept: bool) -> None:
    """Log an upload that broke off, and whether what arrived of it is kept."""
    if kept:
        log.warning(
            "result of %s for %s cut off after %d of its %d tensors (%s): kept for the "
            "collaborator to resume it",
            upload.collaborator,
            upload.task,
            len(upload.names),
            upload.tensor_count,
            human_bytes(upload.nbytes),
        )
    else:
        log.warning(
            "result of %s for %s cut off before it was complete: nothing of it counts (the "
            "collaborator may send it again)",
            upload.collaborator,
            upload.task,
        )


def register_servicer(servicer: FederationServicer, server: grpc.Server) -> None:
    """Register the service; the tensor streams use the fast frame (de)serializers, whose
    bytes on the wire are exactly the generated protobuf code's (see fedrun.protocol.codec).

    Every method is served as one taking a stream of requests; the wire is the same (a unary
    call is a stream of one message), and clients call them as the .proto declares. gRPC
    reads a unary request on a server thread before the method runs, with no time limit: a
    peer that opens calls and never sends their request held every thread, before any check
    of who it is could run. Served as streams, a call is admitted first and its request
    waited for under a time limit (:func:`first_message`)."""
    handlers = {
        "Ping": grpc.stream_unary_rpc_method_handler(
            servicer.Ping,
            request_deserializer=pb.PingRequest.FromString,
            response_serializer=pb.PingResponse.SerializeToString,
        ),
        "GetTasks": grpc.stream_unary_rpc_method_handler(
            servicer.GetTasks,
            request_deserializer=pb.GetTasksRequest.FromString,
            response_serializer=pb.GetTasksResponse.SerializeToString,
        ),
        "GetTensors": grpc.stream_stream_rpc_method_handler(
            servicer.GetTensors,
            request_deserializer=pb.GetTensorsRequest.FromString,
            response_serializer=serialize_frame,
        ),
        "SubmitResults": grpc.stream_unary_rpc_method_handler(
            servicer.SubmitResults,
            request_deserializer=parse_frame,
            response_serializer=pb.SubmitResultsResponse.SerializeToString,
        ),
        "GetResultProgress": grpc.stream_unary_rpc_method_handler(
            servicer.GetResultProgress,
            request_deserializer=pb.ResultProgressRequest.FromString,
            response_serializer=pb.ResultProgress.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


_PORT_FIX = (
    "stop the other process using the port, or set network.settings.agg_port in plan/plan.yaml"
)
_BIND_ERRORS = {
    errno.EADDRINUSE: ("port {port} is in use by another process (another aggregator?)", _PORT_FIX),
    errno.EADDRNOTAVAIL: (
        "{host} is not an address of this host",
        "set network.settings.listen_addr in plan/plan.yaml to an address of this host "
        "(0.0.0.0 or :: for all of them)",
    ),
    errno.EACCES: (
        "port {port} is below 1024, which needs root",
        "set network.settings.agg_port in plan/plan.yaml to a port from 1024 up",
    ),
}


def check_bindable(network: Network) -> None:
    """Raise FX-NET-001 when the aggregator could not listen where the plan says (a port in
    use, an address not of this host): checked before anything is read or changed."""
    problem = bind_problem(network.listen_addr, network.agg_port)
    if problem:
        reason, fix = problem
        raise ConnectionFailure(
            "FX-NET-001", f"cannot listen on {network.bind_target}: {reason}", fix
        )


def bind_problem(host: str, port: int) -> tuple[str, str] | None:
    """Why gRPC could not listen on ``host:port``, and the fix; None if it can.

    gRPC reports a failed bind only as "Failed to bind" (the errno goes to its C-core log), so
    the address is tried first with a plain socket, bound as gRPC binds it, to name the cause.
    One address the host resolves to that is not on this host (``::1`` without IPv6) is
    skipped, as gRPC does; but one that another process listens on is refused, where gRPC would
    listen on the others only and the collaborators dialling that one reach the other process.
    """
    if not port:
        return None
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return (
            f"{host} does not resolve to an address ({exc.strerror})",
            "set network.settings.listen_addr in plan/plan.yaml to an address of this host",
        )
    if host.strip("[]").lower() == "localhost":  # gRPC's resolver gives both loopbacks
        for loopback in ("127.0.0.1", "::1"):
            with contextlib.suppress(socket.gaierror):
                infos += socket.getaddrinfo(loopback, port, type=socket.SOCK_STREAM)
    problem = None
    usable = False
    for family, kind, proto, _, address in dict.fromkeys(infos):
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as exc:
            reason, fix = _BIND_ERRORS.get(exc.errno or 0, (f"{exc.strerror}", _PORT_FIX))
            problem = (reason.format(host=host, port=port), fix)
            if exc.errno == errno.EADDRINUSE:
                return problem
        else:
            usable = True
    return None if usable else problem


class AggregatorServer:
    """Serves an Aggregator over gRPC until the experiment ends."""

    def __init__(
        self,
        aggregator: Aggregator,
        network: Network,
        credentials: grpc.ServerCredentials | None,
        *,
        pipelines: Mapping[str, CompressionPipeline] | None = None,
        max_workers: int | None = None,
    ) -> None:
        self.aggregator = aggregator
        self.network = network
        workers = max_workers or worker_threads(len(aggregator.collaborators))
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fedrun-rpc"),
            options=server_options(network.chunk_bytes),
            maximum_concurrent_rpcs=call_limit(workers),
        )
        self.servicer = FederationServicer(
            aggregator,
            verify_peer_name=credentials is not None and network.require_client_auth,
            pipelines=pipelines,
            chunk_bytes=network.chunk_bytes,
            long_poll_seconds=network.long_poll_seconds,
            name=network.agg_addr,
        )
        register_servicer(self.servicer, self.server)
        target = network.bind_target
        check_bindable(network)
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(target)
            else:
                self.port = self.server.add_secure_port(target, credentials)
        except RuntimeError as exc:
            self.port = 0
            reason = str(exc)
        else:
            reason = ""
        if not self.port:
            raise ConnectionFailure(
                "FX-NET-001",
                f"cannot listen on {target}: the port is in use or the address is not on this host"
                + (f" ({reason})" if reason else ""),
                "stop the other process using the port, or set network.settings.agg_port "
                "(and listen_addr) in plan/plan.yaml",
            )

    def start(self) -> None:
        self.server.start()
        log.info(
            "aggregator listening on %s (%s)",
            self.network.bind_target,
            "mutual TLS"
            if self.servicer.verify_peer_name
            else (
                "TLS, client certificates NOT checked"
                if self.network.use_tls
                else "INSECURE: no TLS"
            ),
        )

    def serve_until_finished(self, stop: threading.Event | None = None) -> None:
        """Run round-deadline checks until every collaborator was told to stop."""
        agg = self.aggregator
        while not agg.finished_event.is_set():
            if stop is not None and stop.is_set():
                break
            deadline = agg.tick()
            wait = 1.0 if not agg.done else 0.5
            if deadline is not None:
                wait = max(0.05, min(wait, deadline - agg.clock()))
            agg.finished_event.wait(wait)

    def stop(self, grace: float | None = 2.0) -> None:
        self.server.stop(grace).wait()
