"""Helpers for running the tower's processes on one machine, shared by the demo, the tests and the
benchmarks: a free loopback port, and waiting on a condition instead of sleeping for a fixed time."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
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


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections (Linux's default when it cannot be read)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, for a server about to listen on it.

    It is picked below the kernel's ephemeral range: ports in that range are also handed to outgoing
    connections (and stay taken for a minute in TIME_WAIT after them), so on a busy machine a server
    could find "its" port taken by the time it binds. Falls back to the kernel's choice (bind 0).
    """
    low, _ = _ephemeral_range()
    candidates = [random.randrange(10_000, low) for _ in range(50)] if low > 10_001 else []
    for port in [*candidates, 0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port on 127.0.0.1")
