"""Migrating a database of key layout 1 (before user numbers) to the current one: a database written by
the previous teosd's own code (``tests/vectors/teosd-layout1.json``) is migrated, and the tower then reads
back everything it held (users, appointments byte for byte, the tracker), keeps its counters and index
exact, and goes on watching: a migrated appointment's breach is found and answered. A migration cut short
at any batch resumes to the same database; a second start finds nothing to do; a newer layout is refused;
entries of users deleted behind the tower's back are dropped and the index rebuilt."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common import crypto
from common.appointment import compute_uuid
from common.dialects import locator_from_txid
from common.types import Dialect, Locator, Txid, UserId
from teos.chain.tip import ChainTip
from teos.daemon import ChainSide, build_chain_side
from teos.gatekeeper import Gatekeeper, GatekeeperConfig
from teos.service import BEING_WATCHED, DISPUTE_RESPONDED, TowerCore
from teos.storage import keys, migrate
from teos.storage.codec import AppointmentRecord, UserRecord
from teos.storage.index import APPOINTMENTS, TRACKERS, USERS, LocatorIndex
from teos.storage.store import Batch, Store
from teos.storage.watched import get_watched, user_of_number
from tests.support.fakes import FakeChain, quick_engine_config, random_tx
from tests.support.wait import wait_until

VECTOR = Path(__file__).parents[1] / "vectors" / "teosd-layout1.json"
LEGACY_BLOCKS = 13  # the vector's chain: FakeChain's first 13 blocks (their hashes depend on height only)


def _vector() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTOR.read_text())
    return data


def _load(store: Store, entries: list[list[str]]) -> None:
    batch = Batch()
    for key, value in entries:
        batch.put(bytes.fromhex(key), bytes.fromhex(value))
    store.commit(batch)


def _put(store: Store, key: bytes, value: bytes | None) -> None:
    batch = Batch()
    if value is None:
        batch.delete(key)
    else:
        batch.put(key, value)
    store.commit(batch)


def _everything(store: Store) -> dict[bytes, bytes]:
    return dict(store.iterate(b""))


def _legacy(entries: list[list[str]], prefix: bytes) -> dict[bytes, bytes]:
    return {k: v for k, v in ((bytes.fromhex(k), bytes.fromhex(v)) for k, v in entries) if k[:1] == prefix}


@pytest.fixture
def legacy(store: Store) -> Store:
    _load(store, _vector()["entries"])
    return store


class Tower:
    """The parts that read the migrated database, as teosd builds them over it, on a chain that continues
    the one the vector was written on."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.chain = FakeChain(length=LEGACY_BLOCKS)
        self.tip = ChainTip()
        self.index = LocatorIndex(store)
        self.gatekeeper = Gatekeeper(store, GatekeeperConfig(expiry_delta=6), self.tip, self.index)
        config = quick_engine_config(irrevocable_confirmations=6)
        self.side: ChainSide = build_chain_side(config, store, self.chain, self.tip, self.gatekeeper,
                                                self.index, [self.gatekeeper])  # fmt: skip
        self.core = TowerCore(self.gatekeeper, self.tip, self.side.engine, store)

    def start(self) -> None:
        self.index.start()
        self.gatekeeper.start()
        self.side.start()
        wait_until(lambda: self.side.engine.tip_height == self.chain.tip.height, 10)

    def stop(self) -> None:
        self.side.stop()
        self.index.stop()

    def mine(self, *txids: Txid) -> None:
        self.chain.mine(*txids)
        self.side.monitor.wake()
        wait_until(lambda: self.side.engine.tip_height == self.chain.tip.height, 10)

    def check_counts(self) -> None:
        walk = {
            USERS: self.store.count(keys.USER),
            APPOINTMENTS: self.store.count(keys.USER_APPOINTMENT),
            TRACKERS: self.store.count(keys.TRACKER),
        }
        assert {name: self.index.count(name) for name in walk} == walk
        watched = [k[1:17] for k in self.store.iterate_keys(keys.APPOINTMENT)]
        assert sorted(self.index.fingerprints()) == sorted(self.index.fingerprint(loc) for loc in watched)


@pytest.fixture
def tower(legacy: Store) -> Iterator[Tower]:
    assert migrate.migrate(legacy)
    t = Tower(legacy)
    t.start()
    yield t
    t.stop()


