"""Every impostor is refused with a clear reason, and the real federation is not disturbed.

One aggregator (mutual TLS, two authorized collaborators) runs while impostors try it: a
certificate from another CA, a valid certificate under another collaborator's name, a certified
name no longer in cols.yaml, an expired certificate, a different plan, a plaintext client, a
request for tensors that are not the global model's. Each impostor gets a message naming its
problem, the aggregator logs a line for each, and the two real collaborators then finish.
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import grpc
import pytest
import yaml
from fxnodes import Nodes, fx

from fedrun import pki
from fedrun.protocol import federation_pb2 as pb
from fedrun.protocol import federation_pb2_grpc as pb_grpc
from fedrun.simulate.local import LocalFederation


def _impostor(ws: Path, root: Path, label: str, *, keep_client_certs: bool = False) -> Path:
    target = root / label
    shutil.copytree(
        ws, target, ignore=None if keep_client_certs else shutil.ignore_patterns("client")
    )
    (target / "cert" / "client").mkdir(exist_ok=True)
    return target


def _issue(
    ca: pki.CertificateAuthority, cert_dir: Path, name: str, **validity: datetime.datetime
) -> None:
    paths = pki.collaborator_paths(cert_dir, name)
    pki.generate_csr(name, server=False, key_path=paths.key, csr_path=paths.csr)
    pki.sign_csr(ca, paths.csr, paths.crt, server=False, **validity)


def _ping(workspace: Path, name: str):
    return fx(workspace, "collaborator", "ping", "-n", name, check=False, timeout=60)


@pytest.fixture
def federation(tmp_path: Path) -> LocalFederation:
    fed = LocalFederation(tmp_path / "ws", template="torch/digits", collaborators=2, rounds=1)
    fed.prepare()
    return fed


def test_impostors_are_refused_and_the_federation_finishes(
    tmp_path: Path, federation: LocalFederation, nodes: Nodes
) -> None:
    ws = federation.workspace
    ca = pki.load_certificate_authority(ws / "cert")
    imps = tmp_path / "impostors"

    # a certificate from another CA (the impostor trusts our chain, so it reaches the handshake)
    other_ca = pki.create_certificate_authority(tmp_path / "other" / "cert")
    other = _impostor(ws, imps, "other_ca")
    _issue(other_ca, other / "cert", "collaborator1")
    # a completely foreign node: its own CA and chain
    foreign = _impostor(ws, imps, "foreign")
    shutil.copy(tmp_path / "other" / "cert" / "cert_chain.crt", foreign / "cert" / "cert_chain.crt")
    _issue(other_ca, foreign / "cert", "collaborator1")
    # collaborator2's valid certificate presented as collaborator1
    swapped = _impostor(ws, imps, "swapped", keep_client_certs=True)
    c2 = pki.collaborator_paths(swapped / "cert", "collaborator2")
    c1 = pki.collaborator_paths(swapped / "cert", "collaborator1")
    shutil.copy(c2.crt, c1.crt)
    shutil.copy(c2.key, c1.key)
    # a certified name that is not (or no longer) in cols.yaml
    mallory = _impostor(ws, imps, "mallory")
    _issue(ca, mallory / "cert", "mallory")
    (mallory / "plan" / "data.yaml").write_text("mallory,1\n")
    # an expired certificate
    expired = _impostor(ws, imps, "expired")
    now = datetime.datetime.now(datetime.timezone.utc)
    _issue(
        ca,
        expired / "cert",
        "collaborator1",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    # a different plan
    replan = _impostor(ws, imps, "replan", keep_client_certs=True)
    plan = yaml.safe_load((replan / "plan" / "plan.yaml").read_text())
    plan["tasks"]["train"]["kwargs"]["epochs"] = 50
    (replan / "plan" / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    # a plaintext client
    plain = _impostor(ws, imps, "plain", keep_client_certs=True)
    plan = yaml.safe_load((plain / "plan" / "plan.yaml").read_text())
    plan["network"]["settings"]["use_tls"] = False
    (plain / "plan" / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))

    nodes.start("aggregator", ws, "aggregator", "start")
    nodes.wait_for_log("aggregator", "listening on")

    cases = {
        other: ("collaborator1", "FX-PKI-008"),
        foreign: ("collaborator1", "FX-TLS-004"),
        swapped: ("collaborator1", "FX-TLS-002"),  # seen locally; the aggregator's check below
        mallory: ("mallory", "FX-AUTH-003"),
        expired: ("collaborator1", "FX-PKI-009"),
        replan: ("collaborator1", "FX-AUTH-004"),
        plain: ("collaborator1", "FX-TLS-007"),
    }
    for workspace, (name, code) in cases.items():
        result = _ping(workspace, name)
        assert result.returncode != 0, workspace.name
        assert code in result.stderr, f"{workspace.name}: {result.stderr}"
        assert "fix:" in result.stderr and "Traceback" not in result.stderr
        assert "ssl_transport_security" not in result.stderr  # gRPC's own line: said better

    # the handshake itself refuses other-CA and expired certificates even without local checks
    for workspace, reason in ((other, "not signed by this federation's CA"), (expired, "expired")):
        _raw_handshake(federation, workspace, "collaborator1")
        nodes.wait_for_log("aggregator", reason, timeout=15)

    # the aggregator itself refuses a valid certificate claiming another name
    _claim_another_name(federation, swapped)

    # a real collaborator may only fetch the global model
    _fetch_foreign_tensor(federation)

    log = nodes.log("aggregator")
    for expected in (
        "certificate of 'collaborator2' used to claim the name 'collaborator1'",
        "'mallory' is not in this federation's plan/cols.yaml",
        "runs a different plan",
        "client does not speak TLS",
        "not in the global model",
    ):
        assert expected in log, expected

    for name in federation.names:
        nodes.start(name, ws, "collaborator", "start", "-n", name)
    for name in federation.names:
        assert nodes.wait(name) == 0, nodes.log(name)[-2000:]
    assert nodes.wait("aggregator") == 0
    assert (ws / "save" / "last.pbuf").is_file()


def _channel(federation: LocalFederation, cert_dir: Path, name: str) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(cert_dir / "cert_chain.crt").read_bytes(),
        private_key=pki.collaborator_paths(cert_dir, name).key.read_bytes(),
        certificate_chain=pki.collaborator_paths(cert_dir, name).crt.read_bytes(),
    )
    return grpc.secure_channel(f"localhost:{federation.port}", creds)


def _raw_handshake(federation: LocalFederation, workspace: Path, name: str) -> None:
    from fedrun.plan.loader import Plan

    plan = Plan.load(workspace / "plan" / "plan.yaml")
    header = pb.Header(collaborator=name, plan_hash=plan.hash, federation_id=plan.federation_id)
    with (
        _channel(federation, workspace / "cert", name) as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        pb_grpc.FederationStub(channel).Ping(pb.PingRequest(header=header), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def _claim_another_name(federation: LocalFederation, workspace: Path) -> None:
    """collaborator2's certificate (in collaborator1's files) claiming collaborator1, past the
    local checks fx makes before it connects."""
    from fedrun.plan.loader import Plan

    plan = Plan.load(workspace / "plan" / "plan.yaml")
    header = pb.Header(
        collaborator="collaborator1", plan_hash=plan.hash, federation_id=plan.federation_id
    )
    with (
        _channel(federation, workspace / "cert", "collaborator1") as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        pb_grpc.FederationStub(channel).Ping(pb.PingRequest(header=header), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "FX-AUTH-002" in (info.value.details() or "")


def _fetch_foreign_tensor(federation: LocalFederation) -> None:
    from fedrun.plan.loader import Plan

    ws = federation.workspace
    plan = Plan.load(ws / "plan" / "plan.yaml")
    header = pb.Header(
        collaborator="collaborator1", plan_hash=plan.hash, federation_id=plan.federation_id
    )
    with _channel(federation, ws / "cert", "collaborator1") as channel:
        stub = pb_grpc.FederationStub(channel)
        request = pb.GetTensorsRequest(header=header, round=0, names=["collaborator2/fc1.weight"])
        with pytest.raises(grpc.RpcError) as info:
            list(stub.GetTensors(request, timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "only fetch the global model" in info.value.details()


def test_a_stalled_upload_does_not_hold_a_cut_off_round_open(tmp_path: Path, nodes: Nodes) -> None:
    """collaborator3 (a valid certificate) starts its result and goes silent with the stream
    open: past the cut-off the aggregator drops the upload, ends the call, and the round
    closes with the other two."""
    import threading
    import time

    import numpy as np

    from fedrun.plan.loader import Plan
    from fedrun.protocol.codec import encode_tensor, serialize_frame
    from fedrun.transport.tls import client_credentials

    fed = LocalFederation(
        tmp_path / "ws",
        template="torch/digits",
        collaborators=3,
        rounds=1,
        plan_set=[
            "straggler_handling_policy.template=openfl.component.aggregator.straggler_handling.CutoffTimePolicy",
            "straggler_handling_policy.settings={straggler_cutoff_time: 2, minimum_reporting: 2}",
            "aggregator.settings.collaborator_timeout=3",
        ],
    )
    fed.prepare()
    ws = fed.workspace
    plan = Plan.load(ws / "plan" / "plan.yaml")
    nodes.start("aggregator", ws, "aggregator", "start")
    nodes.wait_for_log("aggregator", "listening on")

    header = pb.Header(
        collaborator="collaborator3", plan_hash=plan.hash, federation_id=plan.federation_id
    )
    channel = grpc.secure_channel(
        f"localhost:{fed.port}", client_credentials(ws / "cert", "collaborator3")
    )
    release = threading.Event()
    try:
        tasks = pb_grpc.FederationStub(channel).GetTasks(
            pb.GetTasksRequest(header=header, wait_ms=20_000), timeout=30
        )
        assert "train" in tasks.tasks
        weights = np.zeros((64, 128), dtype=np.float32)  # fc1.weight of torch/digits
        tensor = [bytes(serialize_frame(f)) for f in encode_tensor("fc1.weight", weights)]

        def stalling():  # (run twice: cancelled by the client, then left to stall)
            result = pb.ResultHeader(
                header=header,
                round=tasks.round,
                task="train",
                data_size=10,
                tensor_count=8,
                run=tasks.run,
                metrics={"loss": 1.0},
            )
            yield bytes(serialize_frame(pb.TensorFrame(result=result)))
            yield tensor[0]  # the tensor's header; its data never comes
            release.wait(120)

        submit = channel.stream_unary(
            "/fedrun.v1.Federation/SubmitResults",
            request_serializer=lambda b: b,
            response_deserializer=pb.SubmitResultsResponse.FromString,
        )
        # an upload the collaborator itself breaks off: said, nothing of it counts
        broken = submit.future(stalling(), timeout=120)
        nodes.wait_for_log("aggregator", "collaborator3 joined", timeout=30)
        time.sleep(1.5)  # the aggregator has opened the upload
        broken.cancel()
        # said as a broken stream, or, when the end of the stream reaches the aggregator before
        # the cancellation, as a tensor that ended early
        deadline = time.monotonic() + 30
        said = ("collaborator3 for train cut off before", "'fc1.weight' ended after 0 of")
        while not any(text in nodes.log("aggregator") for text in said):
            assert time.monotonic() < deadline, nodes.log("aggregator")
            time.sleep(0.1)

        call = submit.future(stalling(), timeout=120)
        for name in ("collaborator1", "collaborator2"):
            nodes.start(name, ws, "collaborator", "start", "-n", name)

        # the aggregator drops the upload and ends the call; the round closes without it
        with pytest.raises(grpc.RpcError) as info:
            call.result(timeout=90)
        assert info.value.code() == grpc.StatusCode.CANCELLED
        nodes.wait_for_log("aggregator", "dropped collaborator3's upload of train", timeout=30)
        for name in ("collaborator1", "collaborator2"):
            assert nodes.wait(name) == 0, nodes.log(name)[-2000:]
        log = nodes.log("aggregator")
        assert "round 0 closed without waiting for its stragglers: collaborator3" in log
        after_drop = log.split("dropped collaborator3's upload", 1)[1]
        assert "cut off before" not in after_drop and "ended after" not in after_drop  # said once
    finally:
        release.set()
        channel.close()
