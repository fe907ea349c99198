"""Text from a model folder (label names, settings, study rows) rendered safely inside the app's Markdown."""

from __future__ import annotations

import re

MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>&:])")
MAX_SHOWN = 200


def text(value: object) -> str:
    """value as plain text in Markdown: no emphasis, links, images or HTML, one line, at most MAX_SHOWN characters."""
    line = " ".join(str(value).split())[:MAX_SHOWN]
    return MARKDOWN_SPECIAL.sub(r"\\\1", line)


def code(value: object) -> str:
    """value as an inline code span: shown literally, one line, with no backtick to close the span early."""
    line = " ".join(str(value).split())[:MAX_SHOWN].replace("`", "'")
    return f"`{line}`"
