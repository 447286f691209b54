"""The record of recent best-chain blocks: how the walker and the engine find a block's parent.

During a reorganisation the monitor walks back from the last block it emitted, and the engine moves its
pointer back, one parent at a time. Both ask this one record (block hash -> ``BlockRef``, bounded to the
last ``depth`` heights). The monitor fills it as it emits blocks; at start it is seeded with the blocks
the engine stored as it processed them (``m|recent:engine:*``, see ``teos.engine.pointer``), so a
reorganisation that happened while the tower was down is walked back too. A parent the record does not
hold comes from ``getblockheader``, which Bitcoin Core answers for stale blocks as well.

Entries are keyed by hash, and a block's parent never changes, so a stale entry (a block that left the
best chain) is never wrong, only unused until it falls below the depth. Thread-safe: the walker writes,
the engine thread reads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from common.types import BlockHash
from teos.chain.bitcoind import BlockHeader

DEFAULT_DEPTH = 288  # two days of blocks: deeper reorganisations fall back to getblockheader


@dataclass(frozen=True)
class BlockRef:
    """A block's place in the chain: its hash, height and parent."""

    hash: BlockHash
    height: int
    prev_hash: BlockHash | None  # None only for the genesis block


class HeaderSource(Protocol):
    """Where a parent missing from the record is looked up (BitcoindClient satisfies it)."""

    def get_block_header(self, block_hash: BlockHash) -> BlockHeader: ...


class RecentBlocks:
    """The bounded record described in the module docstring."""

    def __init__(self, headers: HeaderSource, depth: int = DEFAULT_DEPTH) -> None:
        self._headers = headers
        self.depth = depth
        self._lock = threading.Lock()
        self._by_hash: dict[BlockHash, BlockRef] = {}

    def seed(self, refs: Iterable[BlockRef]) -> None:
        """Replaces the record with ``refs`` (at start, from the database)."""
        with self._lock:
            self._by_hash = {r.hash: r for r in refs}

    def add(self, ref: BlockRef) -> None:
        """Records a block that joined the best chain; drops what fell below the depth."""
        with self._lock:
            self._by_hash[ref.hash] = ref
            if len(self._by_hash) > 2 * self.depth:
                floor = ref.height - self.depth
                self._by_hash = {h: r for h, r in self._by_hash.items() if r.height >= floor}

    def get(self, block_hash: BlockHash) -> BlockRef | None:
        with self._lock:
            return self._by_hash.get(block_hash)

    def parent_of(self, ref: BlockRef) -> BlockRef:
        """The parent of ``ref``, from the record or else from bitcoind (may raise its errors)."""
        if ref.prev_hash is None:
            raise RuntimeError("cannot step back from the genesis block")
        parent = self.get(ref.prev_hash)
        if parent is not None:
            return parent
        header = self._headers.get_block_header(ref.prev_hash)
        return BlockRef(header.hash, header.height, header.prev_hash)
