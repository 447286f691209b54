"""Fakes behind the engine's small seams: an in-memory chain (for the monitor, carrier and engine) and a
slot ledger over the real store. Transactions in unit tests are real serialisations built with
``common.tx`` (not signed: the fake chain does not validate scripts)."""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from common import crypto
from common.appointment import compute_uuid
from common.dialects import locator_from_txid
from common.tx import Transaction, TxIn, TxOut, decode_transaction
from common.types import BlockHash, Dialect, Locator, Txid, UserId, Uuid
from teos.chain.bitcoind import (
    BitcoindUnreachable,
    Block,
    BlockHeader,
    ChainInfo,
    RetryPolicy,
    RPCError,
    TxInfo,
)
from teos.engine import EngineConfig
from teos.storage import keys
from teos.storage.codec import AppointmentRecord, TrackerRecord, UserRecord
from teos.storage.index import APPOINTMENTS, USERS, LocatorIndex
from teos.storage.store import Batch, Store
from teos.storage.watched import (
    IndexJournal,
    add_held,
    holds,
    is_watched,
    number_user,
    put_watched,
    remove_held,
)


def random_tx(n_out: int = 1) -> Transaction:
    """A well-formed transaction spending a random outpoint."""
    return Transaction(
        version=2,
        inputs=(TxIn(Txid(os.urandom(32)), 0),),
        outputs=tuple(TxOut(1000 + i, b"\x00\x14" + os.urandom(20)) for i in range(n_out)),
    )


class FakeChain:
    """A best chain of blocks with a mempool; answers the RPCs the engine makes like Bitcoin Core."""

    def __init__(self, chain: str = "regtest", length: int = 10) -> None:
        self.chain = chain
        self.blocks: dict[BlockHash, Block] = {}
        self.best: list[BlockHash] = []
        self.mempool: dict[Txid, bytes] = {}
        self.sent: list[Txid] = []
        self.down = False
        self.reject: dict[Txid, RPCError] = {}
        self.pruned_below = 0
        self.lock = threading.RLock()
        self._salt = 0
        self.mine(n=length, mempool=False)

    # -- driving the chain -------------------------------------------------------------------------

    def mine(self, *txids: Txid, n: int = 1, mempool: bool = True) -> list[BlockHash]:
        out = []
        with self.lock:
            for i in range(n):
                self._salt += 1
                prev = self.best[-1] if self.best else None
                coinbase = Txid(hashlib.sha256(b"cb" + self._salt.to_bytes(8, "big")).digest())
                txs = [coinbase]
                if i == 0:
                    txs.extend(txids)
                    if mempool:
                        txs.extend(t for t in self.mempool if t not in txs)
                for t in txs:
                    self.mempool.pop(t, None)
                h = BlockHash(hashlib.sha256(b"blk" + self._salt.to_bytes(8, "big")).digest())
                block = Block(h, len(self.best), prev, tuple(txs))
                self.blocks[h] = block
                self.best.append(h)
                out.append(h)
        return out

    def reorg(self, depth: int) -> list[Block]:
        """Disconnects the last ``depth`` blocks; their transactions go back to the mempool."""
        with self.lock:
            gone = [self.blocks[h] for h in self.best[-depth:]]
            del self.best[-depth:]
            for b in gone:
                for t in b.txids[1:]:
                    self.mempool[t] = b""
            return gone

    @property
    def tip(self) -> Block:
        return self.blocks[self.best[-1]]

    def in_best_chain(self, txid: Txid) -> bool:
        return any(txid in self.blocks[h].txids for h in self.best)

    # -- RPCs --------------------------------------------------------------------------------------

    def _check(self) -> None:
        if self.down:
            raise BitcoindUnreachable("fake chain is down")

    def get_best_block_hash(self) -> BlockHash:
        self._check()
        with self.lock:
            return self.best[-1]

    def get_block_count(self) -> int:
        self._check()
        return len(self.best) - 1

    def get_block_hash(self, height: int) -> BlockHash:
        self._check()
        with self.lock:
            if height < 0 or height >= len(self.best):
                raise RPCError(-8, "Block height out of range")
            return self.best[height]

    def get_block(self, block_hash: BlockHash) -> Block:
        self._check()
        with self.lock:
            block = self.blocks.get(block_hash)
            if block is None:
                raise RPCError(-5, "Block not found")
            if block.height < self.pruned_below:
                raise RPCError(-1, "Block not available (pruned data)")
            return block

    def get_block_header(self, block_hash: BlockHash) -> BlockHeader:
        self._check()
        with self.lock:
            block = self.blocks.get(block_hash)
            if block is None:
                raise RPCError(-5, "Block not found")
            conf = len(self.best) - block.height if block_hash in self.best else -1
            return BlockHeader(block.hash, block.height, block.prev_hash, conf)

    def get_blockchain_info(self) -> ChainInfo:
        self._check()
        with self.lock:
            return ChainInfo(
                self.chain, len(self.best) - 1, self.best[-1], self.pruned_below > 0, self.pruned_below, False
            )

    def send_raw_transaction(self, raw_tx: bytes) -> Txid:
        self._check()
        txid = decode_transaction(raw_tx).txid
        with self.lock:
            self.sent.append(txid)
            if txid in self.reject:
                raise self.reject[txid]
            if self.in_best_chain(txid):
                raise RPCError(-27, "Transaction outputs already in utxo set")
            self.mempool[txid] = raw_tx
            return txid

    def get_raw_transaction(self, txid: Txid, block_hash: BlockHash | None = None) -> TxInfo | None:
        self._check()
        with self.lock:
            if txid in self.mempool:
                return TxInfo(txid, 0, None)
            return None

    def close(self) -> None:
        pass


