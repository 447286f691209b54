"""16 threads paying on one channel, on both atomic back-ends: every accepted payment raised the amount by
what it paid for, nothing was accepted twice from one state, and no grant was applied twice."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.channel_wire import PaymentError, Refusal, make_open_request, make_pay_request
from common.types import Dialect
from teos.payments.config import PaymentConfig
from teos.payments.handler import PaymentHandler, PaymentResult
from teos.payments.income import FixedPrice
from teos.payments.store import ChannelStore
from teos.storage.atomic import AtomicStore, LevelDBAtomicStore, MemoryAtomicStore
from teos.storage.store import Store
from tests.payments.support import TOWER_KEY, USER_SECRET, FakeChain, FakeLedger, make_params, user_id

PRICE = 1_000
THREADS = 16
PER_THREAD = 3


@pytest.fixture(params=["memory", "leveldb"])
def atomic(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AtomicStore]:
    if request.param == "memory":
        yield MemoryAtomicStore()
        return
    store = Store(tmp_path / "db")
    store.open()
    try:
        yield LevelDBAtomicStore(store)
    finally:
        store.close()


def test_sixteen_threads_paying_on_one_channel(atomic: AtomicStore) -> None:
    params = make_params(value=1_000_000, expiry=1_100)
    chain = FakeChain(tip=100)
    chain.fund(params)
    ledger = FakeLedger(tip=100)
    config = PaymentConfig(price=PRICE, min_funding_confirmations=1)
    store = ChannelStore(atomic)
    handler = PaymentHandler(config, store, chain, ledger, FixedPrice(PRICE), TOWER_KEY, 10, 100)
    handler.open_channel(make_open_request(params, USER_SECRET))

    accepted: list[PaymentResult] = []
    conflicts = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def payer(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            done = 0
            while done < PER_THREAD:
                snap = store.get(params.channel_id)
                assert snap is not None
                state = snap.state
                request = make_pay_request(
                    params, state.nonce + 1, state.amount + PRICE, user_id(i), Dialect.RUST, USER_SECRET
                )
                try:
                    result = handler.pay(request)
                except PaymentError as e:
                    assert e.reason is Refusal.STALE_NONCE, e
                    with lock:
                        conflicts[0] += 1
                    continue
                with lock:
                    accepted.append(result)
                done += 1
        except BaseException as e:  # reported below; no thread dies silently
            errors.append(e)

    threads = [threading.Thread(target=payer, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive()
    assert not errors, errors

    total = THREADS * PER_THREAD
    final = store.get(params.channel_id)
    assert final is not None
    assert (final.state.nonce, final.state.amount, final.state.registrations) == (total, total * PRICE, total)
    # Each accepted payment is a distinct nonce, and each raised the amount by exactly what it paid for.
    by_nonce = sorted(accepted, key=lambda r: r.state.nonce)
    assert [r.state.nonce for r in by_nonce] == list(range(1, total + 1))
    assert [r.state.amount for r in by_nonce] == [n * PRICE for n in range(1, total + 1)]
    # No grant applied twice; every user got exactly its three payments' slots.
    assert len(ledger.applied) == total and set(ledger.applied.values()) == {1}
    for i in range(THREADS):
        assert ledger.users[user_id(i)].slots == PER_THREAD * 10
    print(f"accepted={total} conflicts={conflicts[0]}")
