"""The rust-teos dialect: shapes, statuses and codes its watchtower-client plugin expects."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from common import crypto, receipts
from common.appointment import Appointment
from common.dialects import locator_from_txid
from common.types import Dialect, Locator, Txid
from teos.api.public import guess_dialect
from teos.storage.watched import find_watched
from tests.api.support import Tower, appointment, penalty_transaction, signed_appointment
from tests.support.users import Client, trigger


@pytest.fixture
def carol(tower: Tower) -> Client:
    c = Client.new()
    tower.register(c, Dialect.RUST)
    return c


def test_user_agent_rule() -> None:
    assert guess_dialect(None) is Dialect.RUST
    assert guess_dialect("") is Dialect.RUST
    assert guess_dialect("reqwest/0.11.27") is Dialect.RUST
    assert guess_dialect("python-requests/2.31.0") is Dialect.PYTHON
    assert guess_dialect("curl/8.0") is Dialect.PYTHON


def test_register_and_top_up(tower: Tower) -> None:
    carol = Client.new()
    body = tower.register(carol, Dialect.RUST)
    assert body == {
        "user_id": carol.user_id.hex(),
        "available_slots": 100,
        "subscription_start": 11,
        "subscription_expiry": 4331,
        "subscription_signature": body["subscription_signature"],
    }
    receipt = receipts.registration_receipt(Dialect.RUST, carol.user_id, 100, 11, 4331)
    assert tower.signed_by_tower(receipt, body["subscription_signature"])
    tower.chain.tip_height = 20
    again = tower.register(carol, Dialect.RUST)  # start kept, expiry extended: the plugin accepts it
    assert (again["available_slots"], again["subscription_start"], again["subscription_expiry"]) == (
        200,
        11,
        8651,
    )


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, 1),
        ({"user_id": ""}, 400, 2),
        ({"user_id": 5}, 400, 3),
        ({"user_id": None}, 400, 3),
        ({"user_id": "abc"}, 400, 5),
        ({"user_id": "zz" * 33}, 400, 5),
        ({"user_id": "02" * 10}, 400, 4),
        ({"user_id": "04" + "ab" * 32}, 400, 5),
        ({"user_id": "02" + "ff" * 32}, 400, 5),  # not a point on the curve
        ({"user_id": "02" + "ab" * 32, "pad": "x" * 10}, 413, 6),  # over rust-teos's 87-byte limit
    ],
)
def test_register_refusals(tower: Tower, body: dict[str, Any], status: int, code: int) -> None:
    got_status, got = tower.post("/register", body, rust=True)
    assert (got_status, got["error_code"]) == (status, code), got


def test_not_json_and_not_object(tower: Tower) -> None:
    assert tower.post("/register", data="", content_type=None, rust=True)[1]["error_code"] == 6
    assert (
        tower.post("/register", data="[1]", content_type="application/json", rust=True)[1]["error_code"] == 6
    )
    # rust-teos parsed bodies whatever their Content-Type
    data = json.dumps({"user_id": Client.new().user_id.hex()})
    status, body = tower.post("/register", data=data, rust=True, content_type="text/plain")
    assert status == 200 and "subscription_start" in body


def test_add_and_get_appointment(tower: Tower, carol: Client) -> None:
    appt = appointment(blob=os.urandom(300))
    status, body = tower.add(carol, appt, rust=True)
    assert status == 200
    assert body == {"locator": appt.locator.hex(), "start_block": 11, "signature": body["signature"],
                    "available_slots": 99, "subscription_expiry": 4331}  # fmt: skip
    user_signature = carol.sign(appt.serialize())
    receipt = receipts.appointment_receipt(Dialect.RUST, user_signature, 11)
    assert receipt.startswith(user_signature.encode("ascii"))
    assert tower.signed_by_tower(receipt, body["signature"])

    status, body = tower.get(carol, appt.locator, rust=True)
    assert (status, body) == (200, {"appointment": appt.to_json(), "status": "being_watched"})
    status, body = tower.get(carol, Locator(b"\x01" * 16), rust=True)
    assert (status, body) == (404, {"error": "Appointment not found", "error_code": 36})
    status, body = tower.get(Client.new(), appt.locator, rust=True)
    assert (status, body["error_code"]) == (401, 7)

    status, body = tower.subscription_info(carol, rust=True)
    assert (status, body) == (200, {"available_slots": 99, "subscription_expiry": 4331,
                                    "locators": [appt.locator.hex()]})  # fmt: skip


def test_registered_user_is_answered_in_its_dialect_whatever_the_user_agent(
    tower: Tower, carol: Client
) -> None:
    status, body = tower.subscription_info(carol, rust=False)
    assert status == 200 and "locators" in body
    status, body = tower.add(carol, appointment(to_self_delay=25), rust=False)
    assert status == 200
    tower.chain.tip_height = 5000
    status, body = tower.add(carol, appointment(), rust=False)
    assert (status, body["error_code"]) == (401, 7)
    assert body["error"] == "Your subscription expired at 4331"


def test_responded_appointment_shows_the_tracker(tower: Tower, carol: Client) -> None:
    penalty = penalty_transaction(3)
    dispute = Txid(os.urandom(32))
    appt = Appointment(
        locator_from_txid(dispute, Dialect.RUST), crypto.encrypt(penalty.raw, dispute, Dialect.RUST), 20
    )
    assert tower.add(carol, appt, rust=True)[0] == 200
    watched = find_watched(tower.store, carol.user_id, appt.locator)
    assert watched is not None
    tracker = trigger(tower.store, tower.index, watched, dispute, penalty.raw)
    status, body = tower.get(carol, appt.locator, rust=True)
    assert (status, body) == (200, {"appointment": {"dispute_txid": dispute.hex(),
                                                    "penalty_txid": tracker.penalty_txid.hex(),
                                                    "penalty_rawtx": penalty.raw.hex()},
                                    "status": "dispute_responded"})  # fmt: skip
    status, body = tower.add(carol, appt, rust=True)
    assert (status, body["error_code"]) == (400, 35)


def test_breach_in_cache_uses_the_rust_byte_order(tower: Tower, carol: Client) -> None:
    penalty = penalty_transaction(4)
    dispute = Txid(os.urandom(32))
    tower.chain.add_breach(dispute)
    good = Appointment(
        locator_from_txid(dispute, Dialect.RUST), crypto.encrypt(penalty.raw, dispute, Dialect.RUST), 20
    )
    assert tower.add(carol, good, rust=True)[0] == 200
    assert len(tower.chain.added) == 1
    # Encrypted with the python key (display order): does not decrypt for a rust user.
    wrong = Appointment(good.locator, crypto.encrypt(penalty.raw, dispute, Dialect.PYTHON), 20)
    status, body = tower.add(carol, wrong, rust=True)
    assert (status, body["error_code"]) == (400, 5)


def _add_body(carol: Client, **overrides: Any) -> dict[str, Any]:
    body = signed_appointment(carol, appointment())
    body.update(overrides)
    return body


@pytest.mark.parametrize(
    ("mutate", "status", "code"),
    [
        (lambda b: b.pop("appointment"), 400, 1),
        (lambda b: b.pop("signature"), 400, 1),
        (lambda b: b.update(signature=""), 400, 2),
        (lambda b: b.update(signature="garbage"), 401, 7),
        (lambda b: b["appointment"].pop("locator"), 400, 1),
        (lambda b: b["appointment"].pop("to_self_delay"), 400, 1),
        (lambda b: b["appointment"].pop("encrypted_blob"), 400, 1),
        (lambda b: b["appointment"].update(locator=""), 400, 2),
        (lambda b: b["appointment"].update(locator="ab" * 15), 400, 4),
        (lambda b: b["appointment"].update(locator=7), 400, 3),
        (lambda b: b["appointment"].update(to_self_delay="20"), 400, 3),
        (lambda b: b["appointment"].update(to_self_delay=-1), 400, 33),
        (lambda b: b["appointment"].update(to_self_delay=2**32), 400, 34),
        (lambda b: b["appointment"].update(encrypted_blob="abc"), 400, 5),
        (lambda b: b["appointment"].update(encrypted_blob="ab" * 1100), 413, 6),  # body over 2048 bytes
    ],
)
def test_add_refusals(tower: Tower, carol: Client, mutate: Any, status: int, code: int) -> None:
    body = _add_body(carol)
    mutate(body)
    got_status, got = tower.post("/add_appointment", body, rust=True)
    assert (got_status, got["error_code"]) == (status, code), got
    assert tower.gatekeeper.get_user(carol.user_id).available_slots == 100  # type: ignore[union-attr]


def test_not_enough_slots_is_401(store: Any) -> None:
    tower = Tower.build(store, slots=1)
    carol = Client.new()
    tower.register(carol, Dialect.RUST)
    assert tower.add(carol, appointment(), rust=True)[0] == 200
    status, body = tower.add(carol, appointment(), rust=True)
    assert (status, body["error_code"]) == (401, 7)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"signature": "x"}, 400, 1),
        ({"locator": "", "signature": "x"}, 400, 2),
        ({"locator": "ab", "signature": "x"}, 400, 4),
        ({"locator": "zz" * 16, "signature": "x"}, 400, 5),
        ({"locator": "ab" * 16}, 400, 1),
        ({"locator": "ab" * 16, "signature": "x"}, 401, 7),
        ({"locator": "ab" * 16, "signature": "x" * 200}, 413, 6),
    ],
)
def test_get_appointment_refusals(tower: Tower, body: dict[str, Any], status: int, code: int) -> None:
    got_status, got = tower.post("/get_appointment", body, rust=True)
    assert (got_status, got["error_code"]) == (status, code), got


def test_subscription_info_refusals(tower: Tower) -> None:
    assert tower.post("/get_subscription_info", {}, rust=True)[1]["error_code"] == 1
    assert tower.post("/get_subscription_info", {"signature": ""}, rust=True)[1]["error_code"] == 2
    status, body = tower.subscription_info(Client.new(), rust=True)
    assert (status, body) == (401, {"error": "User not found. Have you registered?", "error_code": 7})


def test_ping(tower: Tower) -> None:
    resp = tower.app.test_client().get("/ping")
    assert (resp.status_code, resp.data) == (200, b"")


def test_bitcoind_unreachable(tower: Tower, carol: Client) -> None:
    tower.chain.bitcoind_reachable = False
    status, body = tower.add(carol, appointment(), rust=True)
    assert (status, body) == (503, {"error": "Service currently unavailable", "error_code": 32})
    assert tower.post("/register", {"user_id": carol.user_id.hex()}, rust=True)[0] == 503


def test_tower_cap_is_503(store: Any) -> None:
    tower = Tower.build(store, max_appointments=1)
    carol = Client.new()
    tower.register(carol, Dialect.RUST)
    assert tower.add(carol, appointment(), rust=True)[0] == 200
    status, body = tower.add(carol, appointment(), rust=True)
    assert (status, body["error_code"]) == (503, 65)
