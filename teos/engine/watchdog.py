"""The watchdog: notices when the tower has stopped watching the chain, and ends teosd (crash-only).

A tower whose engine has died or is stuck still answers HTTP and would go on accepting appointments and
signing receipts while nothing watches the chain: the worst state a watchtower can be in. The watchdog
looks, every ``interval`` seconds, at two things:

- the threads that watch the chain (the engine thread, the chain monitor's walker, its ZMQ listener):
  one that is no longer alive is a reason at once;
- progress: when bitcoind answers and its tip is ahead of the last block the tower processed, and no
  block is processed for ``timeout`` seconds, the tower is stalled. Time during which bitcoind does not
  answer (or is not ahead) does not count: a tower cannot follow a node that is down, and already says
  so (``bitcoind_reachable``).

When either happens it trips, once: it keeps the reason (``reason``; /ready, gettowerinfo and the public
API read it, registrations and appointments are refused with 503), logs it as an ERROR and calls
``on_trip(reason)``; teosd then stops and exits non-zero, so that systemd (``Restart=on-failure``) or
Docker (a restart policy) starts it again and the state resumes from the database, as after a crash. It
never tries to repair the process from inside: a fresh process rebuilding everything from the database is
the one recovery path every crash test exercises.

Its own failures (an exception while looking) are logged and the next look goes on; reading bitcoind's
tip uses its own call, so a stuck walker or engine cannot stop the watchdog from seeing the tip.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 300.0  # seconds without progress while bitcoind's tip is ahead


class Watched(Protocol):
    """What the watchdog reads of the tower (the Engine satisfies it)."""

    @property
    def processed_height(self) -> int:
        """Height of the last block whose effects are committed."""
        ...

    def stopped_threads(self) -> Sequence[str]:
        """Names of the threads that should be watching the chain and are no longer alive."""
        ...


class Watchdog:
    """See the module docstring. ``check()`` is one look (tests call it directly); ``start()`` runs it
    every ``interval`` seconds on a thread until ``stop()``."""

    def __init__(
        self,
        watched: Watched,
        tip_height: Callable[[], int],
        timeout: float,
        on_trip: Callable[[str], None],
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout <= 0:
            raise ValueError("the watchdog timeout must be positive")
        self._watched = watched
        self._tip_height = tip_height
        self.timeout = timeout
        self.interval = interval if interval is not None else min(max(timeout / 5, 0.1), 5.0)
        self._on_trip = on_trip
        self._clock = clock
        self._reason: str | None = None
        self._trip_lock = threading.Lock()
        self._last_height: int | None = None
        self._stalled_since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def reason(self) -> str | None:
        """Why the watchdog tripped; None while the tower is watching."""
        return self._reason

    def stopped_watching(self) -> str | None:
        """The reason the tower is not watching, looking at its threads now (not at the next look): the
        API asks before each registration and appointment, so no receipt is signed once a watching
        thread is dead. Trips the watchdog when one is."""
        if self._reason is None:
            stopped = list(self._watched.stopped_threads())
            if stopped:
                self._trip(f"thread {', '.join(stopped)} stopped")
        return self._reason

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self.check() is not None:
                    return
            except Exception:  # the watchdog must not die of its own errors either
                log.exception("watchdog: look failed, looking again in %.1fs", self.interval)

    def check(self) -> str | None:
        """Looks once; returns the reason if the watchdog has tripped (now or before), else None."""
        if self._reason is not None:
            return self._reason
        stopped = list(self._watched.stopped_threads())
        if stopped:
            return self._trip(f"thread {', '.join(stopped)} stopped")
        height = self._watched.processed_height
        now = self._clock()
        if height != self._last_height:
            self._last_height = height
            self._stalled_since = None
            return None
        try:
            tip = self._tip_height()
        except Exception as e:  # bitcoind away or garbled: not the tower's stall
            log.debug("watchdog: bitcoind's tip unknown error=%s", e)
            self._stalled_since = None
            return None
        if tip <= height:
            self._stalled_since = None
            return None
        if self._stalled_since is None:
            self._stalled_since = now
            return None
        stalled = now - self._stalled_since
        if stalled < self.timeout:
            return None
        return self._trip(
            f"no block processed for {stalled:.0f} s while bitcoind's tip is {tip - height} blocks ahead "
            f"(processed height {height}, bitcoind's tip {tip})"
        )

    def _trip(self, reason: str) -> str:
        with self._trip_lock:  # the watchdog's thread and the API's threads may both see it
            if self._reason is not None:
                return self._reason
            self._reason = reason
        log.error("watchdog: the tower stopped watching the chain: %s; exiting to be restarted", reason)
        try:
            self._on_trip(reason)
        except Exception:
            log.exception("watchdog: on_trip failed")
        return reason
