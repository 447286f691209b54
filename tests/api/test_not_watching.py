"""A tower that has stopped watching the chain never promises: registrations and appointments answer 503
in each dialect's code (python-teos -66, rust-teos 32), through the worker channel as in teosd, the moment
a watching thread is found dead; reads still answer. The watchdog is real, its tower a double."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from common.types import Dialect
from teos.engine.watchdog import Watchdog
from teos.storage.store import Store
from tests.api.support import Tower, appointment
from tests.support.users import Client


@dataclass
class EngineDouble:
    processed_height: int = 100
    stopped: list[str] = field(default_factory=list)

    def stopped_threads(self) -> Sequence[str]:
        return self.stopped


@dataclass
class Setup:
    tower: Tower
    engine: EngineDouble
    watchdog: Watchdog
    trips: list[str]


@pytest.fixture(params=[False, True], ids=["local", "worker-channel"])
def setup(request: pytest.FixtureRequest, store: Store) -> Iterator[Setup]:
    engine, trips = EngineDouble(), list[str]()
    watchdog = Watchdog(engine, lambda: 100, timeout=300, on_trip=trips.append)
    tower = Tower.build(store, remote=request.param, watching=watchdog)
    try:
        yield Setup(tower, engine, watchdog, trips)
    finally:
        tower.close()


def test_watching_tower_signs_receipts(setup: Setup) -> None:
    alice = Client.new()
    setup.tower.register(alice)
    assert setup.tower.add(alice, appointment())[0] == 200
    assert setup.trips == []


@pytest.mark.parametrize("dialect,code", [(Dialect.PYTHON, -66), (Dialect.RUST, 32)])
def test_dead_engine_thread_refuses_registrations_and_appointments(
    setup: Setup, dialect: Dialect, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    rust = dialect is Dialect.RUST
    alice = Client.new()
    setup.tower.register(alice, dialect)
    setup.engine.stopped = ["engine"]  # the engine thread died; the watchdog has not looked yet
    with caplog.at_level(logging.ERROR, logger="teos.engine.watchdog"):
        status, body = setup.tower.add(alice, appointment(), rust=rust)
    assert (status, body["error_code"]) == (503, code)
    field = "user_id" if rust else "public_key"
    status, body = setup.tower.post("/register", {field: Client.new().user_id.hex()}, rust=rust)
    assert (status, body["error_code"]) == (503, code)
    assert setup.tower.subscription_info(alice, rust=rust)[0] == 200  # reads still answer
    assert setup.trips == ["thread engine stopped"]  # tripped once, at the first refused request
    assert "watchdog: the tower stopped watching the chain: thread engine stopped" in caplog.text


def test_stall_seen_by_the_watchdog_refuses_until_restart(setup: Setup) -> None:
    alice = Client.new()
    setup.tower.register(alice)
    clock = [0.0]
    tip = [100]
    stalled = Watchdog(
        setup.engine, lambda: tip[0], timeout=10, on_trip=setup.trips.append, clock=lambda: clock[0]
    )
    tower = Tower.build(setup.tower.store, watching=stalled)
    try:
        stalled.check()
        tip[0] = 102  # bitcoind moves on, the engine does not
        for _ in range(3):
            clock[0] += 5
            stalled.check()
        assert stalled.reason is not None and "2 blocks ahead" in stalled.reason
        status, body = tower.add(alice, appointment())
        assert (status, body["error_code"]) == (503, -66)
    finally:
        tower.close()
