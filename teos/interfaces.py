"""The seams between the tower's two sides, as small Protocols, and the values that cross them.

The chain side (monitor, engine, Watcher, Responder) and the user side (Gatekeeper, service, HTTP API)
meet only here. The composition root (``teos/daemon.py``) hands each side objects satisfying the other
side's Protocols; tests pass fakes. The one piece of state both sides share is the tip
(``teos.chain.tip.ChainTip``): written by the engine, read through ``TipView``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from common.appointment import slots_for
from common.types import BlockHash, Locator, Txid, UserId
from teos.storage.codec import AppointmentRecord
from teos.storage.store import Batch

# What a user gets back when appointments leave the tower: (locator, slots) per user.
SlotRefunds = dict[UserId, list[tuple[Locator, int]]]


def slot_refunds(appointments: Iterable[AppointmentRecord]) -> SlotRefunds:
    """The slots each appointment was charged, grouped by user (for ``SlotLedger.release``)."""
    out: SlotRefunds = {}
    for a in appointments:
        out.setdefault(a.user_id, []).append((a.locator, slots_for(len(a.encrypted_blob))))
    return out


@dataclass(frozen=True)
class Breach:
    """An appointment whose dispute transaction is in the chain, with its decrypted penalty: what the
    Watcher finds and the Responder turns into a tracker."""

    appointment: AppointmentRecord
    dispute_txid: Txid
    penalty_txid: Txid
    penalty_rawtx: bytes
    block_hash: BlockHash  # the block holding the dispute transaction
    height: int


class SlotLedger(Protocol):
    """What the engine needs from the Gatekeeper: giving slots back atomically with its own writes."""

    def release(self, batch: Batch, released: Mapping[UserId, Sequence[tuple[Locator, int]]]) -> None:
        """For every user in ``released`` that is still registered, deletes the user's index entries
        (``h|usernum|locator``) of the given locators and adds their slot counts back to ``available_slots``;
        then commits ``batch`` together with those changes as one synced write. Takes the users'
        locks, so it never races a request of the same user. Used when trackers complete."""
        ...


class BlockListener(Protocol):
    """A component that reacts to blocks on the best chain (the Gatekeeper's expiry, for one)."""

    def block_connected(self, block_hash: BlockHash, height: int) -> None: ...

    def block_disconnected(self, block_hash: BlockHash, height: int) -> None: ...


class TipView(Protocol):
    """The tip as the user side reads it (``ChainTip`` satisfies it)."""

    @property
    def bitcoind_reachable(self) -> bool:
        """False while bitcoind does not answer (the API then answers 503)."""
        ...

    @property
    def tip_height(self) -> int:
        """Height of the last block the tower has processed (used for start_block and expiries)."""
        ...


class Watching(Protocol):
    """Whether the tower is watching the chain (the daemon's health, over the watchdog, satisfies it)."""

    def stopped_watching(self) -> str | None:
        """Why the tower is not watching the chain (a dead engine thread, a stall), or None."""
        ...


class LateBreaches(Protocol):
    """An appointment whose breach is already in the chain (the engine satisfies it)."""

    def breach_in_cache(self, record: AppointmentRecord) -> Txid | None:
        """The dispute txid if ``record``'s locator (in its dialect) matches a transaction of the
        last N blocks (the locator cache), else None."""
        ...

    def appointment_added(self, record: AppointmentRecord, dispute_txid: Txid) -> None:
        """Called after an appointment whose breach is already in the cache was committed: the
        engine responds to it at once (asynchronously) as if the block had just arrived."""
        ...


class ChainView(TipView, LateBreaches, Protocol):
    """Both of the user side's views of the chain in one object: what tests' fakes and tools that run a
    service without an engine provide (``TowerService.local``)."""
