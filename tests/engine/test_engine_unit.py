"""The engine against a fake chain and a real LevelDB: breaches, confirmations, reorgs, restarts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from common import crypto
from common.dialects import locator_from_txid
from common.tx import Transaction
from common.types import Dialect, Txid
from teos.chain.bitcoind import RPCError
from teos.chain.tip import ChainTip
from teos.daemon import ChainSide, build_chain_side
from teos.engine import BootstrapError, Engine
from teos.storage import keys
from teos.storage.codec import AppointmentRecord, TrackerRecord
from teos.storage.index import LocatorIndex
from teos.storage.store import Batch, Store
from teos.storage.watched import delete_watched, find_watched, put_watched, user_holds, usernum_of
from tests.support.fakes import FakeChain, RecordingLedger, quick_engine_config, random_tx, store_appointment
from tests.support.wait import wait_until


@pytest.fixture
def chain() -> FakeChain:
    return FakeChain()


@pytest.fixture
def ledger(store: Store, index: LocatorIndex) -> RecordingLedger:
    return RecordingLedger(store, index)


class Harness:
    """The chain side as teosd wires it, over the fake chain, the store and the recording ledger."""

    def __init__(self, chain: FakeChain, store: Store, ledger: RecordingLedger, **overrides: Any) -> None:
        self.chain, self.store, self.ledger = chain, store, ledger
        self.index = ledger.index
        self.overrides = overrides
        self.parts: ChainSide | None = None

    @property
    def engine(self) -> Engine:
        assert self.parts is not None, "start() first"
        return self.parts.engine

    def start(self) -> Engine:
        config = quick_engine_config(**self.overrides)
        parts = build_chain_side(config, self.store, self.chain, ChainTip(), self.ledger, self.index)
        parts.start()
        self.parts = parts
        return parts.engine

    def stop(self) -> None:
        if self.parts is not None:
            self.parts.stop()
            self.parts = None

    def synced(self, timeout: float = 5.0) -> None:
        """The engine has processed the chain's tip and finished with it: the tip is set before the
        block's broadcasts, so a call run on the engine thread after it marks the block's end."""
        wait_until(lambda: self.engine.tip_height == self.chain.tip.height, timeout)
        self.engine.call(lambda: None, timeout=timeout)

    def mine(self, *txids: Txid, n: int = 1, mempool: bool = True) -> None:
        assert self.parts is not None, "start() first"
        self.chain.mine(*txids, n=n, mempool=mempool)
        self.parts.monitor.wake()
        self.synced()

    def tracker(self, record: AppointmentRecord) -> Any:
        """The record's tracker, or None (typed Any: the tests read fields of it and compare it to None)."""
        raw = self.store.get(keys.tracker(record.uuid))
        return TrackerRecord.decode(raw) if raw is not None else None

    def watched(self, record: AppointmentRecord) -> bool:
        return find_watched(self.store, record.user_id, record.locator) is not None


@pytest.fixture
def h(chain: FakeChain, store: Store, ledger: RecordingLedger) -> Iterator[Harness]:
    harness = Harness(chain, store, ledger)
    yield harness
    harness.stop()


def breach(
    h: Harness, dialect: Dialect = Dialect.PYTHON, **kw: Any
) -> tuple[AppointmentRecord, Transaction, Transaction]:
    dispute, penalty = random_tx(), random_tx()
    record = store_appointment(h.store, h.index, dispute.txid, penalty.raw, dialect, **kw)
    return record, dispute, penalty


def test_first_start_begins_at_the_tip(h: Harness) -> None:
    engine = h.start()
    assert engine.tip_height == h.chain.tip.height
    assert engine.bitcoind_reachable
    status = engine.status()
    assert status["watcher"]["height"] == h.chain.tip.height and status["n_trackers"] == 0


@pytest.mark.parametrize("dialect", [Dialect.PYTHON, Dialect.RUST])
def test_breach_is_responded_and_completes_after_100_confirmations(h: Harness, dialect: Dialect) -> None:
    record, dispute, penalty = breach(h, dialect)
    h.start()
    h.mine(dispute.txid, mempool=False)
    t = h.tracker(record)
    assert t is not None and t.penalty_txid == penalty.txid and t.dispute_txid == dispute.txid
    assert not h.watched(record)
    assert penalty.txid in h.chain.mempool
    h.mine()  # the penalty confirms
    assert h.tracker(record).confirmed_height == h.chain.tip.height
    h.mine(n=98)
    assert h.tracker(record) is not None  # 99 confirmations
    h.mine()
    assert h.tracker(record) is None
    assert h.ledger.released == [(record.user_id, record.uuid, 1)]
    assert not user_holds(h.store, record.user_id, record.locator)


