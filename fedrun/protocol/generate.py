"""Regenerate the committed protobuf modules from ``federation.proto``.

Run ``python -m fedrun.protocol.generate`` after editing the ``.proto`` (needs grpcio-tools, a
dev dependency). ``tests/unit/protocol/test_generated.py`` fails when the committed modules no
longer match the ``.proto``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
GENERATED = ("federation_pb2.py", "federation_pb2_grpc.py", "federation_pb2.pyi")


def generate(out_dir: Path) -> dict[str, str]:
    """Compile ``federation.proto`` into ``out_dir`` and return ``{file name: text}``."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "fedrun" / "protocol"
        src.mkdir(parents=True)
        (src / "federation.proto").write_bytes((HERE / "federation.proto").read_bytes())
        code = protoc.main(
            [
                "protoc",
                f"-I{tmp}",
                f"--python_out={out_dir}",
                f"--pyi_out={out_dir}",
                f"--grpc_python_out={out_dir}",
                str(src / "federation.proto"),
            ]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}")
    gen = out_dir / "fedrun" / "protocol"
    return {name: (gen / name).read_text() for name in GENERATED}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
    for name, text in files.items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
