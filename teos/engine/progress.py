"""Progress: where the chain side stands, for the admin API, ``/metrics`` and the log.

``status()`` is the snapshot ``teos-cli gettowerinfo`` and the Prometheus gauges are built from: the last
block processed (from the tip), bitcoind's best height as the monitor last saw it, how far behind that is,
whether bitcoind answers, the number of trackers, and how long ago bitcoind's tip was last read.

Catch-up: when the engine processes a block six or more below bitcoind's tip (after downtime, or on a
slow disk), progress is logged every few seconds (blocks done of total, rate) until it is caught up, and
shown in ``status()["catch_up"]``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from teos.chain.recent import BlockRef
from teos.storage.index import TRACKERS

log = logging.getLogger(__name__)

CATCH_UP_THRESHOLD = 6  # blocks behind bitcoind's tip from which progress is logged
CATCH_UP_LOG_EVERY = 5.0  # seconds between progress lines


class ProcessedTip(Protocol):
    """The tip as progress reads it (``ChainTip`` satisfies it)."""

    @property
    def block(self) -> BlockRef | None: ...

    @property
    def bitcoind_reachable(self) -> bool: ...


class BestSeen(Protocol):
    """What the monitor knows of bitcoind's tip (``ChainMonitor`` satisfies it)."""

    @property
    def best_height_seen(self) -> int: ...

    def seconds_since_tip_check(self) -> float | None: ...


class Counts(Protocol):
    """The tower's counters (the locator index satisfies it): read in O(1), never by walking keys."""

    def count(self, name: str) -> int: ...


class BlockCounter(Protocol):
    """The blocks-processed counter of ``/metrics`` (``teos.metrics.Metrics`` satisfies it)."""

    def block_processed(self, n: int = 1) -> None: ...


@dataclass
class _CatchUp:
    start_height: int
    start_time: float
    last_log: float

    def rate(self, height: int, now: float) -> float:
        elapsed = now - self.start_time
        return (height - self.start_height) / elapsed if elapsed > 0 else 0.0


class Progress:
    """The status snapshot and the catch-up log (see the module docstring)."""

    def __init__(
        self, tip: ProcessedTip, monitor: BestSeen, counts: Counts, counter: BlockCounter
    ) -> None:
        self._tip = tip
        self._monitor = monitor
        self._counts = counts
        self._counter = counter
        self._catch_up: _CatchUp | None = None

    def status(self) -> dict[str, Any]:
        """A snapshot for the admin API: where each component is and whether bitcoind answers."""
        pointer = self._tip.block
        seen = self._monitor.best_height_seen
        processed = pointer.height if pointer is not None else -1
        block = {"block_hash": pointer.hash.hex() if pointer else None, "height": processed}
        return {
            "bitcoind_reachable": self._tip.bitcoind_reachable,
            "tip_height_seen": seen,
            "watcher": dict(block),
            "responder": dict(block),
            "n_trackers": self._counts.count(TRACKERS),
            "catching_up": seen > processed,
            "blocks_behind": max(seen - processed, 0),
            "catch_up": self._catch_up_status(processed, seen),
            "seconds_since_tip_check": self._monitor.seconds_since_tip_check(),
        }

    def _catch_up_status(self, processed: int, seen: int) -> dict[str, Any] | None:
        c = self._catch_up
        if c is None:
            return None
        return {
            "from_height": c.start_height,
            "to_height": seen,
            "done": processed - c.start_height,
            "total": seen - c.start_height,
            "blocks_per_second": round(c.rate(processed, time.monotonic()), 2),
        }

    def block_processed(self, height: int) -> None:
        """Called by the engine after each connected block: counts it, and logs progress while far
        behind bitcoind's tip."""
        self._counter.block_processed()
        seen = self._monitor.best_height_seen
        now = time.monotonic()
        c = self._catch_up
        if c is None:
            if seen - height >= CATCH_UP_THRESHOLD:
                self._catch_up = _CatchUp(height - 1, now, now)
                log.info("catching up from height=%d to height=%d blocks=%d",
                         height - 1, seen, seen - height + 1)  # fmt: skip
            return
        if height >= seen:
            log.info("caught up height=%d blocks=%d rate=%.1f/s", height, height - c.start_height,
                     c.rate(height, now))  # fmt: skip
            self._catch_up = None
        elif now - c.last_log >= CATCH_UP_LOG_EVERY:
            c.last_log = now
            log.info("catching up done=%d total=%d height=%d rate=%.1f/s", height - c.start_height,
                     seen - c.start_height, height, c.rate(height, now))  # fmt: skip
