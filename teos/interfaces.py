"""The seams between the tower's parts, as small Protocols.

The engine (chain monitor, Watcher, Responder) and the user side (Gatekeeper, service, HTTP API) meet
only here; each side receives an object satisfying the other's Protocol from the composition root
(``teos/daemon.py``), and tests pass fakes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from common.types import BlockHash, Txid, UserId, Uuid
from teos.storage.codec import AppointmentRecord
from teos.storage.store import Batch


class SlotLedger(Protocol):
    """What the engine needs from the Gatekeeper: giving slots back atomically with its own writes."""

    def release(self, batch: Batch, released: Mapping[UserId, Sequence[tuple[Uuid, int]]]) -> None:
        """For every user in ``released`` that is still registered, deletes the user's index entries
        (``i|user|uuid``) of the given uuids and adds their slot counts back to ``available_slots``;
        then commits ``batch`` together with those changes as one synced write. Takes the users'
        locks, so it never races a request of the same user. Used when trackers complete."""
        ...


class BlockListener(Protocol):
    """A component that reacts to blocks on the best chain (the Gatekeeper's expiry, for one)."""

    def block_connected(self, block_hash: BlockHash, height: int) -> None: ...

    def block_disconnected(self, block_hash: BlockHash, height: int) -> None: ...


class ChainView(Protocol):
    """What the user side (service, API) needs from the engine."""

    @property
    def bitcoind_reachable(self) -> bool:
        """False while bitcoind does not answer (the API then answers 503)."""
        ...

    @property
    def tip_height(self) -> int:
        """Height of the last block the tower has processed (used for start_block and expiries)."""
        ...

    def breach_in_cache(self, record: AppointmentRecord) -> Txid | None:
        """The dispute txid if ``record``'s locator (in its dialect) matches a transaction of the
        last N blocks (the locator cache), else None."""
        ...

    def appointment_added(self, record: AppointmentRecord, dispute_txid: Txid) -> None:
        """Called after an appointment whose breach is already in the cache was committed: the
        engine responds to it at once (asynchronously) as if the block had just arrived."""
        ...
