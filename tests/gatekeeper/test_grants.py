"""Paid registrations in the Gatekeeper (real LevelDB): a grant is applied once whatever repeats or races
it, in one batch with its marker; it creates or extends the user like a registration, keeps the user's
dialect, caps the slots; the wrong dialect is refused before a payment is accepted; forgotten channels'
markers go."""

from __future__ import annotations

import hashlib
import threading

import pytest

from common.channel import ChannelId
from common.errors import ErrorKind, TeosError
from common.types import BlockHash, Dialect, Txid, UserId
from teos.gatekeeper import Gatekeeper, GatekeeperConfig
from teos.payments.ledger import GatekeeperLedger
from teos.payments.state import Grant
from teos.storage import keys
from teos.storage.index import USERS, LocatorIndex
from teos.storage.store import Store
from tests.support.users import Client, FakeChainView, make_record, random_locator

U32_MAX = 2**32 - 1
CHANNEL = ChannelId(Txid(hashlib.sha256(b"grant channel").digest()), 1)


def grant(user: UserId, nonce: int = 1, dialect: Dialect = Dialect.RUST, registrations: int = 2) -> Grant:
    return Grant(CHANNEL, nonce, user, dialect, registrations, registrations * 50, registrations * 300)


def expiry_keys(store: Store) -> list[tuple[int, UserId]]:
    return [keys.parse_expiry(k) for k, _ in store.iterate(keys.EXPIRY)]


def test_a_grant_creates_the_user_once(gatekeeper: Gatekeeper, store: Store) -> None:
    alice = Client.new().user_id
    user, now = gatekeeper.apply_grant(grant(alice))
    assert now and (user.dialect, user.available_slots) == (Dialect.RUST, 100)
    assert (user.subscription_start, user.subscription_expiry) == (100, 700)
    assert store.get(keys.grant(CHANNEL.raw, 1)) == b""
    assert expiry_keys(store) == [(706, alice)]
    again, now = gatekeeper.apply_grant(grant(alice))
    assert not now and again == user == gatekeeper.get_user(alice)


def test_a_grant_extends_a_registered_user_and_keeps_its_dialect(
    gatekeeper: Gatekeeper, store: Store, chain: FakeChainView
) -> None:
    bob = Client.new().user_id
    gatekeeper.register(bob, Dialect.PYTHON)  # 100 slots, expiry 1100
    chain.tip_height = 1500  # expired, not yet deleted: extends from the tip
    user, _ = gatekeeper.apply_grant(grant(bob, dialect=Dialect.PYTHON))
    assert (user.dialect, user.available_slots, user.subscription_expiry) == (Dialect.PYTHON, 200, 2100)
    assert expiry_keys(store) == [(2106, bob)]  # the deletion entry moved
    user, _ = gatekeeper.apply_grant(grant(bob, nonce=2, dialect=Dialect.PYTHON, registrations=1))
    assert (user.available_slots, user.subscription_expiry) == (250, 2400)


def test_the_other_dialect_is_refused_by_check_grant(gatekeeper: Gatekeeper) -> None:
    carol = Client.new().user_id
    gatekeeper.register(carol, Dialect.RUST)
    gatekeeper.check_grant(grant(carol, dialect=Dialect.RUST))
    with pytest.raises(TeosError) as info:
        gatekeeper.check_grant(grant(carol, dialect=Dialect.PYTHON))
    assert info.value.kind is ErrorKind.REGISTRATION_WRONG_FIELD_FORMAT
    user, _ = gatekeeper.apply_grant(grant(carol, dialect=Dialect.PYTHON))  # applying never refuses
    assert user.dialect is Dialect.RUST


def test_slots_and_expiry_are_capped(gatekeeper: Gatekeeper) -> None:
    dave = Client.new().user_id
    huge = Grant(CHANNEL, 1, dave, Dialect.RUST, 1, U32_MAX, U32_MAX)
    user, _ = gatekeeper.apply_grant(huge)
    assert user.available_slots == U32_MAX
    assert user.subscription_expiry + gatekeeper.config.expiry_delta == U32_MAX
    user, now = gatekeeper.apply_grant(Grant(CHANNEL, 2, dave, Dialect.RUST, 1, 10, 10))
    assert now and user.available_slots == U32_MAX


