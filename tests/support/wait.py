"""Waiting on a condition instead of sleeping for a fixed time (``teos.devtools``, shared with the demo)."""

from teos.devtools import WaitTimeout, wait_until

__all__ = ["WaitTimeout", "wait_until"]
