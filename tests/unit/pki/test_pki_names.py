"""Names, the default FQDN and the file layout."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from fedrun.errors import CertificateError
from fedrun.pki import (
    aggregator_paths,
    chain_path,
    collaborator_paths,
    default_fqdn,
    request_package_name,
    signed_certificate_paths,
    signed_package_name,
    validate_collaborator_name,
    validate_fqdn,
)


def test_default_fqdn_prefers_env_and_lowercases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FQDN", "Agg.Example.ORG")
    assert default_fqdn() == "agg.example.org"


def test_default_fqdn_falls_back_to_getfqdn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FQDN", "  ")
    assert default_fqdn() == socket.getfqdn().lower()
    monkeypatch.delenv("FQDN")
    assert default_fqdn() == socket.getfqdn().lower()


@pytest.mark.parametrize("name", ["one", "site1", "Hospital-A", "a.b_c-d", "9", "x" * 64])
def test_valid_collaborator_names(name: str) -> None:
    assert validate_collaborator_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-x", "_x", ".x", "a/b", "../x", "a b", "é", "x" * 65, "a\nb", "a:b"]
)
def test_invalid_collaborator_names(name: str) -> None:
    with pytest.raises(CertificateError) as info:
        validate_collaborator_name(name)
    assert info.value.code == "FX-PKI-003"


@pytest.mark.parametrize(
    "name", ["localhost", "agg.example.org", "AGG-1.local", "10.0.0.5", "::1", "my_host"]
)
def test_valid_fqdns(name: str) -> None:
    assert validate_fqdn(name) == name


@pytest.mark.parametrize(
    "name", ["", "-agg", "agg-", "a..b", "../etc", "a/b", "1.2.3", "a" * 64 + ".org", "a b"]
)
def test_invalid_fqdns(name: str) -> None:
    with pytest.raises(CertificateError) as info:
        validate_fqdn(name)
    assert info.value.code == "FX-PKI-003"
    assert "--fqdn" in info.value.fix


def test_layout_paths(tmp_path: Path) -> None:
    agg = aggregator_paths(tmp_path, "agg.example.org")
    assert agg.key == tmp_path / "server" / "agg_agg.example.org.key"
    assert agg.csr == tmp_path / "server" / "agg_agg.example.org.csr"
    assert agg.crt == tmp_path / "server" / "agg_agg.example.org.crt"
    col = collaborator_paths(tmp_path, "one")
    assert (col.key, col.csr, col.crt) == (
        tmp_path / "client" / "col_one.key",
        tmp_path / "client" / "col_one.csr",
        tmp_path / "client" / "col_one.crt",
    )
    assert signed_certificate_paths(tmp_path, "one", server=False) == col
    assert chain_path(tmp_path) == tmp_path / "cert_chain.crt"
    assert request_package_name("one") == "col_one_to_agg_cert_request.zip"
    assert signed_package_name("one") == "agg_to_col_one_signed_cert.zip"


def test_layout_refuses_names_that_escape(tmp_path: Path) -> None:
    with pytest.raises(CertificateError):
        collaborator_paths(tmp_path, "../../etc/passwd")
    with pytest.raises(CertificateError):
        aggregator_paths(tmp_path, "../x")
