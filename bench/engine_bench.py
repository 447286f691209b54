"""Engine benchmark: per-block cost, status reads, restart, memory, disk and catch-up, by stored appointments.

Usage: ``python bench/engine_bench.py [--sizes 10000,1000000,10000000] [--block-txs 4000]
[--catch-up-size 1000000] [--catch-up-blocks 500] [--workdir DIR]``

For each size, in separate processes:

1. *fill*: a fresh LevelDB store gets N appointments as the service writes them (200-300 byte random
   blobs, random signatures, both dialects, 2000 users), in big unsynced batches, then is compacted; the
   engine runs once so that the next start is a restart;
2. *measure*, in a fresh process:
   - restart to ready: open the store, start the Gatekeeper and the engine (network check, pointer, locator
     cache rebuilt from 6 blocks of an in-process chain of 4000-tx blocks), and the anonymous RSS then;
   - ``gettowerinfo`` (the admin backend's ``tower_info``) and a ``/metrics`` scrape (``Metrics.render``);
   - ``Watcher.block_connected`` on blocks of random txids (median of ``--runs``, the two kinds
     alternately): with no match (8000 locator lookups), and with 10 real breaches (penalties that decrypt
     and decode);
   - bytes on disk per appointment (after a compaction), and over its blob (the goal: <= 150), and the
     anonymous RSS after the blocks;
3. *catch-up* (at ``--catch-up-size`` only): the engine, stopped at a block, restarts ``--catch-up-blocks``
   blocks of ``--block-txs`` behind the tip and catches up, twice from the same state: once from an
   in-process chain whose blocks are ready-made objects (pure processing), once from
   ``bench/chain_server.py`` over bitcoind's JSON-RPC in another process (fetch and processing, as with a
   real bitcoind). It prints both rates in blocks/s and their ratio.

``--workdir DIR`` keeps each filled database in DIR (``db-<size>``) and reuses it on the next run (a fill at
ten million takes several minutes); the measures add a few appointments each time, the catch-up none.
"""

from __future__ import annotations

import argparse
import gc
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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.chain_server import SyntheticChain
from common import crypto, zbase32
from common.appointment import compute_uuid
from common.dialects import locator_from_txid
from common.tx import Transaction, TxIn, TxOut
from common.types import BlockHash, Dialect, Txid, UserId
from teos.chain.bitcoind import BitcoindClient, BitcoindConfig, RetryPolicy
from teos.chain.tip import ChainTip
from teos.daemon import ChainSide, build_chain_side
from teos.engine import EngineConfig, decode_penalty
from teos.gatekeeper import Gatekeeper, GatekeeperConfig
from teos.storage import keys
from teos.storage.codec import AppointmentRecord, UserRecord
from teos.storage.index import APPOINTMENTS, LocatorIndex
from teos.storage.migrate import migrate
from teos.storage.store import Batch, Store
from teos.storage.watched import add_held, put_watched, usernum_of
from teos.watcher.locator_cache import LocatorCache
from teos.watcher.watcher import Watcher

N_USERS = 2000
SEED = b"bench"
HISTORY = 20  # blocks of the synthetic chain before the catch-up's
T = TypeVar("T")


