"""`fx simulate --plan-set` of a network setting the simulation chooses itself is refused,
not silently replaced."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrun.errors import WorkspaceError
from fedrun.simulate.local import LocalFederation


@pytest.mark.parametrize(
    "item",
    ["network.agg_port=70000", "network.settings.agg_addr=10.0.0.5", "network.use_tls=false"],
)
def test_a_setting_the_simulation_owns_is_refused(tmp_path: Path, item: str):
    with pytest.raises(WorkspaceError) as caught:
        LocalFederation(tmp_path / "ws", template="no-op", plan_set=[item])

    assert caught.value.code == "FX-SIM-004"
    assert "fx simulate sets network.settings." in caught.value.message


def test_other_network_settings_pass(tmp_path: Path):
    LocalFederation(tmp_path / "ws", template="no-op", plan_set=["network.chunk_bytes=2097152"])
