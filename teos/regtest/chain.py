"""The simulator's node state: block tree, active chain, UTXO set, mempool, and their persistence.

One ``ChainState`` plays the part of Bitcoin Core's validation and mempool (``cs_main``): every public
method takes its lock, so RPC threads see a consistent node. What it checks for transactions: structure
(CheckTransaction), standardness of versions, outputs and dust, finality by locktime, input existence and
double spends, coinbase maturity (100), BIP68 relative lock-times (``non-BIP68-final`` in the mempool,
``bad-txns-nonfinal`` in blocks), value in >= value out, the minimum relay fee (100 sat/kvB as in Core
v30+), full RBF (rules 3 and 4: the replacement pays at least the replaced fees plus its own relay fee), and
every input's script and signatures (``teos.regtest.scriptcheck``: Core's own code through
libbitcoinkernel, with Core's policy flags in the mempool and the consensus flags of the height in blocks;
skipped, with a warning, where py-bitcoinkernel is unavailable). What it does NOT check: sigop limits,
non-standard inputs and witnesses (AreInputsStandard, IsWitnessStandard), package limits.

Blocks are made by ``generate``/``generate_block``: a BIP34 coinbase paying the halving subsidy (50 BTC,
halving every 150 blocks) plus fees, the BIP141 witness commitment, the merkle root, time
``max(median time past + 1, now)``, bits ``207fffff`` and a nonce ground until the double-SHA256 hash meets
that target (about two tries, so hashes are real proof of work for regtest). The best chain is the valid
tip with most work (highest height) and, among equals, the one received first, as Core decides.
``invalidate``/``reconsider`` reorganise to any depth; disconnected transactions return to the mempool when
still valid; ZMQ notifications follow Core (rawtx for mempool additions and for transactions of connected
and disconnected blocks; hashblock for a connected block once the chain has more work than the tip the
reorganisation started from, never for disconnections).

Persistence: ``<datadir>/regtest/sim/chain.dat`` is an append-only journal of raw blocks and of
invalidate/reconsider marks; on start the block tree is rebuilt from it and the UTXO set by connecting the
best chain from genesis. The mempool is written to ``mempool.dat`` at a clean stop and re-accepted at start.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from common.tx import (
    COINBASE_VOUT,
    NULL_TXID,
    Block,
    BlockHeader,
    Transaction,
    TxDecodeError,
    TxIn,
    TxOut,
    bits_to_target,
    check_proof_of_work,
    decode_block,
    decode_transaction,
    merkle_root,
    witness_commitment_script,
)
from common.types import BlockHash, Txid
from teos.regtest.address import script_type
from teos.regtest.errors import TxReject
from teos.regtest.interpreter import (
    SEQUENCE_LOCKTIME_DISABLE_FLAG,
    SEQUENCE_LOCKTIME_MASK,
    SEQUENCE_LOCKTIME_TYPE_FLAG,
    STANDARD_FLAGS,
)
from teos.regtest.script import push_int
from teos.regtest.scriptcheck import ScriptChecker, block_script_flags

logger = logging.getLogger(__name__)

COIN = 100_000_000
MAX_MONEY = 21_000_000 * COIN
REGTEST_BITS = 0x207FFFFF
COINBASE_MATURITY = 100
HALVING_INTERVAL = 150
MAX_BLOCK_WEIGHT = 4_000_000
BLOCK_RESERVED_WEIGHT = 8_000
MAX_STANDARD_TX_WEIGHT = 400_000
MIN_RELAY_FEE_PER_KVB = 100  # Core v30+ -minrelaytxfee (0.1 sat/vB)
INCREMENTAL_RELAY_FEE_PER_KVB = 100
DUST_RELAY_FEE_PER_KVB = 3_000
MAX_REPLACEMENT_CANDIDATES = 100
MEMPOOL_HEIGHT = 0x7FFFFFFF
LOCKTIME_THRESHOLD = 500_000_000
SEQUENCE_FINAL = 0xFFFFFFFF
SEQUENCE_LOCKTIME_GRANULARITY = 9  # time-based relative locks count units of 512 seconds
BLOCK_VERSION = 0x20000000
MAX_FUTURE_BLOCK_TIME = 2 * 60 * 60
MAX_TIP_AGE = 24 * 60 * 60

GENESIS_COINBASE_SCRIPT_SIG = bytes.fromhex(
    "04ffff001d0104455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e20627269"
    "6e6b206f66207365636f6e64206261696c6f757420666f722062616e6b73"
)
GENESIS_OUTPUT_SCRIPT = bytes.fromhex(
    "4104678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec1"
    "12de5c384df7ba0b8d578a4c702b6bf11d5fac"
)

Outpoint = tuple[Txid, int]


def regtest_genesis() -> Block:
    """Bitcoin Core's regtest genesis block (hash 0f9188f1...2206)."""
    coinbase = Transaction(
        1,
        (TxIn(NULL_TXID, COINBASE_VOUT, GENESIS_COINBASE_SCRIPT_SIG, SEQUENCE_FINAL),),
        (TxOut(50 * COIN, GENESIS_OUTPUT_SCRIPT),),
        0,
    )
    header = BlockHeader(1, BlockHash(bytes(32)), coinbase.txid.raw, 1296688602, REGTEST_BITS, 2)
    return Block(header, (coinbase,))


