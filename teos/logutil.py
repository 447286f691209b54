"""Logging what a client can make happen as often as it likes, without letting it flood the log."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class RateLimitedLog:
    """Logs an event at most once per ``interval`` seconds per key; the next line says how many were
    suppressed in between, so nothing is hidden, only summarised (a refusal that an attacker can repeat
    4,400 times a minute becomes one line a minute)."""

    def __init__(
        self, logger: logging.Logger, interval: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, int]] = {}  # key -> (time of the last line, suppressed since)

    def log(self, level: int, key: str, message: str, *args: object) -> bool:
        """Logs ``message % args`` unless ``key`` was logged within ``interval``; returns whether it did."""
        now = self.clock()
        with self._lock:
            last, suppressed = self._state.get(key, (float("-inf"), 0))
            if now - last < self.interval:
                self._state[key] = (last, suppressed + 1)
                return False
            self._state[key] = (now, 0)
        if suppressed:
            message += " (%d more like it in the last %.0f s)"
            args = (*args, suppressed, now - last)
        self.logger.log(level, message, *args)
        return True

    def warning(self, key: str, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, message, *args)
