"""The user side's test doubles and builders, shared by the Gatekeeper's, the service's and the API's tests:
a fake view of the chain (tip, reachability, locator cache), user key pairs, appointment records as the
service builds them, a breach as the engine records it, and the Gatekeeper fixtures."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

from common import crypto
from common.appointment import compute_uuid
from common.dialects import locator_from_txid
from common.types import Dialect, Locator, Txid, UserId
from teos.gatekeeper import Gatekeeper, GatekeeperConfig
from teos.storage import keys
from teos.storage.codec import AppointmentRecord, TrackerRecord
from teos.storage.index import TRACKERS, LocatorIndex
from teos.storage.store import Batch, Store
from teos.storage.watched import IndexJournal, delete_watched, usernum_of


@dataclass
class FakeChainView:
    """A ``teos.interfaces.ChainView`` whose tip, reachability and locator cache the test sets directly."""

    tip_height: int = 100
    bitcoind_reachable: bool = True
    cached: list[Txid] = field(default_factory=list)
    added: list[tuple[AppointmentRecord, Txid]] = field(default_factory=list)

    def add_breach(self, txid: Txid) -> None:
        self.cached.append(txid)

    def breach_in_cache(self, record: AppointmentRecord) -> Txid | None:
        for txid in self.cached:
            if locator_from_txid(txid, record.dialect) == record.locator:
                return txid
        return None

    def appointment_added(self, record: AppointmentRecord, dispute_txid: Txid) -> None:
        self.added.append((record, dispute_txid))


@dataclass(frozen=True)
class Client:
    """A user key pair."""

    secret_key: bytes

    @classmethod
    def new(cls) -> Client:
        return cls(crypto.generate_secret_key())

    @property
    def user_id(self) -> UserId:
        return crypto.public_key(self.secret_key)

    def sign(self, message: bytes) -> str:
        return crypto.sign(message, self.secret_key)


def random_locator() -> Locator:
    return Locator(os.urandom(16))


def make_record(
    user_id: UserId,
    locator: Locator,
    blob_len: int,
    dialect: Dialect = Dialect.PYTHON,
    start_block: int = 100,
    signature: str = "sig",
) -> AppointmentRecord:
    return AppointmentRecord(
        uuid=compute_uuid(locator, user_id),
        locator=locator,
        encrypted_blob=os.urandom(blob_len),
        to_self_delay=20,
        user_id=user_id,
        user_signature=signature,
        start_block=start_block,
        dialect=dialect,
    )


def trigger(
    store: Store, index: IndexJournal, record: AppointmentRecord, dispute_txid: Txid, penalty_rawtx: bytes
) -> TrackerRecord:
    """Does what the engine does on a breach: the appointment becomes a tracker (index entry kept)."""
    tracker = TrackerRecord(
        appointment=record,
        dispute_txid=dispute_txid,
        penalty_txid=Txid(crypto.sha256d(penalty_rawtx)),
        penalty_rawtx=penalty_rawtx,
        broadcast_height=record.start_block,
        confirmed_in=None,
        confirmed_height=0,
    )
    usernum = usernum_of(store, record.user_id)
    assert usernum is not None
    batch = Batch()
    delete_watched(batch, record.locator, usernum, index)
    batch.put(keys.tracker(record.uuid), tracker.encode())
    index.stage(batch, counts={TRACKERS: 1})
    store.commit(batch)
    return tracker




@pytest.fixture
def chain() -> FakeChainView:
    return FakeChainView()


@pytest.fixture
def config() -> GatekeeperConfig:
    return GatekeeperConfig(subscription_slots=100, subscription_duration=1000, expiry_delta=6)


@pytest.fixture
def gatekeeper(
    store: Store, config: GatekeeperConfig, chain: FakeChainView, index: LocatorIndex
) -> Gatekeeper:
    gk = Gatekeeper(store, config, chain, index)
    gk.start()
    return gk