def test_both_dialects_in_one_block(h: Harness) -> None:
    py, d1, p1 = breach(h, Dialect.PYTHON)
    rs, d2, p2 = breach(h, Dialect.RUST)
    h.start()
    h.mine(d1.txid, d2.txid, mempool=False)
    assert h.tracker(py).penalty_txid == p1.txid
    assert h.tracker(rs).penalty_txid == p2.txid


def test_locator_of_the_other_dialect_does_not_trigger(h: Harness) -> None:
    dispute, penalty = random_tx(), random_tx()
    record = store_appointment(h.store, h.index, dispute.txid, penalty.raw, Dialect.RUST)
    # A rust-dialect appointment stored under the *python* locator of the dispute (a collision).
    moved = AppointmentRecord(
        record.uuid,
        locator_from_txid(dispute.txid, Dialect.PYTHON),
        record.encrypted_blob,
        record.to_self_delay,
        record.user_id,
        record.user_signature,
        0,
        Dialect.RUST,
    )
    usernum = usernum_of(h.store, record.user_id)
    assert usernum is not None
    b = Batch()
    delete_watched(b, record.locator, usernum, h.index)
    put_watched(b, moved, usernum, h.index, new=True)
    h.store.commit(b)
    h.start()
    h.mine(dispute.txid, mempool=False)
    assert h.tracker(moved) is None and h.watched(moved)


def test_invalid_blob_is_dropped_and_slots_released(h: Harness) -> None:
    dispute = random_tx()
    garbage = crypto.encrypt(b"not a transaction", dispute.txid, Dialect.PYTHON)
    record = store_appointment(h.store, h.index, dispute.txid, b"", Dialect.PYTHON, blob=garbage)
    wrong_key, d2, _ = breach(h, Dialect.PYTHON, blob=b"\x00" * 300)
    h.start()
    h.mine(dispute.txid, d2.txid, mempool=False)
    for r in (record, wrong_key):
        assert not h.watched(r) and h.tracker(r) is None
    assert {u for _, u, _ in h.ledger.released} == {record.uuid, wrong_key.uuid}


def test_appointment_after_its_breach_uses_the_locator_cache(h: Harness) -> None:
    h.start()
    dispute, penalty = random_tx(), random_tx()
    h.mine(dispute.txid, mempool=False)
    h.mine(n=3, mempool=False)
    record = store_appointment(h.store, h.index, dispute.txid, penalty.raw, Dialect.RUST)
    assert h.engine.breach_in_cache(record) == dispute.txid
    h.engine.appointment_added(record, dispute.txid)
    wait_until(lambda: h.tracker(record) is not None, 5)
    # The broadcast follows the block's commit (it is never retried into a second commit), so the
    # penalty reaches the mempool a moment after the tracker is stored.
    wait_until(lambda: penalty.txid in h.chain.mempool, 5)
    h.mine(n=6, mempool=False)  # the dispute block leaves the cache
    late = store_appointment(h.store, h.index, dispute.txid, penalty.raw, Dialect.PYTHON)
    assert h.engine.breach_in_cache(late) is None


def test_appointment_committed_before_a_crash_is_found_at_restart(h: Harness) -> None:
    h.start()
    dispute, penalty = random_tx(), random_tx()
    h.mine(dispute.txid, mempool=False)
    h.stop()  # the API committed the appointment but the engine never heard of it
    record = store_appointment(h.store, h.index, dispute.txid, penalty.raw, Dialect.PYTHON)
    h.start()
    wait_until(lambda: h.tracker(record) is not None, 5)
    # The broadcast follows the block's commit (it is never retried into a second commit), so the
    # penalty reaches the mempool a moment after the tracker is stored.
    wait_until(lambda: penalty.txid in h.chain.mempool, 5)


def test_breach_while_down_is_replayed(h: Harness) -> None:
    record, dispute, penalty = breach(h)
    h.start()
    h.stop()
    h.chain.mine(n=3, mempool=False)
    h.chain.mine(dispute.txid, mempool=False)
    h.chain.mine(n=20, mempool=False)
    h.start()
    h.synced()
    t = h.tracker(record)
    assert t is not None and t.dispute_height == h.chain.tip.height - 20
    assert penalty.txid in h.chain.mempool


