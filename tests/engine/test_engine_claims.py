"""The engine's last step, a paid tower's claims (a recording fake of ``ClaimsStep``), against a fake chain
and real LevelDB: it sees every block after the rest, reorgs too, is resumed at start, cannot stop the
thread by raising, has its pending work retried while idle; and ``Engine.call`` runs work between blocks."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from common.types import BlockHash, Txid
from teos.chain.tip import ChainTip
from teos.daemon import ChainSide, build_chain_side
from teos.engine.engine import ClaimsStep
from teos.storage.index import LocatorIndex
from teos.storage.store import Store
from tests.support.fakes import FakeChain, RecordingLedger, quick_engine_config
from tests.support.wait import wait_until


@dataclass
class RecordingClaims:
    events: list[tuple[str, int]] = field(default_factory=list)
    txids: dict[int, tuple[Txid, ...]] = field(default_factory=dict)
    threads: set[str] = field(default_factory=set)
    fail_at: int | None = None
    pending_blocks: int = 0
    retries: int = 0

    @property
    def pending(self) -> bool:
        return self.pending_blocks > 0

    def _seen(self, what: str, height: int) -> None:
        self.threads.add(threading.current_thread().name)
        self.events.append((what, height))

    def resume(self, tip: int) -> None:
        self._seen("resume", tip)

    def block_connected(self, block_hash: BlockHash, height: int, txids: Sequence[Txid]) -> None:
        self._seen("connected", height)
        self.txids[height] = tuple(txids)
        if height == self.fail_at:
            raise RuntimeError("a claim step exploded")

    def block_disconnected(self, block_hash: BlockHash, height: int) -> None:
        self._seen("disconnected", height)

    def retry_pending(self) -> None:
        self.retries += 1
        self.pending_blocks = max(0, self.pending_blocks - 1)


@dataclass
class Side:
    parts: ChainSide
    chain: FakeChain
    claims: RecordingClaims

    def mine(self, *txids: Txid, n: int = 1) -> None:
        self.chain.mine(*txids, n=n)
        self.parts.monitor.wake()
        wait_until(lambda: self.parts.engine.tip_height == self.chain.tip.height, 5)


@pytest.fixture
def side(store: Store, index: LocatorIndex) -> Iterator[Side]:
    chain, claims = FakeChain(), RecordingClaims()
    config = quick_engine_config()
    step: ClaimsStep = claims
    ledger = RecordingLedger(store, index)
    parts = build_chain_side(config, store, chain, ChainTip(), ledger, index, claims=step)
    parts.start()
    try:
        yield Side(parts, chain, claims)
    finally:
        parts.stop()


def test_claims_see_every_block_after_the_rest_and_reorgs(side: Side) -> None:
    start = side.chain.tip.height
    wait_until(lambda: ("resume", start) in side.claims.events, 5)
    tx = Txid(bytes(range(32)))
    side.mine(tx)
    assert side.claims.events[-1] == ("connected", start + 1)
    assert tx in side.claims.txids[start + 1]
    side.chain.reorg(1)
    side.parts.monitor.wake()
    wait_until(lambda: ("disconnected", start + 1) in side.claims.events, 5)
    assert side.claims.threads == {"engine"}


def test_a_claim_step_that_raises_does_not_stop_the_engine(side: Side) -> None:
    side.claims.fail_at = side.chain.tip.height + 1
    side.mine()
    side.mine()  # the next block is processed as usual
    assert [h for what, h in side.claims.events if what == "connected"][-2:] == [
        side.claims.fail_at,
        side.claims.fail_at + 1,
    ]


def test_pending_claim_work_is_retried_while_idle(side: Side) -> None:
    side.claims.pending_blocks = 2
    side.mine()  # wakes the engine; from then on it retries every few seconds while idle
    wait_until(lambda: not side.claims.pending, 20)
    assert side.claims.retries >= 2


def test_call_runs_work_on_the_engine_thread_between_blocks(side: Side) -> None:
    assert side.parts.engine.call(lambda: threading.current_thread().name) == "engine"

    def boom() -> None:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        side.parts.engine.call(boom)
    side.mine()  # the engine goes on
    side.parts.engine.stop()
    with pytest.raises(TimeoutError):
        side.parts.engine.call(lambda: None, timeout=0.2)


def test_a_call_waiting_for_a_stuck_engine_gives_up_once_the_engine_is_stopped(side: Side) -> None:
    """An operator's claim waits for the engine thread up to a minute; when teosd stops (the watchdog found
    the engine stuck, say), the waiting caller gets its TimeoutError then, not a minute later."""
    engine = side.parts.engine
    release, started = threading.Event(), threading.Event()

    def stuck() -> None:
        started.set()
        release.wait(30)

    errors: list[str] = []

    def call(fn: Callable[[], None], timeout: float) -> None:
        try:
            engine.call(fn, timeout=timeout)
        except TimeoutError as e:
            errors.append(str(e))

    blocker = threading.Thread(target=call, args=(stuck, 30))  # its caller gives up too, once stopped
    blocker.start()

    try:
        assert started.wait(10)
        waiting = threading.Thread(target=call, args=(lambda: None, 60))
        waiting.start()
        engine.stop(timeout=0.1)  # the engine thread is stuck: stop gives up joining it
        waiting.join(10)
        blocker.join(10)
        assert not waiting.is_alive() and not blocker.is_alive()
        assert errors == ["the engine is stopping"] * 2
    finally:
        release.set()
        blocker.join(10)
