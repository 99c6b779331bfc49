"""Peers holding a certificate of the federation's CA cannot take the aggregator from the others.

The aggregator serves over real mutual TLS on loopback (in this process, so the time an upload
may take to send its first message can be shortened); hostile peers are plain gRPC clients with
real certificates: one certified but no longer in cols.yaml, one a member that opens calls and
never completes them, one that claims huge names full of control characters. Each time the
honest collaborator is still served at once, and the aggregator's log stays short.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fedrun import pki
from fedrun.federation.aggregator import Aggregator
from fedrun.plan.components import build_aggregator
from fedrun.plan.loader import Plan
from fedrun.protocol import federation_pb2 as pb
from fedrun.protocol import federation_pb2_grpc as pb_grpc
from fedrun.simulate.local import LocalFederation
from fedrun.transport import server as server_module
from fedrun.transport.admission import MAX_CALLS_PER_PEER
from fedrun.transport.network import Network
from fedrun.transport.server import AggregatorServer
from fedrun.transport.tls import client_credentials, server_credentials

SERVICE = "/fedrun.v1.Federation/"
#: every method, as a call whose request (or upload) never comes: (name, whether it streams back)
SILENT_CALLS = [
    ("SubmitResults", False),
    ("Ping", False),
    ("GetTasks", False),
    ("GetTensors", True),
]


class Federation:
    """A prepared no-op workspace with its aggregator serving in this process."""

    def __init__(self, root: Path) -> None:
        local = LocalFederation(root / "ws", template="no-op", collaborators=2, rounds=1)
        local.prepare()
        self.workspace = local.workspace
        ca = pki.load_certificate_authority(self.workspace / "cert")
        paths = pki.collaborator_paths(self.workspace / "cert", "mallory")
        pki.generate_csr("mallory", server=False, key_path=paths.key, csr_path=paths.csr)
        pki.sign_csr(ca, paths.csr, paths.crt, server=False)  # certified, not in cols.yaml
        self.plan = Plan.load(self.workspace / "plan" / "plan.yaml")
        self.network = Network.from_plan(self.plan)
        self.aggregator: Aggregator = build_aggregator(self.plan)
        credentials = server_credentials(self.network.cert_folder, self.network.agg_addr)
        self.server = AggregatorServer(self.aggregator, self.network, credentials)
        self.server.start()
        self.channels: list[grpc.Channel] = []

    def channel(self, certificate: str) -> grpc.Channel:
        """A connection of its own with ``certificate``'s key (a new TCP connection each)."""
        options = [("grpc.use_local_subchannel_pool", 1)]
        channel = grpc.secure_channel(
            self.network.target,
            client_credentials(self.network.cert_folder, certificate),
            options=options,
        )
        self.channels.append(channel)
        return channel

    def header(self, name: str) -> pb.Header:
        return pb.Header(
            collaborator=name, plan_hash=self.plan.hash, federation_id=self.plan.federation_id
        )

    def ping(self, certificate: str, name: str | None = None, timeout: float = 5) -> str:
        stub = pb_grpc.FederationStub(self.channel(certificate))
        request = pb.PingRequest(header=self.header(name or certificate))
        return stub.Ping(request, timeout=timeout).message

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.server.stop(grace=None)
        self.aggregator.state_store.close()


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    fed = Federation(tmp_path)
    try:
        yield fed
    finally:
        fed.close()


def silent_calls(
    fed: Federation, certificate: str, count: int, release: threading.Event, method: str
):
    """``count`` calls of ``method`` that open and send nothing until ``release`` (a peer can
    do that to a method with one request too); their futures."""

    def nothing() -> Iterator[bytes]:
        release.wait(60)
        return
        yield b""

    streams_back = dict(SILENT_CALLS)[method]
    calls = []
    for _ in range(count):
        channel = fed.channel(certificate)
        if streams_back:
            calls.append(channel.stream_stream(SERVICE + method)(nothing(), timeout=60))
        else:
            calls.append(channel.stream_unary(SERVICE + method).future(nothing(), timeout=60))
    return calls


