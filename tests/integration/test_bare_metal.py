"""The seed's bare-metal walkthrough, step by step, across three node folders.

Only the zip files move between the aggregator node and the two collaborator nodes, as they
would between organisations. Everything runs over 127.0.0.1 with mutual TLS.
"""

from __future__ import annotations

from pathlib import Path

from fxnodes import Nodes, copy, fx, set_plan
from ports import free_port

from fedrun.storage.model_file import load_model


def test_seed_walkthrough_three_nodes(tmp_path: Path, nodes: Nodes) -> None:
    agg_node, col_nodes = tmp_path / "aggregator-node", [tmp_path / "node1", tmp_path / "node2"]
    for d in (agg_node, *col_nodes):
        d.mkdir()

    # STEP 1 on the aggregator node: workspace and plan
    fx(agg_node, "workspace", "create", "--prefix", "ws", "--template", "torch/digits")
    ws = agg_node / "ws"
    set_plan(ws, agg_port=free_port())
    fx(ws, "plan", "initialize", "-a", "localhost")
    assert (ws / "save" / "init.pbuf").is_file()

    # STEP 2: certificate authority, aggregator certificate, export
    fx(ws, "workspace", "certify")
    req = fx(ws, "aggregator", "generate-cert-request", "--fqdn", "localhost")
    assert "CSR hash" in req.stdout
    fx(ws, "aggregator", "certify", "--fqdn", "localhost", "-s")
    for name in (
        "cert/cert_chain.crt",
        "cert/server/agg_localhost.crt",
        "cert/server/agg_localhost.key",
    ):
        assert (ws / name).is_file(), name
    fx(ws, "workspace", "export")
    archive = ws / "ws.zip"
    assert archive.is_file()

    # on each collaborator node: import, create, request; CA signs; import the signed cert
    names = ["alpha", "bravo"]
    col_ws = []
    for index, (node, name) in enumerate(zip(col_nodes, names, strict=True), 1):
        copy(archive, node)
        fx(node, "workspace", "import", "--archive", "ws.zip", "--no-install")
        cws = node / "ws"
        col_ws.append(cws)
        assert not list((cws / "cert").rglob("*.key")), "the archive must carry no keys"
        fx(cws, "collaborator", "create", "-n", name, "-d", str(index))
        out = fx(cws, "collaborator", "generate-cert-request", "-n", name)
        col_hash = out.stdout.split("CSR hash (SHA-384):")[1].split()[0]
        request = cws / f"col_{name}_to_agg_cert_request.zip"
        assert request.is_file()
        copy(request, ws)
        signed = fx(ws, "collaborator", "certify", "--request-pkg", request.name, "-s")
        assert col_hash in signed.stdout, "the CA shows the same CSR hash for the out-of-band check"
        package = ws / f"agg_to_col_{name}_signed_cert.zip"
        copy(package, cws)
        fx(cws, "collaborator", "certify", "--import", package.name)
        assert (cws / "cert" / "client" / f"col_{name}.crt").is_file()
    assert "alpha" in (ws / "plan" / "cols.yaml").read_text()
    assert "bravo" in (ws / "plan" / "cols.yaml").read_text()

    # STEP 3: start the federation
    nodes.start("aggregator", ws, "aggregator", "start")
    nodes.wait_for_log("aggregator", "listening on")
    ping = fx(col_ws[0], "collaborator", "ping", "-n", "alpha", timeout=60)
    assert "accepted" in ping.stdout
    for cws, name in zip(col_ws, names, strict=True):
        nodes.start(name, cws, "collaborator", "start", "-n", name)
    for name in names:
        assert nodes.wait(name) == 0, nodes.log(name)[-3000:]
    assert nodes.wait("aggregator") == 0, nodes.log("aggregator")[-3000:]
    last = load_model(ws / "save" / "last.pbuf")
    assert last.round == 3 and last.kind == "last"
    assert "mutual TLS" in nodes.log("aggregator")
    # each collaborator left once its final validation was acknowledged, without a "quit"
    for name in names:
        assert "its last tasks are in, stopping" in nodes.log(name)
    assert "told to stop" not in nodes.log("aggregator")
