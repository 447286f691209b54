"""Filling a real LevelDB through the documented key layout, and small helpers for the admin/CLI tests."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import make_server

from common import crypto
from common.appointment import compute_uuid
from common.types import BlockHash, Dialect, Locator, Txid, UserId
from teos.storage import keys
from teos.storage.codec import AppointmentRecord, TrackerRecord, encode_block_pointer
from teos.storage.index import APPOINTMENTS, TRACKERS, LocatorIndex
from teos.storage.store import Batch, Store
from teos.storage.watched import add_held, put_watched, usernum_of
from tests.support.fakes import register_user


def new_user_id() -> UserId:
    return crypto.public_key(crypto.generate_secret_key())


@dataclass
class FakeEngineStatus:
    """Stands in for ``Progress.status``: the test sets the heights and reachability."""

    reachable: bool = True
    tip: int = 120
    processed: int = 120
    block_hash: str | None = "11" * 32
    fail: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("engine not started")
        block = {"block_hash": self.block_hash, "height": self.processed}
        return {
            "bitcoind_reachable": self.reachable,
            "tip_height_seen": self.tip,
            "watcher": dict(block),
            "responder": dict(block),
            "n_trackers": 0,
            "catching_up": self.tip > self.processed,
            "blocks_behind": max(self.tip - self.processed, 0),
            **self.extra,
        }


@dataclass
class Filler:
    """Writes users, appointments and trackers the way the Gatekeeper/Watcher/Responder lay them out."""

    store: Store
    index: LocatorIndex

    def user(
        self, user_id: UserId | None = None, dialect: Dialect = Dialect.RUST, slots: int = 100
    ) -> UserId:
        uid = user_id or new_user_id()
        register_user(self.store, self.index, uid, dialect, slots, start=100, expiry=4420)
        return uid

    def _usernum(self, user_id: UserId) -> int:
        usernum = usernum_of(self.store, user_id)
        if usernum is None:  # the appointments of a user the test did not register: numbered now
            usernum = register_user(self.store, self.index, user_id, Dialect.RUST).usernum
        assert usernum is not None
        return usernum

    def appointment_record(self, user_id: UserId, locator: Locator | None = None) -> AppointmentRecord:
        loc = locator or Locator(os.urandom(16))
        return AppointmentRecord(uuid=compute_uuid(loc, user_id), locator=loc, encrypted_blob=os.urandom(100),
                                 to_self_delay=20, user_id=user_id, user_signature="d" * 104, start_block=110,
                                 dialect=Dialect.RUST)

    def appointments(
        self, user_id: UserId, n: int, locator: Locator | None = None
    ) -> list[AppointmentRecord]:
        records = [self.appointment_record(user_id, locator) for _ in range(n)]
        usernum = self._usernum(user_id)
        batch = Batch()
        for rec in records:
            put_watched(batch, rec, usernum, self.index, new=True)
            add_held(batch, usernum, rec.locator)
        self.index.stage(batch, counts={APPOINTMENTS: len(records)})
        self.store.commit(batch)
        return records

    def tracker(self, user_id: UserId, locator: Locator | None = None) -> TrackerRecord:
        rec = TrackerRecord(appointment=self.appointment_record(user_id, locator),
                            dispute_txid=Txid(os.urandom(32)), penalty_txid=Txid(os.urandom(32)),
                            penalty_rawtx=os.urandom(150), broadcast_height=118,
                            confirmed_in=BlockHash(os.urandom(32)), confirmed_height=119)
        usernum = self._usernum(user_id)
        batch = Batch()
        batch.put(keys.tracker(rec.uuid), rec.encode())
        add_held(batch, usernum, rec.locator)
        self.index.stage(batch, counts={TRACKERS: 1, APPOINTMENTS: 1})
        self.store.commit(batch)
        return rec

    def last_block(self, block_hash: BlockHash, height: int) -> None:
        batch = Batch()
        batch.put(keys.META_LAST_BLOCK, encode_block_pointer(block_hash, height))
        self.store.commit(batch)


@contextmanager
def serve(app: Any) -> Iterator[int]:
    """Serves a WSGI app on 127.0.0.1:<free port> in a thread; yields the port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class NoCounts:
    """An empty tower's counts (these tests bound the server, not what it reports)."""

    def count(self, name: str) -> int:
        return 0

    def __len__(self) -> int:
        return 0
