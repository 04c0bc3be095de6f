"""A user's text echoed in a message: cut short, so an error line never echoes megabytes of input."""

from __future__ import annotations

ECHO_CHARS = 80  # user input echoed in a message is cut to this many characters + '…'


def shorten(value: object, limit: int = ECHO_CHARS) -> str:
    """str(value), cut to `limit` characters + '…' (for echoing user input in messages)."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def quote(value: object, limit: int = ECHO_CHARS) -> str:
    """repr() of the shortened text: quotes and escapes, as a message shows user input."""
    return repr(shorten(value, limit))
