"""The committed protobuf modules are exactly what federation.proto compiles to."""

from __future__ import annotations

from pathlib import Path

import pytest

import fedrun.protocol
from fedrun.protocol.generate import GENERATED, generate

pytest.importorskip("grpc_tools")

PROTOCOL_DIR = Path(fedrun.protocol.__file__).resolve().parent


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    """Compile federation.proto once; returns the folder holding the fresh modules."""
    out = tmp_path_factory.mktemp("generated")
    texts = generate(out)
    assert set(texts) == {"federation_pb2.py", "federation_pb2_grpc.py", "federation_pb2.pyi"}
    return out / "fedrun" / "protocol"


@pytest.mark.parametrize("name", GENERATED)
def test_committed_module_is_byte_identical_to_the_regenerated_one(regenerated, name):
    # Execute
    fresh = (regenerated / name).read_bytes()
    committed = (PROTOCOL_DIR / name).read_bytes()

    # Assert
    assert fresh, f"protoc wrote an empty {name}"
    assert committed == fresh, (
        f"{name} is stale: run `python -m fedrun.protocol.generate` and commit the result"
    )