def rss_mb(field: str = "VmRSS") -> float:
    """Resident memory; ``RssAnon`` leaves out file pages (LevelDB maps its table files)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def random_txid(rng: random.Random) -> Txid:
    return Txid(rng.randbytes(32))


def signature(rng: random.Random) -> str:
    """A user signature as stored (104 z-base-32 characters): as incompressible as a real one."""
    return zbase32.encode(bytes([31 + rng.randrange(4)]) + rng.randbytes(64))


def penalty_tx(rng: random.Random) -> Transaction:
    return Transaction(2, (TxIn(random_txid(rng), 0),), (TxOut(50_000, b"\x00\x14" + rng.randbytes(20)),))


def timed(fn: Callable[[], T], runs: int = 3) -> tuple[float, T]:
    """Median seconds of ``runs`` calls, and the last result."""
    times = []
    result: Any = None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def fill(store: Store, n: int, rng: random.Random) -> list[UserId]:
    """The layout teosd writes (users numbered 0..N_USERS-1); the index is built at the first start."""
    users = [crypto.public_key(crypto.generate_secret_key()) for _ in range(N_USERS)]
    batch = Batch()
    for usernum, u in enumerate(users):
        batch.put(keys.user(u), UserRecord(u, Dialect.RUST, 10_000, 0, 10_000, usernum).encode())
        batch.put(keys.user_number(usernum), u.raw)
    batch.put(keys.META_NEXT_USERNUM, N_USERS.to_bytes(8, "big"))
    batch.put(keys.META_SCHEMA, bytes([keys.SCHEMA]))
    for i in range(n):
        usernum = i % N_USERS
        user = users[usernum]
        dialect = Dialect.RUST if i % 2 else Dialect.PYTHON
        locator = locator_from_txid(random_txid(rng), dialect)
        record = AppointmentRecord(compute_uuid(locator, user), locator, rng.randbytes(rng.randint(200, 300)),
                                   20, user, signature(rng), 100, dialect)  # fmt: skip
        batch.put(keys.appointment(locator, usernum), record.encode_body())
        batch.put(keys.user_appointment(usernum, locator), b"")
        if len(batch) >= 100_000:
            store.commit(batch, sync=False)
            batch = Batch()
    store.commit(batch, sync=False)
    store.compact()
    return users


def add_breaches(
    store: Store, index: LocatorIndex, users: list[UserId], rng: random.Random, k: int
) -> list[Txid]:
    disputes = []
    batch = Batch()
    for i in range(k):
        dispute = random_txid(rng)
        dialect = Dialect.RUST if i % 2 else Dialect.PYTHON
        locator = locator_from_txid(dispute, dialect)
        user = users[i]
        uuid = compute_uuid(locator, user)
        blob = crypto.encrypt(penalty_tx(rng).raw, dispute, dialect)
        record = AppointmentRecord(uuid, locator, blob, 20, user, signature(rng), 100, dialect)
        usernum = usernum_of(store, user)
        assert usernum is not None
        put_watched(batch, record, usernum, index, new=True)
        add_held(batch, usernum, locator)
        disputes.append(dispute)
    index.stage(batch, counts={APPOINTMENTS: k})
    store.commit(batch, sync=False)
    return disputes


def time_block(
    watcher: Watcher, txids: list[Txid], height: int, store: Store | None = None
) -> tuple[float, int]:
    """Seconds the Watcher takes on a block; with ``store``, its batch is then written (untimed), so the
    appointments it consumed leave the database as they would."""
    batch = Batch()
    t0 = time.perf_counter()
    outcome = watcher.block_connected(BlockHash(os.urandom(32)), height, txids, batch)
    elapsed = time.perf_counter() - t0
    if store is not None:
        store.commit(batch, sync=False)
    return elapsed, len(outcome.breaches)


def config() -> EngineConfig:
    return EngineConfig(btc_network="regtest", poll_interval=3600, startup_retry=RetryPolicy(0.1, 1, 5))


class Tower:
    """What teosd builds before it is ready, minus the HTTP side: store, index, Gatekeeper, chain side."""

    def __init__(self, path: Path, chain: Any) -> None:
        self.store = Store(path)
        self.store.open()
        migrate(self.store)  # a database of an earlier layout (kept with --workdir): as teosd does
        self.index = LocatorIndex(self.store)
        self.index.start()
        tip = ChainTip()
        self.gatekeeper = Gatekeeper(self.store, GatekeeperConfig(max_appointments=10**9), tip, self.index)
        self.gatekeeper.start()
        self.side: ChainSide = build_chain_side(config(), self.store, chain, tip, self.gatekeeper, self.index,
                                                [self.gatekeeper])  # fmt: skip
        self.side.start()

    def stop(self) -> None:
        self.side.stop()
        self.index.stop()
        self.store.close()


def prepare(path: Path, n: int, block_txs: int) -> dict[str, float]:
    """Fills the store and runs the tower once: the index is built (as on a database from before it)
    and the next start is a restart."""
    rng = random.Random(n)
    store = Store(path)
    store.open()
    t0 = time.perf_counter()
    fill(store, n, rng)
    fill_s = time.perf_counter() - t0
    store.close()
    t0 = time.perf_counter()
    tower = Tower(path, SyntheticChain(SEED, HISTORY, block_txs, HISTORY - 1))
    build_s = time.perf_counter() - t0
    tower.stop()
    return {"fill_s": fill_s, "first_start_s": build_s}


def measure(path: Path, n: int, block_txs: int, runs: int) -> dict[str, float]:
    """In a fresh process: restart to ready, status reads, the per-block cost, memory and disk."""
    from teos.admin import StoreAdminBackend
    from teos.metrics import Metrics

    rng = random.Random(n + 1)
    chain = SyntheticChain(SEED, HISTORY, block_txs, HISTORY - 1)
    t0 = time.perf_counter()
    tower = Tower(path, chain)
    restart_s = time.perf_counter() - t0
    rss_ready = rss_mb("RssAnon")
    store, index = tower.store, tower.index
    backend = StoreAdminBackend(store, tower.side.progress.status, UserId(b"\x02" + bytes(32)), lambda: None,
                                index)  # fmt: skip
    metrics = Metrics()
    metrics.bind_status(backend.tower_info)
    towerinfo_s, info = timed(backend.tower_info)
    scrape_s, _ = timed(metrics.render)
    assert info["n_watcher_appointments"] >= n, info
    tower.side.stop()
    users = [UserId(k[1:]) for k in itertools.islice(store.iterate_keys(keys.USER), 10)]
    watcher = Watcher(store, LocatorCache(6), decode_penalty, index)
    time_block(watcher, [random_txid(rng) for _ in range(block_txs)], 0)  # warm-up
    none, some = [], []
    for i in range(runs):  # alternately, so that both kinds of block meet the same state of the machine
        none.append(time_block(watcher, [random_txid(rng) for _ in range(block_txs)], i)[0])
        disputes = add_breaches(store, index, users, rng, 10)
        txids = [random_txid(rng) for _ in range(block_txs - 10)] + disputes
        rng.shuffle(txids)
        elapsed, found = time_block(watcher, txids, 100 + i, store)
        assert found == 10, found
        some.append(elapsed)
    rss_after = rss_mb("RssAnon")
    index.stop()
    settle(store)
    watched, blobs = blob_bytes(store)
    store.close()
    disk = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return {
        "appointments": n,
        "block_no_match_ms": statistics.median(none) * 1000,
        "block_no_match_spread_ms": (max(none) - min(none)) * 1000,
        "block_10_breaches_ms": statistics.median(some) * 1000,
        "towerinfo_ms": towerinfo_s * 1000,
        "metrics_ms": scrape_s * 1000,
        "restart_ready_s": restart_s,
        "rss_anon_ready_mb": rss_ready,
        "rss_anon_after_mb": rss_after,
        "disk_bytes_per_appointment": disk / n,
        "disk_over_blob_bytes": (disk - blobs) / watched,
    }


def settle(store: Store) -> None:
    """Compacts the whole database (``Store.compact`` names the whole key range: plyvel's default is an
    empty one), so that the disk figure counts no deleted entry."""
    store.compact()


def blob_bytes(store: Store) -> tuple[int, int]:
    """How many appointments are watched and the sum of their blobs' lengths (read from the bodies:
    head, dialect, two varints, the signature, then the blob's length)."""
    n = total = 0
    for _, body in store.iterate(keys.APPOINTMENT):
        pos = keys.read_varint(body, keys.read_varint(body, 2)[1])[1]
        if body[0] == 4:
            pos += 65
        else:
            length, pos = keys.read_varint(body, pos)
            pos += length
        blob, _ = keys.read_varint(body, pos)
        n += 1
        total += blob
    return n, total


