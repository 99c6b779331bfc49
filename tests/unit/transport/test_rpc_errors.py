"""gRPC status codes become fedrun errors that name the problem."""

from __future__ import annotations

import logging
import re
import time

import grpc
import pytest

from fedrun.transport.client import AggregatorClient, classify_rpc_error
from fedrun.transport.network import Network


class StatusError(grpc.RpcError):
    """What a gRPC call raises: a status code and its details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "Sent message larger than max (16777221 vs. 16777216)", "FX-WIRE-021"),
        (grpc.StatusCode.PERMISSION_DENIED, "FX-AUTH-003: not in cols.yaml", "FX-AUTH-010"),
        (grpc.StatusCode.FAILED_PRECONDITION, "round closed", "FX-ROUND-010"),
        (grpc.StatusCode.INVALID_ARGUMENT, "bad tensor", "FX-WIRE-020"),
        (grpc.StatusCode.INTERNAL, "boom", "FX-NET-012"),
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", "FX-NET-010"),
        # gRPC's words for a connection cut off mid-handshake (a stalled or congested link)
        (grpc.StatusCode.UNAVAILABLE, "ipv4:10.77.0.1:50051: tcp handshaker shutdown", "FX-TLS-010"),
    ],
)  # fmt: skip
def test_status_codes_map_to_actionable_errors(code, details, expected):
    error = classify_rpc_error(StatusError(code, details), "agg.example:50051")
    assert error.code == expected
    assert details in error.message


def retried(what: str, answers: list[StatusError]) -> int:
    """A call through a client's retry loop that fails with ``answers`` (last first), then
    returns 7; no real sleep between attempts."""
    network = Network("127.0.0.1", 9, "127.0.0.1", use_tls=False)
    client = AggregatorClient(network, "one", "h" * 64, "fed", None, sleep=lambda s: None)

    def call() -> int:
        if answers:
            raise answers.pop()
        return 7

    try:
        return client._retry(what, call)
    finally:
        client.close()


def test_a_busy_aggregator_is_reported_with_its_reason_not_as_unreachable(caplog):
    # Prepare: the aggregator answers UNAVAILABLE with its reason once (disk full), then accepts
    answers = [StatusError(grpc.StatusCode.UNAVAILABLE, "FX-STATE-005: cannot write x: full")]

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedrun"):
        assert retried("send result", answers) == 7

    # Assert
    assert "cannot take our send result now (FX-STATE-005: cannot write x: full)" in caplog.text
    assert "unreachable" not in caplog.text


@pytest.mark.parametrize(
    "details",
    [
        "FX-AUTH-011: one has 6 calls open at the aggregator already",
        "Concurrent RPC limit exceeded!",
    ],
)
def test_an_aggregator_taking_no_more_calls_for_now_is_retried(caplog, details):
    # Prepare: twice refused for now (this name's allowance of calls, or the server's), then
    # an answer; a message too large, with the same status, is not retried (above)
    answers = [StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, details) for _ in range(2)]

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedrun"):
        assert retried("ask for tasks", answers) == 7

    # Assert: one line, naming the reason
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"the aggregator at 127.0.0.1:9 cannot take our ask for tasks now ({details}); retrying"
    ]
    assert (
        classify_rpc_error(StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, details), "a:1").code
        == "FX-NET-014"
    )


def test_a_connection_cut_off_mid_handshake_is_retried_not_taken_for_a_certificate_problem():
    # Prepare: two attempts cut off by the network during the TLS handshake, then an answer
    # (before: the first one stopped the collaborator with FX-TLS-010, exit 4, certificate advice)
    from fedrun.errors import CertificateError

    network = Network("127.0.0.1", 9, "127.0.0.1", use_tls=False)
    client = AggregatorClient(network, "one", "h" * 64, "fed", None, sleep=lambda s: None)
    answers = [
        StatusError(grpc.StatusCode.UNAVAILABLE, "ipv4:10.77.0.1:50051: tcp handshaker shutdown"),
        StatusError(
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:10.77.0.1:50051: "
            "Handshake read failed (Endpoint closing)",
        ),
    ]

    def call() -> int:
        if answers:
            raise answers.pop()
        return 7

    # Execute, Assert
    try:
        assert client._retry("ping", call) == 7
    except CertificateError as error:  # pragma: no cover - the failure this test pins
        pytest.fail(f"taken for a certificate problem: {error}")
    finally:
        client.close()
    cut_off = StatusError(grpc.StatusCode.UNAVAILABLE, "ssl handshake timed out")
    assert classify_rpc_error(cut_off, "a:1").exit_code == 5  # connection (5), not certificate (4)


def test_a_reply_this_side_cannot_parse_is_not_blamed_on_the_aggregator():
    # Prepare: gRPC's words when the collaborator could not parse a reply
    unreadable = StatusError(grpc.StatusCode.INTERNAL, "Exception deserializing response!")

    # Execute
    error = classify_rpc_error(unreadable, "agg.example:50051")

    # Assert: the wire format is named, not "see the aggregator's log"
    assert error.code == "FX-WIRE-022"
    assert "aggregator's log" not in error.fix


HOSTILE = "\x1b[31;1mRED\x1b[0m\x1b]0;title\x07\n[12:00:00] INFO     fake line" + "D" * 5000


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNAVAILABLE,
    ],
)
def test_an_aggregators_status_message_cannot_colour_forge_lines_or_flood(code):
    # Execute
    error = classify_rpc_error(StatusError(code, HOSTILE), "agg.example:50051")

    # Assert: no escape character, no line of the peer's at column 0, bounded
    assert "\x1b" not in error.message and "\x07" not in error.message
    assert all(not line.startswith("[12:00:00]") for line in error.message.splitlines())
    assert len(error.message) < 1200


def test_a_busy_aggregators_reason_is_shown_escaped_and_cut(caplog):
    # Prepare
    answers = [StatusError(grpc.StatusCode.UNAVAILABLE, "FX-X " + HOSTILE)]

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedrun"):
        assert retried("get tasks", answers) == 7

    # Assert
    assert "\x1b" not in caplog.text and "\\x1b[31;1m" in caplog.text
    assert len(caplog.text) < 1500


class SilentStream:
    """A streamed reply the aggregator keeps open and never feeds: iterating blocks until the
    call is cancelled, then raises as gRPC does."""

    def __init__(self, first: list[int]) -> None:
        import threading

        self.first = list(first)
        self.cancelled = threading.Event()

    def __iter__(self):
        return self

    def __next__(self) -> int:
        if self.first:
            return self.first.pop(0)
        if not self.cancelled.wait(10):
            raise AssertionError("never cancelled")
        raise StatusError(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")

    def cancel(self) -> None:
        self.cancelled.set()


def test_a_stream_that_stops_bringing_data_is_cancelled_not_waited_on_forever(caplog):
    # Prepare
    network = Network("127.0.0.1", 9, "127.0.0.1", use_tls=False)
    client = AggregatorClient(network, "one", "h" * 64, "fed", None, sleep=lambda s: None)
    client.stall_seconds = 0.3
    stream = SilentStream([1, 2])
    received: list[int] = []

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedrun"), pytest.raises(grpc.RpcError) as caught:
        for message in client._watched(stream, "the model download of round 3"):
            received.append(message)
    client.close()

    # Assert: what came is kept, the call is cancelled (a retryable status), and said
    assert received == [1, 2]
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    # (the idle time is whole seconds: 0 here, 1 when a loaded machine wakes the watch late)
    assert re.search(
        r"the model download of round 3 from 127\.0\.0\.1:9 stalled \(no data for [01] s\)",
        caplog.text,
    )


def test_an_aggregator_that_accepts_but_does_not_answer_is_not_called_unreachable(caplog):
    # Prepare: it answered once, then lets a request for tasks run out of time
    network = Network("127.0.0.1", 9, "127.0.0.1", use_tls=False)
    client = AggregatorClient(network, "one", "h" * 64, "fed", None, sleep=lambda s: None)
    client._retry("ping", lambda: 1)
    answers = [StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")]

    def call() -> int:
        if answers:
            raise answers.pop()
        return 7

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedrun"):
        assert client._retry("get tasks", call) == 7
    client.close()

    # Assert
    assert "did not answer our get tasks in time (DEADLINE_EXCEEDED)" in caplog.text
    assert "unreachable" not in caplog.text


def test_time_spent_transferring_does_not_count_toward_the_reconnect_allowance():
    # Prepare: an upload that moves data for 0.8 s and then loses the link, with an allowance
    # of 0.5 s (before: counted from the upload's start, it was used up before the first
    # failure, and the collaborator stopped without a single retry)
    network = Network("127.0.0.1", 9, "127.0.0.1", use_tls=False, client_reconnect_timeout=0.5)
    client = AggregatorClient(network, "one", "h" * 64, "fed", None, sleep=lambda s: None)
    attempts: list[int] = []

    def call() -> int:
        attempts.append(1)
        if len(attempts) == 1:
            time.sleep(0.8)
            raise StatusError(grpc.StatusCode.UNAVAILABLE, "Socket closed")
        return 7

    # Execute, Assert: retried, and sent
    try:
        assert client._retry("send result", call) == 7
    finally:
        client.close()
    assert len(attempts) == 2
