"""Slot arithmetic as a state machine: the Gatekeeper on a real LevelDB against a plain model.

Rules: register/top-up, add/update, the engine triggering an appointment and completing its tracker
(``release``), the engine dropping an invalid appointment, and blocks passing (expiry and deletion).
Invariants after every step: each user's record equals the model; slots never go negative; nothing leaks
(slots granted - slots available == the slots of the appointments the user holds); the tower-wide counter
equals the number of index entries; every counter of the locator index (users, appointments, trackers,
appointments under watch) equals a full walk of its keys, also after a restart (with or without a crash,
which leaves the journal unfolded).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from common.appointment import compute_uuid, slots_for
from common.errors import ErrorKind, TeosError
from common.types import BlockHash, Dialect, Locator, Txid, Uuid
from teos.gatekeeper import Gatekeeper, GatekeeperConfig
from teos.storage import keys
from teos.storage.index import APPOINTMENTS, TRACKERS, USERS, LocatorIndex
from teos.storage.store import Batch, Store
from teos.storage.watched import delete_watched, find_watched
from tests.support.users import Client, FakeChainView, make_record, trigger

SLOTS, DURATION, DELTA = 5, 20, 10
CLIENTS = [Client.new() for _ in range(3)]
LOCATORS = [Locator(bytes([i]) * 16) for i in range(4)]
BLOB_LENS = [1, 2048, 2049, 4096, 6000]


@dataclass
class ModelUser:
    slots: int
    start: int
    expiry: int
    granted: int
    watched: dict[Uuid, int] = field(default_factory=dict)  # uuid -> slots charged
    responded: dict[Uuid, int] = field(default_factory=dict)


class SlotMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="teos-slots-")
        self.store = Store(self.dir)
        self.store.open()
        self.chain = FakeChainView(tip_height=10)
        self.config = GatekeeperConfig(
            subscription_slots=SLOTS, subscription_duration=DURATION, expiry_delta=DELTA, max_appointments=8
        )
        self.index = LocatorIndex(self.store, fold_every=5)
        self.index.start()
        self.gk = Gatekeeper(self.store, self.config, self.chain, self.index)
        self.gk.start()
        self.users: dict[int, ModelUser] = {}
        self.trackers: dict[Uuid, tuple[int, int, Locator]] = {}  # uuid -> (client index, slots, locator)
        self.numbers: dict[int, int] = {}  # client index -> its last user number

    def teardown(self) -> None:
        self.index.stop()
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _n_index(self) -> int:
        return sum(len(u.watched) + len(u.responded) for u in self.users.values())

    @rule(c=st.integers(0, 2))
    def register(self, c: int) -> None:
        tip = self.chain.tip_height
        record = self.gk.register(CLIENTS[c].user_id, Dialect.PYTHON)
        assert record.usernum is not None
        self.numbers[c] = record.usernum
        m = self.users.get(c)
        if m is None:
            self.users[c] = m = ModelUser(SLOTS, tip, tip + DURATION, SLOTS)
        else:
            m.slots += SLOTS
            m.granted += SLOTS
            m.expiry = max(m.expiry, tip) + DURATION
        assert (record.available_slots, record.subscription_start, record.subscription_expiry) == (
            m.slots,
            m.start,
            m.expiry,
        )

    @rule(c=st.integers(0, 2), loc=st.integers(0, 3), blob_len=st.sampled_from(BLOB_LENS))
    def add(self, c: int, loc: int, blob_len: int) -> None:
        user_id = CLIENTS[c].user_id
        uuid = compute_uuid(LOCATORS[loc], user_id)
        m = self.users.get(c)
        expected: ErrorKind | None = None
        cost = slots_for(blob_len)
        if m is None or self.chain.tip_height > m.expiry:
            expected = ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION
        elif uuid in self.trackers or uuid in m.responded:
            expected = ErrorKind.ALREADY_TRIGGERED
        elif cost - m.watched.get(uuid, 0) > m.slots:
            expected = ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION
        elif uuid not in m.watched and self._n_index() >= self.config.max_appointments:
            expected = ErrorKind.RESOURCE_EXHAUSTED
        try:
            self.gk.add_appointment(make_record(user_id, LOCATORS[loc], blob_len))
        except TeosError as e:
            assert e.kind is expected, (e, expected)
            return
        assert expected is None and m is not None
        m.slots -= cost - m.watched.get(uuid, 0)
        m.watched[uuid] = cost

    @rule(c=st.integers(0, 2), loc=st.integers(0, 3))
    def engine_triggers(self, c: int, loc: int) -> None:
        m = self.users.get(c)
        uuid = compute_uuid(LOCATORS[loc], CLIENTS[c].user_id)
        record = find_watched(self.store, CLIENTS[c].user_id, LOCATORS[loc])
        if m is None or record is None:
            return
        trigger(self.store, self.index, record, Txid(os.urandom(32)), b"\x02" * 60)
        m.responded[uuid] = m.watched.pop(uuid)
        self.trackers[uuid] = (c, m.responded[uuid], LOCATORS[loc])

    @rule(c=st.integers(0, 2), loc=st.integers(0, 3), stale_slots=st.integers(0, 3))
    def engine_drops_invalid(self, c: int, loc: int, stale_slots: int) -> None:
        """The engine finds a watched blob invalid at a breach: it deletes it and releases its slots (with
        a figure that may be stale; the ledger refunds what the stored blob was charged)."""
        m = self.users.get(c)
        uuid = compute_uuid(LOCATORS[loc], CLIENTS[c].user_id)
        if m is None or uuid not in m.watched:
            return
        batch = Batch()
        delete_watched(batch, LOCATORS[loc], self.numbers[c], self.index)
        self.gk.release(batch, {CLIENTS[c].user_id: [(LOCATORS[loc], stale_slots)]})
        m.slots += m.watched.pop(uuid)

    @rule(data=st.data())
    def engine_completes(self, data: st.DataObject) -> None:
        if not self.trackers:
            return
        uuid = data.draw(st.sampled_from(sorted(self.trackers)))
        c, slots, locator = self.trackers.pop(uuid)
        batch = Batch()
        batch.delete(keys.tracker(uuid))
        self.index.stage(batch, counts={TRACKERS: -1})
        self.gk.release(batch, {CLIENTS[c].user_id: [(locator, slots)]})
        m = self.users.get(c)
        if m is not None and uuid in m.responded:
            m.slots += m.responded.pop(uuid)

    @rule(n=st.integers(1, 12))
    def blocks_pass(self, n: int) -> None:
        self.chain.tip_height += n
        tip = self.chain.tip_height
        self.gk.block_connected(BlockHash(os.urandom(32)), tip)
        for c, m in list(self.users.items()):
            if m.expiry + DELTA <= tip:
                del self.users[c]  # trackers live on in self.trackers

    @invariant()
    def matches_model(self) -> None:
        for c, client in enumerate(CLIENTS):
            stored = self.gk.get_user(client.user_id)
            m = self.users.get(c)
            if m is None:
                assert stored is None
                if c in self.numbers:  # deleted: nothing left under its number
                    assert not self.store.has_prefix(keys.user_appointments(self.numbers[c]))
                    assert self.store.get(keys.user_number(self.numbers[c])) is None
                continue
            assert stored is not None
            assert stored.available_slots == m.slots >= 0
            assert stored.subscription_expiry == m.expiry
            held = sum(m.watched.values()) + sum(m.responded.values())
            assert m.granted - stored.available_slots == held  # nothing leaks
            indexed = {u for u, _ in self.gk.user_appointments(client.user_id)}
            assert indexed == set(m.watched) | set(m.responded)

    @rule(crash=st.booleans())
    def restart(self, crash: bool) -> None:
        """teosd stops (cleanly: the journal is folded; or killed: it is not) and starts again."""
        self.index.stop(fold=not crash)
        self.index = LocatorIndex(self.store, fold_every=5)
        self.index.start()
        self.gk = Gatekeeper(self.store, self.config, self.chain, self.index)
        self.gk.start()

    @invariant()
    def counter_matches_index(self) -> None:
        n = sum(1 for _ in self.store.iterate(keys.USER_APPOINTMENT))
        assert self.gk.n_appointments == n == self._n_index()

    @invariant()
    def counters_equal_a_full_walk(self) -> None:
        walk = {
            USERS: self.store.count(keys.USER),
            APPOINTMENTS: self.store.count(keys.USER_APPOINTMENT),
            TRACKERS: self.store.count(keys.TRACKER),
        }
        assert {name: self.index.count(name) for name in walk} == walk
        assert self.store.count(keys.USER_NUMBER) == walk[USERS]  # every user numbered, no number left over
        watched = [key[1:17] for key in self.store.iterate_keys(keys.APPOINTMENT)]
        assert sorted(self.index.fingerprints()) == sorted(self.index.fingerprint(loc) for loc in watched)


SlotMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestSlotMachine = SlotMachine.TestCase
