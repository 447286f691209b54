"""Issue 13, F7 against a running teosd: the locators of a user with many appointments arrive streamed
(chunked), in the one JSON object each client family expects."""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path

import pytest

from common import crypto
from common.appointment import compute_uuid
from common.types import Dialect, Locator
from teos.storage import keys
from teos.storage.codec import AppointmentRecord, UserRecord
from teos.storage.store import Batch, Store
from tests.daemon.conftest import TeosdFactory
from tests.support.bitcoind import BitcoindHandle
from tests.support.fakes import seed_user

pytestmark = pytest.mark.e2e

N = 5000  # ~175 KB of JSON: well over the 64 KiB from which answers are streamed


def populate(db: Path, tip: int, dialect: Dialect) -> tuple[bytes, list[str]]:
    """A user of ``dialect`` holding N appointments, written in teosd's layout before it starts."""
    secret = crypto.generate_secret_key()
    user_id = crypto.public_key(secret)
    store = Store(db)
    store.open()
    try:
        batch = Batch()
        batch.put(keys.META_NETWORK, b"regtest")
        store.commit(batch)
        records = []
        for _ in range(N):
            locator = Locator(os.urandom(16))
            records.append(AppointmentRecord(compute_uuid(locator, user_id), locator, os.urandom(100), 20,
                                             user_id, "sig", tip, dialect))  # fmt: skip
        user = seed_user(store, UserRecord(user_id, dialect, 100_000, tip, tip + 4320), records)
        batch = Batch()
        batch.put(keys.expiry(tip + 4326, user_id), b"")
        store.commit(batch)
        assert user.usernum is not None
        locators = [keys.locator_of_user_appointment_key(k).hex()
                    for k in store.iterate_keys(keys.user_appointments(user.usernum))]  # fmt: skip
    finally:
        store.close()
    return secret, locators


def test_a_big_subscription_is_streamed_whole_in_both_dialects(
    tmp_path: Path, bitcoind: BitcoindHandle, teosd_factory: TeosdFactory
) -> None:
    datadir = tmp_path / "teos"
    tip = int(bitcoind.rpc("getblockcount"))
    users = {d: populate(datadir / "regtest" / "db", tip, d) for d in (Dialect.PYTHON, Dialect.RUST)}
    teosd = teosd_factory(bitcoind, datadir=datadir)
    for dialect, (secret, locators) in users.items():
        conn = http.client.HTTPConnection("127.0.0.1", teosd.api_port, timeout=30)
        headers = {"Content-Type": "application/json"}
        if dialect is Dialect.PYTHON:
            headers["User-Agent"] = "python-requests/2.31.0"
        conn.request("POST", "/get_subscription_info",
                     json.dumps({"signature": crypto.sign(b"get subscription info", secret)}), headers)
        response = conn.getresponse()
        raw = response.read()
        conn.close()
        assert response.status == 200, raw[:200]
        assert response.getheader("Transfer-Encoding") == "chunked"
        body = json.loads(raw)
        field = "appointments" if dialect is Dialect.PYTHON else "locators"
        assert sorted(body) == sorted([field, "available_slots", "subscription_expiry"])
        assert body[field] == locators and body["available_slots"] == 100_000
