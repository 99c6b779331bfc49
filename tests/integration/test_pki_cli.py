"""Certificate commands as a person runs them: FQDN defaults, tampered packages, bind address."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from fxnodes import Nodes, fx, fx_env, set_plan
from ports import free_port

from fedrun import pki


def _fx_with_env(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedrun.cli.main", *args],
        cwd=cwd,
        env={**fx_env(), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_fqdn_environment_variable_names_the_aggregator(tmp_path: Path) -> None:
    fx(tmp_path, "workspace", "create", "--prefix", "ws", "--template", "no-op")
    ws = tmp_path / "ws"
    out = _fx_with_env(ws, {"FQDN": "Agg.Example.ORG"}, "plan", "initialize")
    assert out.returncode == 0, out.stderr
    assert "agg_addr: agg.example.org" in (ws / "plan" / "plan.yaml").read_text()
    fx(ws, "workspace", "certify")
    req = _fx_with_env(ws, {"FQDN": "agg.example.org"}, "aggregator", "generate-cert-request")
    assert req.returncode == 0, req.stderr
    assert (ws / "cert" / "server" / "agg_agg.example.org.csr").is_file()
    key = ws / "cert" / "server" / "agg_agg.example.org.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    signed = _fx_with_env(ws, {"FQDN": "agg.example.org"}, "aggregator", "certify", "-s")
    assert signed.returncode == 0, signed.stderr
    cert = pki.load_certificate(ws / "cert" / "server" / "agg_agg.example.org.crt", "cert", "")
    assert pki.certificate_common_name(cert) == "agg.example.org"


def test_missing_aggregator_certificate_names_the_command(tmp_path: Path) -> None:
    fx(tmp_path, "workspace", "create", "--prefix", "ws", "--template", "no-op")
    ws = tmp_path / "ws"
    fx(ws, "plan", "initialize", "-a", "localhost")
    (ws / "plan" / "cols.yaml").write_text("collaborators: [one]\n")
    fx(ws, "workspace", "certify")
    out = fx(ws, "aggregator", "start", check=False)
    assert out.returncode == 4
    assert "fx aggregator generate-cert-request --fqdn localhost" in out.stderr
    assert "Traceback" not in out.stderr


def test_tampered_signed_package_is_refused(tmp_path: Path) -> None:
    fx(tmp_path, "workspace", "create", "--prefix", "ca", "--template", "no-op")
    ca_ws = tmp_path / "ca"
    fx(ca_ws, "workspace", "certify")
    fx(tmp_path, "workspace", "create", "--prefix", "col", "--template", "no-op")
    col = tmp_path / "col"
    fx(col, "collaborator", "generate-cert-request", "-n", "alpha", "-s")
    (ca_ws / "plan").mkdir(exist_ok=True)
    fx(
        ca_ws,
        "collaborator",
        "certify",
        "--request-pkg",
        str(col / "col_alpha_to_agg_cert_request.zip"),
        "-s",
    )
    package = ca_ws / "agg_to_col_alpha_signed_cert.zip"
    with zipfile.ZipFile(package) as zf:
        entries = {i.filename: zf.read(i) for i in zf.infolist()}
    name = next(n for n in entries if n.endswith(".crt") and "client" in n)
    pem = entries[name].decode()
    lines = pem.splitlines()
    body = lines[5]
    lines[5] = body[:10] + ("A" if body[10] != "A" else "B") + body[11:]
    entries[name] = ("\n".join(lines) + "\n").encode()
    tampered = col / "agg_to_col_alpha_signed_cert.zip"
    with zipfile.ZipFile(tampered, "w") as zf:
        for entry, data in entries.items():
            zf.writestr(entry, data)
    out = fx(col, "collaborator", "certify", "--import", tampered.name, check=False)
    assert out.returncode == 4, out.stdout + out.stderr
    assert "FX-PKI-0" in out.stderr and "Traceback" not in out.stderr
    assert not (col / "cert" / "client" / "col_alpha.crt").exists(), (
        "nothing is written from a bad package"
    )


def _listening(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (read from /proc, no traffic)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                found.add(addr)
    return found


def test_aggregator_binds_only_the_plan_address(tmp_path: Path, nodes: Nodes) -> None:
    fx(tmp_path, "workspace", "create", "--prefix", "ws", "--template", "no-op")
    ws = tmp_path / "ws"
    port = free_port()
    set_plan(ws, agg_port=port, agg_addr="127.0.0.1", use_tls=False)
    (ws / "plan" / "cols.yaml").write_text("collaborators: [one]\n")
    fx(ws, "plan", "initialize")
    nodes.start("aggregator", ws, "aggregator", "start")
    nodes.wait_for_log("aggregator", "listening on")
    addresses = _listening(port)
    loopback_v4 = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, also v4-mapped
    assert addresses and addresses <= loopback_v4, addresses  # never 0.0.0.0 or [::]


def test_import_unpacks_installs_on_request_and_ping_names_connectivity(tmp_path: Path) -> None:
    fx(tmp_path, "workspace", "create", "--prefix", "ws", "--template", "no-op")
    ws = tmp_path / "ws"
    set_plan(ws, agg_port=free_port(), agg_addr="127.0.0.1", use_tls=False)
    (ws / "requirements.txt").write_text("numpy\n")  # what the workspace's code needs
    fx(ws, "plan", "initialize")
    fx(ws, "workspace", "export")
    node, other = tmp_path / "node", tmp_path / "other"
    node.mkdir()
    other.mkdir()
    out = fx(node, "workspace", "import", "--archive", str(ws / "ws.zip"))
    assert "imported workspace" in out.stdout and "were not installed" in out.stdout
    assert (node / "ws" / "requirements.txt").read_text() == "numpy\n"
    installed = fx(
        other, "workspace", "import", "--archive", str(ws / "ws.zip"), "--install",
        timeout=300,
    )  # fmt: skip
    assert "imported workspace" in installed.stdout
    fx(node / "ws", "collaborator", "create", "-n", "one", "-d", "1")
    ping = fx(node / "ws", "collaborator", "ping", "-n", "one", check=False)
    assert ping.returncode == 5 and "FX-NET-013" in ping.stderr and "nothing answers" in ping.stderr


def test_initialize_from_a_given_model(tmp_path: Path) -> None:
    import numpy as np

    from fedrun.storage.model_file import load_model, save_model

    fx(tmp_path, "workspace", "create", "--prefix", "ws", "--template", "no-op")
    ws = tmp_path / "ws"
    fx(ws, "plan", "initialize", "-a", "localhost")
    start = load_model(ws / "save" / "init.pbuf").tensors
    given = {k: np.full_like(v, 7.0) for k, v in start.items()}
    save_model(tmp_path / "pretrained.pbuf", given, round_num=0)
    fx(ws, "plan", "initialize", "-i", str(tmp_path / "pretrained.pbuf"))
    loaded = load_model(ws / "save" / "init.pbuf").tensors
    assert all(np.array_equal(loaded[k], given[k]) for k in given)


def test_unwritable_save_folder_fails_before_the_first_round(tmp_path: Path) -> None:
    import shutil

    fx(tmp_path, "workspace", "create", "--prefix", "ws", "--template", "no-op")
    ws = tmp_path / "ws"
    set_plan(ws, agg_addr="127.0.0.1", agg_port=free_port(), use_tls=False)
    (ws / "plan" / "cols.yaml").write_text("collaborators: [one]\n")
    fx(ws, "plan", "initialize")
    plan = (
        (ws / "plan" / "plan.yaml")
        .read_text()
        .replace("best_state_path: save/best.pbuf", "best_state_path: blocked/best.pbuf")
    )
    (ws / "plan" / "plan.yaml").write_text(plan)
    (ws / "blocked").write_text("a file where a folder should be\n")  # root ignores chmod
    out = fx(ws, "aggregator", "start", check=False)
    assert out.returncode == 8, out.stderr
    assert (
        "FX-STATE-004" in out.stderr and "blocked" in out.stderr and "Traceback" not in out.stderr
    )
    shutil.rmtree(ws / "local_state", ignore_errors=True)


def test_rsa_keys_from_the_command_line_run_a_federation(tmp_path: Path, nodes: Nodes) -> None:
    """`--key-type rsa` (RSA-3072) for the CA, the aggregator and a collaborator: the whole
    certificate flow and a mutual-TLS federation work with them."""
    fx(tmp_path, "workspace", "create", "--prefix", "ws", "--template", "no-op")
    ws = tmp_path / "ws"
    set_plan(ws, agg_port=free_port())
    fx(ws, "plan", "initialize", "-a", "localhost")
    fx(ws, "workspace", "certify", "--key-type", "rsa")
    fx(ws, "aggregator", "generate-cert-request", "--fqdn", "localhost", "--key-type", "rsa")
    fx(ws, "aggregator", "certify", "--fqdn", "localhost", "-s")
    fx(ws, "collaborator", "create", "-n", "one", "-d", "1")
    fx(ws, "collaborator", "generate-cert-request", "-n", "one", "-s", "--key-type", "rsa")
    fx(ws, "collaborator", "certify", "--request-pkg", "col_one_to_agg_cert_request.zip", "-s")
    fx(ws, "collaborator", "certify", "--import", "agg_to_col_one_signed_cert.zip")
    for key in (
        "ca/root-ca/private/root-ca.key",
        "ca/signing-ca/private/signing-ca.key",
        "server/agg_localhost.key",
        "client/col_one.key",
    ):
        loaded = pki.load_private_key(ws / "cert" / key, "key")
        assert isinstance(loaded, rsa.RSAPrivateKey) and loaded.key_size == 3072, key

    nodes.start("aggregator", ws, "aggregator", "start")
    nodes.start("one", ws, "collaborator", "start", "-n", "one")
    assert nodes.wait("one") == 0, nodes.log("one")[-3000:]
    assert nodes.wait("aggregator") == 0, nodes.log("aggregator")[-3000:]
    assert "mutual TLS" in nodes.log("aggregator")

    bad = fx(
        ws, "collaborator", "generate-cert-request", "-n", "two", "--key-type", "dsa", check=False
    )
    assert bad.returncode != 0 and "'dsa' is not one of 'ec', 'rsa'" in bad.stderr
