"""Exceptions injected at each seam of the block pipeline must neither kill nor wedge the engine.

The seams are the calls the engine thread and the chain monitor make: the bitcoind client (each RPC), the
store's commit, the block listeners, the metrics and the codecs of stored records. Each is made to raise,
a few times, the kind of exception it could raise for real (a ValueError from a garbled answer, an OSError
from a full disk, a RuntimeError from a bug), while a breach is being mined. The property, for every seam:
after the fault clears, the tower answers every breach mined before, during and after it, reaches
bitcoind's tip, and never refuses a block it has already processed (a block's effects are committed once;
what fails after the commit is retried on its own).

The two defects of issue 11 are reproduced here first: a malformed ``sendrawtransaction`` answer while a
penalty waits in the broadcast retry queue killed the engine thread, and an exception after a block's
commit made the handler run again and refuse the block forever ("does not extend the processed tip").
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common.types import BlockHash, Dialect, Txid
from teos.chain.bitcoind import (
    BitcoindUnreachable,
    Block,
    BlockHeader,
    ChainInfo,
    RPCError,
    TxInfo,
)
from teos.chain.tip import ChainTip
from teos.daemon import ChainSide, build_chain_side
from teos.engine import BootstrapError, Engine
from teos.engine.watchdog import Watchdog
from teos.storage import keys
from teos.storage.codec import AppointmentRecord, TrackerRecord
from teos.storage.index import LocatorIndex
from teos.storage.store import Batch, Store
from tests.support.fakes import FakeChain, RecordingLedger, quick_engine_config, random_tx, store_appointment
from tests.support.wait import wait_until

# -- injecting faults ------------------------------------------------------------------------------


class FaultPlan:
    """Exceptions queued per seam name; ``hit(seam)`` raises the next one, if any."""

    def __init__(self) -> None:
        self._queued: dict[str, deque[list[Any]]] = {}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()

    def arm(self, seam: str, error: BaseException, count: int = 1) -> None:
        with self._lock:
            self._queued.setdefault(seam, deque()).append([error, count])

    def pending(self) -> int:
        with self._lock:
            return sum(n for q in self._queued.values() for _, n in q)

    def hit(self, seam: str) -> None:
        with self._lock:
            queue = self._queued.get(seam)
            if not queue:
                return
            entry = queue[0]
            entry[1] -= 1
            if entry[1] <= 0:
                queue.popleft()
            self.hits[seam] += 1
            error = entry[0]
        raise error


class FaultyChain(FakeChain):
    """The fake bitcoind, each RPC of which can be made to raise (before it has any effect)."""

    def __init__(self, plan: FaultPlan) -> None:
        super().__init__()
        self.plan = plan

    def get_best_block_hash(self) -> BlockHash:
        self.plan.hit("bitcoind.getbestblockhash")
        return super().get_best_block_hash()

    def get_block_hash(self, height: int) -> BlockHash:
        self.plan.hit("bitcoind.getblockhash")
        return super().get_block_hash(height)

    def get_block(self, block_hash: BlockHash) -> Block:
        self.plan.hit("bitcoind.getblock")
        return super().get_block(block_hash)

    def get_block_header(self, block_hash: BlockHash) -> BlockHeader:
        self.plan.hit("bitcoind.getblockheader")
        return super().get_block_header(block_hash)

    def get_blockchain_info(self) -> ChainInfo:
        self.plan.hit("bitcoind.getblockchaininfo")
        return super().get_blockchain_info()

    def send_raw_transaction(self, raw_tx: bytes) -> Txid:
        self.plan.hit("bitcoind.sendrawtransaction")
        return super().send_raw_transaction(raw_tx)

    def get_raw_transaction(self, txid: Txid, block_hash: BlockHash | None = None) -> TxInfo | None:
        self.plan.hit("bitcoind.getrawtransaction")
        return super().get_raw_transaction(txid, block_hash)


class FaultyStore(Store):
    def __init__(self, path: Path, plan: FaultPlan) -> None:
        super().__init__(path)
        self.plan = plan

    def commit(self, batch: Batch, sync: bool = True) -> None:
        self.plan.hit("store.commit")
        super().commit(batch, sync)


@dataclass
class FaultyListener:
    plan: FaultPlan
    seen: int = 0

    def block_connected(self, block_hash: BlockHash, height: int) -> None:
        self.plan.hit("listener.block_connected")
        self.seen = max(self.seen, height)

    def block_disconnected(self, block_hash: BlockHash, height: int) -> None:
        self.plan.hit("listener.block_disconnected")


@dataclass
class FaultyMetrics:
    plan: FaultPlan

    def breach_seen(self, n: int = 1) -> None:
        self.plan.hit("metrics.breach_seen")

    def penalty_broadcast(self, n: int = 1) -> None:
        self.plan.hit("metrics.penalty_broadcast")

    def penalty_confirmed(self, n: int = 1) -> None:
        self.plan.hit("metrics.penalty_confirmed")

    def block_processed(self, n: int = 1) -> None:
        self.plan.hit("metrics.block_processed")


def faulty_codecs(monkeypatch: pytest.MonkeyPatch, plan: FaultPlan) -> None:
    """Stored appointments and trackers decode through the plan (seams ``codec.appointment``/``tracker``)."""
    patch_decode(monkeypatch, plan, AppointmentRecord, "codec.appointment")
    patch_decode(monkeypatch, plan, TrackerRecord, "codec.tracker")


def patch_decode(monkeypatch: pytest.MonkeyPatch, plan: FaultPlan, cls: type[Any], seam: str) -> None:
    original = getattr(cls.decode, "__func__")  # noqa: B009 - the function under the classmethod

    def decode(klass: Any, raw: bytes) -> Any:
        plan.hit(seam)
        return original(klass, raw)

    monkeypatch.setattr(cls, "decode", classmethod(decode))


# -- the tower under test --------------------------------------------------------------------------


class Tower:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.plan = FaultPlan()
        self.chain = FaultyChain(self.plan)
        self.store = FaultyStore(tmp_path / "db", self.plan)
        self.index = LocatorIndex(self.store)  # started once the store is open
        self.ledger = RecordingLedger(self.store, self.index)
        self.listener = FaultyListener(self.plan)
        self.metrics = FaultyMetrics(self.plan)
        self.parts: ChainSide | None = None
        faulty_codecs(monkeypatch, self.plan)

    @property
    def engine(self) -> Engine:
        assert self.parts is not None, "start() first"
        return self.parts.engine

    def start(self) -> Engine:
        config = quick_engine_config()
        parts = build_chain_side(
            config, self.store, self.chain, ChainTip(), self.ledger, self.index, [self.listener], self.metrics
        )
        parts.start()
        self.parts = parts
        return parts.engine

    def stop(self) -> None:
        if self.parts is not None:
            self.parts.stop()
            self.parts = None

    def breach(self, dialect: Dialect = Dialect.PYTHON) -> tuple[AppointmentRecord, Txid, Txid]:
        dispute, penalty = random_tx(), random_tx()
        record = store_appointment(self.store, self.index, dispute.txid, penalty.raw, dialect)
        return record, dispute.txid, penalty.txid

    def mine(self, *txids: Txid, n: int = 1) -> None:
        self.chain.mine(*txids, n=n, mempool=False)
        if self.parts is not None:
            self.parts.monitor.wake()

    def at_tip(self) -> bool:
        return self.parts is not None and self.engine.tip_height == self.chain.tip.height

    def responded(self, record: AppointmentRecord, penalty: Txid) -> bool:
        """The breach has its tracker and bitcoind has the penalty (mempool or chain)."""
        tracked = self.store.get(keys.tracker(record.uuid)) is not None
        return tracked and (penalty in self.chain.mempool or self.chain.in_best_chain(penalty))


@pytest.fixture
def tower(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tower]:
    t = Tower(tmp_path, monkeypatch)
    t.store.open()
    t.index.start()
    try:
        yield t
    finally:
        t.stop()
        t.index.stop()
        t.store.close()


Fault = tuple[str, Callable[[], BaseException], int]


def garbled() -> BaseException:
    return ValueError("Txid must be 64 hex characters")  # what the client raised on a garbled txid


def disk_full() -> BaseException:
    return OSError(28, "No space left on device")


def bug() -> BaseException:
    return RuntimeError("injected failure")


def unreachable() -> BaseException:
    return BitcoindUnreachable("connection refused")


def missing_inputs() -> BaseException:
    return RPCError(-25, "bad-txns-inputs-missingorspent")


SEAMS: dict[str, list[Fault]] = {
    # bitcoind client, each call the walker and the engine make
    "getbestblockhash": [("bitcoind.getbestblockhash", garbled, 3)],
    "getblockhash": [("bitcoind.getblockhash", garbled, 3)],
    "getblock": [("bitcoind.getblock", garbled, 3)],
    "getblockheader": [("bitcoind.getblockheader", garbled, 3)],
    "sendrawtransaction": [("bitcoind.sendrawtransaction", garbled, 3)],
    "sendrawtransaction-bug": [("bitcoind.sendrawtransaction", bug, 3)],
    # the retry queue: bitcoind away for the first broadcast, then a garbled answer to the retries
    "sendrawtransaction-in-retry-queue": [
        ("bitcoind.sendrawtransaction", unreachable, 1),
        ("bitcoind.sendrawtransaction", garbled, 3),
    ],
    # -25 makes the carrier ask getrawtransaction, whose answer is garbled
    "getrawtransaction": [
        ("bitcoind.sendrawtransaction", missing_inputs, 1),
        ("bitcoind.getrawtransaction", garbled, 1),
    ],
    "store-commit": [("store.commit", disk_full, 3)],
    "listener": [("listener.block_connected", bug, 3)],
    "metrics-block-processed": [("metrics.block_processed", bug, 3)],
    "metrics-breach-seen": [("metrics.breach_seen", bug, 1)],
    "metrics-penalty-broadcast": [("metrics.penalty_broadcast", bug, 1)],
    "codec-appointment": [("codec.appointment", bug, 3)],
    "codec-tracker": [("codec.tracker", bug, 3)],
}


@pytest.mark.parametrize("seam", list(SEAMS))
def test_fault_at_a_seam_neither_kills_nor_wedges_the_engine(
    tower: Tower, seam: str, caplog: pytest.LogCaptureFixture
) -> None:
    before, during, after = tower.breach(Dialect.PYTHON), tower.breach(Dialect.RUST), tower.breach()
    tower.start()
    tower.mine(before[1])
    wait_until(lambda: tower.responded(before[0], before[2]), 10, message="breach before the fault")

    for name, make_error, count in SEAMS[seam]:
        tower.plan.arm(name, make_error(), count)
    with caplog.at_level(logging.INFO):
        tower.mine(during[1])
        tower.mine(n=2)
        wait_until(lambda: tower.plan.pending() == 0, 20, message=f"the {seam} fault was not hit")
        tower.mine(after[1])
        tower.mine(n=2)
        for record, _, penalty in (before, during, after):
            answered = functools.partial(tower.responded, record, penalty)
            wait_until(answered, 20, message=f"breach not answered after {seam}")
        wait_until(tower.at_tip, 20, message=f"the tower did not reach the tip after {seam}")
    assert "does not extend the processed tip" not in caplog.text
    assert tower.listener.seen == tower.chain.tip.height


def test_breach_in_the_block_of_a_post_commit_fault_is_committed_once(tower: Tower) -> None:
    """The second defect, alone: sendrawtransaction raising once after the block's commit."""
    record, dispute, penalty = tower.breach()
    tower.start()
    tower.plan.arm("bitcoind.sendrawtransaction", RuntimeError("sendrawtransaction raised"), 1)
    tower.mine(dispute)
    wait_until(lambda: tower.responded(record, penalty), 10, message="the penalty was not broadcast again")
    tower.mine(n=3)
    wait_until(tower.at_tip, 10, message="the engine is wedged on the block it already committed")
    # The failed broadcast never reached bitcoind; its retry did, once: the block was not handled again.
    assert tower.plan.hits["bitcoind.sendrawtransaction"] == 1 and tower.chain.sent.count(penalty) == 1


