"""gRPC mutual TLS really works with fedrun certificates (and refuses strangers)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc
import pytest

from fedrun.pki import CertificateAuthority, ParticipantPaths

Issue = Callable[..., ParticipantPaths]
_METHOD = "/fedrun.test.Identity/WhoAmI"


def _who_am_i(request: bytes, context: grpc.ServicerContext) -> bytes:
    names = context.auth_context().get("x509_common_name", [])
    return names[0] if names else b""


@contextmanager
def _server(server_paths: ParticipantPaths, chain: bytes) -> Iterator[int]:
    handler = grpc.method_handlers_generic_handler(
        "fedrun.test.Identity",
        {"WhoAmI": grpc.unary_unary_rpc_method_handler(_who_am_i)},
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    try:
        server.add_generic_rpc_handlers((handler,))
        credentials = grpc.ssl_server_credentials(
            [(server_paths.key.read_bytes(), server_paths.crt.read_bytes())],
            root_certificates=chain,
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
        assert port > 0
        server.start()
        yield port
    finally:
        server.stop(None)


def _call(port: int, client: ParticipantPaths, chain: bytes) -> bytes:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=chain,
        private_key=client.key.read_bytes(),
        certificate_chain=client.crt.read_bytes(),
    )
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        return channel.unary_unary(_METHOD)(b"", timeout=10)


@pytest.fixture
def aggregator(issue: Issue) -> ParticipantPaths:
    return issue("localhost", server=True)


def test_mutual_tls_identifies_the_collaborator(
    ca: CertificateAuthority, issue: Issue, aggregator: ParticipantPaths
) -> None:
    chain = ca.chain.read_bytes()
    collaborator = issue("site1")
    with _server(aggregator, chain) as port:
        assert _call(port, collaborator, chain) == b"site1"


def test_mutual_tls_with_rsa_participants(
    ca: CertificateAuthority, issue: Issue, aggregator: ParticipantPaths
) -> None:
    chain = ca.chain.read_bytes()
    collaborator = issue("rsa-site", key_type="rsa")
    with _server(aggregator, chain) as port:
        assert _call(port, collaborator, chain) == b"rsa-site"


def test_client_certificate_from_another_ca_is_refused(
    ca: CertificateAuthority, aggregator: ParticipantPaths, issue_other: Issue
) -> None:
    chain = ca.chain.read_bytes()
    stranger = issue_other("site1")
    with _server(aggregator, chain) as port, pytest.raises(grpc.RpcError) as info:
        _call(port, stranger, chain)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_server_certificate_from_another_ca_is_refused(
    ca: CertificateAuthority, issue: Issue, issue_other: Issue
) -> None:
    chain = ca.chain.read_bytes()
    impostor = issue_other("localhost", server=True)
    collaborator = issue("site1")
    with _server(impostor, chain) as port, pytest.raises(grpc.RpcError) as info:
        _call(port, collaborator, chain)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
