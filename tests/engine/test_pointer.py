"""The pointer store on a real LevelDB: where the engine resumes, the record of recent blocks, old keys."""

from __future__ import annotations

import hashlib

from common.types import BlockHash
from teos.chain.recent import BlockRef
from teos.engine.pointer import PointerStore
from teos.storage import keys
from teos.storage.codec import encode_block_pointer
from teos.storage.store import Batch, Store


def ref(height: int, fork: bytes = b"") -> BlockRef:
    def h(n: int) -> BlockHash:
        return BlockHash(hashlib.sha256(fork + n.to_bytes(4, "big")).digest())

    return BlockRef(h(height), height, h(height - 1) if height else None)


def advance(pointer: PointerStore, store: Store, *refs: BlockRef) -> None:
    for r in refs:
        batch = Batch()
        pointer.advance(batch, r)
        store.commit(batch)


def test_a_new_database_has_no_pointer(store: Store) -> None:
    pointer = PointerStore(store, depth=5)
    assert pointer.last_block() is None and pointer.recent() == []


def test_the_pointer_follows_each_block_and_the_record_keeps_the_last_depth(store: Store) -> None:
    pointer = PointerStore(store, depth=5)
    advance(pointer, store, *(ref(h) for h in range(10, 20)))
    assert pointer.last_block() == (ref(19), True)
    assert sorted(r.height for r in pointer.recent()) == [15, 16, 17, 18, 19]
    assert pointer.recent()[-1] == ref(19)


def test_rewind_moves_the_pointer_back_and_forgets_the_block(store: Store) -> None:
    pointer = PointerStore(store, depth=5)
    advance(pointer, store, ref(10), ref(11), ref(12))
    batch = Batch()
    pointer.rewind(batch, ref(12), ref(11))
    store.commit(batch)
    assert pointer.last_block() == (ref(11), True)
    assert [r.height for r in pointer.recent()] == [10, 11]
    advance(pointer, store, ref(12, fork=b"other"))  # the new branch's block at the same height
    assert pointer.last_block() == (ref(12, fork=b"other"), True)


def test_a_pointer_outside_the_record_has_an_unknown_parent(store: Store) -> None:
    pointer = PointerStore(store, depth=5)
    batch = Batch()
    batch.put(keys.META_LAST_BLOCK, encode_block_pointer(ref(30).hash, 30))
    store.commit(batch)
    assert pointer.last_block() == (BlockRef(ref(30).hash, 30, None), False)


def test_the_legacy_responder_pointer_is_read_when_the_pointer_is_missing(store: Store) -> None:
    pointer = PointerStore(store, depth=5)
    batch = Batch()
    batch.put(keys.META_LAST_BLOCK_LEGACY, encode_block_pointer(ref(40).hash, 40))
    store.commit(batch)
    assert pointer.last_block() == (BlockRef(ref(40).hash, 40, None), False)
    advance(pointer, store, ref(41))
    assert pointer.last_block() == (ref(41), True)
    assert store.get(keys.META_LAST_BLOCK_LEGACY) is not None  # left as it was: nothing writes it now


def test_a_bad_record_entry_is_skipped(store: Store) -> None:
    pointer = PointerStore(store, depth=5)
    advance(pointer, store, ref(50))
    batch = Batch()
    batch.put(keys.meta_recent_block(49), b"short")
    store.commit(batch)
    assert pointer.recent() == [ref(50)]
