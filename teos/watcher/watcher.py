"""The Watcher: finds the appointments a block triggers, and checks that they hold a usable penalty.

For every transaction of a connected block it derives both dialects' locators and asks the locator index
(``teos.storage.index``, in memory: 2 bytes per appointment) which of them may be watched; only those
candidates are looked up in LevelDB (``w|locator`` seeks, sorted). The cost of a block is therefore
proportional to its transactions, not to the number of appointments stored.

A stored appointment matches only through the locator of its *own* dialect (a python-teos locator that
happens to equal some other transaction's rust-teos locator is no breach). On a match the blob is
decrypted with that dialect's key of the dispute txid and must decode as a transaction: the result is a
``Breach`` for the Responder. An appointment whose blob does not decrypt or decode can never help: it is
dropped (its ``w|`` entry deleted, its slots given back) and logged, as python-teos does.

The Watcher only adds operations to the engine's batch for the block; it never commits on its own, so a
block's effects and the "last processed block" pointer land together (appointments it consumes leave the
index once that batch is written). It reads the database through ``AppointmentReader`` (two read calls),
never through LevelDB itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from common.crypto import DecryptionError, decrypt
from common.dialects import locator_from_txid
from common.types import BlockHash, Txid, Uuid
from teos.interfaces import Breach, SlotRefunds, slot_refunds
from teos.storage import keys
from teos.storage.codec import AppointmentRecord
from teos.storage.store import Batch
from teos.storage.watched import IndexJournal, delete_watched, is_watched, usernum_of, watched_at
from teos.watcher.locator_cache import BlockLocators, CachedTx, LocatorCache, block_locators, locator_key

log = logging.getLogger(__name__)


class InvalidPenalty(ValueError):
    """The decrypted blob is not a transaction."""


# Decodes a raw penalty transaction and returns its txid; raises InvalidPenalty (or ValueError).
PenaltyDecoder = Callable[[bytes], Txid]


@dataclass
class WatcherOutcome:
    breaches: list[Breach] = field(default_factory=list)
    invalid: list[AppointmentRecord] = field(default_factory=list)  # dropped; their slots go back

    def refunds(self) -> SlotRefunds:
        """The slots of the dropped appointments, to give back."""
        return slot_refunds(self.invalid)


class AppointmentReader(Protocol):
    """The Watcher's reads of the database (``Store`` satisfies it)."""

    def get(self, key: bytes) -> bytes | None: ...

    def iterate_prefixes(self, prefixes: Iterable[bytes]) -> Iterator[tuple[bytes, bytes]]: ...


class WatchIndex(IndexJournal, Protocol):
    """The locator index as the Watcher uses it: which locators may be watched, and removals."""

    def candidates(self, locators: Iterable[bytes]) -> list[bytes]: ...


def find_appointments(
    store: AppointmentReader, index: WatchIndex, locators: Iterable[bytes]
) -> list[tuple[AppointmentRecord, int]]:
    """Every stored appointment whose locator (16 raw bytes, after an optional one-byte tag) is among
    ``locators``, with its user's number.

    The index answers for each locator in memory (never a false negative; a false positive, about
    ``n / 2**48`` per locator, costs one seek); only its candidates are seeked as ``w|locator``, sorted,
    through one iterator.
    """
    found: list[tuple[AppointmentRecord, int]] = []
    candidates = index.candidates(locators)
    for key, record, usernum in watched_at(store, (loc[-16:] for loc in candidates)):
        if record is None:
            log.error("undecodable appointment record key=%s", key.hex())
            continue
        found.append((record, usernum))
    return found


