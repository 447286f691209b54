"""The locator index and the counters stay exact through everything the chain side and the users do:
appointments added and updated, breaches found (valid and invalid), trackers completed, disputes reorged
out, users expired and deleted, and restarts, clean or after a crash. After every step each counter equals
a full walk of its keys, and the index holds exactly the fingerprints of the ``a|`` entries."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from common import crypto
from common.appointment import compute_uuid
from common.dialects import locator_from_txid
from common.tx import Transaction
from common.types import Dialect, Txid, UserId
from teos.chain.tip import ChainTip
from teos.daemon import ChainSide, build_chain_side
from teos.gatekeeper import Gatekeeper, GatekeeperConfig
from teos.storage import keys
from teos.storage.codec import AppointmentRecord
from teos.storage.index import APPOINTMENTS, TRACKERS, USERS, LocatorIndex
from teos.storage.store import Store
from tests.support.fakes import FakeChain, quick_engine_config, random_tx
from tests.support.wait import wait_until

IRREVOCABLE = 3
DURATION = 30


class Tower:
    """Index, Gatekeeper and chain side over one store and a fake chain, restartable."""

    def __init__(self, store: Store, chain: FakeChain) -> None:
        self.store, self.chain = store, chain
        self.index: LocatorIndex | None = None
        self.gatekeeper: Gatekeeper | None = None
        self.side: ChainSide | None = None

    def start(self) -> None:
        tip = ChainTip()
        self.index = LocatorIndex(self.store, fold_every=7)
        self.index.start()
        policy = GatekeeperConfig(subscription_slots=50, subscription_duration=DURATION, expiry_delta=2)
        self.gatekeeper = Gatekeeper(self.store, policy, tip, self.index)
        self.gatekeeper.start()
        config = quick_engine_config(irrevocable_confirmations=IRREVOCABLE)
        self.side = build_chain_side(config, self.store, self.chain, tip, self.gatekeeper, self.index,
                                     [self.gatekeeper])  # fmt: skip
        self.side.start()

    def stop(self, crash: bool = False) -> None:
        assert self.side is not None and self.index is not None
        self.side.stop()
        self.index.stop(fold=not crash)
        self.side = None

    def mine(self, *txids: Txid, n: int = 1, mempool: bool = True) -> None:
        assert self.side is not None
        self.chain.mine(*txids, n=n, mempool=mempool)
        self.side.monitor.wake()
        wait_until(lambda: self.side is not None and self.side.engine.tip_height == self.chain.tip.height, 10)

    def add(
        self, secret: bytes, dialect: Dialect, blob: bytes | None = None
    ) -> tuple[AppointmentRecord, Transaction]:
        """An appointment of the user of ``secret`` (through the Gatekeeper), and its dispute."""
        assert self.gatekeeper is not None
        dispute, penalty = random_tx(), random_tx()
        user_id = crypto.public_key(secret)
        locator = locator_from_txid(dispute.txid, dialect)
        record = AppointmentRecord(
            compute_uuid(locator, user_id), locator,
            blob if blob is not None else crypto.encrypt(penalty.raw, dispute.txid, dialect), 20, user_id,
            "sig", self.chain.tip.height, dialect,
        )  # fmt: skip
        self.gatekeeper.add_appointment(record)
        return record, dispute

    def check(self) -> None:
        """Every counter equals a full walk; the index equals the fingerprints of the ``a|`` entries."""
        assert self.index is not None
        walk = {
            USERS: self.store.count(keys.USER),
            APPOINTMENTS: self.store.count(keys.USER_APPOINTMENT),
            TRACKERS: self.store.count(keys.TRACKER),
        }
        assert {name: self.index.count(name) for name in walk} == walk
        watched = [k[1:17] for k in self.store.iterate_keys(keys.APPOINTMENT)]
        assert sorted(self.index.fingerprints()) == sorted(self.index.fingerprint(loc) for loc in watched)
        assert len(self.index) == len(watched)


@pytest.fixture
def tower(store: Store) -> Iterator[Tower]:
    t = Tower(store, FakeChain())
    t.start()
    yield t
    if t.side is not None:
        t.stop()


def test_index_and_counters_through_blocks_reorgs_expiry_and_restarts(tower: Tower) -> None:
    secrets = [crypto.generate_secret_key() for _ in range(3)]
    users: list[UserId] = [crypto.public_key(s) for s in secrets]
    assert tower.gatekeeper is not None
    for user, dialect in zip(users, [Dialect.PYTHON, Dialect.RUST, Dialect.PYTHON], strict=True):
        tower.gatekeeper.register(user, dialect)
    tower.check()

    kept = [tower.add(secrets[0], Dialect.PYTHON) for _ in range(5)]
    breached = [tower.add(secrets[1], Dialect.RUST) for _ in range(3)]
    invalid = tower.add(secrets[2], Dialect.PYTHON, blob=os.urandom(300))
    updated, _ = kept[0]
    tower.gatekeeper.add_appointment(updated)  # an update of the same uuid: no new entry
    tower.check()

    # Breaches: three become trackers, the invalid one is dropped (its slots go back).
    disputes = [d.txid for _, d in breached] + [invalid[1].txid]
    tower.mine(*disputes, mempool=False)
    tower.check()
    assert tower.index is not None and tower.index.count(TRACKERS) == 3

    # One dispute reorged out: its appointment goes back under watch; then mined again.
    tower.chain.reorg(1)
    tower.chain.mempool.clear()
    tower.mine(n=2, mempool=False)
    tower.check()
    assert tower.index.count(TRACKERS) == 0
    tower.stop(crash=True)  # killed: the journal is replayed at the next start
    tower.start()
    tower.check()
    tower.mine(*disputes[:3], mempool=False)
    tower.check()

    # Penalties confirm and become irrevocable: trackers complete, slots go back.
    tower.mine(n=IRREVOCABLE + 1)
    tower.check()
    tower.stop()  # clean: the journal is folded
    tower.start()
    tower.check()

    # Subscriptions end: users and their appointments are deleted.
    tower.mine(n=DURATION + 5, mempool=False)
    tower.check()
    assert tower.index is not None
    assert tower.index.count(USERS) == 0 and len(tower.index) == 0
