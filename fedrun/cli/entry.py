"""The `fx` executable's entry point: as little as possible runs before Ctrl-C is handled.

Importing the command tree (click, rich) takes tens of milliseconds; a Ctrl-C in that time
would otherwise end in a traceback instead of "interrupted" and exit 130.
"""

from __future__ import annotations

import sys


def run() -> None:
    """Import and run `fx`; Ctrl-C at any point exits 130 with one line."""
    try:
        from fedrun.cli.main import main

        main()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