def block_subsidy(height: int) -> int:
    halvings = height // HALVING_INTERVAL
    return 0 if halvings >= 64 else (50 * COIN) >> halvings


def block_work(bits: int) -> int:
    target = bits_to_target(bits)
    return 0 if target <= 0 else (1 << 256) // (target + 1)


def fee_for(rate_per_kvb: int, vsize: int) -> int:
    """CFeeRate::GetFee: the fee for ``vsize`` at a rate in sat/kvB, rounded up."""
    return -(-rate_per_kvb * vsize // 1000)


def dust_threshold(out: TxOut) -> int:
    if out.script_pubkey[:1] == b"\x6a" or len(out.script_pubkey) > 10_000:
        return 0
    size = len(out.serialize())
    kind = script_type(out.script_pubkey)
    witness_program = kind.startswith("witness_") or kind == "anchor"
    size += 32 + 4 + 1 + (107 // 4 if witness_program else 107) + 4
    return fee_for(DUST_RELAY_FEE_PER_KVB, size) if size else 0


def format_money(sats: int) -> str:
    """Core's FormatMoney: trailing zeros trimmed, at least two decimals."""
    sign = "-" if sats < 0 else ""
    whole, frac = divmod(abs(sats), COIN)
    text = f"{frac:08d}".rstrip("0")
    return f"{sign}{whole}.{text.ljust(2, '0')}"


@dataclass(frozen=True, slots=True)
class Coin:
    value: int
    script_pubkey: bytes
    height: int
    coinbase: bool


@dataclass
class BlockEntry:
    block: Block
    height: int
    seq: int
    chainwork: int
    failed: bool = False
    undo: list[tuple[Outpoint, Coin]] | None = None

    @property
    def hash(self) -> BlockHash:
        return self.block.hash

    @property
    def prev(self) -> BlockHash:
        return self.block.header.prev_hash


@dataclass
class MempoolEntry:
    tx: Transaction
    fee: int
    time: int
    height: int
    seq: int
    spent_coins: dict[Outpoint, Coin] = field(default_factory=dict)


class Notifier(Protocol):
    """Where ZMQ-style notifications go (the simulator's publisher; a list in unit tests)."""

    def rawtx(self, tx: Transaction) -> None: ...

    def hashblock(self, block_hash: BlockHash) -> None: ...


class NullNotifier:
    def rawtx(self, tx: Transaction) -> None:
        pass

    def hashblock(self, block_hash: BlockHash) -> None:
        pass


class BlockNotAccepted(Exception):
    """ProcessNewBlock refused the block (e.g. it is a block previously marked invalid)."""


class _View:
    """Coins as a block or a mempool candidate sees them: the UTXO set plus what earlier txs added."""

    def __init__(self, lookup: Callable[[Outpoint], Coin | None]) -> None:
        self._lookup = lookup
        self.added: dict[Outpoint, Coin] = {}
        self.spent: set[Outpoint] = set()

    def get(self, outpoint: Outpoint) -> Coin | None:
        if outpoint in self.spent:
            return None
        coin = self.added.get(outpoint)
        return coin if coin is not None else self._lookup(outpoint)

    def spend(self, outpoint: Outpoint) -> None:
        self.spent.add(outpoint)

    def add_outputs(self, tx: Transaction, height: int) -> None:
        for n, out in enumerate(tx.outputs):
            if out.script_pubkey[:1] != b"\x6a":
                self.added[(tx.txid, n)] = Coin(out.value, out.script_pubkey, height, tx.is_coinbase)


class Journal:
    """Append-only records ``kind(1) | length(4, LE) | payload``; a torn tail is dropped on read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None

    def read(self) -> list[tuple[bytes, bytes]]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        records = []
        pos = 0
        while pos + 5 <= len(data):
            kind = data[pos : pos + 1]
            (length,) = struct.unpack("<I", data[pos + 1 : pos + 5])
            if pos + 5 + length > len(data):
                break
            records.append((kind, data[pos + 5 : pos + 5 + length]))
            pos += 5 + length
        if pos != len(data):
            logger.warning("journal tail dropped path=%s bytes=%d", self.path, len(data) - pos)
            with open(self.path, "r+b") as f:
                f.truncate(pos)
        return records

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")

    def append(self, kind: bytes, payload: bytes) -> None:
        f = self._file
        if f is None:
            return
        f.write(kind + struct.pack("<I", len(payload)) + payload)
        f.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0


class ChainState:
    """Block tree, active chain, UTXO set and mempool of one simulated node."""

    def __init__(
        self, datadir: Path | None, notifier: Notifier | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.datadir = datadir
        self.notifier: Notifier = notifier or NullNotifier()
        self.clock = clock
        self.mocktime = 0
        self.lock = threading.RLock()
        self.blocks: dict[BlockHash, BlockEntry] = {}
        self.children: dict[BlockHash, list[BlockHash]] = {}
        self.active: list[BlockHash] = []
        self.utxo: dict[Outpoint, Coin] = {}
        self.tx_index: dict[Txid, BlockHash] = {}
        self.mempool: dict[Txid, MempoolEntry] = {}
        self.mempool_spends: dict[Outpoint, Txid] = {}
        self.prune_below = 0
        self.ibd_latched = False
        self._seq = 0
        self._mempool_seq = 0
        self._journal: Journal | None = None
        self.scripts = ScriptChecker()

    # -- lifecycle --------------------------------------------------------------------------------------
    @property
    def sim_dir(self) -> Path | None:
        return None if self.datadir is None else self.datadir / "regtest" / "sim"

    def load(self) -> None:
        """Creates genesis, replays the journal and reconnects the best chain; restores the mempool."""
        with self.lock:
            genesis = regtest_genesis()
            entry = BlockEntry(genesis, 0, self._next_seq(), block_work(genesis.header.bits))
            self.blocks[genesis.hash] = entry
            self.children[genesis.hash] = []
            self._connect(entry, notify=False)
            if self.sim_dir is None:
                return
            self._journal = Journal(self.sim_dir / "chain.dat")
            for kind, payload in self._journal.read():
                self._replay(kind, payload)
            self._activate_best(notify=False)
            self._journal.open()
            self._load_mempool()
            logger.info(
                "chain loaded height=%d tip=%s blocks=%d", self.height, self.tip.hash, len(self.blocks)
            )

    def _replay(self, kind: bytes, payload: bytes) -> None:
        try:
            if kind == b"B":
                block = decode_block(payload)
                if block.hash not in self.blocks and block.header.prev_hash in self.blocks:
                    self._add_to_tree(block)
            elif kind in (b"I", b"R") and BlockHash(payload) in self.blocks:
                entry = self.blocks[BlockHash(payload)]
                if kind == b"I":
                    entry.failed = True
                else:
                    self._reset_failure(entry)
        except (TxDecodeError, ValueError):
            logger.warning("skipping unreadable journal record kind=%r", kind)

    def close(self) -> None:
        with self.lock:
            if self._journal is None:
                return
            self._save_mempool()
            self._journal.close()
            self._journal = None

    def _save_mempool(self) -> None:
        if self.sim_dir is None:
            return
        path = self.sim_dir / "mempool.dat"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([e.tx.hex() for e in self._mempool_topological()]))
        os.replace(tmp, path)

    def _load_mempool(self) -> None:
        if self.sim_dir is None:
            return
        path = self.sim_dir / "mempool.dat"
        try:
            raw_txs = json.loads(path.read_text()) if path.exists() else []
        except (OSError, ValueError):
            raw_txs = []
        for raw in raw_txs:
            try:
                self.accept_to_mempool(decode_transaction(bytes.fromhex(raw)), notify=False)
            except (TxReject, TxDecodeError, ValueError):
                continue

    # -- time and tips ----------------------------------------------------------------------------------
    def now(self) -> int:
        return self.mocktime or int(self.clock())

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    @property
    def tip(self) -> BlockEntry:
        return self.blocks[self.active[-1]]

    @property
    def height(self) -> int:
        return len(self.active) - 1

    def entry_at(self, height: int) -> BlockEntry:
        return self.blocks[self.active[height]]

    def in_active_chain(self, entry: BlockEntry) -> bool:
        return entry.height < len(self.active) and self.active[entry.height] == entry.hash

    def median_time_past(self, entry: BlockEntry) -> int:
        times: list[int] = []
        cur: BlockEntry | None = entry
        while cur is not None and len(times) < 11:
            times.append(cur.block.header.time)
            cur = self.blocks.get(cur.prev) if cur.height > 0 else None
        times.sort()
        return times[len(times) // 2]

    def is_initial_block_download(self) -> bool:
        """Core's latch: true until the tip is less than a day old, then false for good."""
        with self.lock:
            if self.ibd_latched:
                return False
            if self.tip.block.header.time < self.now() - MAX_TIP_AGE:
                return True
            self.ibd_latched = True
            return False

    def is_pruned(self, entry: BlockEntry) -> bool:
        return entry.height < self.prune_below

    @property
    def size_on_disk(self) -> int:
        return self._journal.size if self._journal is not None else 0

    def has_invalid_ancestry(self, entry: BlockEntry) -> bool:
        cur: BlockEntry | None = entry
        while cur is not None:
            if cur.failed:
                return True
            if self.in_active_chain(cur):
                return False
            cur = self.blocks.get(cur.prev) if cur.height > 0 else None
        return False

    # -- coins ------------------------------------------------------------------------------------------
    def chain_coin(self, outpoint: Outpoint) -> Coin | None:
        return self.utxo.get(outpoint)

    def _mempool_coin(self, outpoint: Outpoint) -> Coin | None:
        entry = self.mempool.get(outpoint[0])
        if entry is None or outpoint[1] >= len(entry.tx.outputs):
            return None
        out = entry.tx.outputs[outpoint[1]]
        return Coin(out.value, out.script_pubkey, MEMPOOL_HEIGHT, False)

    def gettxout(self, outpoint: Outpoint, include_mempool: bool) -> Coin | None:
        with self.lock:
            if include_mempool:
                if outpoint in self.mempool_spends:
                    return None
                coin = self._mempool_coin(outpoint)
                if coin is not None:
                    return coin
            return self.utxo.get(outpoint)

    # -- block tree -------------------------------------------------------------------------------------
    def _add_to_tree(self, block: Block) -> BlockEntry:
        parent = self.blocks[block.header.prev_hash]
        entry = BlockEntry(
            block, parent.height + 1, self._next_seq(), parent.chainwork + block_work(block.header.bits)
        )
        self.blocks[block.hash] = entry
        self.children.setdefault(parent.hash, []).append(block.hash)
        self.children[block.hash] = []
        return entry

    def _best_candidate(self) -> BlockEntry:
        valid: dict[BlockHash, bool] = {}
        best = self.blocks[self.active[0]]
        for entry in sorted(self.blocks.values(), key=lambda e: e.seq):
            ok = not entry.failed and (entry.height == 0 or valid.get(entry.prev, False))
            valid[entry.hash] = ok
            if ok and (entry.chainwork, -entry.seq) > (best.chainwork, -best.seq):
                best = entry
        return best

    def _path_from_fork(self, target: BlockEntry) -> list[BlockEntry]:
        path = []
        cur = target
        while not self.in_active_chain(cur):
            path.append(cur)
            cur = self.blocks[cur.prev]
        path.reverse()
        return path

    def _activate_best(self, notify: bool = True) -> None:
        best = self._best_candidate()
        if best.hash == self.tip.hash:
            return
        path = self._path_from_fork(best)
        fork_height = path[0].height - 1
        start_work = self.tip.chainwork
        disconnected: list[Block] = []
        while self.height > fork_height:
            disconnected.append(self._disconnect_tip(notify))
        connected_txids: set[Txid] = set()
        for entry in path:
            self._connect(entry, notify=notify)
            connected_txids.update(tx.txid for tx in entry.block.transactions)
            if notify and entry.chainwork > start_work:
                self.notifier.hashblock(entry.hash)
        self._readd_disconnected(reversed(disconnected), connected_txids, notify)

    def _connect(self, entry: BlockEntry, notify: bool) -> None:
        undo: list[tuple[Outpoint, Coin]] = []
        for tx in entry.block.transactions:
            if not tx.is_coinbase:
                for txin in tx.inputs:
                    coin = self.utxo.pop(txin.outpoint, None)
                    if coin is None:  # only a corrupt journal gets here: blocks are checked when made
                        logger.error("block spends a missing coin block=%s", entry.hash)
                        continue
                    undo.append((txin.outpoint, coin))
            if entry.height > 0:  # the genesis coinbase is unspendable
                for n, out in enumerate(tx.outputs):
                    if out.script_pubkey[:1] != b"\x6a":
                        self.utxo[(tx.txid, n)] = Coin(
                            out.value, out.script_pubkey, entry.height, tx.is_coinbase
                        )
            self.tx_index[tx.txid] = entry.hash
        entry.undo = undo
        self.active.append(entry.hash)
        self._remove_for_block(entry.block)
        if notify:
            for tx in entry.block.transactions:
                self.notifier.rawtx(tx)

    def _disconnect_tip(self, notify: bool) -> Block:
        entry = self.tip
        assert entry.undo is not None and entry.height > 0
        for tx in reversed(entry.block.transactions):
            for n in range(len(tx.outputs)):
                self.utxo.pop((tx.txid, n), None)
            self.tx_index.pop(tx.txid, None)
        for outpoint, coin in reversed(entry.undo):
            self.utxo[outpoint] = coin
        entry.undo = None
        self.active.pop()
        if notify:
            for tx in entry.block.transactions:
                self.notifier.rawtx(tx)
        return entry.block

    def _readd_disconnected(self, blocks: Iterable[Block], connected: set[Txid], notify: bool) -> None:
        for block in blocks:
            for tx in block.transactions[1:]:
                if tx.txid in connected or tx.txid in self.mempool:
                    continue
                try:
                    self.accept_to_mempool(tx, bypass_limits=True, notify=notify)
                except TxReject as e:
                    logger.debug("disconnected tx not re-added txid=%s reason=%s", tx.txid, e)
        self._remove_for_reorg()

    def _remove_for_block(self, block: Block) -> None:
        for tx in block.transactions:
            if tx.txid in self.mempool:
                self._remove_entry(tx.txid)
            if tx.is_coinbase:
                continue
            for txin in tx.inputs:
                conflict = self.mempool_spends.get(txin.outpoint)
                if conflict is not None:
                    self._remove_recursive(conflict)

    def _remove_for_reorg(self) -> None:
        """Drops mempool txs whose inputs vanished, whose coinbase inputs became immature again, or that
        are no longer final or BIP68-final for the next block (Core's removeForReorg)."""
        changed = True
        while changed:
            changed = False
            spend_height = self.height + 1
            tip_mtp = self.median_time_past(self.tip)
            for txid, entry in list(self.mempool.items()):
                if txid not in self.mempool:
                    continue
                coins: list[Coin] = []
                for txin in entry.tx.inputs:
                    coin = self.utxo.get(txin.outpoint) or self._mempool_coin(txin.outpoint)
                    if coin is None or (coin.coinbase and spend_height - coin.height < COINBASE_MATURITY):
                        break
                    coins.append(coin)
                else:
                    if self._is_final(entry.tx, spend_height, tip_mtp) and self._sequence_locks_ok(
                        entry.tx, [self._prev_height(c) for c in coins], spend_height, self.tip
                    ):
                        continue
                self._remove_recursive(txid)
                changed = True

    # -- mempool ----------------------------------------------------------------------------------------
    def _descendants(self, txid: Txid) -> list[Txid]:
        out: list[Txid] = []
        seen = {txid}
        stack = [txid]
        while stack:
            cur = stack.pop()
            out.append(cur)
            entry = self.mempool.get(cur)
            if entry is None:
                continue
            for n in range(len(entry.tx.outputs)):
                child = self.mempool_spends.get((cur, n))
                if child is not None and child not in seen:
                    seen.add(child)
                    stack.append(child)
        return out

    def _remove_entry(self, txid: Txid) -> None:
        entry = self.mempool.pop(txid, None)
        if entry is None:
            return
        for txin in entry.tx.inputs:
            if self.mempool_spends.get(txin.outpoint) == txid:
                del self.mempool_spends[txin.outpoint]

    def _remove_recursive(self, txid: Txid) -> None:
        for t in self._descendants(txid):
            self._remove_entry(t)

    def _mempool_topological(self) -> list[MempoolEntry]:
        done: set[Txid] = set()
        order: list[MempoolEntry] = []

        def visit(entry: MempoolEntry) -> None:
            if entry.tx.txid in done:
                return
            done.add(entry.tx.txid)
            for txin in entry.tx.inputs:
                parent = self.mempool.get(txin.prev_txid)
                if parent is not None:
                    visit(parent)
            order.append(entry)

        for entry in sorted(self.mempool.values(), key=lambda e: e.seq):
            visit(entry)
        return order

    def mempool_parents(self, entry: MempoolEntry) -> list[Txid]:
        return sorted({t.prev_txid for t in entry.tx.inputs if t.prev_txid in self.mempool})

    def mempool_children(self, entry: MempoolEntry) -> list[Txid]:
        txid = entry.tx.txid
        kids = {self.mempool_spends.get((txid, n)) for n in range(len(entry.tx.outputs))}
        return sorted(k for k in kids if k is not None)

    def mempool_ancestors(self, txid: Txid) -> list[Txid]:
        out: list[Txid] = []
        stack = [txid]
        seen = {txid}
        while stack:
            entry = self.mempool[stack.pop()]
            for parent in self.mempool_parents(entry):
                if parent not in seen:
                    seen.add(parent)
                    out.append(parent)
                    stack.append(parent)
        return out

    def check_transaction(self, tx: Transaction) -> None:
        """Context-free consensus checks (Core's CheckTransaction)."""
        if not tx.inputs:
            raise TxReject("bad-txns-vin-empty")
        if not tx.outputs:
            raise TxReject("bad-txns-vout-empty")
        if len(tx.stripped) * 4 > MAX_BLOCK_WEIGHT:
            raise TxReject("bad-txns-oversize")
        total = 0
        for out in tx.outputs:
            if out.value < 0:
                raise TxReject("bad-txns-vout-negative")
            if out.value > MAX_MONEY:
                raise TxReject("bad-txns-vout-toolarge")
            total += out.value
            if total > MAX_MONEY:
                raise TxReject("bad-txns-txouttotal-toolarge")
        outpoints = [txin.outpoint for txin in tx.inputs]
        if len(set(outpoints)) != len(outpoints):
            raise TxReject("bad-txns-inputs-duplicate")
        if tx.is_coinbase:
            if not 2 <= len(tx.inputs[0].script_sig) <= 100:
                raise TxReject("bad-cb-length")
        elif any(txin.prev_txid == NULL_TXID and txin.prev_vout == COINBASE_VOUT for txin in tx.inputs):
            raise TxReject("bad-txns-prevout-null")

    def _is_final(self, tx: Transaction, height: int, block_time: int) -> bool:
        if tx.locktime == 0:
            return True
        limit = height if tx.locktime < LOCKTIME_THRESHOLD else block_time
        if tx.locktime < limit:
            return True
        return all(txin.sequence == SEQUENCE_FINAL for txin in tx.inputs)

    def _prev_height(self, coin: Coin) -> int:
        """The height BIP68 counts a coin from: its block's, or the next block's for a mempool coin."""
        return self.height + 1 if coin.height == MEMPOOL_HEIGHT else coin.height

    def _sequence_locks_ok(
        self, tx: Transaction, prev_heights: Sequence[int], height: int, parent: BlockEntry
    ) -> bool:
        """BIP68 (Core's CalculateSequenceLocks + EvaluateSequenceLocks) for a block at ``height`` on
        ``parent`` (the tip): every input's relative lock, in blocks or in 512-second units of median time
        past counted from the block before the coin's, has passed. Version 1 transactions and inputs with
        the disable flag have no relative lock."""
        if tx.version < 2:
            return True
        min_height = -1
        min_time = -1
        for txin, coin_height in zip(tx.inputs, prev_heights, strict=True):
            sequence = txin.sequence
            if sequence & SEQUENCE_LOCKTIME_DISABLE_FLAG:
                continue
            value = sequence & SEQUENCE_LOCKTIME_MASK
            if sequence & SEQUENCE_LOCKTIME_TYPE_FLAG:
                coin_time = self.median_time_past(self.entry_at(max(coin_height - 1, 0)))
                min_time = max(min_time, coin_time + (value << SEQUENCE_LOCKTIME_GRANULARITY) - 1)
            else:
                min_height = max(min_height, coin_height + value - 1)
        return min_height < height and min_time < self.median_time_past(parent)

    def _check_scripts(self, tx: Transaction, coins: dict[Outpoint, Coin], flags: int, prefix: str) -> None:
        """Every input's script with ``flags``; raises Core's ``<prefix>-script-verify-flag-failed``."""
        spent = [TxOut(coins[t.outpoint].value, coins[t.outpoint].script_pubkey) for t in tx.inputs]
        failure = self.scripts.check(tx, spent, flags)
        if failure is not None:
            raise TxReject(f"{prefix}-script-verify-flag-failed ({failure.reason})", failure.debug(tx))

    def _check_standard(self, tx: Transaction) -> None:
        if not 1 <= tx.version <= 3:
            raise TxReject("version")
        if tx.weight > MAX_STANDARD_TX_WEIGHT:
            raise TxReject("tx-size")
        if len(tx.stripped) < 65:
            raise TxReject("tx-size-small")
        for txin in tx.inputs:
            if len(txin.script_sig) > 1650:
                raise TxReject("scriptsig-size")
        for out in tx.outputs:
            if script_type(out.script_pubkey) == "nonstandard" and not self._is_bare_multisig(
                out.script_pubkey
            ):
                raise TxReject("scriptpubkey")
            if out.value < dust_threshold(out):
                raise TxReject("dust")

    @staticmethod
    def _is_bare_multisig(script: bytes) -> bool:
        return len(script) >= 37 and script[-1] == 0xAE and 0x51 <= script[0] <= 0x53

    def _check_inputs(
        self, tx: Transaction, view: _View, spend_height: int
    ) -> tuple[int, dict[Outpoint, Coin]]:
        """Inputs exist, are mature, and cover the outputs; returns (fee, coins spent)."""
        coins: dict[Outpoint, Coin] = {}
        for txin in tx.inputs:
            coin = view.get(txin.outpoint)
            if coin is None:
                raise TxReject("bad-txns-inputs-missingorspent", missing_inputs=True)
            coins[txin.outpoint] = coin
        value_in = 0
        for coin in coins.values():
            if coin.coinbase and spend_height - coin.height < COINBASE_MATURITY:
                depth = spend_height - coin.height
                raise TxReject(
                    "bad-txns-premature-spend-of-coinbase", f"tried to spend coinbase at depth {depth}"
                )
            value_in += coin.value
        value_out = sum(out.value for out in tx.outputs)
        if value_in < value_out:
            raise TxReject(
                "bad-txns-in-belowout",
                f"value in ({format_money(value_in)}) < value out ({format_money(value_out)})",
            )
        return value_in - value_out, coins

    def _mempool_view(self) -> _View:
        return _View(lambda op: self.utxo.get(op) or self._mempool_coin(op))

    def check_for_mempool(
        self, tx: Transaction, bypass_limits: bool = False
    ) -> tuple[int, dict[Outpoint, Coin], set[Txid]]:
        """Runs every mempool check; returns (fee, spent coins, txids the tx would replace)."""
        self.check_transaction(tx)
        if tx.is_coinbase:
            raise TxReject("coinbase")
        self._check_standard(tx)
        tip = self.tip
        if not self._is_final(tx, tip.height + 1, self.median_time_past(tip)):
            raise TxReject("non-final")
        existing = self.mempool.get(tx.txid)
        if existing is not None:
            if existing.tx.wtxid == tx.wtxid:
                raise TxReject("txn-already-in-mempool")
            raise TxReject("txn-same-nonwitness-data-in-mempool")
        conflicts = {self.mempool_spends[t.outpoint] for t in tx.inputs if t.outpoint in self.mempool_spends}
        view = self._mempool_view()
        missing = [t for t in tx.inputs if view.get(t.outpoint) is None]
        if missing:
            if any((tx.txid, n) in self.utxo for n in range(len(tx.outputs))):
                raise TxReject("txn-already-known")
            raise TxReject("bad-txns-inputs-missingorspent", missing_inputs=True)
        prev_heights = [self._prev_height(c) for c in map(view.get, (t.outpoint for t in tx.inputs)) if c]
        if not self._sequence_locks_ok(tx, prev_heights, tip.height + 1, tip):
            raise TxReject("non-BIP68-final")
        fee, coins = self._check_inputs(tx, view, tip.height + 1)
        vsize = tx.vsize
        if not bypass_limits:
            min_fee = fee_for(MIN_RELAY_FEE_PER_KVB, vsize)
            if fee < min_fee:
                raise TxReject("min relay fee not met", f"{fee} < {min_fee}")
        replaced: set[Txid] = set()
        if conflicts:
            for conflict in conflicts:
                replaced.update(self._descendants(conflict))
            if any(t.prev_txid in replaced for t in tx.inputs):
                raise TxReject(
                    "bad-txns-spends-conflicting-tx",
                    f"{tx.txid} spends conflicting transaction {sorted(conflicts)[0]}",
                )
            if len(replaced) > MAX_REPLACEMENT_CANDIDATES:
                raise TxReject(
                    "too many potential replacements",
                    f"rejecting replacement {tx.txid}; too many potential replacements "
                    f"({len(replaced)} > {MAX_REPLACEMENT_CANDIDATES})",
                )
            original_fees = sum(self.mempool[t].fee for t in replaced)
            if fee < original_fees:
                raise TxReject(
                    "insufficient fee",
                    f"rejecting replacement {tx.txid}, less fees than conflicting txs; "
                    f"{format_money(fee)} < {format_money(original_fees)}",
                )
            relay = fee_for(INCREMENTAL_RELAY_FEE_PER_KVB, vsize)
            if fee - original_fees < relay:
                raise TxReject(
                    "insufficient fee",
                    f"rejecting replacement {tx.txid}, not enough additional fees to relay; "
                    f"{format_money(fee - original_fees)} < {format_money(relay)}",
                )
        # PolicyScriptChecks, then ConsensusScriptChecks with the tip's flags (whose success is cached)
        self._check_scripts(tx, coins, int(STANDARD_FLAGS), "mempool")
        self._check_scripts(tx, coins, block_script_flags(tip.height), "mempool")
        return fee, coins, replaced

    def accept_to_mempool(
        self, tx: Transaction, bypass_limits: bool = False, notify: bool = True
    ) -> MempoolEntry:
        with self.lock:
            fee, coins, replaced = self.check_for_mempool(tx, bypass_limits)
            for txid in replaced:
                self._remove_entry(txid)
            self._mempool_seq += 1
            entry = MempoolEntry(tx, fee, self.now(), self.height, self._mempool_seq, coins)
            self.mempool[tx.txid] = entry
            for txin in tx.inputs:
                self.mempool_spends[txin.outpoint] = tx.txid
            if notify:
                self.notifier.rawtx(tx)
            return entry

    # -- mining -----------------------------------------------------------------------------------------
    def _coinbase(
        self, height: int, script_pubkey: bytes, fees: int, txs: Sequence[Transaction]
    ) -> Transaction:
        draft = Transaction(
            2,
            (TxIn(NULL_TXID, COINBASE_VOUT, push_int(height) + b"\x00", 0xFFFFFFFE, (bytes(32),)),),
            (TxOut(block_subsidy(height) + fees, script_pubkey),),
            max(height - 1, 0),
        )
        commitment = TxOut(0, witness_commitment_script([draft, *txs]))
        return Transaction(draft.version, draft.inputs, (*draft.outputs, commitment), draft.locktime)

    def _validate_block_txs(self, txs: Sequence[Transaction], height: int, block_time: int) -> int:
        """Checks txs of a block at ``height`` on the tip, in order, as ConnectBlock does: inputs, fees
        and BIP68 transaction by transaction, then every script with the height's consensus flags (Core
        queues script checks and reports them after the loop). Returns the total fee."""
        view = _View(self.utxo.get)
        fees = 0
        flags = block_script_flags(height)
        script_checks: list[tuple[Transaction, dict[Outpoint, Coin]]] = []
        for tx in txs:
            self.check_transaction(tx)
            if tx.is_coinbase:
                raise TxReject("bad-cb-multiple")
            if not self._is_final(tx, height, block_time):
                raise TxReject("bad-txns-nonfinal")
            fee, coins = self._check_inputs(tx, view, height)
            fees += fee
            prev_heights = [coins[t.outpoint].height for t in tx.inputs]
            if not self._sequence_locks_ok(tx, prev_heights, height, self.tip):
                raise TxReject("bad-txns-nonfinal", f"contains a non-BIP68-final transaction {tx.txid}")
            script_checks.append((tx, coins))
            for txin in tx.inputs:
                view.spend(txin.outpoint)
            view.add_outputs(tx, height)
        for tx, coins in script_checks:
            self._check_scripts(tx, coins, flags, "block")
        return fees

    def _select_mempool_txs(self) -> list[Transaction]:
        chosen: list[Transaction] = []
        weight = BLOCK_RESERVED_WEIGHT
        included: set[Txid] = set()
        for entry in self._mempool_topological():
            if any(t.prev_txid in self.mempool and t.prev_txid not in included for t in entry.tx.inputs):
                continue
            if weight + entry.tx.weight > MAX_BLOCK_WEIGHT:
                continue
            weight += entry.tx.weight
            chosen.append(entry.tx)
            included.add(entry.tx.txid)
        return chosen

    def create_block(self, script_pubkey: bytes, txs: Sequence[Transaction] | None = None) -> Block:
        """A block on the tip paying ``script_pubkey``: with ``txs`` (checked) or the mempool's txs."""
        with self.lock:
            tip = self.tip
            height = tip.height + 1
            block_time = max(self.median_time_past(tip) + 1, self.now())
            chosen = self._select_mempool_txs() if txs is None else list(txs)
            fees = self._validate_block_txs(chosen, height, self.median_time_past(tip))
            coinbase = self._coinbase(height, script_pubkey, fees, chosen)
            all_txs = (coinbase, *chosen)
            root = merkle_root([tx.txid.raw for tx in all_txs])
            header = BlockHeader(BLOCK_VERSION, tip.hash, root, block_time, REGTEST_BITS, 0)
            nonce = 0
            while not check_proof_of_work(header):
                nonce += 1
                header = BlockHeader(BLOCK_VERSION, tip.hash, root, block_time, REGTEST_BITS, nonce)
            return Block(header, all_txs)

    def process_new_block(self, block: Block) -> BlockEntry:
        """Stores a block made on the current tip and makes it the tip (ProcessNewBlock)."""
        with self.lock:
            known = self.blocks.get(block.hash)
            if known is not None:
                if known.failed or self.has_invalid_ancestry(known):
                    raise BlockNotAccepted("duplicate-invalid")
                return known
            if block.header.prev_hash not in self.blocks:
                raise BlockNotAccepted("prev-blk-not-found")
            entry = self._add_to_tree(block)
            if self._journal is not None:
                self._journal.append(b"B", block.raw)
            if entry.prev == self.tip.hash:
                self._connect(entry, notify=True)
                self.notifier.hashblock(entry.hash)
            else:
                self._activate_best()
            return entry

    def generate(self, script_pubkey: bytes, count: int) -> list[BlockHash]:
        hashes = []
        for _ in range(count):
            with self.lock:
                block = self.create_block(script_pubkey)
                hashes.append(self.process_new_block(block).hash)
        return hashes

    # -- reorganisations --------------------------------------------------------------------------------
    def invalidate(self, entry: BlockEntry) -> None:
        with self.lock:
            entry.failed = True
            if self._journal is not None:
                self._journal.append(b"I", entry.hash.raw)
            if self.in_active_chain(entry):
                disconnected = []
                while self.height >= entry.height:
                    disconnected.append(self._disconnect_tip(notify=True))
                self._readd_disconnected(reversed(disconnected), set(), notify=True)
            self._activate_best()

    def _reset_failure(self, entry: BlockEntry) -> None:
        stack = [entry.hash]
        while stack:
            cur = self.blocks[stack.pop()]
            cur.failed = False
            stack.extend(self.children.get(cur.hash, []))
        cur2: BlockEntry | None = entry
        while cur2 is not None:
            cur2.failed = False
            cur2 = self.blocks.get(cur2.prev) if cur2.height > 0 else None

    def reconsider(self, entry: BlockEntry) -> None:
        with self.lock:
            self._reset_failure(entry)
            if self._journal is not None:
                self._journal.append(b"R", entry.hash.raw)
            self._activate_best()

    # -- lookups ----------------------------------------------------------------------------------------
    def confirmations(self, entry: BlockEntry) -> int:
        return self.height - entry.height + 1 if self.in_active_chain(entry) else -1

    def next_hash(self, entry: BlockEntry) -> BlockHash | None:
        if self.in_active_chain(entry) and entry.height < self.height:
            return self.active[entry.height + 1]
        return None

    def block_fees(self, entry: BlockEntry) -> dict[Txid, int] | None:
        """Per-tx fees of a block on the active chain (from its undo data), else None."""
        if entry.undo is None:
            return None
        spent = dict(entry.undo)
        fees = {}
        for tx in entry.block.transactions[1:]:
            value_in = sum(spent[t.outpoint].value for t in tx.inputs if t.outpoint in spent)
            fees[tx.txid] = value_in - sum(o.value for o in tx.outputs)
        return fees
