"""Issue 13, F6/F8 against a running teosd: registrations limited per address (not behind a proxy), and a
flood of appointments from freshly registered keys stops short of a user registered before it."""

from __future__ import annotations

import http.client
import json
import os
from typing import Any

import pytest

from common import crypto
from common.appointment import Appointment
from common.types import Locator
from tests.daemon.conftest import TeosdFactory
from tests.support.bitcoind import BitcoindHandle
from tests.support.processes import Teosd
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

HEADERS = {"Content-Type": "application/json", "User-Agent": "python-requests/2.31.0"}


def post(teosd: Teosd, path: str, body: dict[str, Any], source: str = "127.0.0.1") -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", teosd.api_port, timeout=30, source_address=(source, 0))
    try:
        conn.request("POST", path, json.dumps(body), HEADERS)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def register(teosd: Teosd, secret: bytes, source: str = "127.0.0.1") -> tuple[int, Any]:
    return post(teosd, "/register", {"public_key": crypto.public_key(secret).hex()}, source)


def add(teosd: Teosd, secret: bytes) -> tuple[int, Any]:
    locator, blob = Locator(os.urandom(16)), os.urandom(100)
    signature = crypto.sign(Appointment(locator, blob, 20).serialize(), secret)
    body = {"appointment": {"locator": locator.hex(), "encrypted_blob": blob.hex(), "to_self_delay": 20},
            "signature": signature}
    return post(teosd, "/add_appointment", body)


def test_registrations_are_limited_per_address(bitcoind: BitcoindHandle, teosd_factory: TeosdFactory) -> None:
    teosd = teosd_factory(bitcoind, extra=["--registrationsperhour", "2"])
    key = crypto.generate_secret_key()
    assert register(teosd, key, "127.0.0.2")[0] == 200
    assert register(teosd, key, "127.0.0.2")[0] == 200  # a top-up counts
    status, body = register(teosd, crypto.generate_secret_key(), "127.0.0.2")
    assert (status, body["error_code"]) == (503, -35) and "retry in" in body["error"]
    assert register(teosd, crypto.generate_secret_key(), "127.0.0.3")[0] == 200


def test_behind_a_proxy_addresses_are_not_limited(
    bitcoind: BitcoindHandle, teosd_factory: TeosdFactory
) -> None:
    teosd = teosd_factory(bitcoind, extra=["--registrationsperhour", "2", "--behindproxy"])
    for _ in range(5):
        assert register(teosd, crypto.generate_secret_key())[0] == 200


def test_fresh_keys_cannot_fill_the_room_kept_for_established_users(
    bitcoind: BitcoindHandle, teosd_factory: TeosdFactory
) -> None:
    teosd = teosd_factory(bitcoind, extra=["--maxappointments", "20", "--newuserreserve", "50",
                                           "--newuserblocks", "2", "--registrationsperhour", "0"])
    legit = crypto.generate_secret_key()
    status, registration = register(teosd, legit)
    assert status == 200
    bitcoind.mine(3)
    wait_until(lambda: register(teosd, crypto.generate_secret_key())[1]["subscription_expiry"]
               >= registration["subscription_expiry"] + 3, timeout=30, message="the tower saw the blocks")

    accepted = 0
    for _ in range(20):  # the attack: a fresh key, ten appointments from it, another key ...
        attacker = crypto.generate_secret_key()
        if register(teosd, attacker)[0] != 200:
            break
        results = [add(teosd, attacker)[0] for _ in range(10)]
        accepted += results.count(200)
        if 503 in results:
            break
    assert accepted == 10  # the tower stopped new users at half of its 20
    status, body = register(teosd, crypto.generate_secret_key())
    assert (status, body["error_code"]) == (503, -35)
    for _ in range(10):  # the established user gets the other half
        assert add(teosd, legit)[0] == 200
    assert add(teosd, legit)[0] == 503  # and then the tower is full for everyone