# -- catch-up ---------------------------------------------------------------------------------------------

_POINTER_KEYS = (keys.META_LAST_BLOCK, keys.META_LAST_BLOCK_LEGACY)


def _snapshot_pointer(store: Store) -> list[tuple[bytes, bytes]]:
    saved = [(k, v) for k in _POINTER_KEYS if (v := store.get(k)) is not None]
    return saved + list(store.iterate(keys.META_RECENT_BLOCKS))


def _restore_pointer(store: Store, saved: list[tuple[bytes, bytes]]) -> None:
    batch = Batch()
    for k, _ in store.iterate(keys.META_RECENT_BLOCKS):
        batch.delete(k)
    for k, v in saved:
        batch.put(k, v)
    store.commit(batch)


def _time_catch_up(path: Path, chain: Any, tip: int) -> float:
    """Seconds from the engine's start (once it is running) until it has processed ``tip``."""
    tower = Tower(path, chain)
    try:
        t0 = time.perf_counter()
        deadline = time.monotonic() + 3600
        while tower.side.engine.tip_height < tip:
            if time.monotonic() > deadline:
                raise RuntimeError(f"catch-up did not reach height {tip}")
            time.sleep(0.01)
        return time.perf_counter() - t0
    finally:
        tower.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def catch_up(path: Path, block_txs: int, blocks: int) -> dict[str, float]:
    """Both catch-ups over the same ``blocks`` blocks from the same stored state (see the docstring)."""
    tip = HISTORY - 1 + blocks
    store = Store(path)
    store.open()
    saved = _snapshot_pointer(store)
    store.close()
    local = SyntheticChain(SEED, tip + 1, block_txs, tip, prebuilt=True)
    gc.freeze()  # its blocks would otherwise be walked by every full collection
    pure_s = _time_catch_up(path, local, tip)
    gc.unfreeze()
    del local
    gc.collect()
    store = Store(path)
    store.open()
    _restore_pointer(store, saved)
    store.close()
    port = _free_port()
    server = subprocess.Popen([
        sys.executable, str(Path(__file__).parent / "chain_server.py"),
        "--port", str(port), "--blocks", str(tip + 1), "--txs", str(block_txs), "--tip", str(tip),
    ])  # fmt: skip
    try:
        client = BitcoindClient(BitcoindConfig(port=port, user="bench", password="bench"))
        deadline = time.monotonic() + 30
        while True:
            try:
                client.get_best_block_hash()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        fetched_s = _time_catch_up(path, client, tip)
    finally:
        server.terminate()
        server.wait(10)
    store = Store(path)
    store.open()
    _restore_pointer(store, saved)
    store.close()
    return {"blocks": blocks, "pure_blocks_per_s": blocks / pure_s, "rpc_blocks_per_s": blocks / fetched_s}


