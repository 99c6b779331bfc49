"""A collaborator the aggregator refuses while it works (its heartbeat hears it) stops at once:
the refusal is raised in the main thread, in the middle of whatever it runs."""

from __future__ import annotations

import signal
import threading
import time

import fake_aggregator
import grpc
import pytest

from fedrun.errors import ConnectionFailure
from fedrun.nodes import _stop_when_refused
from fedrun.protocol import federation_pb2 as pb


def ping(request, context) -> pb.PingResponse:
    """Ping answered as the aggregator answers a second process under a collaborator's name."""
    context.abort(
        grpc.StatusCode.PERMISSION_DENIED,
        "FX-AUTH-006: another process is already working as collaborator 'one'",
    )


REFUSING = {
    "Ping": grpc.unary_unary_rpc_method_handler(
        ping,
        request_deserializer=pb.PingRequest.FromString,
        response_serializer=pb.PingResponse.SerializeToString,
    )
}


def test_a_refusal_heard_by_the_heartbeat_stops_the_work_in_progress():
    # Prepare: the main thread "trains" for up to 20 s; the heartbeat pings every 0.2 s
    previous = signal.getsignal(signal.SIGUSR1)
    started = time.monotonic()
    try:
        with fake_aggregator.serving(REFUSING) as client:
            _stop_when_refused(client)
            client.start_heartbeat(0.2)

            # Execute
            with pytest.raises(ConnectionFailure) as caught:
                while time.monotonic() - started < 20:
                    time.sleep(0.01)  # training steps
    finally:
        signal.signal(signal.SIGUSR1, previous)

    # Assert: stopped within a few heartbeats, with the aggregator's reason
    assert time.monotonic() - started < 5
    assert caught.value.code == "FX-AUTH-010"
    assert "another process is already working as collaborator" in caught.value.message


def test_outside_the_main_thread_nothing_is_installed():
    class Client:
        on_refused = None

    client = Client()
    thread = threading.Thread(target=_stop_when_refused, args=(client,))
    thread.start()
    thread.join()

    assert client.on_refused is None
