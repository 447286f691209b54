"""Helpers for running the tower's processes on one machine, shared by the demo, the tests and the
benchmarks: a free loopback port, and waiting on a condition instead of sleeping for a fixed time."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError, AssertionError):
    """``wait_until``'s condition did not come true in time (an AssertionError too, so that pytest
    reports it as a failed expectation)."""


def wait_until(
    predicate: Callable[[], T | None], timeout: float = 10.0, message: str = "", *, interval: float = 0.02
) -> T:
    """Calls ``predicate`` until it returns a truthy value and returns that value; raises WaitTimeout
    after ``timeout`` seconds, naming ``message`` (what was waited for). Exceptions raised by the
    predicate propagate, so a predicate that may fail transiently catches what it expects itself."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message or repr(predicate)
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind 0, read back, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
