"""``FatalError``: teosd cannot start or keep running, and the message says what to do about it."""

from __future__ import annotations


class FatalError(RuntimeError):
    """teosd cannot start or keep running; the message says what to do."""
