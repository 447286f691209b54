"""The locators of the last few blocks, so that a breach mined before its appointment arrived is found.

A client may send an appointment a little late: its dispute transaction is already in a recent block.
The tower keeps, in memory, the locators (in both dialects) of the transactions of the last ``size``
blocks of the best chain; the service asks ``find`` when an appointment arrives. Memory is bounded by
``size`` blocks (two locators per transaction), independent of the number of appointments.

Thread-safety: the engine thread adds and removes blocks, HTTP threads call ``find``; one lock guards
the small maps. ``add_block`` is idempotent (a block re-processed after a failed write is not doubled).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from common.types import BlockHash, Dialect, Locator, Txid, Txids


@dataclass(frozen=True)
class CachedTx:
    """A transaction of a cached block."""

    txid: Txid
    block_hash: BlockHash
    height: int


# Locators of a block, keyed by ``dialect code (1 byte) || locator (16 bytes)``, each to its txid's 32 bytes
# (internal order): plain bytes keep the per-block work (two locators per transaction) cheap.
BlockLocators = dict[bytes, bytes]

_PY = bytes([Dialect.PYTHON.code])
_RS = bytes([Dialect.RUST.code])


def locator_key(dialect: Dialect, locator: Locator) -> bytes:
    return bytes([dialect.code]) + locator.raw


def block_locators(txids: Iterable[Txid]) -> BlockLocators:
    """Both dialects' locators of each txid: the first 16 bytes of ``common.dialects.txid_bytes``, that is
    of the display order for python-teos and of the internal order for rust-teos (sliced here directly:
    this runs for every transaction of every block, and the calls cost three times the slicing). A
    ``Txids`` is read as bytes, without making a ``Txid`` of each."""
    out: BlockLocators = {}
    for raw in txids.raw_txids() if isinstance(txids, Txids) else [t.raw for t in txids]:
        out[_PY + raw[31:15:-1]] = raw  # == txid_bytes(txid, Dialect.PYTHON)[:16]
        out[_RS + raw[:16]] = raw  # == txid_bytes(txid, Dialect.RUST)[:16]
    return out


class LocatorCache:
    """Locators of the last ``size`` blocks, oldest evicted first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._blocks: OrderedDict[BlockHash, tuple[int, BlockLocators]] = OrderedDict()

    def add_block(self, block_hash: BlockHash, height: int, locators: BlockLocators) -> None:
        """Adds the newest block with its locators (as ``block_locators`` computes them)."""
        with self._lock:
            if block_hash in self._blocks:
                return
            self._blocks[block_hash] = (height, locators)
            while len(self._blocks) > self.size:
                self._blocks.popitem(last=False)

    def add_old_block(self, block_hash: BlockHash, height: int, locators: BlockLocators) -> None:
        """Adds a block older than every cached one (used when rebuilding the cache at start)."""
        with self._lock:
            if block_hash in self._blocks or len(self._blocks) >= self.size:
                return
            self._blocks[block_hash] = (height, locators)
            self._blocks.move_to_end(block_hash, last=False)

    def remove_block(self, block_hash: BlockHash) -> None:
        with self._lock:
            self._blocks.pop(block_hash, None)

    def find(self, locator: Locator, dialect: Dialect) -> CachedTx | None:
        """The cached transaction whose ``dialect`` locator is ``locator`` (newest block first)."""
        key = locator_key(dialect, locator)
        with self._lock:
            for block_hash, (height, locators) in reversed(self._blocks.items()):
                txid = locators.get(key)
                if txid is not None:
                    return CachedTx(Txid(txid), block_hash, height)
        return None

    def blocks(self) -> list[tuple[BlockHash, int, list[Txid]]]:
        """The cached blocks, oldest first, with their txids."""
        with self._lock:
            items = list(self._blocks.items())
        out = []
        for block_hash, (height, locators) in items:
            txids = [Txid(t) for t in dict.fromkeys(t for k, t in locators.items() if k[:1] == _PY)]
            out.append((block_hash, height, txids))
        return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._blocks)

    def __contains__(self, block_hash: object) -> bool:
        with self._lock:
            return block_hash in self._blocks