@dataclass
class RecordingLedger:
    """A SlotLedger over the real store: deletes the index entries, gives slots back, commits."""

    store: Store
    index: LocatorIndex
    released: list[tuple[UserId, Uuid, int]] = field(default_factory=list)

    def release(self, batch: Batch, released: Mapping[UserId, Sequence[tuple[Locator, int]]]) -> None:
        for user_id, items in released.items():
            raw = self.store.get(keys.user(user_id))
            user = UserRecord.decode(raw) if raw is not None else None
            if user is None or user.usernum is None:
                continue
            refund = 0
            for locator, slots in items:
                if not holds(self.store, user.usernum, locator):
                    continue
                remove_held(batch, user.usernum, locator)
                self.index.stage(batch, counts={APPOINTMENTS: -1})
                self.released.append((user_id, compute_uuid(locator, user_id), slots))
                refund += slots
            if refund:
                user = replace(user, available_slots=user.available_slots + refund)
                batch.put(keys.user(user_id), user.encode())
        self.store.commit(batch)


def register_user(
    store: Store,
    index: IndexJournal,
    user_id: UserId,
    dialect: Dialect,
    available_slots: int = 100,
    start: int = 0,
    expiry: int = 10_000,
) -> UserRecord:
    """Stores a user as the Gatekeeper registers one (its number from ``m|next_usernum``), unless known."""
    raw = store.get(keys.user(user_id))
    if raw is not None:
        return UserRecord.decode(raw)
    stored = store.get(keys.META_NEXT_USERNUM)
    usernum = int.from_bytes(stored, "big") if stored is not None else 0
    user = UserRecord(user_id, dialect, available_slots, start, expiry, usernum)
    batch = Batch()
    batch.put(keys.user(user_id), user.encode())
    number_user(batch, usernum, user_id)
    batch.put(keys.META_NEXT_USERNUM, (usernum + 1).to_bytes(8, "big"))
    index.stage(batch, counts={USERS: 1})
    store.commit(batch)
    return user


@dataclass(frozen=True)
class Stored:
    record: AppointmentRecord
    dispute: Txid
    penalty: Transaction


def store_appointment(
    store: Store,
    index: IndexJournal,
    dispute_txid: Txid,
    penalty_raw: bytes,
    dialect: Dialect,
    secret: bytes | None = None,
    blob: bytes | None = None,
    available_slots: int = 100,
) -> AppointmentRecord:
    """Writes an appointment as the service would: ``w|``, ``h|``, the user (if new), and the counts."""
    secret = secret or crypto.generate_secret_key()
    user_id = crypto.public_key(secret)
    locator = locator_from_txid(dispute_txid, dialect)
    record = AppointmentRecord(
        uuid=compute_uuid(locator, user_id),
        locator=locator,
        encrypted_blob=blob if blob is not None else crypto.encrypt(penalty_raw, dispute_txid, dialect),
        to_self_delay=20,
        user_id=user_id,
        user_signature="sig",
        start_block=0,
        dialect=dialect,
    )
    usernum = register_user(store, index, user_id, dialect, available_slots).usernum
    assert usernum is not None
    batch = Batch()
    put_watched(batch, record, usernum, index, new=not is_watched(store, locator, usernum))
    if not holds(store, usernum, locator):
        index.stage(batch, counts={APPOINTMENTS: 1})
        add_held(batch, usernum, locator)
    store.commit(batch)
    return record


def tracker_v1_bytes(t: TrackerRecord) -> bytes:
    """``t`` as version 1 of the tracker record wrote it: the v2 fields (the block holding the dispute,
    and its height) did not exist. For the tests of the v1 -> v2 migration."""
    inner = t.appointment.encode()
    confirmed = b"\x01" + t.confirmed_in.raw if t.confirmed_in is not None else b"\x00"
    return b"".join([
        b"\x01", struct.pack(">I", len(inner)), inner, t.dispute_txid.raw, t.penalty_txid.raw,
        struct.pack(">I", len(t.penalty_rawtx)), t.penalty_rawtx, struct.pack(">I", t.broadcast_height),
        confirmed, struct.pack(">I", t.confirmed_height),
    ])  # fmt: skip


def seed_user(store: Store, user: UserRecord, records: Sequence[AppointmentRecord]) -> UserRecord:
    """Writes ``user`` (numbered here) holding ``records`` under watch straight into a database no teosd
    has open, in its key layout, as if it had registered and added them; the locator index and its
    counters are left out, so the next teosd builds them from these keys. Returns the stored user."""
    raw = store.get(keys.META_NEXT_USERNUM)
    usernum = int.from_bytes(raw, "big") if raw is not None else 0
    user = replace(user, usernum=usernum)
    batch = Batch()
    batch.put(keys.META_SCHEMA, bytes([keys.SCHEMA]))
    batch.put(keys.META_NEXT_USERNUM, (usernum + 1).to_bytes(8, "big"))
    batch.put(keys.user(user.user_id), user.encode())
    number_user(batch, usernum, user.user_id)
    held = set()
    for record in records:
        batch.put(keys.appointment(record.locator, usernum), record.encode_body())
        add_held(batch, usernum, record.locator)
        held.add(record.locator)
        if len(batch) >= 30_000:
            store.commit(batch, sync=False)
            batch = Batch()
    batch.put(keys.user_count(user.user_id), len(held).to_bytes(4, "big"))
    store.commit(batch)
    return user


def quick_engine_config(**overrides: Any) -> EngineConfig:
    """An engine configuration for tests against a fake or in-process chain: polls and retries in tens
    of milliseconds, start-up given up after two seconds."""
    return EngineConfig(
        btc_network="regtest",
        poll_interval=0.05,
        retry_max_delay=0.2,
        startup_retry=RetryPolicy(0.05, 0.2, 2.0),
        **overrides,
    )
