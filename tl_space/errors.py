"""The one exception type for mistakes a user can fix."""


class UserError(Exception):
    """A bad option, path or dataset: its message is one sentence naming the value and what would be accepted.

    Entry points print it without a traceback and exit with status 2.
    """
