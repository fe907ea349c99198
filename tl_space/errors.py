"""The one exception type for mistakes a user can fix, and how command-line entry points report it."""

from __future__ import annotations

import sys
from typing import Callable


def failure(error: BaseException) -> str:
    """An error in a few words for a one-line message: its type and the first line of its text."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first_line[:200]}" if first_line else type(error).__name__


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
