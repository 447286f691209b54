"""Gatekeeper unit tests: real LevelDB in tmp_path, a fake ChainView."""

from __future__ import annotations

import os

import pytest

from common.errors import ErrorKind, TeosError
from common.types import BlockHash, Dialect, Txid
from teos.gatekeeper import Gatekeeper, GatekeeperConfig
from teos.storage import keys
from teos.storage.codec import AppointmentRecord, UserRecord
from teos.storage.index import USERS, LocatorIndex
from teos.storage.store import Batch, Store
from teos.storage.watched import delete_watched, find_watched, held, usernum_of
from tests.support.users import Client, FakeChainView, make_record, random_locator, trigger

BLOCK = BlockHash(bytes(32))


def index_entries(store: Store, user: Client, usernum: int | None = None) -> int:
    """The user's ``h|`` entries (by its number: pass it once the user is deleted)."""
    usernum = usernum if usernum is not None else usernum_of(store, user.user_id)
    return 0 if usernum is None else len(held(store, usernum))


def watched(store: Store, record: AppointmentRecord) -> bool:
    return find_watched(store, record.user_id, record.locator) is not None


def expiry_keys(store: Store) -> list[tuple[int, bytes]]:
    return [(h, u.raw) for h, u in (keys.parse_expiry(k) for k, _ in store.iterate(keys.EXPIRY))]


# -- registration ---------------------------------------------------------------------------------


def test_first_registration_starts_at_tip(gatekeeper: Gatekeeper, store: Store, chain: FakeChainView) -> None:
    alice = Client.new()
    user = gatekeeper.register(alice.user_id, Dialect.RUST)
    assert user == UserRecord(alice.user_id, Dialect.RUST, 100, 100, 1100)
    assert gatekeeper.get_user(alice.user_id) == user
    assert expiry_keys(store) == [(1106, alice.user_id.raw)]


def test_top_up_adds_slots_and_extends_from_old_expiry(
    gatekeeper: Gatekeeper, store: Store, chain: FakeChainView
) -> None:
    alice = Client.new()
    gatekeeper.register(alice.user_id, Dialect.PYTHON)
    chain.tip_height = 150
    user = gatekeeper.register(alice.user_id, Dialect.PYTHON)
    assert (user.available_slots, user.subscription_start, user.subscription_expiry) == (200, 100, 2100)
    assert expiry_keys(store) == [(2106, alice.user_id.raw)]  # the old deletion entry moved


def test_top_up_after_expiry_extends_from_tip(gatekeeper: Gatekeeper, chain: FakeChainView) -> None:
    alice = Client.new()
    gatekeeper.register(alice.user_id, Dialect.PYTHON)
    chain.tip_height = 1103  # expired, not yet deleted
    user = gatekeeper.register(alice.user_id, Dialect.PYTHON)
    assert (user.subscription_start, user.subscription_expiry) == (100, 2103)


def test_registration_in_other_dialect_is_refused(gatekeeper: Gatekeeper) -> None:
    alice = Client.new()
    gatekeeper.register(alice.user_id, Dialect.RUST)
    with pytest.raises(TeosError) as e:
        gatekeeper.register(alice.user_id, Dialect.PYTHON)
    assert e.value.kind is ErrorKind.REGISTRATION_WRONG_FIELD_FORMAT
    assert gatekeeper.get_user(alice.user_id).available_slots == 100  # type: ignore[union-attr]


def test_slot_overflow_is_resource_exhausted(store: Store, chain: FakeChainView, index: LocatorIndex) -> None:
    gk = Gatekeeper(store, GatekeeperConfig(subscription_slots=2**31), chain, index)
    gk.start()
    alice = Client.new()
    gk.register(alice.user_id, Dialect.RUST)
    with pytest.raises(TeosError) as e:
        gk.register(alice.user_id, Dialect.RUST)
    assert e.value.kind is ErrorKind.RESOURCE_EXHAUSTED
    assert gk.get_user(alice.user_id).available_slots == 2**31  # type: ignore[union-attr]


# -- authentication -------------------------------------------------------------------------------


