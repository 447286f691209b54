"""The Watcher called directly (no thread) on a real LevelDB: what a block triggers, in both dialects."""

from __future__ import annotations

import hashlib
import logging
import os

import pytest

from common import crypto
from common.appointment import slots_for
from common.dialects import locator_from_txid
from common.tx import Transaction
from common.types import BlockHash, Dialect, Txid
from teos.engine import decode_penalty
from teos.storage import keys
from teos.storage.codec import AppointmentRecord
from teos.storage.index import LocatorIndex
from teos.storage.store import Batch, Store
from teos.storage.watched import delete_watched, find_watched, put_watched, usernum_of
from teos.watcher.locator_cache import LocatorCache
from teos.watcher.watcher import Watcher, WatcherOutcome
from tests.support.fakes import random_tx, store_appointment


def block_hash(n: int) -> BlockHash:
    return BlockHash(hashlib.sha256(b"block" + n.to_bytes(4, "big")).digest())


def noise(n: int = 20) -> list[Txid]:
    return [Txid(os.urandom(32)) for _ in range(n)]


@pytest.fixture
def watcher(store: Store, index: LocatorIndex) -> Watcher:
    return Watcher(store, LocatorCache(3), decode_penalty, index)


def connect(watcher: Watcher, store: Store, height: int, txids: list[Txid]) -> WatcherOutcome:
    """Connects a block and commits what the Watcher added to its batch, as the engine does."""
    batch = Batch()
    outcome = watcher.block_connected(block_hash(height), height, txids, batch)
    store.commit(batch)
    return outcome


def watched(store: Store, record: AppointmentRecord) -> bool:
    return find_watched(store, record.user_id, record.locator) is not None


def number(store: Store, record: AppointmentRecord) -> int:
    usernum = usernum_of(store, record.user_id)
    assert usernum is not None
    return usernum


def breach(
    store: Store, index: LocatorIndex, dialect: Dialect
) -> tuple[AppointmentRecord, Transaction, Transaction]:
    dispute, penalty = random_tx(), random_tx()
    return store_appointment(store, index, dispute.txid, penalty.raw, dialect), dispute, penalty


@pytest.mark.parametrize("dialect", [Dialect.PYTHON, Dialect.RUST])
def test_a_block_with_the_dispute_is_a_breach_with_the_decrypted_penalty(
    watcher: Watcher, store: Store, dialect: Dialect, index: LocatorIndex
) -> None:
    record, dispute, penalty = breach(store, index, dialect)
    batch = Batch()
    outcome = watcher.block_connected(block_hash(7), 7, [*noise(), dispute.txid], batch)
    found = [(b.appointment, b.dispute_txid, b.penalty_txid, b.penalty_rawtx) for b in outcome.breaches]
    assert found == [(record, dispute.txid, penalty.txid, penalty.raw)]
    assert [(b.block_hash, b.height) for b in outcome.breaches] == [(block_hash(7), 7)]
    assert outcome.invalid == []
    assert watched(store, record)  # nothing is written until the engine commits the block's batch
    store.commit(batch)
    assert not watched(store, record)
    assert index.candidates([record.locator.raw]) == []  # and no longer in the index


def test_a_block_without_disputes_changes_nothing(
    watcher: Watcher, store: Store, index: LocatorIndex
) -> None:
    record, _, _ = breach(store, index, Dialect.RUST)
    batch = Batch()
    outcome = watcher.block_connected(block_hash(1), 1, noise(200), batch)
    assert (outcome.breaches, outcome.invalid, len(batch)) == ([], [], 0)
    assert watched(store, record)


def test_the_other_dialects_locator_is_no_breach(watcher: Watcher, store: Store, index: LocatorIndex) -> None:
    dispute, penalty = random_tx(), random_tx()
    record = store_appointment(store, index, dispute.txid, penalty.raw, Dialect.RUST)
    # The same rust-dialect appointment stored under the dispute's *python* locator: a collision.
    python_locator = locator_from_txid(dispute.txid, Dialect.PYTHON)
    moved = AppointmentRecord(record.uuid, python_locator, record.encrypted_blob, 20, record.user_id,
                              record.user_signature, 0, Dialect.RUST)  # fmt: skip
    batch = Batch()
    delete_watched(batch, record.locator, number(store, record), index)
    put_watched(batch, moved, number(store, record), index, new=True)
    store.commit(batch)
    outcome = connect(watcher, store, 3, [dispute.txid])
    assert outcome.breaches == [] and outcome.invalid == []
    assert watched(store, moved) and index.candidates([moved.locator.raw]) == [moved.locator.raw]


