"""Payments benchmark: what a payment and a refused one cost the tower, and the atomic store's CAS rate.

Usage: ``python bench/payments_bench.py [--payments 2000] [--threads 16]``

1. ``PaymentHandler.pay`` accepted, sequentially on one channel (both back-ends; the grant ledger and the
   chain are in-memory fakes, so this is the handler's own work: two signature checks, rebuilding the
   payment, one CAS);
2. the same refused at the request signature (a forged request: no bitcoind call, nothing written) and
   at the payment signature;
3. ``compare_and_swap`` on the LevelDB back-end (synced writes): one thread, then ``--threads`` threads on
   distinct keys (they share fsyncs through the store's group commit), then all on one key (serialised
   by its stripe).

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=16)
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
