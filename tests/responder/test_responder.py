"""The Responder called directly (no thread) on a real LevelDB, with a Carrier fake behind its seam:
trackers from breaches, confirmations, completion, abandonment, reorgs, broadcasts and their retries."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import pytest

from common.types import BlockHash, Dialect, Txid, Uuid
from teos.chain.carrier import BroadcastResult, BroadcastStatus
from teos.interfaces import Breach
from teos.responder.responder import Responder, ResponderOutcome
from teos.storage import keys
from teos.storage.codec import TrackerRecord
from teos.storage.index import LocatorIndex
from teos.storage.store import Batch, Store
from teos.storage.watched import delete_watched, find_watched, remove_held, usernum_of
from tests.support.fakes import random_tx, store_appointment, tracker_v1_bytes

REBROADCAST_AFTER = 6
IRREVOCABLE = 10


def block_hash(height: int) -> BlockHash:
    return BlockHash(hashlib.sha256(b"block" + height.to_bytes(4, "big")).digest())


@dataclass
class FakeCarrier:
    """Answers every broadcast with ``status``; knows the txids in ``known``."""

    status: BroadcastStatus = BroadcastStatus.ACCEPTED
    sent: list[Txid] = field(default_factory=list)
    known: set[Txid] = field(default_factory=set)

    def send(self, raw_tx: bytes, txid: Txid) -> BroadcastResult:
        self.sent.append(txid)
        return BroadcastResult(txid, self.status)

    def in_mempool_or_chain(self, txid: Txid) -> bool:
        return txid in self.known


@pytest.fixture
def carrier() -> FakeCarrier:
    return FakeCarrier()


@pytest.fixture
def responder(store: Store, carrier: FakeCarrier, index: LocatorIndex) -> Responder:
    return Responder(store, carrier, REBROADCAST_AFTER, IRREVOCABLE, index)


def a_breach(store: Store, index: LocatorIndex, height: int = 100, dialect: Dialect = Dialect.RUST) -> Breach:
    dispute, penalty = random_tx(), random_tx()
    record = store_appointment(store, index, dispute.txid, penalty.raw, dialect)
    return Breach(record, dispute.txid, penalty.txid, penalty.raw, block_hash(height), height)


def tracker(store: Store, breach: Breach) -> TrackerRecord | None:
    raw = store.get(keys.tracker(breach.appointment.uuid))
    return TrackerRecord.decode(raw) if raw is not None else None


def respond(
    responder: Responder,
    store: Store,
    index: LocatorIndex,
    breach: Breach,
    txids: frozenset[Txid] = frozenset(),
) -> None:
    """The engine's steps for a block holding ``breach``'s dispute: trackers, one commit, broadcasts."""
    batch = Batch()
    usernum = usernum_of(store, breach.appointment.user_id)
    assert usernum is not None
    delete_watched(batch, breach.appointment.locator, usernum, index)
    outcome = responder.handle_breaches([breach], breach.height, txids | {breach.dispute_txid}, batch)
    store.commit(batch)
    responder.broadcast(outcome.to_broadcast)


def connect(
    responder: Responder, store: Store, height: int, txids: frozenset[Txid] = frozenset()
) -> ResponderOutcome:
    batch = Batch()
    outcome = responder.block_connected(block_hash(height), height, txids, batch)
    store.commit(batch)
    return outcome


def test_a_breach_becomes_a_tracker_and_its_penalty_is_broadcast(
    responder: Responder, store: Store, carrier: FakeCarrier, index: LocatorIndex
) -> None:
    breach = a_breach(store, index)
    respond(responder, store, index, breach)
    t = tracker(store, breach)
    assert t is not None and (t.dispute_txid, t.penalty_txid, t.penalty_rawtx) == (
        breach.dispute_txid, breach.penalty_txid, breach.penalty_rawtx)  # fmt: skip
    assert (t.dispute_block, t.dispute_height, t.broadcast_height, t.confirmed_in) == (
        block_hash(100), 100, 100, None)  # fmt: skip
    assert carrier.sent == [breach.penalty_txid]
    assert [u.uuid for u in responder.unconfirmed()] == [breach.appointment.uuid]


def test_a_penalty_mined_beside_its_dispute_is_confirmed_at_once(
    responder: Responder, store: Store, carrier: FakeCarrier, index: LocatorIndex
) -> None:
    breach = a_breach(store, index)
    batch = Batch()
    block_txids = frozenset({breach.dispute_txid, breach.penalty_txid})
    outcome = responder.handle_breaches([breach], 100, block_txids, batch)
    store.commit(batch)
    assert outcome.to_broadcast == [] and [t.uuid for t in outcome.confirmed] == [breach.appointment.uuid]
    t = tracker(store, breach)
    assert t is not None and (t.confirmed_in, t.confirmed_height) == (block_hash(100), 100)


def test_confirmed_then_completed_after_irrevocable_confirmations(
    responder: Responder, store: Store, index: LocatorIndex
) -> None:
    breach = a_breach(store, index)
    respond(responder, store, index, breach)
    first = connect(responder, store, 101, frozenset({breach.penalty_txid}))
    assert [t.uuid for t in first.confirmed] == [breach.appointment.uuid]
    for height in range(102, 101 + IRREVOCABLE - 1):
        assert connect(responder, store, height).released == []
    done = connect(responder, store, 101 + IRREVOCABLE - 1)  # the IRREVOCABLE-th confirmation
    assert [t.uuid for t in done.released] == [breach.appointment.uuid]
    assert done.refunds() == {breach.appointment.user_id: [(breach.appointment.locator, 1)]}
    assert tracker(store, breach) is None


def test_an_unconfirmed_penalty_is_broadcast_again_every_six_blocks(
    responder: Responder, store: Store, carrier: FakeCarrier, index: LocatorIndex
) -> None:
    breach = a_breach(store, index)
    respond(responder, store, index, breach)
    for height in range(101, 100 + REBROADCAST_AFTER):
        assert connect(responder, store, height).to_broadcast == []
    again = connect(responder, store, 100 + REBROADCAST_AFTER)
    assert [t.uuid for t in again.to_broadcast] == [breach.appointment.uuid]
    t = tracker(store, breach)
    assert t is not None and t.broadcast_height == 100 + REBROADCAST_AFTER


def test_a_penalty_nobody_knows_once_the_dispute_is_irrevocable_is_abandoned(
    responder: Responder, store: Store, carrier: FakeCarrier, index: LocatorIndex
) -> None:
    breach = a_breach(store, index)
    respond(responder, store, index, breach)
    carrier.known.add(breach.penalty_txid)  # still in the mempool: kept
    assert connect(responder, store, 100 + IRREVOCABLE - 1).released == []
    carrier.known.clear()  # its inputs were spent by something else
    gone = connect(responder, store, 100 + IRREVOCABLE)
    assert [t.uuid for t in gone.released] == [breach.appointment.uuid] and tracker(store, breach) is None


def test_a_reorged_dispute_puts_the_appointment_back_under_watch(
    responder: Responder, store: Store, index: LocatorIndex
) -> None:
    breach = a_breach(store, index)
    respond(responder, store, index, breach)
    batch = Batch()
    outcome = responder.block_disconnected(block_hash(100), 100, batch)
    store.commit(batch)
    assert outcome.to_broadcast == [] and tracker(store, breach) is None
    record = breach.appointment
    assert find_watched(store, record.user_id, record.locator) == record
    assert index.candidates([record.locator.raw]) == [record.locator.raw]  # the Watcher finds it again


def test_a_reorged_dispute_of_a_deleted_user_is_dropped(
    responder: Responder, store: Store, index: LocatorIndex
) -> None:
    breach = a_breach(store, index)
    respond(responder, store, index, breach)
    usernum = usernum_of(store, breach.appointment.user_id)
    assert usernum is not None
    deleted = Batch()
    remove_held(deleted, usernum, breach.appointment.locator)
    store.commit(deleted)
    batch = Batch()
    responder.block_disconnected(block_hash(100), 100, batch)
    store.commit(batch)
    record = breach.appointment
    assert tracker(store, breach) is None and find_watched(store, record.user_id, record.locator) is None


def test_a_reorged_penalty_is_unconfirmed_and_broadcast_again(
    responder: Responder, store: Store, index: LocatorIndex
) -> None:
    breach = a_breach(store, index)
    respond(responder, store, index, breach)
    connect(responder, store, 101, frozenset({breach.penalty_txid}))
    batch = Batch()
    outcome = responder.block_disconnected(block_hash(101), 101, batch)
    store.commit(batch)
    assert [t.uuid for t in outcome.to_broadcast] == [breach.appointment.uuid]
    t = tracker(store, breach)
    assert t is not None and (t.confirmed_in, t.confirmed_height, t.broadcast_height) == (None, 0, 100)


def test_broadcasts_bitcoind_did_not_answer_are_retried_while_their_tracker_lives(
    responder: Responder, store: Store, carrier: FakeCarrier, index: LocatorIndex
) -> None:
    kept, dropped = a_breach(store, index), a_breach(store, index)
    carrier.status = BroadcastStatus.UNREACHABLE
    respond(responder, store, index, kept)
    respond(responder, store, index, dropped)
    assert responder.pending_broadcasts == 2
    assert responder.retry_broadcasts() == 0 and responder.pending_broadcasts == 2  # still away
    gone = Batch()
    gone.delete(keys.tracker(dropped.appointment.uuid))
    store.commit(gone)
    carrier.status = BroadcastStatus.ACCEPTED
    carrier.sent.clear()
    assert responder.retry_broadcasts() == 1
    assert carrier.sent == [kept.penalty_txid] and responder.pending_broadcasts == 0


def test_a_refused_broadcast_is_not_retried_but_the_tracker_stays(
    responder: Responder, store: Store, carrier: FakeCarrier, index: LocatorIndex
) -> None:
    breach = a_breach(store, index)
    carrier.status = BroadcastStatus.REJECTED
    respond(responder, store, index, breach)
    assert responder.pending_broadcasts == 0 and tracker(store, breach) is not None


def test_v1_tracker_migrates_to_v2_when_the_responder_rewrites_it(
    responder: Responder, store: Store, index: LocatorIndex
) -> None:
    """Trackers written before v2 (no dispute block) are read, followed, and written back as v2."""
    breach = a_breach(store, index)
    respond(responder, store, index, breach)
    current = tracker(store, breach)
    assert current is not None
    old = Batch()
    old.put(keys.tracker(breach.appointment.uuid), tracker_v1_bytes(current))
    store.commit(old)
    migrated = tracker(store, breach)
    assert migrated is not None and (migrated.dispute_block, migrated.dispute_height) == (None, 0)
    assert [t.uuid for t in responder.unconfirmed()] == [breach.appointment.uuid]
    connect(responder, store, 101, frozenset({breach.penalty_txid}))
    raw = store.get(keys.tracker(breach.appointment.uuid))
    assert raw is not None and raw[0] == TrackerRecord.VERSION == 2
    confirmed = TrackerRecord.decode(raw)
    assert (confirmed.confirmed_in, confirmed.penalty_txid) == (block_hash(101), breach.penalty_txid)
    # Without a dispute height, a v1 tracker is never abandoned; it completes as any other.
    done = connect(responder, store, 101 + IRREVOCABLE - 1)
    assert [t.uuid for t in done.released] == [breach.appointment.uuid]


def test_undecodable_trackers_are_skipped(responder: Responder, store: Store, index: LocatorIndex) -> None:
    good = a_breach(store, index)
    respond(responder, store, index, good)
    batch = Batch()
    batch.put(keys.tracker(Uuid(os.urandom(20))), os.urandom(40))
    store.commit(batch)
    assert [t.uuid for t in responder.unconfirmed()] == [good.appointment.uuid]