def test_the_previous_teosds_database_reads_back_the_same(legacy: Store) -> None:
    vector = _vector()
    before = _everything(legacy)
    assert migrate.schema(legacy) == 1
    assert migrate.migrate(legacy)
    assert migrate.schema(legacy) == keys.SCHEMA

    after = _everything(legacy)
    assert not any(k[:1] in (b"a", b"i") for k in after)  # nothing of layout 1 is left
    assert {k: v for k, v in before.items() if k[:1] in (b"t", b"x", b"l")} == {
        k: v for k, v in after.items() if k[:1] in (b"t", b"x", b"l")
    }  # trackers, expiries untouched (the index deletes the markers when it is first built)

    users = {UserId(bytes.fromhex(h)): name for name, h in vector["users"].items()}
    numbers = set()
    for user_id in users:
        old = UserRecord.decode(before[keys.user(user_id)])
        new = UserRecord.decode(after[keys.user(user_id)])
        assert old.usernum is None and new.usernum is not None
        assert (new.user_id, new.dialect, new.available_slots, new.subscription_start,
                new.subscription_expiry) == (old.user_id, old.dialect, old.available_slots,
                                             old.subscription_start, old.subscription_expiry)  # fmt: skip
        assert user_of_number(legacy, new.usernum) == user_id
        numbers.add(new.usernum)
        held = {Locator(v) for k, v in before.items() if k[:1] == b"i" and k[1:34] == user_id.raw}
        moved = {keys.locator_of_user_appointment_key(k) for k in legacy.iterate_keys(
            keys.user_appointments(new.usernum))}  # fmt: skip
        assert moved == held and held
    assert numbers == set(range(len(users)))
    assert after[keys.META_NEXT_USERNUM] == len(users).to_bytes(8, "big")

    old_records = [AppointmentRecord.decode(v) for k, v in before.items() if k[:1] == b"a"]
    assert len(old_records) == 11
    for record in old_records:
        owner = UserRecord.decode(after[keys.user(record.user_id)])
        assert get_watched(legacy, record.locator, owner) == record  # every field, the signature's text too
    assert legacy.count(keys.APPOINTMENT) == len(old_records)


def test_the_migrated_tower_answers_users_and_keeps_watching(tower: Tower) -> None:
    vector = _vector()
    tower.check_counts()
    assert tower.store.get(keys.META_N_APPOINTMENTS) is None and tower.store.count(keys.LOCATOR_MARKER) == 0

    users = {name: UserId(bytes.fromhex(h)) for name, h in vector["users"].items()}
    notes = vector["appointments"]
    for name, user_id in users.items():
        info = tower.core.get_subscription_info(user_id)
        mine = {Locator(bytes.fromhex(n["locator"])) for n in notes if n["user"] == name}
        assert set(info.locators) == mine
        assert info.locators == sorted(info.locators)  # in locator order, as the h| keys give them

    breached = [n for n in notes if n["user"] == "bob"][-1]
    state = tower.core.get_appointment(users["bob"], Locator(bytes.fromhex(breached["locator"])))
    assert state.status == DISPUTE_RESPONDED and state.tracker is not None
    assert state.tracker.penalty_txid.hex() == breached["penalty_txid"]

    # one of alice's migrated appointments is breached now: found through the index, answered
    target = next(n for n in notes if n["user"] == "alice")
    locator = Locator(bytes.fromhex(target["locator"]))
    assert tower.core.get_appointment(users["alice"], locator).status == BEING_WATCHED
    tower.mine(Txid.from_hex(target["dispute_txid"]))
    wait_until(lambda: Txid.from_hex(target["penalty_txid"]) in tower.chain.sent, 10)
    assert tower.core.get_appointment(users["alice"], locator).status == DISPUTE_RESPONDED
    tower.check_counts()

    # an old user adds, a new user gets the next number
    secret = crypto.generate_secret_key()
    newcomer = crypto.public_key(secret)
    assert tower.gatekeeper.register(newcomer, Dialect.RUST).usernum == len(users)
    dispute = random_tx()
    for user_id, dialect in ((newcomer, Dialect.RUST), (users["carol"], Dialect.PYTHON)):
        loc = locator_from_txid(dispute.txid, dialect)
        record = AppointmentRecord(
            compute_uuid(loc, user_id), loc, os.urandom(100), 20, user_id, "sig", tower.chain.tip.height,
            dialect,
        )  # fmt: skip
        tower.gatekeeper.add_appointment(record)
        assert tower.core.get_appointment(user_id, loc).status == BEING_WATCHED
    tower.check_counts()


