"""Helpers for multi-process tests: run `fx`, start long-running nodes, always stop them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

SHARED_MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"


def fx_env(threads: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "FEDRUN_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "200",
        }
    )
    env.pop("FQDN", None)
    return env


def fx(
    cwd: Path, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one `fx` command to completion."""
    proc = subprocess.run(
        [sys.executable, "-m", "fedrun.cli.main", *args],
        cwd=cwd,
        env=fx_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"fx {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


class Nodes:
    """Long-running `fx ... start` processes, stopped at the end of the test whatever happens."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def start(
        self, name: str, cwd: Path, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        out = open(self.tmp / f"{name}.log", "a")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedrun.cli.main", *args],
            cwd=cwd,
            env={**fx_env(), **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        out.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def wait_for_log(self, name: str, text: str, timeout: float = 60) -> None:
        """Block until ``text`` appears in the node's log (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log(name):
                return
            if self.procs[name].poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{name}: {text!r} not seen; log:\n{self.log(name)[-3000:]}")

    def wait(self, name: str, timeout: float = 180) -> int:
        try:
            return self.procs[name].wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{name} did not finish in {timeout} s; log:\n{self.log(name)[-3000:]}"
            ) from None

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    n = Nodes(tmp_path)
    try:
        yield n
    finally:
        n.stop_all()


def set_plan(workspace: Path, **network: object) -> None:
    """Edit network settings of a workspace plan as a user would (agg_port etc.)."""
    path = workspace / "plan" / "plan.yaml"
    config = yaml.safe_load(path.read_text())
    config.setdefault("network", {}).setdefault("settings", {}).update(network)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def copy(src: Path, dst_dir: Path) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(src, dst_dir / src.name))


@pytest.fixture
def mnist_dir() -> Path:
    env = os.environ.get("FEDRUN_MNIST_DIR")
    path = Path(env) if env else SHARED_MNIST
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST files not found in {path} (set FEDRUN_MNIST_DIR)")
    return path
