"""The watchdog's decisions, one look at a time, on a fake clock; and its thread, on a real one."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from teos.chain.bitcoind import BitcoindUnreachable
from teos.engine.watchdog import Watchdog
from tests.support.wait import wait_until


@dataclass
class FakeTower:
    processed_height: int = 100
    stopped: list[str] = field(default_factory=list)

    def stopped_threads(self) -> Sequence[str]:
        return self.stopped


@dataclass
class FakeNode:
    tip: int = 100
    down: bool = False

    def height(self) -> int:
        if self.down:
            raise BitcoindUnreachable("bitcoind at 127.0.0.1:1 unreachable")
        return self.tip


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Parts = tuple[FakeTower, FakeNode, Clock, list[str], Watchdog]


@pytest.fixture
def parts() -> Parts:
    tower, node, clock = FakeTower(), FakeNode(), Clock()
    trips: list[str] = []
    dog = Watchdog(tower, node.height, timeout=60, on_trip=trips.append, clock=clock)
    return tower, node, clock, trips, dog


def test_a_stopped_thread_trips_at_once(parts: Parts, caplog: pytest.LogCaptureFixture) -> None:
    tower, _, _, trips, dog = parts
    assert dog.check() is None
    tower.stopped = ["engine"]
    with caplog.at_level(logging.ERROR, logger="teos.engine.watchdog"):
        assert dog.check() == "thread engine stopped"
    assert trips == ["thread engine stopped"] and dog.reason == "thread engine stopped"
    assert "watchdog: the tower stopped watching the chain: thread engine stopped" in caplog.text
    tower.stopped = []
    assert dog.check() == "thread engine stopped" and len(trips) == 1  # trips once, stays tripped


def test_no_progress_while_the_tip_is_ahead_trips_after_the_timeout(parts: Parts) -> None:
    _tower, node, clock, trips, dog = parts
    dog.check()
    node.tip = 103
    for _ in range(6):
        clock.now += 10
        assert dog.check() is None
    clock.now += 10
    reason = dog.check()
    assert reason is not None and "no block processed for 60 s" in reason and "3 blocks ahead" in reason
    assert trips == [reason]


def test_progress_resets_the_timer_so_a_long_catch_up_never_trips(parts: Parts) -> None:
    tower, node, clock, trips, dog = parts
    node.tip = 10_000
    for _ in range(50):
        clock.now += 30
        tower.processed_height += 1
        assert dog.check() is None
    assert trips == []


def test_time_while_bitcoind_is_down_or_not_ahead_does_not_count(parts: Parts) -> None:
    _tower, node, clock, trips, dog = parts
    dog.check()
    node.tip = 101
    clock.now += 1
    dog.check()  # the stall starts
    node.down = True
    for _ in range(10):
        clock.now += 30
        assert dog.check() is None  # the tower cannot follow a node that does not answer
    node.down = False
    node.tip = 100
    clock.now += 100
    assert dog.check() is None  # caught up (e.g. a reorg back to our height)
    node.tip = 101
    clock.now += 1
    assert dog.check() is None
    clock.now += 59
    assert dog.check() is None
    clock.now += 1
    assert dog.check() is not None and len(trips) == 1


def test_a_failing_trip_handler_still_leaves_the_reason(parts: Parts) -> None:
    tower, _, _, _, _ = parts

    def boom(reason: str) -> None:
        raise RuntimeError("handler failed")

    dog = Watchdog(tower, lambda: 0, timeout=1, on_trip=boom)
    tower.stopped = ["chain-monitor"]
    assert dog.check() == "thread chain-monitor stopped" and dog.reason is not None


def test_the_thread_looks_until_it_trips_and_survives_errors(caplog: pytest.LogCaptureFixture) -> None:
    trips: list[str] = []
    tips: list[int] = []

    def tip() -> int:
        tips.append(1)
        if len(tips) == 2:
            raise RuntimeError("odd failure")
        return 100

    class Flaky(FakeTower):
        looks = 0

        def stopped_threads(self) -> Sequence[str]:
            self.looks += 1
            if self.looks == 3:
                raise RuntimeError("look failed")
            return super().stopped_threads()

    tower = Flaky()
    dog = Watchdog(tower, tip, timeout=0.5, on_trip=trips.append, interval=0.02)
    with caplog.at_level(logging.ERROR, logger="teos.engine.watchdog"):
        dog.start()
        try:
            wait_until(lambda: tower.looks >= 6, 10)
            tower.stopped = ["engine"]
            wait_until(lambda: trips == ["thread engine stopped"], 10)
        finally:
            dog.stop()
    assert "watchdog: look failed" in caplog.text


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Watchdog(FakeTower(), lambda: 0, timeout=0, on_trip=lambda r: None)