def test_a_migration_cut_short_at_any_batch_resumes_to_the_same_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = _vector()["entries"]
    monkeypatch.setattr(migrate, "CHUNK", 1)  # a commit every few appointments: many places to stop at
    reference = Store(tmp_path / "reference")
    reference.open()
    _load(reference, entries)
    commits = 0
    real_commit = Store.commit

    def counting(self: Store, batch: Batch, sync: bool = True) -> None:
        nonlocal commits
        commits += 1
        real_commit(self, batch, sync)

    monkeypatch.setattr(Store, "commit", counting)
    assert migrate.migrate(reference)
    total, expected = commits, _everything(reference)
    reference.close()
    assert total >= 6

    for stop_at in range(1, total):
        store = Store(tmp_path / f"cut{stop_at}")
        store.open()
        monkeypatch.setattr(Store, "commit", real_commit)
        _load(store, entries)
        monkeypatch.setattr(Store, "commit", _dying_after(stop_at, real_commit))
        with pytest.raises(KeyboardInterrupt):
            migrate.migrate(store)
        assert migrate.schema(store) == 1  # written last: the next start migrates again
        monkeypatch.setattr(Store, "commit", real_commit)
        assert migrate.migrate(store)
        assert _everything(store) == expected, f"cut after {stop_at} batches"
        store.close()


def _dying_after(n: int, commit: Callable[[Store, Batch, bool], None]) -> Callable[..., None]:
    """``Store.commit`` as a process that dies before writing its ``n+1``-th batch."""
    done = 0

    def dying(self: Store, batch: Batch, sync: bool = True) -> None:
        nonlocal done
        if done == n:
            raise KeyboardInterrupt("the process dies here")
        done += 1
        commit(self, batch, sync)

    return dying


def test_a_second_start_finds_nothing_to_do(legacy: Store) -> None:
    assert migrate.migrate(legacy)
    migrated = _everything(legacy)
    assert not migrate.migrate(legacy)
    assert _everything(legacy) == migrated


def test_a_new_database_is_written_at_the_current_layout(store: Store) -> None:
    assert migrate.migrate(store)
    assert migrate.schema(store) == keys.SCHEMA and not migrate.migrate(store)


def test_a_newer_layout_is_refused(store: Store) -> None:
    _put(store, keys.META_SCHEMA, bytes([keys.SCHEMA + 1]))
    with pytest.raises(migrate.MigrationError, match="newer"):
        migrate.migrate(store)
    _put(store, keys.META_SCHEMA, b"\x02\x00")
    with pytest.raises(migrate.MigrationError, match="unreadable"):
        migrate.migrate(store)


def test_entries_of_users_deleted_behind_the_towers_back_are_dropped_and_the_index_rebuilt(
    legacy: Store,
) -> None:
    vector = _vector()
    carol = UserId(bytes.fromhex(vector["users"]["carol"]))
    _put(legacy, keys.user(carol), None)
    stale = keys.INDEX + b"s" + bytes(2)
    _put(legacy, stale, b"an index of the old layout")
    assert migrate.migrate(legacy)
    assert legacy.get(stale) is None
    carols = {Locator(bytes.fromhex(n["locator"])) for n in vector["appointments"] if n["user"] == "carol"}
    alices = {Locator(bytes.fromhex(n["locator"])) for n in vector["appointments"] if n["user"] == "alice"}
    watched = [keys.parse_appointment(k)[0] for k in legacy.iterate_keys(keys.APPOINTMENT)]
    assert set(watched) & carols == carols & alices  # the locator carol shared with alice: alice's only
    assert legacy.count(keys.APPOINTMENT) == 11 - 2

    tower = Tower(legacy)
    tower.start()
    try:
        tower.check_counts()
        assert tower.index.count(USERS) == 2
    finally:
        tower.stop()
