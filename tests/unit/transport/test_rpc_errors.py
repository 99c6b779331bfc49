"""gRPC status codes become fedrun errors that name the problem."""

from __future__ import annotations

import logging

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
    ],
)  # fmt: skip
def test_status_codes_map_to_actionable_errors(code, details, expected):
    error = classify_rpc_error(StatusError(code, details), "agg.example:50051")
    assert error.code == expected
    assert details in error.message


def test_a_busy_aggregator_is_reported_with_its_reason_not_as_unreachable(caplog):
    # Prepare: the aggregator answers UNAVAILABLE with its reason once (disk full), then accepts
    network = Network("127.0.0.1", 9, "127.0.0.1", use_tls=False)
    client = AggregatorClient(network, "one", "h" * 64, "fed", None, sleep=lambda s: None)
    answers = [StatusError(grpc.StatusCode.UNAVAILABLE, "FX-STATE-005: cannot write x: full")]

    def call() -> int:
        if answers:
            raise answers.pop()
        return 7

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedrun"):
        assert client._retry("send result", call) == 7
    client.close()

    # Assert
    assert "cannot take our send result now (FX-STATE-005: cannot write x: full)" in caplog.text
    assert "unreachable" not in caplog.text
