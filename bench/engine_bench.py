"""Engine benchmark: per-block Watcher cost, memory, restart time and disk use against stored appointments.

Usage: ``python bench/engine_bench.py [--sizes 10000,100000,1000000] [--block-txs 4000]``

For each size, in one process:
1. fills a fresh LevelDB store with N appointments as the service writes them (``a|`` and ``i|`` entries,
   200-300 byte blobs, a few thousand users), with big unsynced batches, then compacts it,
   and runs the engine once so that the next start is a restart; in a second, fresh process:
2. times a restart to "ready": open the store + the chain side's start (start-up checks: network,
   pointer, locator cache rebuilt from 6 blocks of the chain) against an in-process chain of 4000-tx
   blocks, and its memory (RSS);
3. times ``Watcher.block_connected`` on blocks of random txids (median of several): with no match, and with
   10 real breaches (real encrypted penalties that decrypt and decode), and the RSS after;
4. reports on-disk bytes per appointment (after a compaction).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import crypto
from common.appointment import compute_uuid
from common.dialects import locator_from_txid
from common.tx import Transaction, TxIn, TxOut, decode_transaction
from common.types import BlockHash, Dialect, Txid, UserId, Uuid
from teos.chain.bitcoind import Block, BlockHeader, ChainInfo, RetryPolicy, RPCError, TxInfo
from teos.chain.tip import ChainTip
from teos.daemon import build_chain_side
from teos.engine import EngineConfig, decode_penalty
from teos.storage import keys
from teos.storage.codec import AppointmentRecord, UserRecord
from teos.storage.store import Batch, Store
from teos.storage.watched import put_watched
from teos.watcher.locator_cache import LocatorCache
from teos.watcher.watcher import Watcher

N_USERS = 2000


def rss_mb(field: str = "VmRSS") -> float:
    """Resident memory; ``RssAnon`` leaves out file pages (LevelDB maps its table files)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def random_txid(rng: random.Random) -> Txid:
    return Txid(rng.randbytes(32))


def penalty_tx(rng: random.Random) -> Transaction:
    return Transaction(2, (TxIn(random_txid(rng), 0),), (TxOut(50_000, b"\x00\x14" + rng.randbytes(20)),))


class BenchChain:
    """A chain of blocks of random txids, answering the RPCs the engine makes."""

    def __init__(self, length: int, block_txs: int, rng: random.Random) -> None:
        self.blocks: list[Block] = []
        prev: BlockHash | None = None
        for h in range(length):
            bh = BlockHash(hashlib.sha256(b"bench" + h.to_bytes(4, "big")).digest())
            self.blocks.append(Block(bh, h, prev, tuple(random_txid(rng) for _ in range(block_txs))))
            prev = bh
        self.by_hash = {b.hash: b for b in self.blocks}

    def get_blockchain_info(self) -> ChainInfo:
        return ChainInfo("regtest", len(self.blocks) - 1, self.blocks[-1].hash, False, 0, False)

    def get_best_block_hash(self) -> BlockHash:
        return self.blocks[-1].hash

    def get_block_hash(self, height: int) -> BlockHash:
        if not 0 <= height < len(self.blocks):
            raise RPCError(-8, "Block height out of range")
        return self.blocks[height].hash

    def get_block(self, block_hash: BlockHash) -> Block:
        return self.by_hash[block_hash]

    def get_block_header(self, block_hash: BlockHash) -> BlockHeader:
        b = self.by_hash[block_hash]
        return BlockHeader(b.hash, b.height, b.prev_hash, len(self.blocks) - b.height)

    def send_raw_transaction(self, raw_tx: bytes) -> Txid:
        return decode_transaction(raw_tx).txid

    def get_raw_transaction(self, txid: Txid, block_hash: BlockHash | None = None) -> TxInfo | None:
        return None

    def close(self) -> None:
        pass


class NullLedger:
    def __init__(self, store: Store) -> None:
        self.store = store

    def release(self, batch: Batch, released: Mapping[UserId, Sequence[tuple[Uuid, int]]]) -> None:
        self.store.commit(batch)


def fill(store: Store, n: int, rng: random.Random) -> list[UserId]:
    users = [crypto.public_key(crypto.generate_secret_key()) for _ in range(N_USERS)]
    batch = Batch()
    for u in users:
        batch.put(keys.user(u), UserRecord(u, Dialect.RUST, 10_000, 0, 10_000).encode())
    for i in range(n):
        user = users[i % N_USERS]
        dialect = Dialect.RUST if i % 2 else Dialect.PYTHON
        locator = locator_from_txid(random_txid(rng), dialect)
        uuid = compute_uuid(locator, user)
        record = AppointmentRecord(
            uuid, locator, rng.randbytes(rng.randint(200, 300)), 20, user, "d" * 104, 100, dialect
        )
        put_watched(batch, record)
        batch.put(keys.user_appointment(user, uuid), locator.raw)
        if len(batch) >= 100_000:
            store.commit(batch, sync=False)
            batch = Batch()
    store.commit(batch, sync=False)
    store.compact()
    return users