def test_authenticate_recovers_registered_user(gatekeeper: Gatekeeper) -> None:
    alice, mallory = Client.new(), Client.new()
    gatekeeper.register(alice.user_id, Dialect.PYTHON)
    assert gatekeeper.authenticate(b"hello", alice.sign(b"hello")).user_id == alice.user_id  # type: ignore[union-attr]
    assert gatekeeper.authenticate(b"hello", alice.sign(b"other")) is None  # recovers someone else
    assert gatekeeper.authenticate(b"hello", mallory.sign(b"hello")) is None  # not registered
    assert gatekeeper.authenticate(b"hello", "not a signature") is None


# -- slot accounting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first_len", "second_len", "slots_after"),
    [
        (100, 100, 99),  # same size: no charge
        (100, 2048, 99),  # still one slot
        (100, 2049, 98),  # one more slot
        (4097, 10, 99),  # three slots down to one: two refunded
        (2048, 6144, 97),
    ],
)
def test_update_charges_or_refunds_the_difference(
    gatekeeper: Gatekeeper, store: Store, first_len: int, second_len: int, slots_after: int
) -> None:
    alice = Client.new()
    gatekeeper.register(alice.user_id, Dialect.PYTHON)
    locator = random_locator()
    gatekeeper.add_appointment(make_record(alice.user_id, locator, first_len))
    user = gatekeeper.add_appointment(make_record(alice.user_id, locator, second_len))
    assert user.available_slots == slots_after
    assert index_entries(store, alice) == 1
    assert gatekeeper.n_appointments == 1


def test_not_enough_slots_stores_nothing(gatekeeper: Gatekeeper, store: Store) -> None:
    alice = Client.new()
    gatekeeper.register(alice.user_id, Dialect.PYTHON)
    record = make_record(alice.user_id, random_locator(), 101 * 2048)
    with pytest.raises(TeosError) as e:
        gatekeeper.add_appointment(record)
    assert e.value.kind is ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION
    assert not watched(store, record)
    assert gatekeeper.get_user(alice.user_id).available_slots == 100  # type: ignore[union-attr]
    assert gatekeeper.n_appointments == 0


def test_exactly_all_slots_can_be_spent(gatekeeper: Gatekeeper) -> None:
    alice = Client.new()
    gatekeeper.register(alice.user_id, Dialect.PYTHON)
    user = gatekeeper.add_appointment(make_record(alice.user_id, random_locator(), 100 * 2048))
    assert user.available_slots == 0


def test_unknown_user_cannot_add(gatekeeper: Gatekeeper) -> None:
    with pytest.raises(TeosError) as e:
        gatekeeper.add_appointment(make_record(Client.new().user_id, random_locator(), 10))
    assert e.value.kind is ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION


def test_expired_user_cannot_add(gatekeeper: Gatekeeper, chain: FakeChainView) -> None:
    alice = Client.new()
    gatekeeper.register(alice.user_id, Dialect.PYTHON)
    chain.tip_height = 1100  # tip == expiry: still active
    gatekeeper.add_appointment(make_record(alice.user_id, random_locator(), 10))
    chain.tip_height = 1101
    with pytest.raises(TeosError) as e:
        gatekeeper.add_appointment(make_record(alice.user_id, random_locator(), 10))
    assert e.value.kind is ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION
    assert "expired" in e.value.message


def test_triggered_appointment_cannot_be_updated(
    gatekeeper: Gatekeeper, store: Store, index: LocatorIndex
) -> None:
    alice = Client.new()
    gatekeeper.register(alice.user_id, Dialect.PYTHON)
    record = make_record(alice.user_id, random_locator(), 10)
    gatekeeper.add_appointment(record)
    trigger(store, index, record, Txid(os.urandom(32)), b"\x02" * 60)
    with pytest.raises(TeosError) as e:
        gatekeeper.add_appointment(make_record(alice.user_id, record.locator, 10))
    assert e.value.kind is ErrorKind.ALREADY_TRIGGERED
    assert gatekeeper.get_user(alice.user_id).available_slots == 99  # type: ignore[union-attr]


def test_tracker_without_index_is_already_triggered(
    gatekeeper: Gatekeeper, store: Store, index: LocatorIndex
) -> None:
    """A user deleted and registered again cannot re-add an appointment whose penalty is still tracked."""
    alice = Client.new()
    gatekeeper.register(alice.user_id, Dialect.PYTHON)
    record = make_record(alice.user_id, random_locator(), 10)
    trigger(store, index, record, Txid(os.urandom(32)), b"\x02" * 60)
    with pytest.raises(TeosError) as e:
        gatekeeper.add_appointment(record)
    assert e.value.kind is ErrorKind.ALREADY_TRIGGERED