def test_a_grant_whose_user_was_deleted_since_is_not_applied_again(
    gatekeeper: Gatekeeper, chain: FakeChainView
) -> None:
    erin = Client.new().user_id
    gatekeeper.apply_grant(grant(erin))
    chain.tip_height = 706
    gatekeeper.block_connected(BlockHash(bytes(32)), 706)  # deletion height: expiry 700 + delta 6
    assert gatekeeper.get_user(erin) is None
    user, now = gatekeeper.apply_grant(grant(erin))
    assert not now and user.available_slots == 0
    assert gatekeeper.get_user(erin) is None


def test_concurrent_applications_of_one_grant_apply_it_once(gatekeeper: Gatekeeper) -> None:
    frank = Client.new().user_id
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def apply() -> None:
        barrier.wait()
        _, now = gatekeeper.apply_grant(grant(frank))
        with lock:
            results.append(now)

    threads = [threading.Thread(target=apply) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [False] * 15 + [True]
    user = gatekeeper.get_user(frank)
    assert user is not None and user.available_slots == 100


def test_the_ledger_adapter_and_forgetting_a_channel(gatekeeper: Gatekeeper, store: Store) -> None:
    ledger = GatekeeperLedger(gatekeeper)
    gina = Client.new().user_id
    first = ledger.apply(grant(gina))
    assert first.applied_now and (first.available_slots, first.subscription_expiry) == (100, 700)
    assert first.user_id == gina and first.dialect is Dialect.RUST and first.subscription_start == 100
    assert not ledger.apply(grant(gina)).applied_now
    ledger.apply(grant(gina, nonce=2))
    assert len(list(store.iterate(keys.grants_of_channel(CHANNEL.raw)))) == 2
    gatekeeper.forget_grants(CHANNEL)
    assert list(store.iterate(keys.grants_of_channel(CHANNEL.raw))) == []
    user = gatekeeper.get_user(gina)
    assert user is not None and user.available_slots == 200  # the user keeps what was paid for


def test_paid_users_are_counted_like_registered_ones(
    gatekeeper: Gatekeeper, store: Store, chain: FakeChainView
) -> None:
    """The user counter (``maxusers``, ``m|n_users``) counts a user a grant creates, not a top-up, and is
    back to zero once that user's data is deleted: a grant never drives it below zero (which used to
    make the deletion's batch fail in the block's listener)."""
    grace = Client.new().user_id
    gatekeeper.apply_grant(grant(grace))
    gatekeeper.apply_grant(grant(grace, nonce=2))  # a top-up
    chain.tip_height = 1300
    gatekeeper.register(Client.new().user_id, Dialect.RUST)  # expires at 2300
    assert gatekeeper.n_users == 2
    assert gatekeeper.index.count(USERS) == 2  # the stored counter, kept in the batch of each change
    chain.tip_height = 1306
    gatekeeper.block_connected(BlockHash(bytes(32)), 1306)  # grace's deletion height: 700 + 600 + 6
    assert gatekeeper.get_user(grace) is None and gatekeeper.n_users == 1


@pytest.mark.parametrize("why", ["max_users", "reserve"])
def test_a_new_user_is_refused_before_its_payment_when_the_tower_takes_no_new_users(
    store: Store, chain: FakeChainView, index: LocatorIndex, why: str
) -> None:
    """As ``register`` would refuse it: at ``max_users`` users, or once the tower is in the reserve kept for
    established users. A user the tower already has may still pay (a top-up)."""
    extra = {"max_users": 1} if why == "max_users" else {"max_appointments": 10, "new_user_reserve": 50}
    gk = Gatekeeper(store, GatekeeperConfig(subscription_slots=100, **extra), chain, index)
    gk.start()
    known = Client.new()
    gk.apply_grant(grant(known.user_id))
    if why == "reserve":
        for _ in range(5):
            gk.add_appointment(make_record(known.user_id, random_locator(), 100))
    newcomer = Client.new().user_id
    with pytest.raises(TeosError) as info:
        gk.check_grant(grant(newcomer))
    assert info.value.kind is ErrorKind.RESOURCE_EXHAUSTED
    gk.check_grant(grant(known.user_id, nonce=2))