def test_unconfirmed_penalty_is_rebroadcast_at_start_and_after_6_blocks(h: Harness) -> None:
    _record, dispute, penalty = breach(h)
    h.start()
    h.mine(dispute.txid, mempool=False)
    assert h.chain.sent.count(penalty.txid) == 1
    h.mine(n=5, mempool=False)
    assert h.chain.sent.count(penalty.txid) == 1
    h.mine(mempool=False)
    assert h.chain.sent.count(penalty.txid) == 2
    h.stop()
    h.start()
    wait_until(lambda: h.chain.sent.count(penalty.txid) == 3, 5)


def test_dispute_reorged_out_goes_back_under_watch(h: Harness) -> None:
    record, dispute, _penalty = breach(h)
    h.start()
    h.mine(dispute.txid, mempool=False)
    assert h.tracker(record) is not None
    h.chain.reorg(1)
    h.chain.mempool.clear()
    h.mine(n=2, mempool=False)
    assert h.tracker(record) is None and h.watched(record)
    h.mine(dispute.txid, mempool=False)
    assert h.tracker(record) is not None and not h.watched(record)


def test_penalty_reorged_out_is_rebroadcast(h: Harness) -> None:
    record, dispute, penalty = breach(h)
    h.start()
    h.mine(dispute.txid, mempool=False)
    h.mine()  # penalty confirmed
    assert h.tracker(record).confirmed_in is not None
    h.chain.reorg(1)
    h.chain.mempool.clear()
    sent = h.chain.sent.count(penalty.txid)
    h.mine(n=2, mempool=False)
    t = h.tracker(record)
    assert t.confirmed_in is None
    assert h.chain.sent.count(penalty.txid) == sent + 1
    assert penalty.txid in h.chain.mempool


def test_reorg_deeper_than_the_cache_while_down(h: Harness) -> None:
    record, dispute, _penalty = breach(h)
    h.start()
    h.mine(n=2, mempool=False)
    h.mine(dispute.txid, mempool=False)
    h.mine(n=8, mempool=False)
    assert h.tracker(record) is not None
    h.stop()
    h.chain.reorg(10)
    h.chain.mempool.clear()
    h.chain.mine(n=12, mempool=False)
    h.start()
    h.synced()
    assert h.tracker(record) is None and h.watched(record)
    assert h.engine.status()["watcher"]["block_hash"] == h.chain.tip.hash.hex()


def test_rejected_penalty_keeps_its_tracker(h: Harness) -> None:
    record, dispute, penalty = breach(h)
    h.chain.reject[penalty.txid] = RPCError(-26, "insufficient fee, rejecting replacement")
    h.start()
    h.mine(dispute.txid, mempool=False)
    assert h.tracker(record) is not None and penalty.txid not in h.chain.mempool
    del h.chain.reject[penalty.txid]
    h.mine(n=6, mempool=False)
    assert penalty.txid in h.chain.mempool


def test_bitcoind_down_then_back(h: Harness) -> None:
    record, dispute, _penalty = breach(h)
    h.start()
    h.chain.down = True
    wait_until(lambda: not h.engine.bitcoind_reachable, 5)
    h.chain.mine(dispute.txid, n=3, mempool=False)
    h.chain.down = False
    wait_until(lambda: h.engine.bitcoind_reachable, 5)
    h.synced()
    assert h.tracker(record) is not None


def test_wrong_network_is_refused(h: Harness) -> None:
    h.chain.chain = "main"
    with pytest.raises(BootstrapError, match="regtest"):
        h.start()


def test_pruned_blocks_still_needed_are_refused(h: Harness) -> None:
    h.start()
    h.stop()
    h.chain.mine(n=20, mempool=False)
    h.chain.pruned_below = h.chain.tip.height - 5
    with pytest.raises(BootstrapError, match="pruned"):
        h.start()


def test_unreachable_at_start_is_refused_after_the_retry_policy(h: Harness) -> None:
    h.chain.down = True
    with pytest.raises(BootstrapError, match="did not answer"):
        h.start()


def test_catch_up_after_downtime_logs_progress_and_status_reports_the_tip(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.start()
    h.stop()
    h.chain.mine(n=40)  # mined while the tower was down
    with caplog.at_level("INFO", logger="teos.engine"):
        engine = h.start()
        h.synced(timeout=20)
        wait_until(lambda: "caught up" in caplog.text, 5)
    assert "catching up from height" in caplog.text
    status = engine.status()
    assert status["tip_height_seen"] == h.chain.tip.height
    assert status["blocks_behind"] == 0 and status["catch_up"] is None
    assert status["seconds_since_tip_check"] is not None and status["seconds_since_tip_check"] < 5