def test_a_blob_that_is_no_transaction_is_dropped_and_its_slots_go_back(
    watcher: Watcher, store: Store, index: LocatorIndex
) -> None:
    dispute = random_tx()
    garbage = crypto.encrypt(b"not a transaction", dispute.txid, Dialect.PYTHON)
    bad = store_appointment(store, index, dispute.txid, b"", Dialect.PYTHON, blob=garbage)
    other = random_tx()
    undecryptable = store_appointment(store, index, other.txid, b"", Dialect.RUST, blob=os.urandom(3000))
    outcome = connect(watcher, store, 4, [dispute.txid, other.txid])
    assert outcome.breaches == []
    assert sorted(r.uuid for r in outcome.invalid) == sorted([bad.uuid, undecryptable.uuid])
    assert outcome.refunds() == {
        bad.user_id: [(bad.locator, slots_for(len(garbage)))],
        undecryptable.user_id: [(undecryptable.locator, 2)],
    }
    assert not watched(store, bad) and not watched(store, undecryptable)


def test_an_undecodable_record_is_logged_and_skipped(
    watcher: Watcher, store: Store, caplog: pytest.LogCaptureFixture, index: LocatorIndex
) -> None:
    record, dispute, penalty = breach(store, index, Dialect.PYTHON)
    other, _, _ = breach(store, index, Dialect.PYTHON)
    corrupt = Batch()
    corrupt.put(keys.appointment(record.locator, number(store, other)), b"\x09garbage")  # bad bytes
    store.commit(corrupt)
    with caplog.at_level(logging.ERROR, logger="teos.watcher"):
        outcome = connect(watcher, store, 5, [dispute.txid])
    assert [b.penalty_txid for b in outcome.breaches] == [penalty.txid]
    assert "undecodable appointment record" in caplog.text


def test_a_late_appointment_is_found_in_the_locator_cache(
    watcher: Watcher, store: Store, index: LocatorIndex
) -> None:
    dispute, penalty = random_tx(), random_tx()
    connect(watcher, store, 10, [dispute.txid])
    connect(watcher, store, 11, noise())
    record = store_appointment(store, index, dispute.txid, penalty.raw, Dialect.RUST)  # sent after its breach
    assert watcher.breach_in_cache(record) is not None
    batch = Batch()
    outcome = watcher.appointment_added(record, batch)
    assert [(b.penalty_txid, b.height, b.block_hash) for b in outcome.breaches] == [
        (penalty.txid, 10, block_hash(10))
    ]
    store.commit(batch)
    assert not watched(store, record)
    again = Batch()
    assert watcher.appointment_added(record, again).breaches == [] and len(again) == 0  # handled once


def test_the_cache_forgets_old_and_disconnected_blocks(
    watcher: Watcher, store: Store, index: LocatorIndex
) -> None:
    old, late = random_tx(), random_tx()
    connect(watcher, store, 20, [old.txid])
    connect(watcher, store, 21, [late.txid])
    for height in (22, 23):
        connect(watcher, store, height, noise())  # the cache holds 3 blocks: 21, 22, 23
    gone = store_appointment(store, index, old.txid, random_tx().raw, Dialect.PYTHON)
    assert watcher.breach_in_cache(gone) is None
    record = store_appointment(store, index, late.txid, random_tx().raw, Dialect.PYTHON)
    assert watcher.breach_in_cache(record) is not None
    watcher.block_disconnected(block_hash(21))
    assert watcher.breach_in_cache(record) is None
    assert watcher.appointment_added(record, Batch()).breaches == []  # stays under watch


def test_recheck_finds_an_appointment_committed_after_its_block_once(
    watcher: Watcher, store: Store, index: LocatorIndex
) -> None:
    dispute, penalty = random_tx(), random_tx()
    connect(watcher, store, 30, [dispute.txid])
    connect(watcher, store, 31, [dispute.txid])  # the same txid in two cached blocks (a reorg replay)
    record = store_appointment(store, index, dispute.txid, penalty.raw, Dialect.PYTHON)
    batch = Batch()
    outcome = watcher.recheck_cached_blocks(batch)
    assert [b.appointment.uuid for b in outcome.breaches] == [record.uuid]
