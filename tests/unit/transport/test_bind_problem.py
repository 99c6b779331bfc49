"""Why the aggregator cannot listen: the cause named before gRPC's bare "Failed to bind"."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

from ports import free_port

from fedrun.transport.server import bind_problem


@contextlib.contextmanager
def another_listener() -> Iterator[int]:
    """A port on 127.0.0.1 another socket listens on, while the block runs."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def test_a_port_another_process_listens_on_is_named_in_use():
    with another_listener() as port:
        problem = bind_problem("127.0.0.1", port)

    assert problem is not None
    reason, fix = problem
    assert reason == f"port {port} is in use by another process (another aggregator?)"
    assert "agg_port" in fix


def test_an_address_not_on_this_host_is_named_and_the_fix_is_listen_addr():
    problem = bind_problem("192.0.2.1", free_port())  # TEST-NET-1: never a local address

    assert problem is not None
    reason, fix = problem
    assert reason == "192.0.2.1 is not an address of this host"
    assert "listen_addr" in fix


def test_a_free_port_has_no_problem_and_is_left_free():
    port = free_port()

    assert bind_problem("127.0.0.1", port) is None
    assert bind_problem("localhost", port) is None
    with socket.socket() as after:  # the probe closed its socket
        after.bind(("127.0.0.1", port))


def test_a_name_whose_one_address_is_taken_is_refused_not_half_served():
    # Prepare: localhost resolves to 127.0.0.1 (and ::1 where IPv6 is on); take 127.0.0.1 only
    with another_listener() as port:
        problem = bind_problem("localhost", port)

    # Assert: gRPC would listen on ::1 alone and IPv4 collaborators would reach `other`
    assert problem is not None and "in use" in problem[0]
