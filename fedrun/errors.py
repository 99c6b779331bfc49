"""Errors a user can meet, each with a stable code, a message and the fix.

Every refusal or failure that reaches a person is a :class:`FedrunError`. The CLI prints its
``code``, ``message`` and ``fix`` on one screen and exits with ``exit_code``; it never shows a
traceback for these. The README's troubleshooting table lists the codes.
"""

from __future__ import annotations

import re


class FedrunError(Exception):
    """Base class of every user-facing error.

    Parameters
    ----------
    code:
        Stable identifier such as ``FX-PLAN-002``; users can search the docs for it.
    message:
        What went wrong, naming the file, key or peer involved.
    fix:
        What to do about it.
    """

    exit_code: int = 1

    def __init__(self, code: str, message: str, fix: str = "") -> None:
        self.code = code
        self.message = message
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        """Return ``code: message`` followed by the fix on its own line."""
        text = f"{self.code}: {self.message}"
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class PlanError(FedrunError):
    """The FL plan (or cols.yaml / data.yaml) is wrong; nothing was started."""

    exit_code = 2


class WorkspaceError(FedrunError):
    """A workspace is missing, incomplete or would be overwritten."""

    exit_code = 3


class CertificateError(FedrunError):
    """A certificate, key or certificate package is missing, invalid or not trusted."""

    exit_code = 4


class ConnectionFailure(FedrunError):
    """The aggregator could not be reached, or refused this collaborator."""

    exit_code = 5


class ProtocolError(FedrunError):
    """A peer sent something that breaks the federation contract (bad tensor, wrong round...)."""

    exit_code = 6


class DataError(FedrunError):
    """A dataset file is missing or corrupt."""

    exit_code = 7


class StateError(FedrunError):
    """The persisted aggregator state cannot be used as it is."""

    exit_code = 8


class RoundClosed(ProtocolError):
    """The round a request was about has closed; ask for new tasks."""


class ExperimentFinished(FedrunError):
    """The persisted experiment already ran to the end; nothing to resume."""

    exit_code = 0


def file_access_error(exc: OSError) -> WorkspaceError:
    """A file operation that failed where no more precise error was raised, as ``FX-WS-040``
    naming the file and what to do (by its errno), instead of a traceback."""
    import errno

    where = str(exc.filename) if exc.filename is not None else "a file"
    if exc.filename2 is not None:
        where += f" -> {exc.filename2}"
    fixes = {
        errno.EACCES: "give the user running fx access to it (chmod / chown), or run fx as the "
        "workspace's owner",
        errno.EPERM: "give the user running fx access to it (chmod / chown), or run fx as the "
        "workspace's owner",
        errno.EROFS: "the file system is read-only: work in a writable copy of the workspace",
        errno.ENOENT: "a folder on the path does not exist: create it, or give another path",
        errno.ENOTDIR: "a part of the path is a file, not a folder: give another path",
        errno.EISDIR: "a folder is where a file is expected: give a file's path",
        errno.ENOSPC: "the disk is full: free space and run the command again",
        errno.EDQUOT: "the disk quota is used up: free space and run the command again",
    }
    return WorkspaceError(
        "FX-WS-040",
        f"cannot use {where}: {exc.strerror or exc}",
        fixes.get(exc.errno or 0, "check the path, its permissions and the disk"),
    )


#: characters of a peer-supplied text an error message shows
SHOWN_CHARACTERS = 64


def shown(text: str, limit: int = SHOWN_CHARACTERS) -> str:
    """``text`` as an error message or log line quotes it when a peer chose it (a claimed name,
    a metric's name): quoted with control characters escaped, so it cannot start a line of its
    own or colour the console, and cut to ``limit`` characters, so it cannot fill the log."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


#: characters of a status message from a peer (an error's text and fix) an error message shows
PEER_DETAILS_CHARACTERS = 1000
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def peer_details(text: str, limit: int = PEER_DETAILS_CHARACTERS) -> str:
    """A status message a peer sent (the aggregator's error text and fix), fit to show: control
    characters other than line breaks escaped, so it cannot colour the console or retitle the
    terminal; every line after the first indented, so it cannot pass for a log line of this
    node's own; cut to ``limit`` characters, so it cannot fill the log."""
    cut = text[:limit]
    cleaned = _CONTROL_CHARACTERS.sub(lambda m: repr(m.group())[1:-1], cut)
    lines = cleaned.split("\n")
    cleaned = "\n".join(
        [lines[0], *(f"  {line}" if line[:1] != " " else line for line in lines[1:])]
    )
    if len(text) > limit:
        cleaned += f"... ({len(text)} characters)"
    return cleaned
