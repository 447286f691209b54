"""Channel states and claims over the atomic store (the payment channel storage of the design).

A read returns a :class:`Snapshot`: the decoded state and the exact bytes it came from. A change is
``swap(snapshot, new_state)``: a compare-and-swap from those bytes, so a writer that read an older state
loses instead of overwriting what another writer did in between. That is the only way a channel state
changes once created.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from common.channel import ChannelId
from teos.payments.state import (
    CHANNEL_PREFIX,
    CLAIM_PREFIX,
    ChannelState,
    ClaimRecord,
    channel_key,
    claim_key,
)
from teos.storage.atomic import AtomicStore
from teos.storage.codec import CodecError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    state: ChannelState
    raw: bytes


@dataclass(frozen=True)
class ClaimSnapshot:
    record: ClaimRecord
    raw: bytes


class ChannelStore:
    """Get, create, compare-and-swap and list channel states and claim records."""

    def __init__(self, atomic: AtomicStore) -> None:
        self.atomic = atomic
        self._decoded: dict[bytes, ChannelState] = {}

    # -- channels --------------------------------------------------------------------------------------

    def get(self, channel_id: ChannelId) -> Snapshot | None:
        raw = self.atomic.get(channel_key(channel_id))
        return None if raw is None else Snapshot(ChannelState.decode(raw), raw)

    def create(self, state: ChannelState) -> bool:
        """Stores a new channel; False if one with that id already exists."""
        return self.atomic.put_if_absent(channel_key(state.channel_id), state.encode())

    def swap(self, old: Snapshot, new: ChannelState) -> bool:
        """Replaces ``old`` by ``new`` if the stored bytes are still ``old``'s; True if it did."""
        if new.channel_id != old.state.channel_id:
            raise ValueError("a swap cannot change the channel id")
        return self.atomic.compare_and_swap(channel_key(new.channel_id), old.raw, new.encode())

    def all(self) -> list[Snapshot]:
        """Every channel. A record that cannot be decoded is logged and left out (one corrupt record must
        not keep the tower from claiming every other channel).

        The engine reads every channel at every block; decoding is most of that work, and most states do
        not change between two blocks, so the states decoded by the previous call are reused when their
        bytes are the same (a state is a pure function of its bytes)."""
        previous = self._decoded
        decoded: dict[bytes, ChannelState] = {}
        out = []
        for key, value in self.atomic.get_by_prefix(CHANNEL_PREFIX):
            state = previous.get(value)
            if state is None:
                try:
                    state = ChannelState.decode(value)
                except CodecError as e:
                    log.error("corrupt channel state left out key=%s error=%s", key.hex(), e)
                    continue
            decoded[value] = state
            out.append(Snapshot(state, value))
        self._decoded = decoded
        return out

    # -- claims ----------------------------------------------------------------------------------------

    def get_claim(self, channel_id: ChannelId) -> ClaimSnapshot | None:
        raw = self.atomic.get(claim_key(channel_id))
        return None if raw is None else ClaimSnapshot(ClaimRecord.decode(raw), raw)

    def create_claim(self, record: ClaimRecord) -> bool:
        return self.atomic.put_if_absent(claim_key(record.channel_id), record.encode())

    def swap_claim(self, old: ClaimSnapshot, new: ClaimRecord) -> bool:
        if new.channel_id != old.record.channel_id:
            raise ValueError("a swap cannot change the channel id")
        return self.atomic.compare_and_swap(claim_key(new.channel_id), old.raw, new.encode())

    def forget(self, channel_id: ChannelId) -> None:
        """Deletes a closed channel's claim, then its state (the grant markers are the Gatekeeper's)."""
        self.atomic.delete(claim_key(channel_id))
        self.atomic.delete(channel_key(channel_id))

    def claims(self) -> list[ClaimSnapshot]:
        """Every claim record (a corrupt one is logged and left out, as in ``all``)."""
        out = []
        for key, value in self.atomic.get_by_prefix(CLAIM_PREFIX):
            try:
                out.append(ClaimSnapshot(ClaimRecord.decode(value), value))
            except CodecError as e:
                log.error("corrupt claim record left out key=%s error=%s", key.hex(), e)
        return out
