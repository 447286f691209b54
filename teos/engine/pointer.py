"""The pointer store: where the engine resumes after a restart, in LevelDB.

Two things, both written only in the batch of the block they describe (so they always agree with the
block's effects): the last block processed (``m|last_block:watcher``) and the bounded record of recently
processed blocks (``m|recent:engine:<height>``; see ``teos.storage.keys``). The record seeds the shared
``RecentBlocks`` at start, so a reorganisation that happened while the tower was down is walked back
without asking bitcoind for stale headers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Protocol

from teos.chain.recent import BlockRef
from teos.storage import keys
from teos.storage.codec import (
    CodecError,
    decode_block_pointer,
    decode_recent_block,
    encode_block_pointer,
    encode_recent_block,
)
from teos.storage.store import Batch

log = logging.getLogger(__name__)


class MetaReader(Protocol):
    """The reads the pointer store makes (``Store`` satisfies it)."""

    def get(self, key: bytes) -> bytes | None: ...

    def iterate(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]: ...


class PointerStore:
    """Reads the stored pointer and record; adds their updates to a block's batch."""

    def __init__(self, store: MetaReader, depth: int) -> None:
        self._store = store
        self.depth = depth

    def last_block(self) -> tuple[BlockRef, bool] | None:
        """The last block processed, and whether its parent is known (None on a first start).

        Its parent comes from the stored record when the record holds it; otherwise the returned ref has
        ``prev_hash`` None and the second value is False (the caller asks bitcoind).
        """
        value = self._store.get(keys.META_LAST_BLOCK)
        if value is None:
            value = self._store.get(keys.META_LAST_BLOCK_LEGACY)
        if value is None:
            return None
        block_hash, height = decode_block_pointer(value)
        stored = self._store.get(keys.meta_recent_block(height))
        if stored is not None:
            recorded_hash, _, prev = decode_recent_block(stored)
            if recorded_hash == block_hash:
                return BlockRef(block_hash, height, prev), True
        return BlockRef(block_hash, height, None), False

    def recent(self) -> list[BlockRef]:
        """The stored record of recent blocks (undecodable entries are logged and skipped)."""
        out = []
        for _, value in self._store.iterate(keys.META_RECENT_BLOCKS):
            try:
                out.append(BlockRef(*decode_recent_block(value)))
            except CodecError:
                log.error("bad recent-block record")
        return out

    def advance(self, batch: Batch, ref: BlockRef) -> None:
        """``ref`` was connected and processed: it becomes the pointer and joins the record."""
        batch.put(keys.META_LAST_BLOCK, encode_block_pointer(ref.hash, ref.height))
        record = encode_recent_block(ref.hash, ref.height, ref.prev_hash)
        batch.put(keys.meta_recent_block(ref.height), record)
        if ref.height >= self.depth:
            batch.delete(keys.meta_recent_block(ref.height - self.depth))

    def rewind(self, batch: Batch, disconnected: BlockRef, parent: BlockRef) -> None:
        """``disconnected`` left the best chain: the pointer goes back to ``parent``."""
        batch.delete(keys.meta_recent_block(disconnected.height))
        batch.put(keys.META_LAST_BLOCK, encode_block_pointer(parent.hash, parent.height))