def test_garbled_broadcast_answer_in_the_retry_queue_leaves_the_engine_alive(tower: Tower) -> None:
    """The first defect, alone: a penalty in the retry queue, then a ValueError from sendrawtransaction."""
    record, dispute, penalty = tower.breach()
    later, later_dispute, later_penalty = tower.breach(Dialect.RUST)
    tower.start()
    tower.plan.arm("bitcoind.sendrawtransaction", BitcoindUnreachable("bitcoind away"), 1)
    tower.plan.arm("bitcoind.sendrawtransaction", ValueError("Txid must be 64 hex characters"), 1)
    tower.mine(dispute)
    wait_until(lambda: tower.plan.pending() == 0, 10)
    wait_until(lambda: tower.responded(record, penalty), 10, message="the queued penalty was dropped")
    tower.mine(later_dispute)
    wait_until(lambda: tower.responded(later, later_penalty), 10, message="the engine thread is dead")
    wait_until(tower.at_tip, 10)


# -- start-up ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seam", ["bitcoind.getblockchaininfo", "bitcoind.getbestblockhash", "bitcoind.getblockheader"]
)
def test_start_up_retries_a_garbled_answer(tower: Tower, seam: str) -> None:
    tower.plan.arm(seam, ValueError("Txid must be 64 hex characters"), 2)
    engine = tower.start()
    assert tower.plan.pending() == 0 and engine.tip_height == tower.chain.tip.height


