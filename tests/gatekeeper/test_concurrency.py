"""Concurrent requests against one Gatekeeper: slots and the tower-wide cap are never over-spent."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

from common.appointment import slots_for
from common.errors import ErrorKind, TeosError
from common.types import Dialect, Locator
from teos.gatekeeper import Gatekeeper, GatekeeperConfig
from teos.storage import keys
from teos.storage.index import APPOINTMENTS, LocatorIndex
from teos.storage.store import Store
from tests.support.users import Client, FakeChainView, make_record

THREADS, REQUESTS = 16, 50


def _gatekeeper(store: Store, index: LocatorIndex, **config: int) -> Gatekeeper:
    gk = Gatekeeper(store, GatekeeperConfig(**config), FakeChainView(), index)
    gk.start()
    return gk


def test_concurrent_adds_and_updates_of_one_user_match_the_model(store: Store, index: LocatorIndex) -> None:
    gk = _gatekeeper(store, index, subscription_slots=100_000)
    alice = Client.new()
    gk.register(alice.user_id, Dialect.PYTHON)
    # Thread t cycles through its own 10 locators; the last size sent per locator decides the final cost.
    plans = []
    for t in range(THREADS):
        rng = random.Random(t)
        sizes = [rng.choice([1, 2048, 2049, 5000]) for _ in range(REQUESTS)]
        plans.append([(Locator(bytes([t, i % 10]) * 8), size) for i, size in enumerate(sizes)])

    def run(plan: list[tuple[Locator, int]]) -> None:
        for locator, blob_len in plan:
            gk.add_appointment(make_record(alice.user_id, locator, blob_len))

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(run, plans))

    final = {locator: blob_len for plan in plans for locator, blob_len in plan}  # later entries win
    expected = 100_000 - sum(slots_for(n) for n in final.values())
    assert gk.get_user(alice.user_id).available_slots == expected  # type: ignore[union-attr]
    assert gk.n_appointments == len(final) == THREADS * 10
    assert sum(1 for _ in store.iterate(keys.USER_APPOINTMENT)) == len(final)
    again = _gatekeeper(store, index)
    assert again.n_appointments == len(final)


def test_racing_spenders_never_overspend(store: Store, index: LocatorIndex) -> None:
    gk = _gatekeeper(store, index, subscription_slots=100)
    alice = Client.new()
    gk.register(alice.user_id, Dialect.RUST)

    def run(t: int) -> tuple[int, int]:
        ok = refused = 0
        for i in range(REQUESTS):
            try:
                gk.add_appointment(make_record(alice.user_id, Locator(bytes([t, i]) * 8), 100, Dialect.RUST))
                ok += 1
            except TeosError as e:
                assert e.kind is ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION
                refused += 1
        return ok, refused

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(run, range(THREADS)))
    assert sum(ok for ok, _ in results) == 100
    assert sum(r for _, r in results) == THREADS * REQUESTS - 100
    assert gk.get_user(alice.user_id).available_slots == 0  # type: ignore[union-attr]
    assert len(gk.user_appointments(alice.user_id)) == 100


def test_racing_users_never_exceed_the_tower_cap(store: Store, index: LocatorIndex) -> None:
    gk = _gatekeeper(store, index, subscription_slots=1000, max_appointments=300)
    clients = [Client.new() for _ in range(THREADS)]
    for c in clients:
        gk.register(c.user_id, Dialect.PYTHON)

    def run(c: Client) -> int:
        ok = 0
        for i in range(REQUESTS):
            try:
                gk.add_appointment(make_record(c.user_id, Locator(bytes([i]) * 16), 10))
                ok += 1
            except TeosError as e:
                assert e.kind is ErrorKind.RESOURCE_EXHAUSTED
        return ok

    with ThreadPoolExecutor(THREADS) as pool:
        assert sum(pool.map(run, clients)) == 300
    assert gk.n_appointments == 300
    assert sum(1 for _ in store.iterate(keys.USER_APPOINTMENT)) == 300
    assert index.count(APPOINTMENTS) == 300 == len(index)
    index.stop(fold=False)
    reloaded = LocatorIndex(store)  # what a restart reads back from the journal
    reloaded.start()
    assert reloaded.count(APPOINTMENTS) == 300 == len(reloaded)
    reloaded.stop()
