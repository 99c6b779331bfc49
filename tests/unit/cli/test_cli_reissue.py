"""Certificates are not silently replaced: a node that already holds a signed certificate keeps
its key unless told otherwise, the CA does not sign a second key for a certified name, and an
aggregator refuses to serve with a certificate its collaborators would refuse."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from cli_checks import assert_clean_failure
from click.testing import CliRunner

from fedrun.cli.main import cli
from fedrun.errors import CertificateError
from fedrun.transport.diagnose import probe_tls
from fedrun.transport.network import Network
from fedrun.transport.tls import server_credentials
from fedrun.workspace.create import create_workspace


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A no-op workspace with its CA, the current directory."""
    workspace = create_workspace(tmp_path / "ws", "no-op")
    monkeypatch.chdir(workspace)
    assert CliRunner().invoke(cli, ["workspace", "certify"]).exit_code == 0
    return workspace


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_a_certified_key_is_not_replaced_without_force(ws: Path):
    assert run("collaborator", "generate-cert-request", "-n", "one", "-s").exit_code == 0
    assert run("collaborator", "certify", "-n", "one", "-s").exit_code == 0
    key = ws / "cert" / "client" / "col_one.key"
    before = key.read_bytes()

    again = run("collaborator", "generate-cert-request", "-n", "one", "-s")

    assert_clean_failure(again, 4, "FX-PKI-020")
    assert key.read_bytes() == before
    forced = run("collaborator", "generate-cert-request", "-n", "one", "-s", "--force")
    assert forced.exit_code == 0 and key.read_bytes() != before


def test_the_ca_signs_a_second_key_for_a_certified_name_only_with_force(
    ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Prepare: `one` is certified; another node asks for a certificate under the same name
    assert run("collaborator", "generate-cert-request", "-n", "one", "-s").exit_code == 0
    assert run("collaborator", "certify", "-n", "one", "-s").exit_code == 0
    again = run("collaborator", "certify", "-n", "one", "-s")  # the same request: harmless
    assert again.exit_code == 0 and "already in plan/cols.yaml" in again.output
    certified = (ws / "cert" / "client" / "col_one.crt").read_bytes()
    rogue = create_workspace(tmp_path / "rogue", "no-op")
    monkeypatch.chdir(rogue)
    assert run("collaborator", "generate-cert-request", "-n", "one", "-s").exit_code == 0
    package = rogue / "col_one_to_agg_cert_request.zip"
    assert zipfile.is_zipfile(package)
    monkeypatch.chdir(ws)

    # Execute / Assert
    refused = run("collaborator", "certify", "-r", str(package), "-s")
    assert_clean_failure(refused, 4, "FX-PKI-020")
    assert (ws / "cert" / "client" / "col_one.crt").read_bytes() == certified
    assert run("collaborator", "certify", "-r", str(package), "-s", "--force").exit_code == 0


def test_the_aggregator_refuses_a_certificate_not_issued_for_its_address(ws: Path):
    assert run("aggregator", "generate-cert-request", "--fqdn", "agg.example.org").exit_code == 0
    assert run("aggregator", "certify", "--fqdn", "agg.example.org", "-s").exit_code == 0
    server = ws / "cert" / "server"
    for suffix in ("key", "crt"):  # the files of another name, under the plan's name
        (server / f"agg_localhost.{suffix}").write_bytes(
            (server / f"agg_agg.example.org.{suffix}").read_bytes()
        )

    with pytest.raises(CertificateError) as caught:
        server_credentials(ws / "cert", "localhost")
    assert caught.value.code == "FX-TLS-003" and "agg.example.org" in caught.value.message

    server_credentials(ws / "cert", "agg.example.org")  # its own name: accepted


def test_a_key_replaced_after_signing_is_named_by_the_connection_check(ws: Path):
    assert run("collaborator", "generate-cert-request", "-n", "one", "-s").exit_code == 0
    assert run("collaborator", "certify", "-n", "one", "-s").exit_code == 0
    forced = run("collaborator", "generate-cert-request", "-n", "one", "-s", "--force")
    assert forced.exit_code == 0

    network = Network("127.0.0.1", 9, "127.0.0.1", cert_folder=ws / "cert")
    with pytest.raises(CertificateError) as caught:
        probe_tls(network, "one")

    assert caught.value.code == "FX-PKI-016" and "col_one.key" in caught.value.message


def test_certify_refuses_the_ca_step_and_the_collaborator_step_together(ws: Path):
    assert run("collaborator", "generate-cert-request", "-n", "one", "-s").exit_code == 0
    package = ws / "col_one_to_agg_cert_request.zip"
    cols_before = (ws / "plan" / "cols.yaml").read_text()

    both = run("collaborator", "certify", "-r", str(package), "-i", "signed.zip", "-s")

    assert both.exit_code == 2
    assert "--request-pkg" in both.output and "give one of them" in both.output
    assert not (ws / "cert" / "client" / "col_one.crt").exists()  # nothing was signed
    assert (ws / "plan" / "cols.yaml").read_text() == cols_before
    forced_import = run("collaborator", "certify", "-i", "signed.zip", "--force")
    assert forced_import.exit_code == 2 and "--force" in forced_import.output
