"""Every entry of the shared vector files, checked in the dialect of its file."""

from __future__ import annotations

from typing import Any

import pytest

from common import crypto, dialects, receipts, zbase32
from common.appointment import Appointment, compute_uuid
from common.types import Dialect, Locator, Txid, UserId
from tests.common import vectors


def _b(value: str) -> bytes:
    return bytes.fromhex(value)


def test_both_files_have_every_section() -> None:
    for dialect in Dialect:
        data = vectors.load(dialect)
        for section in ("tower", "locators", "encryption", "appointments", "registration_receipts"):
            assert data[section], f"{vectors.FILES[dialect]} has no {section}"
    assert vectors.load(Dialect.PYTHON)["signatures"]


@pytest.mark.parametrize("dialect", list(Dialect))
def test_tower_id_is_public_key_of_tower_secret(dialect: Dialect) -> None:
    tower = vectors.load(dialect)["tower"]
    assert crypto.public_key(_b(tower["secret_key"])).hex() == tower["tower_id"]


@pytest.mark.parametrize(("dialect", "entry", "tower"), vectors.cases("locators"))
def test_locator(dialect: Dialect, entry: dict[str, Any], tower: dict[str, Any]) -> None:
    txid = Txid.from_hex(entry["dispute_txid"])
    assert dialects.locator_from_txid(txid, dialect) == Locator.from_hex(entry["locator"])


@pytest.mark.parametrize(("dialect", "entry", "tower"), vectors.cases("encryption"))
def test_encryption(dialect: Dialect, entry: dict[str, Any], tower: dict[str, Any]) -> None:
    txid = Txid.from_hex(entry["dispute_txid"])
    key_field = "key_is_sha256_of_txid_bytes"
    if dialect is Dialect.RUST:
        key_field = "key_is_sha256_of_txid_internal_order_bytes"
    assert dialects.blob_key(txid, dialect) == _b(entry[key_field])
    assert _b(entry["nonce"]) == crypto.NONCE
    assert crypto.encrypt(_b(entry["plaintext"]), txid, dialect) == _b(entry["encrypted_blob"])
    assert crypto.decrypt(_b(entry["encrypted_blob"]), txid, dialect) == _b(entry["plaintext"])


@pytest.mark.parametrize(("dialect", "entry", "tower"), vectors.cases("signatures"))
def test_signature(dialect: Dialect, entry: dict[str, Any], tower: dict[str, Any]) -> None:
    message = _b(entry["message"])
    expected_pk = UserId.from_hex(entry["recovered_compressed_pk"])
    assert crypto.public_key(_b(entry["secret_key"])) == expected_pk
    assert crypto.sign(message, _b(entry["secret_key"])) == entry["zbase32_signature"]
    assert crypto.recover_public_key(message, entry["zbase32_signature"]) == expected_pk
    assert crypto.verify(message, entry["zbase32_signature"], expected_pk)
    assert not crypto.verify(message + b"x", entry["zbase32_signature"], expected_pk)


@pytest.mark.parametrize(("dialect", "entry", "tower"), vectors.cases("appointments"))
def test_appointment(dialect: Dialect, entry: dict[str, Any], tower: dict[str, Any]) -> None:
    wire = entry["appointment"]
    appointment = Appointment(
        locator=Locator.from_hex(wire["locator"]),
        encrypted_blob=_b(wire["encrypted_blob"]),
        to_self_delay=wire["to_self_delay"],
    )
    assert appointment.to_json() == wire
    assert appointment.serialize() == _b(entry["serialized"])

    user_sk = _b(entry["user_secret_key"])
    user_id = UserId.from_hex(entry["user_id"])
    assert crypto.public_key(user_sk) == user_id
    assert crypto.sign(appointment.serialize(), user_sk) == entry["user_signature"]
    assert crypto.recover_public_key(appointment.serialize(), entry["user_signature"]) == user_id
    assert compute_uuid(appointment.locator, user_id).hex() == entry["uuid"]

    dispute_txid = Txid.from_hex(entry["dispute_txid"])
    assert dialects.locator_from_txid(dispute_txid, dialect) == appointment.locator
    assert crypto.decrypt(appointment.encrypted_blob, dispute_txid, dialect) == _b(entry["penalty_rawtx"])
    assert crypto.encrypt(_b(entry["penalty_rawtx"]), dispute_txid, dialect) == appointment.encrypted_blob

    receipt = receipts.appointment_receipt(dialect, entry["user_signature"], entry["start_block"])
    assert receipt == _b(entry["appointment_receipt"])
    tower_sk = _b(tower["secret_key"])
    assert crypto.sign(receipt, tower_sk) == entry["tower_signature_of_receipt"]
    assert crypto.recover_public_key(receipt, entry["tower_signature_of_receipt"]).hex() == tower["tower_id"]


@pytest.mark.parametrize(("dialect", "entry", "tower"), vectors.cases("appointments"))
def test_appointment_receipt_layout(dialect: Dialect, entry: dict[str, Any], tower: dict[str, Any]) -> None:
    """The receipt starts with the signature in the dialect's form and ends with the u32 start block."""
    receipt = _b(entry["appointment_receipt"])
    expected_head = (
        zbase32.decode(entry["user_signature"])
        if dialect is Dialect.PYTHON
        else entry["user_signature"].encode("ascii")
    )
    assert receipt[:-4] == expected_head
    assert int.from_bytes(receipt[-4:], "big") == entry["start_block"]


@pytest.mark.parametrize(("dialect", "entry", "tower"), vectors.cases("registration_receipts"))
def test_registration_receipt(dialect: Dialect, entry: dict[str, Any], tower: dict[str, Any]) -> None:
    user_id = UserId.from_hex(entry["user_id"])
    # python-teos receipts have no subscription_start: any value must be left out of the bytes.
    start = entry.get("subscription_start", 0) if dialect is Dialect.RUST else 123456
    receipt = receipts.registration_receipt(
        dialect, user_id, entry["available_slots"], start, entry["subscription_expiry"]
    )
    assert receipt == _b(entry["receipt"])
    assert crypto.sign(receipt, _b(tower["secret_key"])) == entry["tower_signature"]
    assert crypto.recover_public_key(receipt, entry["tower_signature"]).hex() == tower["tower_id"]
