"""The Responder: follows each penalty until it is irrevocably in the chain.

A ``Breach`` from the Watcher becomes a tracker (``t|uuid`` -> TrackerRecord, which keeps the original
appointment) written in the same batch as the Watcher's deletion of the appointment, so a crash can never
lose a breach between the two. Penalties are broadcast only *after* that batch is committed; a tracker
whose broadcast did not happen (crash, bitcoind away) is broadcast again at start and by the rules below.

Per connected block, for every tracker (trackers are few: only breaches in flight):
- the penalty txid is in the block: confirmed there;
- confirmed for ``irrevocable_confirmations`` blocks: completed: the tracker is deleted and the user's
  slots go back (``SlotLedger.release`` commits the block's batch);
- unconfirmed for ``rebroadcast_after`` blocks since the last broadcast: broadcast again;
- unconfirmed while the dispute transaction reached ``irrevocable_confirmations`` and bitcoind knows
  nothing of the penalty (its inputs were spent by something else): abandoned, logged, slots released.

Per disconnected block: a penalty confirmed in it is unconfirmed and broadcast again; a tracker whose
dispute transaction was in it is deleted and its appointment put back under watch (``w|`` entry) if the
user's index entry (``h|``) still exists, so the dispute re-mined later triggers again.
A tracker whose user's subscription lapses stays until it is resolved.

Broadcasts bitcoind did not take because it did not answer are kept here and tried again
(``retry_broadcasts``, called by the engine thread while ``pending_broadcasts`` is non-zero) until
bitcoind answers or the tracker is gone; the rules above still rebroadcast every unconfirmed penalty.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

from common.types import BlockHash, Txid, Uuid
from teos.chain.carrier import BroadcastResult, BroadcastStatus
from teos.interfaces import Breach, SlotRefunds, slot_refunds
from teos.storage import keys
from teos.storage.codec import CodecError, TrackerRecord
from teos.storage.index import TRACKERS
from teos.storage.store import Batch
from teos.storage.watched import IndexJournal, holds, is_watched, put_watched, usernum_of

log = logging.getLogger(__name__)


@dataclass
class ResponderOutcome:
    to_broadcast: list[TrackerRecord] = field(default_factory=list)  # after the batch is committed
    released: list[TrackerRecord] = field(default_factory=list)  # completed or abandoned: slots go back
    confirmed: list[TrackerRecord] = field(default_factory=list)  # penalties first confirmed in this block

    def refunds(self) -> SlotRefunds:
        """The slots of the completed and abandoned trackers, to give back."""
        return slot_refunds(t.appointment for t in self.released)


class TrackerReader(Protocol):
    """The Responder's reads of the database (``Store`` satisfies it)."""

    def get(self, key: bytes) -> bytes | None: ...

    def iterate(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]: ...


class Broadcaster(Protocol):
    """Where penalties go (``teos.chain.carrier.Carrier`` satisfies it)."""

    def send(self, raw_tx: bytes, txid: Txid) -> BroadcastResult: ...

    def in_mempool_or_chain(self, txid: Txid) -> bool: ...


