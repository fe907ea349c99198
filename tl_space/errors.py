"""The one exception type for mistakes a user can fix, and how command-line entry points report it."""

from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """A bad option, path or dataset: its message is one sentence naming the value and what would be accepted.

    Entry points print it without a traceback and exit with status 2.
    """


def exit_code(command: Callable[[], object]) -> int:
    """Run a command-line entry point: 0 when it finishes, 2 after printing a UserError as one line on stderr."""
    try:
        command()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
