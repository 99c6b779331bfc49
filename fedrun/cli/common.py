"""What every `fx` command shares: error display, logging set-up, common options."""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from fedrun.errors import FedrunError, StateError, file_access_error

F = TypeVar("F", bound=Callable[..., Any])


#: columns of output that goes to a file or a pipe (rich would wrap it at 80): wide enough for
#: a path, a CSR hash or a table row on one line
FILE_OUTPUT_COLUMNS = 200


def console(stderr: bool = True) -> Any:
    """A rich console on stderr (or stdout). On a terminal it wraps to the terminal's width; into
    a file or a pipe (a node's .out file, `fx ... > log`) it never wraps a line, so a CSR hash or
    a path stays whole for whoever compares or copies it, and tables get room for their cells."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return Console(stderr=stderr, highlight=False)
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() and int(columns) > 0 else FILE_OUTPUT_COLUMNS
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


#: OpenFL 1.9 `fx` commands fedrun does not have, by group, and what to do instead
OPENFL_ONLY_COMMANDS: dict[str, dict[str, str]] = {
    "plan": {
        name: "a fedrun workspace has one plan, plan/plan.yaml (OpenFL's plan/plans/ switching "
        "is not kept): keep other plans under other names and pass one with -p PATH"
        for name in ("save", "switch", "remove")
    },
    "collaborator": {
        "calchash": "fedrun does not record a hash of the collaborator's data set (OpenFL's "
        "optional integrity check); nothing needs it",
    },
}


class OpenFLAwareGroup(click.Group):
    """A command group that names the OpenFL commands it lacks instead of click's bare "No
    such command"."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        instead = OPENFL_ONLY_COMMANDS.get(self.name or "", {}).get(name)
        if instead and self.get_command(ctx, name) is None:
            raise click.UsageError(
                f"`fx {self.name} {name}` is an OpenFL command fedrun does not have: {instead}",
                ctx,
            )
        return super().resolve_command(ctx, args)


def to_log_files(level: int, text: str) -> None:
    """``text`` into the node's log file (if it has one) only: what stopped a node belongs in
    the file an operator reads afterwards, not twice on the console."""
    root = logging.getLogger("fedrun")
    files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    if not files:
        return
    # one line per event, also when the message quotes another error's rendering
    line = " ".join(text.replace("\n  fix: ", "; fix: ").split("\n"))
    record = root.makeRecord("fedrun", level, "", 0, "%s", (line,), None)
    for handler in files:
        if level >= handler.level:
            handler.handle(record)


def show_error(error: FedrunError) -> None:
    """Print a FedrunError as a short block: code, message, fix. Never a traceback."""
    from rich.markup import escape

    logged_fix = f"; fix: {error.fix}" if error.fix else ""
    level = logging.INFO if error.exit_code == 0 else logging.ERROR
    to_log_files(level, f"{error.code}: {error.message}{logged_fix}")
    con = console()
    # message and fix quote user input (names, paths, YAML): never read as markup
    message, fix = escape(error.message), escape(error.fix)
    if error.exit_code == 0:
        con.print(f"[bold yellow]• {error.code}[/]: {message}", soft_wrap=True)
        if error.fix:
            con.print(f"  [bold]note:[/] {fix}", soft_wrap=True)
        return
    con.print(f"[bold red]✘ {error.code}[/]: {message}", soft_wrap=True)
    if error.fix:
        con.print(f"  [bold]fix:[/] {fix}", soft_wrap=True)


def handle_errors(fn: F) -> F:
    """Turn FedrunError (and Ctrl-C) into a message and a documented exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FedrunError as error:
            show_error(error)
            sys.exit(error.exit_code)
        except OSError as exc:  # a file the command could not read or write
            failure = file_access_error(exc)
            show_error(failure)
            sys.exit(failure.exit_code)
        except KeyboardInterrupt:
            to_log_files(logging.WARNING, "interrupted (Ctrl-C)")
            console().print("[yellow]interrupted[/]")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


class ConsoleLogHandler(logging.Handler):
    """One line per record on stderr: ``[HH:MM:SS] LEVEL    message``, the level coloured on a
    terminal (``NO_COLOR`` turns colour off, ``FORCE_COLOR`` on).

    rich's RichHandler lays every record out as a table: about 0.5 ms of CPU per line, which an
    aggregator pays for each collaborator several times a round. This costs about 10 us.
    """

    _COLOURS = {
        "DEBUG": "\x1b[2m",
        "INFO": "\x1b[34m",
        "WARNING": "\x1b[33m",
        "ERROR": "\x1b[31m",
        "CRITICAL": "\x1b[1;31m",
    }

    def __init__(self, stream: Any = None) -> None:
        super().__init__()
        self._stream = stream
        self.colour = self._wants_colour()  # decided once, not per line

    @property
    def stream(self) -> Any:
        return self._stream if self._stream is not None else sys.stderr

    def _wants_colour(self) -> bool:
        if os.environ.get("NO_COLOR"):
            return False
        if os.environ.get("FORCE_COLOR"):
            return True
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            when = time.strftime("%H:%M:%S", time.localtime(record.created))
            level = f"{record.levelname:<8}"
            if self.colour:
                level = f"{self._COLOURS.get(record.levelname, '')}{level}\x1b[0m"
            stream = self.stream
            stream.write(f"[{when}] {level} {self.format(record)}\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never take the node down
            self.handleError(record)


def setup_logging(level: str = "info", logfile: Path | None = None) -> None:
    """Human log lines on stderr, plus a plain file when asked."""
    root = logging.getLogger("fedrun")
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    root.handlers.clear()
    console_handler = ConsoleLogHandler()
    console_handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(console_handler)
    env_file = os.environ.get("FEDRUN_LOG_FILE")
    target = logfile or (Path(env_file) if env_file else None)
    if target is not None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fh: logging.FileHandler = LogFileHandler(target)
        except OSError as exc:
            raise StateError(
                "FX-STATE-004",
                f"cannot write the log file {target}: {exc.strerror or exc}",
                f"make {target.parent} writable by this user (or free space on it)",
            ) from exc
        fh.setFormatter(LogFileFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(fh)
    root.propagate = False


class LogFileFormatter(logging.Formatter):
    """Log file lines stamped ``2026-12-07 15:02:00,649 -0500``: local time with its UTC offset,
    so the logs of nodes in different time zones (or with different TZ settings) line up."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        offset = time.strftime("%z", self.converter(record.created))
        return f"{super().formatTime(record, datefmt)} {offset}"