class Responder:
    """Turns breaches into trackers and follows them (see the module docstring).

    The number of trackers is a counter of the locator index (``teos.storage.index``), staged in the batch
    that creates or deletes a tracker; an appointment put back under watch goes back into the index.
    """

    def __init__(
        self,
        store: TrackerReader,
        carrier: Broadcaster,
        rebroadcast_after: int,
        irrevocable_confirmations: int,
        index: IndexJournal,
    ) -> None:
        self._index = index
        self._store = store
        self._carrier = carrier
        self.rebroadcast_after = rebroadcast_after
        self.irrevocable = irrevocable_confirmations
        self._retry: dict[Uuid, TrackerRecord] = {}  # broadcasts to try again: bitcoind did not answer

    # -- reading ---------------------------------------------------------------------------------

    def trackers(self) -> Iterator[TrackerRecord]:
        for key, value in self._store.iterate(keys.TRACKER):
            try:
                yield TrackerRecord.decode(value)
            except CodecError:
                log.error("undecodable tracker record key=%s", key.hex())

    def unconfirmed(self) -> list[TrackerRecord]:
        return [t for t in self.trackers() if t.confirmed_in is None]

    # -- block effects (added to the engine's batch) ---------------------------------------------

    def handle_breaches(
        self, breaches: Iterable[Breach], tip_height: int, block_txids: Container[Txid], batch: Batch
    ) -> ResponderOutcome:
        """Turns breaches into trackers. ``block_txids`` are the txids of the block being processed
        (a penalty already mined next to its dispute is confirmed at once)."""
        outcome = ResponderOutcome()
        for b in breaches:
            confirmed = b.penalty_txid in block_txids and b.height == tip_height
            tracker = TrackerRecord(
                appointment=b.appointment,
                dispute_txid=b.dispute_txid,
                penalty_txid=b.penalty_txid,
                penalty_rawtx=b.penalty_rawtx,
                broadcast_height=tip_height,
                confirmed_in=b.block_hash if confirmed else None,
                confirmed_height=b.height if confirmed else 0,
                dispute_block=b.block_hash,
                dispute_height=b.height,
            )
            if self._store.get(keys.tracker(b.appointment.uuid)) is None:
                self._index.stage(batch, counts={TRACKERS: 1})
            batch.put(keys.tracker(b.appointment.uuid), tracker.encode())
            if confirmed:
                outcome.confirmed.append(tracker)
            else:
                outcome.to_broadcast.append(tracker)
        return outcome

    def block_connected(
        self, block_hash: BlockHash, height: int, txids: Container[Txid], batch: Batch
    ) -> ResponderOutcome:
        outcome = ResponderOutcome()
        for t in self.trackers():
            if t.confirmed_in is None and t.penalty_txid in txids:
                log.info(
                    "penalty confirmed uuid=%s penalty_txid=%s height=%d", t.uuid, t.penalty_txid, height
                )
                t = replace(t, confirmed_in=block_hash, confirmed_height=height)
                batch.put(keys.tracker(t.uuid), t.encode())
                outcome.confirmed.append(t)
            if t.confirmed_in is not None:
                if height - t.confirmed_height + 1 >= self.irrevocable:
                    log.info("tracker completed uuid=%s penalty_txid=%s", t.uuid, t.penalty_txid)
                    self._delete(t, batch)
                    outcome.released.append(t)
                continue
            if t.dispute_height and height - t.dispute_height + 1 >= self.irrevocable:
                if not self._carrier.in_mempool_or_chain(t.penalty_txid):
                    log.warning(
                        "tracker abandoned: penalty never confirmed uuid=%s penalty_txid=%s dispute_at=%d",
                        t.uuid, t.penalty_txid, t.dispute_height,
                    )  # fmt: skip
                    self._delete(t, batch)
                    outcome.released.append(t)
                    continue
            if height - t.broadcast_height >= self.rebroadcast_after:
                t = replace(t, broadcast_height=height)
                batch.put(keys.tracker(t.uuid), t.encode())
                outcome.to_broadcast.append(t)
        return outcome

    def block_disconnected(self, block_hash: BlockHash, height: int, batch: Batch) -> ResponderOutcome:
        outcome = ResponderOutcome()
        for t in self.trackers():
            if t.dispute_block == block_hash:
                self._back_under_watch(t, batch)
                continue
            if t.confirmed_in == block_hash:
                log.info("penalty reorged out uuid=%s penalty_txid=%s", t.uuid, t.penalty_txid)
                t = replace(t, confirmed_in=None, confirmed_height=0, broadcast_height=height - 1)
                batch.put(keys.tracker(t.uuid), t.encode())
                outcome.to_broadcast.append(t)
        return outcome

    def _delete(self, t: TrackerRecord, batch: Batch) -> None:
        batch.delete(keys.tracker(t.uuid))
        self._index.stage(batch, counts={TRACKERS: -1})

    def _back_under_watch(self, t: TrackerRecord, batch: Batch) -> None:
        self._delete(t, batch)
        usernum = usernum_of(self._store, t.user_id)
        if usernum is None or not holds(self._store, usernum, t.locator):
            # The user was deleted (subscription over) while the penalty was tracked: nobody to watch for.
            log.info("dispute reorged out, user's appointment gone: dropped uuid=%s", t.uuid)
            return
        log.info("dispute reorged out: appointment back under watch uuid=%s locator=%s", t.uuid, t.locator)
        new = not is_watched(self._store, t.locator, usernum)
        put_watched(batch, t.appointment, usernum, self._index, new=new)

    # -- broadcasting (after the batch is committed) ---------------------------------------------

    @property
    def pending_broadcasts(self) -> int:
        """Penalties waiting to be broadcast again because bitcoind did not answer."""
        return len(self._retry)

    def broadcast(self, trackers: Iterable[TrackerRecord]) -> int:
        """Broadcasts each tracker's penalty and returns how many bitcoind took. Those bitcoind did not
        answer for, or answered something unreadable for, are kept for ``retry_broadcasts``; so is one
        whose broadcast failed in any other way (logged): nothing here raises, since the block these
        penalties answer is already committed and must never be handled again."""
        delivered = 0
        for t in list(trackers):
            self._retry[t.uuid] = t  # until bitcoind took it or refused it for good
            try:
                result = self._carrier.send(t.penalty_rawtx, t.penalty_txid)
            except Exception:
                log.exception("penalty broadcast failed, retrying soon uuid=%s penalty_txid=%s",
                              t.uuid, t.penalty_txid)  # fmt: skip
                continue
            self._log_result(t, result)
            if result.status is not BroadcastStatus.UNREACHABLE:
                del self._retry[t.uuid]
                delivered += result.status.delivered
        return delivered

    def retry_broadcasts(self) -> int:
        """Broadcasts again the penalties waiting for it whose trackers still exist; returns how many
        bitcoind took. A tracker that cannot be read now stays queued."""
        live = []
        for uuid, t in list(self._retry.items()):
            try:
                exists = self._store.get(keys.tracker(uuid)) is not None
            except Exception:
                log.exception("cannot read tracker, retrying its broadcast later uuid=%s", uuid)
                continue
            if exists:
                live.append(t)
            else:
                del self._retry[uuid]
        return self.broadcast(live)

    @staticmethod
    def _log_result(t: TrackerRecord, result: BroadcastResult) -> None:
        if result.status.delivered:
            log.info("penalty broadcast uuid=%s penalty_txid=%s status=%s", t.uuid, t.penalty_txid,
                     result.status.value)  # fmt: skip
        else:
            log.warning(
                "penalty not accepted uuid=%s penalty_txid=%s status=%s code=%s message=%s",
                t.uuid, t.penalty_txid, result.status.value, result.code, result.message,
            )  # fmt: skip
