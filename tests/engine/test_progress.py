"""Progress: the status snapshot the admin API reads, and the catch-up log while far behind the tip."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pytest

from common.types import BlockHash
from teos.chain.recent import BlockRef
from teos.chain.tip import ChainTip
from teos.engine.progress import CATCH_UP_THRESHOLD, Progress
from teos.storage import keys
from teos.storage.index import TRACKERS, LocatorIndex
from teos.storage.store import Batch, Store


@dataclass
class FakeMonitor:
    best_height_seen: int = -1
    last_check: float | None = None

    def seconds_since_tip_check(self) -> float | None:
        return self.last_check


@dataclass
class Counter:
    blocks: list[int] = field(default_factory=list)

    def block_processed(self, n: int = 1) -> None:
        self.blocks.append(n)


def block(height: int) -> BlockRef:
    return BlockRef(BlockHash(hashlib.sha256(height.to_bytes(4, "big")).digest()), height, None)


def test_status_before_and_after_the_first_block(store: Store, index: LocatorIndex) -> None:
    tip, monitor = ChainTip(), FakeMonitor()
    progress = Progress(tip, monitor, index, Counter())
    assert progress.status() == {
        "bitcoind_reachable": False, "tip_height_seen": -1, "watcher": {"block_hash": None, "height": -1},
        "responder": {"block_hash": None, "height": -1}, "n_trackers": 0, "catching_up": False,
        "blocks_behind": 0, "catch_up": None, "seconds_since_tip_check": None,
    }  # fmt: skip
    tip.processed(block(100))
    tip.set_reachable(True)
    monitor.best_height_seen, monitor.last_check = 103, 1.5
    batch = Batch()
    batch.put(keys.TRACKER + bytes(20), b"x")
    index.stage(batch, counts={TRACKERS: 1})  # as the Responder counts the trackers it writes
    store.commit(batch)
    status = progress.status()
    assert status["watcher"] == {"block_hash": block(100).hash.hex(), "height": 100}
    assert (status["bitcoind_reachable"], status["n_trackers"], status["blocks_behind"]) == (True, 1, 3)
    assert (status["catching_up"], status["seconds_since_tip_check"]) == (True, 1.5)


def test_catch_up_is_logged_and_reported_until_caught_up(
    index: LocatorIndex, caplog: pytest.LogCaptureFixture
) -> None:
    tip, monitor, counter = ChainTip(), FakeMonitor(best_height_seen=120), Counter()
    progress = Progress(tip, monitor, index, counter)
    with caplog.at_level("INFO", logger="teos.engine"):
        for height in range(101, 121):
            tip.processed(block(height))
            progress.block_processed(height)
            if height == 110:
                catch_up = progress.status()["catch_up"]
                assert catch_up is not None
                fields = ("from_height", "to_height", "done", "total")
                assert [catch_up[f] for f in fields] == [100, 120, 10, 20]
    assert "catching up from height=100 to height=120 blocks=20" in caplog.text
    assert "caught up height=120 blocks=20" in caplog.text
    assert progress.status()["catch_up"] is None and len(counter.blocks) == 20


def test_a_few_blocks_behind_is_no_catch_up(index: LocatorIndex, caplog: pytest.LogCaptureFixture) -> None:
    monitor = FakeMonitor(best_height_seen=100 + CATCH_UP_THRESHOLD - 1)
    progress = Progress(ChainTip(), monitor, index, Counter())
    with caplog.at_level("INFO", logger="teos.engine"):
        progress.block_processed(101)
    assert "catching up" not in caplog.text and progress.status()["catch_up"] is None