class Watcher:
    """Checks blocks (and late appointments) against the stored appointments."""

    def __init__(
        self, store: AppointmentReader, cache: LocatorCache, decode_penalty: PenaltyDecoder, index: WatchIndex
    ) -> None:
        self._store = store
        self.cache = cache
        self._decode_penalty = decode_penalty
        self._index = index

    def block_connected(
        self, block_hash: BlockHash, height: int, txids: Iterable[Txid], batch: Batch
    ) -> WatcherOutcome:
        """Adds the block to the locator cache, then finds and checks the appointments it triggers.

        The cache is updated *before* the lookups: an appointment committed by the API after its own
        cache check missed is therefore committed before these lookups, and found here.
        """
        locators = block_locators(txids)
        self.cache.add_block(block_hash, height, locators)
        return self._check(block_hash, height, locators, batch)

    def block_disconnected(self, block_hash: BlockHash) -> None:
        self.cache.remove_block(block_hash)

    def recheck_cached_blocks(self, batch: Batch) -> WatcherOutcome:
        """Looks the cached blocks' locators up again (at start: an appointment committed just before a
        crash, whose breach was already in a cached block, must still be responded to)."""
        outcome = WatcherOutcome()
        seen: set[Uuid] = set()
        consumed: set[bytes] = set()
        for block_hash, height, txids in self.cache.blocks():
            part = self._check(block_hash, height, block_locators(txids), batch, consumed)
            for b in part.breaches:
                if b.appointment.uuid not in seen:
                    seen.add(b.appointment.uuid)
                    outcome.breaches.append(b)
            outcome.invalid.extend(part.invalid)
        return outcome

    def appointment_added(self, record: AppointmentRecord, batch: Batch) -> WatcherOutcome:
        """Handles an appointment whose breach is in the cache, if it is still stored and the dispute
        transaction is still in a cached block (a reorg may have removed it meanwhile)."""
        outcome = WatcherOutcome()
        usernum = usernum_of(self._store, record.user_id)
        if usernum is None or not is_watched(self._store, record.locator, usernum):
            return outcome  # already handled (by a block, or an earlier event), or the user is gone
        cached = self.cache.find(record.locator, record.dialect)
        if cached is None:
            return outcome  # no longer in the cache: stays under watch
        self._examine(record, usernum, cached, batch, outcome, set())
        return outcome

    def breach_in_cache(self, record: AppointmentRecord) -> CachedTx | None:
        return self.cache.find(record.locator, record.dialect)

    # -- steps -----------------------------------------------------------------------------------

    def _check(
        self,
        block_hash: BlockHash,
        height: int,
        locators: BlockLocators,
        batch: Batch,
        consumed: set[bytes] | None = None,
    ) -> WatcherOutcome:
        outcome = WatcherOutcome()
        records = find_appointments(self._store, self._index, locators)  # keys: dialect code | locator
        for record, usernum in records:
            raw = locators.get(locator_key(record.dialect, record.locator))
            txid = Txid(raw) if raw is not None else None
            if txid is None or locator_from_txid(txid, record.dialect) != record.locator:
                # Matched through the other dialect's locator only: not this user's breach; the
                # appointment stays under watch.
                continue
            self._examine(record, usernum, CachedTx(txid, block_hash, height), batch, outcome,
                          set() if consumed is None else consumed)  # fmt: skip
        return outcome

    def _examine(
        self,
        record: AppointmentRecord,
        usernum: int,
        tx: CachedTx,
        batch: Batch,
        outcome: WatcherOutcome,
        consumed: set[bytes],
    ) -> None:
        """Takes ``record`` off watch and turns it into a breach (or drops it). ``consumed``: the ``w|``
        keys this batch already took off watch (an appointment is consumed once per batch)."""
        if locator_from_txid(tx.txid, record.dialect) != record.locator:
            return
        key = keys.appointment(record.locator, usernum)
        if key in consumed:
            return
        consumed.add(key)
        delete_watched(batch, record.locator, usernum, self._index)
        try:
            rawtx = decrypt(record.encrypted_blob, tx.txid, record.dialect)
            penalty_txid = self._decode_penalty(rawtx)
        except (DecryptionError, ValueError) as e:
            log.info(
                "appointment dropped: invalid blob uuid=%s locator=%s dispute_txid=%s reason=%s",
                record.uuid,
                record.locator,
                tx.txid,
                e,
            )
            outcome.invalid.append(record)
            return
        log.info(
            "breach found uuid=%s locator=%s dispute_txid=%s penalty_txid=%s height=%d",
            record.uuid,
            record.locator,
            tx.txid,
            penalty_txid,
            tx.height,
        )
        outcome.breaches.append(Breach(record, tx.txid, penalty_txid, rawtx, tx.block_hash, tx.height))