class LogFileHandler(logging.handlers.WatchedFileHandler):
    """The node's log file; when a line cannot be written (disk full...), one warning on stderr
    instead of a Python traceback per line, and the console keeps logging. A file moved away
    (logrotate) is reopened at its path, so a node that runs for weeks can have its log rotated
    without ``copytruncate``."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if self.failed:
            return
        self.failed = True
        error = sys.exc_info()[1]
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(
                f"warning: cannot write the log file {self.baseFilename}: {error}; the "
                "lines it cannot take are on the console only (said once)\n"
            )


def exit_now(code: int = 0) -> None:
    """Flush logs and output, then leave without the interpreter's slow teardown.

    A node that finished its experiment has nothing left to clean up, but unloading torch and
    gRPC takes about a second; peers and scripts waiting for the process should not.
    """
    from fedrun.transport.grpc_log import release_stderr

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    release_stderr()  # stderr may go through a pipe whose reader dies with the process
    os._exit(code)


def plan_options(fn: F) -> F:
    """-p/--plan_config, -c/--cols_config, -d/--data_config as OpenFL spells them."""
    fn = click.option(
        "-d",
        "--data_config",
        "--data-config",
        "data_config",
        default=None,  # the plan's workspace's plan/data.yaml; a named file must exist
        show_default="plan/data.yaml",
        help="collaborator data paths (name,path lines)",
    )(fn)
    fn = click.option(
        "-c",
        "--cols_config",
        "--cols-config",
        "cols_config",
        default=None,  # the plan's workspace's plan/cols.yaml; a named file must exist
        show_default="plan/cols.yaml",
        help="authorized collaborator list",
    )(fn)
    return plan_config_option(fn)


def plan_config_option(fn: F) -> F:
    """-p/--plan/--plan_config/--plan-config: the plan file (default plan/plan.yaml)."""
    option = click.option(
        "-p",
        "--plan",
        "--plan_config",
        "--plan-config",
        "plan_config",
        default="plan/plan.yaml",
        show_default=True,
        help="federated learning plan",
    )
    return option(fn)  # type: ignore[no-any-return]


def key_type_option(fn: F) -> F:
    """``--key-type ec|rsa`` for commands that make a private key (values of ``fedrun.pki``'s
    ``KEY_TYPES``, repeated here so that ``fx --help`` does not import cryptography)."""
    return click.option(
        "--key-type",
        type=click.Choice(["ec", "rsa"]),
        default="ec",
        show_default=True,
        help="private key: ECDSA P-384, or RSA-3072 where a site's policy requires RSA",
    )(fn)


def require_workspace(what: str) -> None:
    """Refuse to write a node's files (keys, data paths) outside a workspace: run in the wrong
    folder, they would land where no ``fx`` command of that node looks for them."""
    if not Path("plan/plan.yaml").is_file():
        from fedrun.errors import WorkspaceError

        raise WorkspaceError(
            "FX-WS-004",
            f"{Path.cwd()} is not a workspace (no plan/plan.yaml), so {what} would be written "
            "where this node's other commands never look",
            "cd into the workspace folder (made by `fx workspace create` or `fx workspace "
            "import`) and run the command again",
        )


def ok(message: str) -> None:
    from rich.markup import escape

    console(stderr=False).print(f"[green]✔[/] {escape(message)}", soft_wrap=True)


def confirm(question: str) -> bool:
    """Ask a yes/no question (default yes). No answer at all (input closed: a script without
    ``-s``) is no; Ctrl-C at the prompt is an interruption."""
    try:
        return click.confirm(question, default=True)
    except click.Abort:
        if sys.stdin is not None and sys.stdin.isatty():
            raise KeyboardInterrupt from None
        return False


def not_confirmed(request: object) -> FedrunError:
    """The refusal when the CA operator answers no to a certificate request's hash."""
    from fedrun.errors import CertificateError

    return CertificateError(
        "FX-PKI-021",
        f"not signed: the hash of {request} was not confirmed",
        "compare the hash printed here with the one printed where the request was made; "
        "sign only when they are the same (a different hash means another request)",
    )
