"""Run a whole federation on this machine: real aggregator and collaborator processes.

``LocalFederation`` prepares a workspace (template, plan overrides, initial model, CA and
certificates), starts one aggregator process and N collaborator processes talking gRPC over
mutual TLS on 127.0.0.1, and watches ``logs/metrics.jsonl`` for progress. CPU cores are shared:
each collaborator gets ``cores / N`` threads (at least one), so N processes do not oversubscribe.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedrun.errors import FedrunError, WorkspaceError
from fedrun.metrics.records import MetricRecord, MetricsFollower, read_metrics
from fedrun.plan.loader import Plan, load_yaml, parse_override, set_by_path

AGG_HOST = "localhost"
#: after the aggregator finished, how long collaborators may take to notice before being stopped
LATE_COLLABORATOR_SECONDS = 15.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


#: folders a simulation starts empty in its copy of a workspace (its own CA, state, logs, models)
FRESH_FOLDERS = ("cert", "local_state", "logs", "save")
#: folders copied (small, and edited by the simulation); other folders (data...) are linked
COPIED_FOLDERS = ("plan", "src")


def require_plan(workspace: Path) -> None:
    """``FX-WS-004`` unless ``workspace`` holds ``plan/plan.yaml``."""
    if not (workspace / "plan" / "plan.yaml").is_file():
        raise WorkspaceError(
            "FX-WS-004",
            f"{workspace} is not a workspace (no plan/plan.yaml)",
            "pass --template to create one, or --workspace pointing at an existing one",
        )


def copy_workspace(source: Path, target: Path) -> Path:
    """A copy of workspace ``source`` at ``target`` for a simulation to edit freely.

    ``plan/`` and ``src/`` and the top-level files are copied; ``cert/``, ``local_state/``,
    ``logs/`` and ``save/`` start empty (the simulation makes its own CA, state and models); every
    other folder (``data/``...) is a symbolic link to the original, so no data is copied. The
    source is only read.
    """
    source = Path(source).resolve()
    require_plan(source)
    target = Path(target)
    if target.exists() and any(target.iterdir()):
        raise WorkspaceError(
            "FX-WS-002",
            f"{target} already exists and is not empty",
            "choose another --prefix, or remove it",
        )
    target.mkdir(parents=True, exist_ok=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for item in sorted(source.iterdir()):
        dest = target / item.name
        if item.name in ("__pycache__", ".git"):
            continue
        if item.name in FRESH_FOLDERS:
            dest.mkdir()
        elif item.is_dir() and item.name in COPIED_FOLDERS:
            shutil.copytree(item, dest, ignore=skip)
        elif item.is_dir():
            dest.symlink_to(item, target_is_directory=True)
        else:
            shutil.copy2(item, dest)
    return target


def collaborator_names(count: int) -> list[str]:
    return [f"collaborator{i}" for i in range(1, count + 1)]


@dataclass
class SimulationResult:
    """What a finished local federation left behind."""

    workspace: Path
    seconds: float
    records: list[MetricRecord]
    rounds_to_train: int
    exit_codes: dict[str, int] = field(default_factory=dict)

    @property
    def final_metrics(self) -> dict[str, float]:
        """Aggregated metrics of the final model (last round with aggregator metrics)."""
        rows: dict[int, dict[str, float]] = {}
        for r in self.records:
            if r.origin == "aggregator":
                rows.setdefault(r.round, {})[f"{r.task}/{r.metric}"] = r.value
        return rows[max(rows)] if rows else {}


#: network settings fx simulate chooses itself; a --plan-set of one of them is refused
SIMULATION_OWNS = (["agg_addr"], ["agg_port"], ["use_tls"], ["tls"])


def refuse_owned_settings(plan_set: Sequence[str]) -> None:
    """``FX-SIM-004`` for a ``--plan-set`` of a setting the simulation chooses itself (before
    anything is created or copied)."""
    for item in plan_set:
        keys, _ = parse_override(item)
        if keys[:2] == ["network", "settings"] and keys[2:3] in SIMULATION_OWNS:
            raise WorkspaceError(
                "FX-SIM-004",
                f"--plan-set {item}: fx simulate sets network.settings.{keys[2]} itself "
                "(localhost, a free port, TLS unless --no-tls), so the value would not be used",
                "leave it out (use --no-tls to run without TLS); to run on other addresses, "
                "start the aggregator and collaborators with `fx aggregator start` and "
                "`fx collaborator start`",
            )


class LocalFederation:
    """Prepare and run a federation of local processes.

    Parameters
    ----------
    workspace:
        An existing workspace, or where to create one from ``template``.
    template:
        Template for a new workspace.
    collaborators:
        Number of collaborator processes.
    rounds:
        Override ``aggregator.settings.rounds_to_train``.
    plan_set:
        ``key=value`` plan overrides.
    tls:
        Mutual TLS with a CA made for this workspace (default); False runs insecure.
    seed:
        Seed for reproducible training.
    log_level:
        The nodes' ``fx --log-level`` (``fx --log-level debug simulate`` passes it on).
    """

    def __init__(
        self,
        workspace: Path,
        *,
        template: str | None = None,
        collaborators: int = 2,
        rounds: int | None = None,
        plan_set: Sequence[str] = (),
        tls: bool = True,
        seed: int | None = None,
        python: str = sys.executable,
        log_level: str = "info",
    ) -> None:
        if collaborators < 1:
            raise WorkspaceError(
                "FX-SIM-001", f"--collaborators is {collaborators}", "use at least 1"
            )
        self.workspace = Path(workspace).resolve()
        self.template = template
        self.count = collaborators
        self.rounds = rounds
        self.plan_set = list(plan_set)
        refuse_owned_settings(self.plan_set)
        self.tls = tls
        self.seed = seed
        self.python = python
        self.log_level = log_level
        self.names = collaborator_names(collaborators)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.late: list[str] = []  # collaborators stopped because they never joined in time
        self.port = 0

    # ------------------------------------------------------------------ preparation
    def prepare(self) -> Plan:
        """Create/adjust the workspace, write plan overrides, initialize, certify."""
        if self.template is not None:
            from fedrun.workspace.create import create_workspace

            create_workspace(self.workspace, self.template)
        else:
            require_plan(self.workspace)
        self.port = free_port()
        self._write_plan()
        self._write_collaborators()
        from fedrun.plan.initialize import initialize_plan

        plan, _ = initialize_plan(self.workspace / "plan" / "plan.yaml")
        if self.tls:
            self._certify()
        return plan

    def _write_plan(self) -> None:
        path = self.workspace / "plan" / "plan.yaml"
        config = load_yaml(path, "plan file")
        overrides = list(self.plan_set)
        if self.rounds is not None:
            overrides.append(f"aggregator.rounds_to_train={self.rounds}")
        loader_settings = (config.get("data_loader") or {}).get("settings") or {}
        if "collaborator_count" in loader_settings:
            overrides.append(f"data_loader.collaborator_count={self.count}")
        if self.seed is not None:
            overrides.append(f"aggregator.seed={self.seed}")
        overrides += [
            f"network.agg_addr={AGG_HOST}",
            f"network.agg_port={self.port}",
            f"network.use_tls={'true' if self.tls else 'false'}",
        ]
        for item in overrides:
            set_by_path(config, *parse_override(item))
        text = path.read_text()
        header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
        path.write_text(header + yaml.safe_dump(config, sort_keys=False))

    def _write_collaborators(self) -> None:
        from fedrun.plan.loader import write_data_path

        cols_path = self.workspace / "plan" / "cols.yaml"
        data_path = self.workspace / "plan" / "data.yaml"
        if self.tls:
            cols_path.write_text("collaborators: []\n")  # filled as certificates are signed
        else:
            cols_path.write_text(yaml.safe_dump({"collaborators": self.names}, sort_keys=False))
        for index, name in enumerate(self.names, 1):
            write_data_path(data_path, name, str(index))

    def _certify(self) -> None:
        from fedrun import pki

        cert = self.workspace / "cert"
        if not (cert / "cert_chain.crt").is_file():
            pki.create_certificate_authority(cert)
        ca = pki.load_certificate_authority(cert)
        agg = pki.aggregator_paths(cert, AGG_HOST)
        if not agg.crt.is_file():
            pki.generate_csr(AGG_HOST, server=True, key_path=agg.key, csr_path=agg.csr)
            pki.sign_csr(ca, agg.csr, agg.crt, server=True)
        for name in self.names:
            paths = pki.collaborator_paths(cert, name)
            if not paths.crt.is_file():
                pki.generate_csr(name, server=False, key_path=paths.key, csr_path=paths.csr)
                pki.sign_csr(ca, paths.csr, paths.crt, server=False)
        cols_path = self.workspace / "plan" / "cols.yaml"
        cols_path.write_text(yaml.safe_dump({"collaborators": self.names}, sort_keys=False))

    # ------------------------------------------------------------------ processes
    def _env(self, threads: int) -> dict[str, str]:
        env = dict(os.environ)
        for key in (
            "OMP_NUM_THREADS",
            "MKL_NUM_THREADS",
            "OPENBLAS_NUM_THREADS",
            "FEDRUN_NUM_THREADS",
        ):
            env[key] = str(threads)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # the nodes run inside the workspace: a data folder given relative to where `fx
        # simulate` was started would be looked for there
        for key in ("FEDRUN_MNIST_DIR", "FEDRUN_HISTOLOGY_DIR", "FEDRUN_BRATS_DIR"):
            value = env.get(key, "").strip()
            if value and not os.path.isabs(os.path.expanduser(value)):
                env[key] = os.path.abspath(os.path.expanduser(value))
        return env

    def _spawn(self, name: str, args: list[str], threads: int) -> None:
        log_dir = self.workspace / "logs"
        log_dir.mkdir(exist_ok=True)
        out = open(log_dir / f"{name}.out", "wb")  # noqa: SIM115 - owned by the child
        self.processes[name] = subprocess.Popen(
            [self.python, "-m", "fedrun.cli.main", "--log-level", self.log_level, *args],
            cwd=self.workspace,
            env=self._env(threads),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        out.close()

    def start(self) -> None:
        """Start the aggregator, then every collaborator."""
        cores = os.cpu_count() or 1
        self._spawn("aggregator", ["aggregator", "start"], 1)
        per = max(1, cores // self.count)
        for name in self.names:
            self._spawn(name, ["collaborator", "start", "-n", name], per)

    @contextlib.contextmanager
    def stopping_on_signals(self) -> Iterator[None]:
        """While inside, SIGTERM and SIGHUP end this process the way Ctrl-C does: every process
        of the federation is stopped first, then the process exits with 128 + the signal's
        number. Without it a terminated ``fx simulate`` left its aggregator and collaborators
        running on, orphaned. A signal this process ignores stays ignored (``nohup fx simulate``
        survives a hang-up). Anything raised inside also stops them."""
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():

            def on_signal(signum: int, frame: object) -> None:
                raise SystemExit(128 + signum)

            for signum in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    previous[signum] = signal.signal(signum, on_signal)
        try:
            yield
        except BaseException:
            self.stop()
            raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def stop(self) -> None:
        """Terminate whatever still runs (used on errors, Ctrl-C and SIGTERM)."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def wait(
        self,
        on_progress: Callable[[list[MetricRecord]], None] | None = None,
        timeout: float | None = None,
        poll: float = 0.2,
    ) -> dict[str, int]:
        """Wait for every process; stop all if one fails. Returns exit codes.

        ``on_progress`` gets the metric records written since its previous call."""
        started = time.monotonic()
        ended: float | None = None
        metrics = MetricsFollower(self.workspace / "logs" / "metrics.jsonl")
        try:
            while True:
                codes = {n: p.poll() for n, p in self.processes.items()}
                failed = {n: c for n, c in codes.items() if c not in (None, 0)}
                if on_progress is not None:
                    on_progress(metrics.new_records())
                if failed:
                    self.stop()
                    name, code = next(iter(failed.items()))
                    raise SimulationFailed(name, code, self.log_tail(name))
                if all(c is not None for c in codes.values()):
                    return {n: int(c or 0) for n, c in codes.items()}
                if codes.get("aggregator") == 0:
                    # the experiment ended; a collaborator still running never took part
                    # (it started after the aggregator's end-of-experiment grace period)
                    ended = ended or time.monotonic()
                    if time.monotonic() - ended > LATE_COLLABORATOR_SECONDS:
                        late = [n for n, c in codes.items() if c is None]
                        self.stop()
                        self.late = late
                        return {n: int(c or 0) for n, c in codes.items() if c is not None}
                if timeout is not None and time.monotonic() - started > timeout:
                    self.stop()
                    raise SimulationTimedOut(
                        "FX-SIM-003",
                        f"the federation did not finish within {timeout:.0f} s",
                        f"see the logs in {self.workspace / 'logs'}",
                    )
                time.sleep(poll)
        except BaseException:
            self.stop()
            raise

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.workspace / "logs" / f"{name}.out"
        if not path.is_file():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def run(
        self,
        on_progress: Callable[[list[MetricRecord]], None] | None = None,
        timeout: float | None = None,
    ) -> SimulationResult:
        """Prepare, start, wait; returns the metrics and where things are."""
        started = time.monotonic()
        plan = self.prepare()
        with self.stopping_on_signals():
            self.start()
            codes = self.wait(on_progress, timeout)
        records = list(read_metrics(self.workspace / "logs" / "metrics.jsonl"))
        return SimulationResult(
            self.workspace, time.monotonic() - started, records, plan.rounds_to_train, codes
        )


class SimulationFailed(FedrunError):
    """A process of the local federation exited with an error."""

    exit_code = 9

    def __init__(self, name: str, code: int, tail: str) -> None:
        self.name = name
        self.returncode = code
        self.tail = tail
        super().__init__(
            "FX-SIM-002",
            f"{name} exited with code {code}; last lines of its log:\n{tail}",
            "fix the problem shown above; full logs are in the workspace's logs/ folder",
        )


class SimulationTimedOut(FedrunError):
    """The local federation did not finish within ``--timeout`` (its processes were stopped)."""

    exit_code = 9