@pytest.mark.parametrize("method", [m for m, _ in SILENT_CALLS])
def test_a_certified_peer_not_in_cols_yaml_is_refused_before_it_holds_a_thread(
    federation: Federation, caplog: pytest.LogCaptureFixture, method: str
) -> None:
    # Execute: mallory opens far more silent calls than the aggregator has threads (a Ping
    # whose request never came held its thread before any check: gRPC waited for it)
    release = threading.Event()
    with caplog.at_level(logging.WARNING, logger="fedrun.server"):
        try:
            calls = silent_calls(federation, "mallory", 60, release, method)
            # Assert: every one is refused at once, naming the reason...
            for call in calls:
                error = call.exception(timeout=20)
                assert error is not None and error.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "FX-AUTH-003" in error.details()
            # ... and the collaborator is served meanwhile
            assert federation.ping("collaborator1", timeout=5) == "ok"
        finally:
            release.set()
    refusals = [r.getMessage() for r in caplog.records if "mallory" in r.getMessage()]
    assert len(refusals) == 1, refusals  # once per peer and reason, not once per call
    assert "'mallory' is not in this federation's plan/cols.yaml" in refusals[0]


@pytest.mark.parametrize("method", [m for m, _ in SILENT_CALLS])
def test_a_member_holds_at_most_its_allowance_and_a_silent_call_ends(
    federation: Federation, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    # Prepare: a call that sends nothing for 2 s is ended
    monkeypatch.setattr(server_module, "FIRST_MESSAGE_SECONDS", 2.0)
    release = threading.Event()
    try:
        # Execute: collaborator2 opens as many silent calls as it may
        calls = silent_calls(federation, "collaborator2", MAX_CALLS_PER_PEER, release, method)
        deadline = time.monotonic() + 10
        while federation.server.servicer.admission.open_calls("collaborator2") < len(calls):
            assert time.monotonic() < deadline, "the uploads never reached the aggregator"
            time.sleep(0.05)

        # Assert: one more call of its own is refused for now, the other collaborator is served
        with pytest.raises(grpc.RpcError) as info:
            federation.ping("collaborator2")
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.details().startswith("FX-AUTH-011: collaborator2 has 6 calls open")
        assert federation.ping("collaborator1") == "ok"

        # ... and the silent calls are ended after 2 s, freeing their threads
        started = time.monotonic()
        for call in calls:
            error = call.exception(timeout=20)
            assert error is not None and error.code() == grpc.StatusCode.CANCELLED
        assert time.monotonic() - started < 10
    finally:
        release.set()
    deadline = time.monotonic() + 10
    while federation.server.servicer.admission.open_calls("collaborator2"):
        assert time.monotonic() < deadline, "the ended calls were still counted"
        time.sleep(0.05)
    assert federation.ping("collaborator2") == "ok"


def test_claimed_names_can_neither_fill_nor_forge_the_log(
    federation: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    # Execute: collaborator1's certificate claims 100 KB names that start new log lines
    forged = "x\n2026-01-01 ERROR fedrun.aggregator: forged line\x1b[31m" + "y" * 100_000
    with caplog.at_level(logging.INFO, logger="fedrun.server"):
        for i in range(30):
            with pytest.raises(grpc.RpcError) as info:
                federation.ping("collaborator1", name=f"{i}{forged}")
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "FX-AUTH-002" in info.value.details()
            assert len(info.value.details()) < 1000

    # Assert: one short line, control characters escaped
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, [line[:200] for line in lines]
    assert len(lines[0]) < 400
    assert "\n" not in lines[0] and "\x1b" not in lines[0]
    assert "used to claim the name '0x\\n2026-01-01 ERROR" in lines[0]


def test_a_fault_of_the_aggregator_s_own_is_logged_there_and_the_peer_told_where_to_look(
    federation: Federation, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from fedrun.errors import ProtocolError
    from fedrun.transport.client import AggregatorClient

    # Prepare: storing a result fails with an error nothing expects (a bug)
    def broken(result: object) -> bool:
        raise OverflowError("Python int too large to convert to SQLite INTEGER")

    monkeypatch.setattr(federation.aggregator.state_store, "record_result", broken)
    client = AggregatorClient(
        federation.network,
        "collaborator1",
        federation.plan.hash,
        federation.plan.federation_id,
        client_credentials(federation.network.cert_folder, "collaborator1"),
    )
    try:
        assignment = client.get_tasks()
        task = assignment.tasks[0]

        # Execute
        with (
            caplog.at_level(logging.ERROR, logger="fedrun.server"),
            pytest.raises(ProtocolError) as info,
        ):
            client.submit(assignment.round, task, 1, {"accuracy": 1.0}, {}, ())
    finally:
        client.close()

    # Assert: the collaborator reads where to look, not the aggregator's internals; the
    # aggregator's log has the cause with its traceback
    assert "FX-STATE-031: the aggregator failed storing this result" in info.value.message
    assert "SQLite" not in info.value.message
    (record,) = caplog.records
    assert record.getMessage() == f"result of collaborator1 for {task} failed at the aggregator"
    assert record.exc_info is not None and "SQLite INTEGER" in str(record.exc_info[1])
