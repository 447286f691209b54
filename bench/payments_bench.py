"""Payments benchmark: what a payment and a refused one cost the tower, and the atomic store's CAS rate.

Usage: ``python bench/payments_bench.py [--payments 2000] [--threads 16]``

1. ``PaymentHandler.pay`` accepted, sequentially on one channel (both back-ends; the grant ledger and the
   chain are in-memory fakes, so this is the handler's own work: two signature checks, rebuilding the
   payment, one CAS);
2. the same refused at the request signature (a forged request: no bitcoind call, nothing written) and
   at the payment signature;
3. ``compare_and_swap`` on the LevelDB back-end (synced writes): one thread, then ``--threads`` threads on
   distinct keys (they share fsyncs through the store's group commit), then all on one key (serialised
   by its stripe);
4. what the claims add to each block on the engine thread (``ClaimRunner.block_connected``) with
   ``--channels`` paid channels far from expiry in LevelDB, a block of 4000 txids, and the same with
   ``--channels`` more channels past their expiry (the block is then read in full: ``getblock`` raw is
   not counted, only finding the spends in it), against ``common.tx.decode_block`` for scale.

Prints one JSON object of figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coincurve import PrivateKey

from common import crypto, script
from common.channel import ChannelId, ChannelParams
from common.channel_wire import PaymentError, make_open_request, make_pay_request
from common.types import Dialect, Txid, UserId
from teos.payments.chain import TxOutInfo
from teos.payments.config import PaymentConfig
from teos.payments.handler import GrantOutcome, PaymentHandler
from teos.payments.income import FixedPrice
from teos.payments.state import Grant
from teos.payments.store import ChannelStore
from teos.storage.atomic import AtomicStore, LevelDBAtomicStore, MemoryAtomicStore
from teos.storage.store import Store

PRICE = 1_000


def _key(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


class _Chain:
    def __init__(self, params: ChannelParams) -> None:
        self.out = TxOutInfo(params.funding_value, params.script_pubkey, 10)

    def get_tx_out(self, txid: Txid, vout: int) -> TxOutInfo | None:
        return self.out

    def tip_height(self) -> int:
        return 100


class _Ledger:
    def check(self, grant: Grant) -> None:
        return None

    def apply(self, grant: Grant) -> GrantOutcome:
        return GrantOutcome(grant.user_id, grant.dialect, grant.slots, 100, 100 + grant.duration, True)


def _handler(atomic: AtomicStore, n: int) -> tuple[PaymentHandler, ChannelParams, bytes]:
    user = _key("bench user")
    tower = PrivateKey(_key("bench tower")).public_key.format()
    change = script.p2wpkh(PrivateKey(_key("bench change")).public_key.format())
    params = ChannelParams(
        ChannelId(Txid(_key("bench funding")), 0),
        (n + 10) * PRICE,
        PrivateKey(user).public_key.format(),
        tower,
        5_000,
        change,
        2_000,
    )
    config = PaymentConfig(price=PRICE, min_funding_confirmations=1)
    handler = PaymentHandler(
        config, ChannelStore(atomic), _Chain(params), _Ledger(), FixedPrice(PRICE), tower, 10, 10
    )
    handler.open_channel(make_open_request(params, user))
    return handler, params, user


def bench_pay(atomic: AtomicStore, n: int) -> dict[str, float]:
    handler, params, user = _handler(atomic, n)
    uid = UserId(crypto.public_key(_key("bench user id")).raw)
    requests = [make_pay_request(params, i, i * PRICE, uid, Dialect.RUST, user) for i in range(1, n + 1)]
    start = time.perf_counter()
    for request in requests:
        handler.pay(request)
    accepted = time.perf_counter() - start
    nxt = make_pay_request(params, n + 1, (n + 1) * PRICE, uid, Dialect.RUST, user)
    forged = replace(nxt, signature=crypto.sign(b"forged", _key("mallory")))
    bad_payment = replace(nxt, payment_signature=requests[0].payment_signature)
    out = {"pay_accepted_per_s": n / accepted, "pay_accepted_ms": 1000 * accepted / n}
    for name, request in (("forged_request", forged), ("bad_payment_signature", bad_payment)):
        start = time.perf_counter()
        for _ in range(n):
            try:
                handler.pay(request)
            except PaymentError:
                pass
        out[f"{name}_refused_per_s"] = n / (time.perf_counter() - start)
    return out


def bench_cas(store: Store, n: int, threads: int) -> dict[str, float]:
    atomic = LevelDBAtomicStore(store)
    out: dict[str, float] = {}

    def run(keys_of_thread: list[bytes], per_thread: int) -> float:
        for k in set(keys_of_thread):
            atomic.put_if_absent(k, b"0")
        barrier = threading.Barrier(len(keys_of_thread))
        done = [0]
        lock = threading.Lock()

        def worker(key: bytes) -> None:
            barrier.wait()
            count = 0
            while count < per_thread:
                value = atomic.get(key)
                assert value is not None
                if atomic.compare_and_swap(key, value, str(int(value) + 1).encode()):
                    count += 1
            with lock:
                done[0] += count

        workers = [threading.Thread(target=worker, args=(k,)) for k in keys_of_thread]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return done[0] / (time.perf_counter() - start)

    out["cas_synced_1_thread_per_s"] = run([b"one"], n)
    out[f"cas_synced_{threads}_threads_distinct_keys_per_s"] = run(
        [f"k{i}".encode() for i in range(threads)], max(1, n // threads)
    )
    out[f"cas_synced_{threads}_threads_one_key_per_s"] = run([b"shared"] * threads, max(1, n // threads))
    return out


class _NoCarrier:
    def send(self, raw_tx: bytes, txid: Txid) -> object:
        raise AssertionError("nothing is due in this benchmark")


class _Blocks:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def block_hash(self, height: int) -> object:
        raise AssertionError("no catch-up in this benchmark")

    def block_txids(self, block_hash: object) -> list[Txid]:
        raise AssertionError("no catch-up in this benchmark")

    def raw_block(self, block_hash: object) -> bytes:
        return self.raw


def _big_block(n_tx: int) -> tuple[bytes, list[Txid]]:
    from common.tx import Block, BlockHeader, Transaction, TxIn, TxOut, merkle_root
    from common.types import BlockHash

    txs = []
    for i in range(n_tx):
        prev = Txid(_key(f"prev {i}"))
        witness = (bytes(72), bytes(33))
        txs.append(
            Transaction(2, (TxIn(prev, i % 4, b"", 0xFFFFFFFD, witness),),
                        (TxOut(10_000, bytes(22)), TxOut(20_000, bytes(34))), 0)
        )  # fmt: skip
    root = merkle_root([t.txid.raw for t in txs])
    block = Block(BlockHeader(0x20000000, BlockHash(bytes(32)), root, 0, 0x207FFFFF, 0), tuple(txs))
    return block.raw, [t.txid for t in txs]


def bench_runner(store: Store, channels: int) -> dict[str, float]:
    from common.tx import decode_block
    from common.types import BlockHash
    from teos.payments.claims import Claimer
    from teos.payments.runner import ClaimRunner
    from teos.payments.spends import spends_in_block
    from teos.payments.state import ChannelState
    from teos.payments.tower_key import TowerPaymentKey

    tower = TowerPaymentKey.from_tower_secret(_key("bench tower id"))
    user = PrivateKey(_key("bench user")).public_key.format()
    change = script.p2wpkh(user)
    cstore = ChannelStore(LevelDBAtomicStore(store))
    config = PaymentConfig(price=PRICE, min_funding_confirmations=1)
    raw, txids = _big_block(4000)
    runner = ClaimRunner(Claimer(config, cstore, tower), _NoCarrier(), _Blocks(raw))  # type: ignore[arg-type]
    out: dict[str, float] = {}

    def add(n: int, expiry: int, tag: str) -> None:
        for i in range(n):
            params = ChannelParams(
                ChannelId(Txid(_key(f"{tag} {i}")), 0), 100_000, user, tower.public_key, expiry, change, 2_000
            )
            cstore.create(ChannelState(params, opened_at=1, amount=PRICE))

    def per_block(height: int, rounds: int = 5) -> float:
        start = time.perf_counter()
        for k in range(rounds):
            runner.block_connected(BlockHash(_key(f"block {height} {k}")), height, txids)
        return 1000 * (time.perf_counter() - start) / rounds

    add(channels, 1_000_000, "far")
    out[f"block_ms_{channels}_channels_far_from_expiry"] = per_block(1000)
    wanted = {(Txid(_key(f"prev {i}")), i % 4): i for i in range(0, 4000, 400)}
    start = time.perf_counter()
    spends_in_block(raw, wanted)
    out["find_spends_in_4000_tx_block_ms"] = 1000 * (time.perf_counter() - start)
    start = time.perf_counter()
    decode_block(raw)
    out["decode_block_4000_tx_ms"] = 1000 * (time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--channels", type=int, default=1000)
    args = parser.parse_args()
    figures: dict[str, object] = {"payments": args.payments}
    figures["memory"] = bench_pay(MemoryAtomicStore(), args.payments)
    tmp = Path(tempfile.mkdtemp(prefix="payments-bench-"))
    try:
        store = Store(tmp / "db")
        store.open()
        try:
            figures["leveldb"] = bench_pay(LevelDBAtomicStore(store), args.payments)
            figures["leveldb_cas"] = bench_cas(store, args.payments, args.threads)
        finally:
            store.close()
        store = Store(tmp / "claims-db")
        store.open()
        try:
            figures["claims_per_block"] = bench_runner(store, args.channels)
        finally:
            store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