def add_breaches(store: Store, users: list[UserId], rng: random.Random, k: int) -> list[Txid]:
    disputes = []
    batch = Batch()
    for i in range(k):
        dispute = random_txid(rng)
        dialect = Dialect.RUST if i % 2 else Dialect.PYTHON
        locator = locator_from_txid(dispute, dialect)
        user = users[i]
        uuid = compute_uuid(locator, user)
        blob = crypto.encrypt(penalty_tx(rng).raw, dispute, dialect)
        record = AppointmentRecord(uuid, locator, blob, 20, user, "d" * 104, 100, dialect)
        put_watched(batch, record)
        batch.put(keys.user_appointment(user, uuid), locator.raw)
        disputes.append(dispute)
    store.commit(batch, sync=False)
    return disputes


def time_block(watcher: Watcher, txids: list[Txid], height: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    outcome = watcher.block_connected(BlockHash(os.urandom(32)), height, txids, Batch())
    return time.perf_counter() - t0, len(outcome.breaches)


def config() -> EngineConfig:
    return EngineConfig(btc_network="regtest", poll_interval=3600, startup_retry=RetryPolicy(0.1, 1, 5))


def prepare(path: Path, n: int, block_txs: int) -> dict[str, float]:
    """Fills the store and runs the engine once (so the next start is a restart)."""
    rng = random.Random(n)
    store = Store(path)
    store.open()
    t0 = time.perf_counter()
    fill(store, n, rng)
    fill_s = time.perf_counter() - t0
    chain = BenchChain(20, block_txs, random.Random(0))
    parts = build_chain_side(config(), store, chain, ChainTip(), NullLedger(store))
    parts.start()
    parts.stop()
    store.close()
    return {"fill_s": fill_s}


def measure(path: Path, n: int, block_txs: int, runs: int) -> dict[str, float]:
    """In a fresh process: restart to ready, then the per-block cost, then memory."""
    rng = random.Random(n + 1)
    chain = BenchChain(20, block_txs, random.Random(0))
    t0 = time.perf_counter()
    store = Store(path)
    store.open()
    parts = build_chain_side(config(), store, chain, ChainTip(), NullLedger(store))
    parts.start()
    restart_s = time.perf_counter() - t0
    rss_ready = rss_mb()
    parts.stop()
    users = [UserId(k[1:]) for k, _ in itertools.islice(store.iterate(keys.USER), 10)]
    watcher = Watcher(store, LocatorCache(6), decode_penalty)
    time_block(watcher, [random_txid(rng) for _ in range(block_txs)], 0)  # warm-up
    none = [time_block(watcher, [random_txid(rng) for _ in range(block_txs)], i)[0] for i in range(runs)]
    some = []
    for i in range(runs):
        disputes = add_breaches(store, users, rng, 10)
        txids = [random_txid(rng) for _ in range(block_txs - 10)] + disputes
        rng.shuffle(txids)
        elapsed, found = time_block(watcher, txids, 100 + i)
        assert found == 10, found
        some.append(elapsed)
    rss = rss_mb()
    rss_anon = rss_mb("RssAnon")
    store.compact()
    store.close()
    disk = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return {
        "appointments": n,
        "block_no_match_ms": statistics.median(none) * 1000,
        "block_10_breaches_ms": statistics.median(some) * 1000,
        "rss_ready_mb": rss_ready,
        "rss_mb": rss,
        "rss_anon_mb": rss_anon,
        "restart_ready_s": restart_s,
        "disk_bytes_per_appointment": disk / n,
    }


def _in_subprocess(*args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--block-txs", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--prepare", help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        print(json.dumps(prepare(Path(args.prepare), args.n, args.block_txs)))
        return
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.n, args.block_txs, args.runs)))
        return
    print(f"block of {args.block_txs} txs ({2 * args.block_txs} locator lookups), median of {args.runs} runs")
    print(
        f"{'appointments':>12} {'fill s':>7} {'block ms':>9} {'10 breaches ms':>15} {'restart s':>10} "
        f"{'RSS ready MB':>13} {'RSS after MB':>13} {'(anon) MB':>10} {'disk B/appt':>12}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        tmp = Path(tempfile.mkdtemp(prefix="teos-bench-"))
        try:
            common = ["--n", str(size), "--block-txs", str(args.block_txs), "--runs", str(args.runs)]
            p = _in_subprocess("--prepare", str(tmp / "db"), *common)
            r = _in_subprocess("--measure", str(tmp / "db"), *common)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(
            f"{size:>12} {p['fill_s']:>7.1f} {r['block_no_match_ms']:>9.1f} "
            f"{r['block_10_breaches_ms']:>15.1f} {r['restart_ready_s']:>10.3f} {r['rss_ready_mb']:>13.1f} "
            f"{r['rss_mb']:>13.1f} {r['rss_anon_mb']:>10.1f} "
            f"{r['disk_bytes_per_appointment']:>12.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
