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
dispute transaction was in it is deleted and its appointment put back under watch (``a|`` entry) if the
user's index entry (``i|``) still exists, so the dispute re-mined later triggers again.
A tracker whose user's subscription lapses stays until it is resolved.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from common.appointment import slots_for
from common.types import BlockHash, Txid, UserId, Uuid
from teos.chain.carrier import BroadcastStatus, Carrier, Receipt
from teos.storage import keys
from teos.storage.codec import CodecError, TrackerRecord
from teos.storage.store import Batch, Store
from teos.storage.watched import put_watched
from teos.watcher.watcher import Breach

log = logging.getLogger(__name__)


@dataclass
class ResponderOutcome:
    to_broadcast: list[TrackerRecord] = field(default_factory=list)  # after the batch is committed
    released: list[TrackerRecord] = field(default_factory=list)  # completed or abandoned: slots go back
    confirmed: list[TrackerRecord] = field(default_factory=list)  # penalties first confirmed in this block
    delivered: int = 0  # broadcasts bitcoind took (set by ``broadcast``'s caller)


def released_slots(records: Iterable[TrackerRecord]) -> dict[UserId, list[tuple[Uuid, int]]]:
    out: dict[UserId, list[tuple[Uuid, int]]] = {}
    for t in records:
        out.setdefault(t.user_id, []).append((t.uuid, slots_for(len(t.appointment.encrypted_blob))))
    return out


class Responder:
    def __init__(
        self, store: Store, carrier: Carrier, rebroadcast_after: int, irrevocable_confirmations: int
    ) -> None:
        self._store = store
        self._carrier = carrier
        self.rebroadcast_after = rebroadcast_after
        self.irrevocable = irrevocable_confirmations

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
        self, breaches: Iterable[Breach], tip_height: int, block_txids: frozenset[Txid], batch: Batch
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
            batch.put(keys.tracker(b.appointment.uuid), tracker.encode())
            if confirmed:
                outcome.confirmed.append(tracker)
            else:
                outcome.to_broadcast.append(tracker)
        return outcome

    def block_connected(
        self, block_hash: BlockHash, height: int, txids: frozenset[Txid], batch: Batch
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
                    batch.delete(keys.tracker(t.uuid))
                    outcome.released.append(t)
                continue
            if t.dispute_height and height - t.dispute_height + 1 >= self.irrevocable:
                if not self._carrier.in_mempool_or_chain(t.penalty_txid):
                    log.warning(
                        "tracker abandoned: penalty never confirmed uuid=%s penalty_txid=%s dispute_at=%d",
                        t.uuid, t.penalty_txid, t.dispute_height,
                    )  # fmt: skip
                    batch.delete(keys.tracker(t.uuid))
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

    def _back_under_watch(self, t: TrackerRecord, batch: Batch) -> None:
        batch.delete(keys.tracker(t.uuid))
        if self._store.get(keys.user_appointment(t.user_id, t.uuid)) is None:
            # The user was deleted (subscription over) while the penalty was tracked: nobody to watch for.
            log.info("dispute reorged out, user's appointment gone: dropped uuid=%s", t.uuid)
            return
        log.info("dispute reorged out: appointment back under watch uuid=%s locator=%s", t.uuid, t.locator)
        put_watched(batch, t.appointment)

    # -- broadcasting (after the batch is committed) ---------------------------------------------

    def broadcast(self, trackers: Iterable[TrackerRecord]) -> tuple[list[TrackerRecord], int]:
        """Broadcasts each tracker's penalty; returns those to try again soon (bitcoind unreachable)
        and how many bitcoind took."""
        retry = []
        delivered = 0
        for t in trackers:
            receipt = self._carrier.send(t.penalty_rawtx, t.penalty_txid)
            self._log_receipt(t, receipt)
            if receipt.status is BroadcastStatus.UNREACHABLE:
                retry.append(t)
            elif receipt.status.delivered:
                delivered += 1
        return retry, delivered

    @staticmethod
    def _log_receipt(t: TrackerRecord, receipt: Receipt) -> None:
        if receipt.status.delivered:
            log.info("penalty broadcast uuid=%s penalty_txid=%s status=%s", t.uuid, t.penalty_txid,
                     receipt.status.value)  # fmt: skip
        else:
            log.warning(
                "penalty not accepted uuid=%s penalty_txid=%s status=%s code=%s message=%s",
                t.uuid, t.penalty_txid, receipt.status.value, receipt.code, receipt.message,
            )  # fmt: skip