def test_max_appointments_refuses_new_but_not_updates(
    store: Store, chain: FakeChainView, index: LocatorIndex
) -> None:
    gk = Gatekeeper(store, GatekeeperConfig(subscription_slots=100, max_appointments=2), chain, index)
    gk.start()
    alice = Client.new()
    gk.register(alice.user_id, Dialect.PYTHON)
    first = make_record(alice.user_id, random_locator(), 10)
    gk.add_appointment(first)
    gk.add_appointment(make_record(alice.user_id, random_locator(), 10))
    with pytest.raises(TeosError) as e:
        gk.add_appointment(make_record(alice.user_id, random_locator(), 10))
    assert e.value.kind is ErrorKind.RESOURCE_EXHAUSTED
    assert gk.get_user(alice.user_id).available_slots == 98  # type: ignore[union-attr]
    gk.add_appointment(make_record(alice.user_id, first.locator, 3000))  # an update still fits
    assert gk.n_appointments == 2


def test_counter_survives_restart(
    store: Store, config: GatekeeperConfig, chain: FakeChainView, index: LocatorIndex
) -> None:
    gk = Gatekeeper(store, config, chain, index)
    gk.start()
    alice = Client.new()
    gk.register(alice.user_id, Dialect.PYTHON)
    for _ in range(3):
        gk.add_appointment(make_record(alice.user_id, random_locator(), 10))
    index.stop(fold=False)  # as after a crash
    reloaded = LocatorIndex(store)
    reloaded.start()
    again = Gatekeeper(store, config, chain, reloaded)
    again.start()
    assert again.n_appointments == 3
    reloaded.stop()
    batch = Batch()
    for key in list(store.iterate_keys(keys.INDEX)):
        batch.delete(key)
    store.commit(batch)  # a database from before the index and its counters: counted once
    rebuilt_index = LocatorIndex(store)
    rebuilt_index.start()
    rebuilt = Gatekeeper(store, config, chain, rebuilt_index)
    rebuilt.start()
    assert rebuilt.n_appointments == 3 and rebuilt_index.count(USERS) == 1
    rebuilt_index.stop()


# -- expiry ---------------------------------------------------------------------------------------


def test_expired_user_deleted_at_expiry_plus_delta_keeping_trackers(
    gatekeeper: Gatekeeper, store: Store, chain: FakeChainView, index: LocatorIndex
) -> None:
    alice, bob = Client.new(), Client.new()
    gatekeeper.register(alice.user_id, Dialect.PYTHON)
    chain.tip_height = 500
    gatekeeper.register(bob.user_id, Dialect.PYTHON)  # expires at 1500
    watched = make_record(alice.user_id, random_locator(), 10)
    responded = make_record(alice.user_id, random_locator(), 10)
    gatekeeper.add_appointment(watched)
    gatekeeper.add_appointment(responded)
    gatekeeper.add_appointment(make_record(bob.user_id, random_locator(), 10))
    trigger(store, index, responded, Txid(os.urandom(32)), b"\x02" * 60)
    assert gatekeeper.n_appointments == 3

    alice_number = usernum_of(store, alice.user_id)
    gatekeeper.block_connected(BLOCK, 1105)  # expiry 1100 + delta 6 = 1106
    assert gatekeeper.get_user(alice.user_id) is not None
    gatekeeper.block_connected(BLOCK, 1106)
    assert gatekeeper.get_user(alice.user_id) is None
    assert index_entries(store, alice, alice_number) == 0
    assert not store.has_prefix(keys.appointments_by_locator(watched.locator))
    assert not store.has_prefix(keys.user_number(alice_number))  # type: ignore[arg-type]
    assert store.get(keys.tracker(responded.uuid)) is not None  # never a live tracker
    assert gatekeeper.get_user(bob.user_id) is not None
    assert gatekeeper.n_appointments == 1
    assert expiry_keys(store) == [(1506, bob.user_id.raw)]

    # Completing the tracker afterwards finds no user and refunds nothing; the engine batch still lands.
    batch = Batch()
    batch.delete(keys.tracker(responded.uuid))
    gatekeeper.release(batch, {alice.user_id: [(responded.locator, 1)]})
    assert store.get(keys.tracker(responded.uuid)) is None
    assert gatekeeper.get_user(alice.user_id) is None
    assert gatekeeper.n_appointments == 1