# -- driver ---------------------------------------------------------------------------------------------


def _in_subprocess(*args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _db_for(size: int, block_txs: int, workdir: Path | None, tmp: Path) -> Path:
    """The filled database for ``size`` (filled now unless ``workdir`` holds one)."""
    base = workdir if workdir is not None else tmp
    path = base / f"db-{size}"
    marker = base / f"db-{size}.filled"
    if workdir is None or not marker.exists():
        shutil.rmtree(path, ignore_errors=True)
        p = _in_subprocess("--prepare", str(path), "--n", str(size), "--block-txs", str(block_txs))
        marker.write_text(json.dumps(p))
    filled: dict[str, float] = json.loads(marker.read_text())
    print(f"  filled {size} appointments in {filled['fill_s']:.0f} s", flush=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", default="10000,1000000,10000000")
    parser.add_argument("--block-txs", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--catch-up-size", type=int, default=1_000_000, help="0: no catch-up")
    parser.add_argument("--catch-up-blocks", type=int, default=500)
    parser.add_argument("--workdir", type=Path, default=None, help="keep (and reuse) filled databases here")
    parser.add_argument("--prepare", help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--catch-up", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        print(json.dumps(prepare(Path(args.prepare), args.n, args.block_txs)))
        return
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.n, args.block_txs, args.runs)))
        return
    if args.catch_up:
        print(json.dumps(catch_up(Path(args.catch_up), args.block_txs, args.catch_up_blocks)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"block of {args.block_txs} txs ({2 * args.block_txs} locator lookups), median of {args.runs} "
          f"runs; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
    rows: dict[int, dict[str, float]] = {}
    catch: dict[str, float] | None = None
    with tempfile.TemporaryDirectory(prefix="teos-bench-") as tmp:
        for size in sizes:
            path = _db_for(size, args.block_txs, args.workdir, Path(tmp))
            common = ["--n", str(size), "--block-txs", str(args.block_txs), "--runs", str(args.runs)]
            rows[size] = r = _in_subprocess("--measure", str(path), *common)
            print(f"  {size}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.items() if k != "appointments"),
                  flush=True)  # fmt: skip
            if size == args.catch_up_size:
                catch = _in_subprocess("--catch-up", str(path), "--block-txs", str(args.block_txs),
                                       "--catch-up-blocks", str(args.catch_up_blocks))  # fmt: skip
            if args.workdir is None:
                shutil.rmtree(path, ignore_errors=True)
    print_table(rows, catch, args.block_txs)


def print_table(rows: dict[int, dict[str, float]], catch: dict[str, float] | None, block_txs: int) -> None:
    print()
    print(f"{'appointments':>12} {'block ms':>9} {'10 breaches ms':>15} {'towerinfo ms':>13} "
          f"{'/metrics ms':>12} {'restart s':>10} {'anon RSS MB':>12} {'(after) MB':>11} {'disk B/appt':>12} "
          f"{'over blob B':>12}")
    for size, r in rows.items():
        print(f"{size:>12} {r['block_no_match_ms']:>9.1f} {r['block_10_breaches_ms']:>15.1f} "
              f"{r['towerinfo_ms']:>13.1f} {r['metrics_ms']:>12.1f} {r['restart_ready_s']:>10.3f} "
              f"{r['rss_anon_ready_mb']:>12.1f} {r['rss_anon_after_mb']:>11.1f} "
              f"{r['disk_bytes_per_appointment']:>12.0f} {r['disk_over_blob_bytes']:>12.0f}")  # fmt: skip
    smallest = min(rows)
    for size in sorted(rows):
        if size == smallest:
            continue
        base = rows[smallest]["block_no_match_ms"]
        r = rows[size]
        print(f"block at {size} / at {smallest}: {r['block_no_match_ms'] / base:.2f} (goal <= 1.5); "
              f"10 breaches / no breach at {size}: "
              f"{r['block_10_breaches_ms'] / r['block_no_match_ms']:.2f} (goal <= 1.5)")  # fmt: skip
    if catch is not None:
        ratio = catch["pure_blocks_per_s"] / catch["rpc_blocks_per_s"]
        print(f"catch-up over {catch['blocks']:.0f} blocks of {block_txs} txs: "
              f"{catch['rpc_blocks_per_s']:.1f} blocks/s fetching over RPC, "
              f"{catch['pure_blocks_per_s']:.1f} blocks/s processing only: {ratio:.2f}x (goal <= 1.5)")


if __name__ == "__main__":
    main()
