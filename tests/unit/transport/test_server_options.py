"""The aggregator's gRPC options: a fixed receive window per upload, sized from the chunks."""

from __future__ import annotations

import pytest

from fedrun.constants import MAX_CHUNK_BYTES
from fedrun.transport.server import MIN_RECEIVE_WINDOW_BYTES, SERVER_OPTIONS, server_options


@pytest.mark.parametrize(
    ("chunk", "window"),
    [
        (4 << 10, MIN_RECEIVE_WINDOW_BYTES),
        (2 << 20, MIN_RECEIVE_WINDOW_BYTES),
        (4 << 20, 8 << 20),
        (MAX_CHUNK_BYTES, 2 * MAX_CHUNK_BYTES),
    ],
)
def test_window_holds_two_chunks_and_never_less_than_4_mib(chunk, window):
    assert MIN_RECEIVE_WINDOW_BYTES == 4 << 20
    options = dict(server_options(chunk))
    assert options["grpc.http2.lookahead_bytes"] == window
    assert options["grpc.http2.bdp_probe"] == 0  # probing would grow it with the socket


def test_every_common_option_is_kept():
    options = server_options(4 << 20)
    assert all(pair in options for pair in SERVER_OPTIONS)


class _Call:
    """What gRPC hands a handler, reduced to the part peer_address reads."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


@pytest.mark.parametrize(
    ("raw", "shown"),
    [("ipv6:%5B::1%5D:55176", "ipv6:[::1]:55176"), ("ipv4:127.0.0.1:5000", "ipv4:127.0.0.1:5000")],
)
def test_peer_addresses_are_shown_as_people_write_them(raw, shown):
    from fedrun.transport.server import peer_address

    assert peer_address(_Call(raw)) == shown
