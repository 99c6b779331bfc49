"""`fx collaborator ping` checks the connection without the aggregator taking the collaborator
for joined (it may never start)."""

from __future__ import annotations

import logging

from result_uploads import make

from fedrun.protocol import federation_pb2 as pb
from fedrun.transport.server import FederationServicer


class Context:
    """The part of grpc.ServicerContext Ping uses without client certificates."""

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    def cancel(self) -> None:
        raise AssertionError("the request was there: nothing to cancel")


def ping(servicer: FederationServicer, probe: bool, process: str) -> pb.PingResponse:
    header = pb.Header(collaborator="a", plan_hash="h" * 64, federation_id="fed", process=process)
    return servicer.Ping(iter([pb.PingRequest(header=header, probe=probe)]), Context())


def test_a_ping_probe_is_not_a_collaborator_joining(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fedrun")
    servicer = FederationServicer(
        make(tmp_path), verify_peer_name=False, chunk_bytes=1 << 20, long_poll_seconds=1.0
    )

    assert ping(servicer, probe=True, process="ping-1").authorized
    ping(servicer, probe=True, process="ping-2")  # again within a minute: said once
    probed = [r.getMessage() for r in caplog.records]
    ping(servicer, probe=False, process="worker")

    assert probed == [
        "collaborator a checked its connection to this aggregator (fx collaborator ping)"
    ]
    assert caplog.records[-1].getMessage() == "collaborator a joined (round 0)"
