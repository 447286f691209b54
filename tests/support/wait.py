"""Waiting on a condition instead of sleeping for a fixed time."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tests.support import processes

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not become true in time (an AssertionError so pytest shows it as a failure)."""


def wait_until(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, message: str = ""
) -> T:
    """Calls ``predicate`` until it returns a truthy value and returns that value.

    Raises WaitTimeout after ``timeout`` seconds. Exceptions raised by the predicate propagate, so a
    predicate that may fail transiently should catch what it expects itself.
    """
    try:
        return processes.wait_until(predicate, timeout, message, interval=interval)
    except processes.WaitTimedOut:
        raise WaitTimeout(message or f"condition not met within {timeout}s: {predicate!r}") from None
