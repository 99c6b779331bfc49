"""Nothing answers at the aggregator's address: the message says what to check, and with
``agg_port: auto`` that another plan means another port."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from fedrun.errors import ConnectionFailure
from fedrun.plan.loader import Plan
from fedrun.transport.diagnose import check_reachable
from fedrun.transport.network import Network
from fedrun.workspace.create import create_workspace


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


def network_of(tmp_path: Path, **settings: object) -> Network:
    ws = create_workspace(tmp_path / "ws", "no-op")
    path = ws / "plan" / "plan.yaml"
    config = yaml.safe_load(path.read_text())
    config["network"].setdefault("settings", {}).update({"agg_addr": "127.0.0.1", **settings})
    path.write_text(yaml.safe_dump(config))
    return Network.from_plan(Plan.load(path))


def test_an_auto_port_is_named_as_coming_from_the_plan_hash(tmp_path: Path):
    network = network_of(tmp_path, agg_port="auto")
    assert network.agg_port_auto
    network = Network(**{**network.__dict__, "agg_port": closed_port()})

    with pytest.raises(ConnectionFailure) as caught:
        check_reachable(network)

    assert caught.value.code == "FX-NET-013"
    assert "agg_port is auto" in caught.value.fix and "different plan" in caught.value.fix


def test_a_fixed_port_gets_no_plan_hash_hint(tmp_path: Path):
    network = network_of(tmp_path, agg_port=closed_port())
    assert not network.agg_port_auto

    with pytest.raises(ConnectionFailure) as caught:
        check_reachable(network)

    assert caught.value.code == "FX-NET-013" and "agg_port is auto" not in caught.value.fix