def test_expiry_catches_up_on_missed_blocks(gatekeeper: Gatekeeper, store: Store) -> None:
    alice = Client.new()
    gatekeeper.register(alice.user_id, Dialect.PYTHON)
    gatekeeper.block_connected(BLOCK, 5000)
    assert gatekeeper.get_user(alice.user_id) is None
    assert expiry_keys(store) == []


def test_top_up_before_deletion_saves_the_user(gatekeeper: Gatekeeper, chain: FakeChainView) -> None:
    alice = Client.new()
    gatekeeper.register(alice.user_id, Dialect.PYTHON)
    chain.tip_height = 1103
    gatekeeper.register(alice.user_id, Dialect.PYTHON)
    gatekeeper.block_connected(BLOCK, 1106)
    assert gatekeeper.get_user(alice.user_id) is not None


# -- release (SlotLedger) -------------------------------------------------------------------------


def test_release_refunds_once_and_commits_engine_batch(
    gatekeeper: Gatekeeper, store: Store, index: LocatorIndex
) -> None:
    alice = Client.new()
    gatekeeper.register(alice.user_id, Dialect.PYTHON)
    record = make_record(alice.user_id, random_locator(), 4097)  # 3 slots
    gatekeeper.add_appointment(record)
    trigger(store, index, record, Txid(os.urandom(32)), b"\x02" * 60)
    batch = Batch()
    batch.delete(keys.tracker(record.uuid))
    gatekeeper.release(batch, {alice.user_id: [(record.locator, 3)]})
    assert store.get(keys.tracker(record.uuid)) is None
    assert gatekeeper.get_user(alice.user_id).available_slots == 100  # type: ignore[union-attr]
    assert index_entries(store, alice) == 0
    assert gatekeeper.n_appointments == 0
    gatekeeper.release(Batch(), {alice.user_id: [(record.locator, 3)]})  # twice: nothing more
    assert gatekeeper.get_user(alice.user_id).available_slots == 100  # type: ignore[union-attr]
    assert gatekeeper.n_appointments == 0


def test_release_of_a_dropped_appointment_refunds_what_is_stored(
    gatekeeper: Gatekeeper, store: Store
) -> None:
    """The engine drops an invalid appointment it read at 1 slot while the user updated it to 3."""
    alice = Client.new()
    gatekeeper.register(alice.user_id, Dialect.PYTHON)
    record = make_record(alice.user_id, random_locator(), 10)
    gatekeeper.add_appointment(record)
    gatekeeper.add_appointment(make_record(alice.user_id, record.locator, 5000))  # the update lands first
    assert gatekeeper.get_user(alice.user_id).available_slots == 97  # type: ignore[union-attr]
    batch = Batch()
    usernum = usernum_of(store, alice.user_id)
    assert usernum is not None
    delete_watched(batch, record.locator, usernum, gatekeeper.index)  # the engine drops it
    gatekeeper.release(batch, {alice.user_id: [(record.locator, 1)]})
    assert gatekeeper.get_user(alice.user_id).available_slots == 100  # type: ignore[union-attr]
    assert not watched(store, record)
    assert gatekeeper.n_appointments == 0


def test_release_many_users_in_one_batch(gatekeeper: Gatekeeper, store: Store) -> None:
    users = [Client.new() for _ in range(5)]
    records = []
    for c in users:
        gatekeeper.register(c.user_id, Dialect.RUST)
        r = make_record(c.user_id, random_locator(), 10, Dialect.RUST)
        gatekeeper.add_appointment(r)
        records.append(r)
    gatekeeper.release(Batch(), {r.user_id: [(r.locator, 1)] for r in records})
    assert all(gatekeeper.get_user(c.user_id).available_slots == 100 for c in users)  # type: ignore[union-attr]
    assert gatekeeper.n_appointments == 0


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        GatekeeperConfig(subscription_slots=0)
    with pytest.raises(ValueError):
        GatekeeperConfig(expiry_delta=-1)
