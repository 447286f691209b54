"""Logging, configured once per process by its entry point: teosd's main process and each API worker.

Lines look like ``2024-05-01T12:00:00.123Z level=INFO logger=teos.engine.engine block disconnected
height=120 ...``: a UTC timestamp, ``level=`` and ``logger=`` fields, then the event text (modules log
``event key=value ...`` through ``logging.getLogger(__name__)``), to stderr and, when set, to a file.
granian's own messages (workers spawned, stopped, crashed) go to the same place; its access log stays off.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class _GranianNoise(logging.Filter):
    """Drops granian's advice to run fewer blocking threads: ours mostly wait on synced writes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Python threads" not in record.getMessage()


_GRANIAN_NOISE = _GranianNoise()

# granian's logging configuration (its ``log_dictconfig``): its messages propagate to ours.
GRANIAN_LOGGING: dict[str, Any] = {
    "loggers": {
        "_granian": {"level": "INFO", "propagate": True},
        "granian.access": {"level": "WARNING", "propagate": False},
    },
}


def setup_logging(debug: bool, log_file: Path | None) -> None:
    """Configures the root logger (replacing its handlers): the format of the module docstring, to
    stderr and, when set, to ``log_file``; DEBUG or INFO."""
    formatter = _UtcFormatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    logging.getLogger("_granian").addFilter(_GRANIAN_NOISE)
