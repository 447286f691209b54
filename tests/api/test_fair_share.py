"""Issue 13, F6/F8: when registration is free, no one key, and no flood of new keys, takes the tower.

Before: each registration added 10,000 slots, so appointments from freshly registered keys filled
``--maxappointments 500`` in 8 s, and every legitimate add_appointment then got 503; 8 threads
registered 23,000 users in 30 s with no limit at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from common.errors import ErrorKind, TeosError
from common.types import BlockHash, Dialect, Txid
from teos.gatekeeper import Gatekeeper, GatekeeperConfig
from teos.storage import keys
from teos.storage.index import USERS, LocatorIndex
from teos.storage.store import Batch, Store
from tests.support.users import Client, FakeChainView, make_record, random_locator, trigger


def exhausted(call, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(TeosError) as e:
        call(*args)
    assert e.value.kind is ErrorKind.RESOURCE_EXHAUSTED
    return e.value.message


@pytest.fixture
def index(store: Store) -> Iterator[LocatorIndex]:
    idx = LocatorIndex(store)
    idx.start()
    yield idx
    idx.stop()


def gatekeeper(store: Store, chain: FakeChainView, index: LocatorIndex, **config: object) -> Gatekeeper:
    gk = Gatekeeper(store, GatekeeperConfig(subscription_slots=1000, **config), chain, index)  # type: ignore[arg-type]
    gk.start()
    return gk


def add(gk: Gatekeeper, client: Client) -> None:
    gk.add_appointment(make_record(client.user_id, random_locator(), 100))


def test_one_user_holds_at_most_its_cap_and_gets_room_back(
    store: Store, chain: FakeChainView, index: LocatorIndex
) -> None:
    gk = gatekeeper(store, chain, index, max_appointments_per_user=3)
    alice, bob = Client.new(), Client.new()
    gk.register(alice.user_id, Dialect.PYTHON)
    gk.register(bob.user_id, Dialect.PYTHON)
    records = [make_record(alice.user_id, random_locator(), 100) for _ in range(3)]
    for record in records:
        gk.add_appointment(record)
    assert "most appointments the tower allows one user (3)" in exhausted(add, gk, alice)
    gk.add_appointment(make_record(alice.user_id, records[0].locator, 300))  # an update is not a new one
    add(gk, bob)  # others are not affected
    assert gk.user_count(alice.user_id) == 3
    # A completed tracker gives its room back (with its slots).
    trigger(store, index, records[1], Txid(os.urandom(32)), b"\x02" * 60)
    gk.release(Batch(), {alice.user_id: [(records[1].locator, 1)]})
    assert gk.user_count(alice.user_id) == 2
    add(gk, alice)


def test_the_count_of_a_database_from_before_it_is_rebuilt_from_the_index(
    store: Store, chain: FakeChainView, index: LocatorIndex
) -> None:
    gk = gatekeeper(store, chain, index, max_appointments_per_user=2)
    alice = Client.new()
    gk.register(alice.user_id, Dialect.RUST)
    add(gk, alice)
    batch = Batch()
    batch.delete(keys.user_count(alice.user_id))  # as an older teosd left it
    store.commit(batch)
    assert gk.user_count(alice.user_id) == 1
    add(gk, alice)
    assert store.get(keys.user_count(alice.user_id)) == (2).to_bytes(4, "big")
    exhausted(add, gk, alice)


def test_users_are_capped_but_top_ups_are_not(
    store: Store, chain: FakeChainView, index: LocatorIndex
) -> None:
    gk = gatekeeper(store, chain, index, max_users=2, subscription_duration=10, expiry_delta=0)
    alice, bob, carol = Client.new(), Client.new(), Client.new()
    gk.register(alice.user_id, Dialect.RUST)
    gk.register(bob.user_id, Dialect.RUST)
    assert "user limit" in exhausted(gk.register, carol.user_id, Dialect.RUST)
    gk.register(alice.user_id, Dialect.RUST)  # a top-up
    assert gk.n_users == 2 and index.count(USERS) == 2
    # bob expires and is deleted: room for carol.
    gk.block_connected(BlockHash(bytes(32)), chain.tip_height + 10)
    assert gk.get_user(bob.user_id) is None and gk.n_users == 1
    assert store.get(keys.user_count(bob.user_id)) is None
    gk.register(carol.user_id, Dialect.RUST)
    # The count survives a restart of the index (it is one of its counters).
    index.stop()
    again = LocatorIndex(store)
    again.start()
    assert gatekeeper(store, chain, again).n_users == 2
    again.stop()
    index.start()


def test_a_flood_of_new_users_stops_short_of_established_ones(
    store: Store, chain: FakeChainView, index: LocatorIndex
) -> None:
    """max 50 appointments, 20% reserve: from 40 on only users older than 6 blocks may add, and nobody
    new may register; the established user still gets the last 10."""
    gk = gatekeeper(store, chain, index, max_appointments=50, new_user_reserve=20, new_user_blocks=6,
                    max_appointments_per_user=1000)
    legit = Client.new()
    chain.tip_height = 100
    gk.register(legit.user_id, Dialect.RUST)
    chain.tip_height = 106  # legit is established now
    attackers = [Client.new() for _ in range(4)]
    for attacker in attackers:
        gk.register(attacker.user_id, Dialect.PYTHON)
    for i in range(40):
        add(gk, attackers[i % 4])
    assert "kept for users registered more than 6 blocks ago" in exhausted(add, gk, attackers[0])
    assert "not accepting new users" in exhausted(gk.register, Client.new().user_id, Dialect.PYTHON)
    gk.register(attackers[0].user_id, Dialect.PYTHON)  # existing users may still top up
    for _ in range(10):
        add(gk, legit)
    assert "storage limit" in exhausted(add, gk, legit)  # the hard cap holds for everyone
    # Once the attackers' keys are old enough they count as established (what a free tower cannot tell).
    chain.tip_height = 200
    exhausted(add, gk, attackers[0])  # the tower is full anyway


def test_by_default_the_gatekeeper_keeps_no_reserve(
    store: Store, chain: FakeChainView, index: LocatorIndex
) -> None:
    gk = gatekeeper(store, chain, index, max_appointments=5)
    newcomer = Client.new()
    gk.register(newcomer.user_id, Dialect.RUST)
    for _ in range(5):
        add(gk, newcomer)
    assert "storage limit" in exhausted(add, gk, newcomer)


@pytest.mark.parametrize("reserve", [-1, 100])
def test_reserve_must_be_a_percentage_below_100(reserve: int) -> None:
    with pytest.raises(ValueError):
        GatekeeperConfig(new_user_reserve=reserve)