def test_start_up_gives_up_with_a_bootstrap_error_not_a_traceback(tower: Tower) -> None:
    tower.plan.arm("bitcoind.getbestblockhash", ValueError("Txid must be 64 hex characters"), 10_000)
    with pytest.raises(BootstrapError, match=r"getbestblockhash|Txid"):
        tower.start()


# -- what the watchdog sees ------------------------------------------------------------------------


class ThreadKiller(BaseException):
    """Not an Exception: what no loop catches (a stand-in for a bug beyond reach), so the thread ends."""


@pytest.mark.parametrize(
    "seam,thread",
    [("listener.block_connected", "engine"), ("bitcoind.getbestblockhash", "chain-monitor")],
)
def test_a_dead_watching_thread_is_reported_and_trips_the_watchdog(
    tower: Tower, seam: str, thread: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    died: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(str(args.thread.name)))
    tower.start()
    parts = tower.parts
    assert parts is not None and parts.stopped_threads() == []
    trips: list[str] = []
    watchdog = Watchdog(parts, lambda: tower.chain.tip.height, timeout=60, on_trip=trips.append)
    assert watchdog.check() is None
    tower.plan.arm(seam, ThreadKiller(), 1)
    tower.mine()
    wait_until(lambda: parts.stopped_threads() == [thread], 10, message=f"{thread} not reported dead")
    assert died == [thread]
    assert watchdog.check() == f"thread {thread} stopped" and trips == [f"thread {thread} stopped"]
