from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import crypto, zbase32
from common.appointment import MAX_BLOB_SIZE, SLOT_SIZE, Appointment, compute_uuid, slots_for
from common.receipts import appointment_receipt, registration_receipt
from common.types import Dialect, Locator, UserId

USER_ID = crypto.public_key((1).to_bytes(32, "big"))


@pytest.mark.parametrize(
    ("blob_len", "slots"),
    [(0, 0), (1, 1), (SLOT_SIZE - 1, 1), (SLOT_SIZE, 1), (SLOT_SIZE + 1, 2), (4097, 3), (3 * SLOT_SIZE, 3)],
)
def test_slots_for(blob_len: int, slots: int) -> None:
    assert slots_for(blob_len) == slots


def test_slots_for_negative() -> None:
    with pytest.raises(ValueError):
        slots_for(-1)


def test_constants() -> None:
    assert SLOT_SIZE == 2048 == MAX_BLOB_SIZE


def test_serialize_and_json() -> None:
    appointment = Appointment(Locator(bytes(range(16))), b"\xab\xcd", 2**32 - 1)
    assert appointment.serialize() == bytes(range(16)) + b"\xab\xcd" + b"\xff\xff\xff\xff"
    assert appointment.to_json() == {
        "locator": bytes(range(16)).hex(),
        "encrypted_blob": "abcd",
        "to_self_delay": 2**32 - 1,
    }
    assert appointment.slots == 1


@pytest.mark.parametrize(
    ("locator", "blob", "delay"),
    [
        (bytes(16), b"\x00", 1),  # locator not a Locator
        (Locator(bytes(16)), "00", 1),  # blob not bytes
        (Locator(bytes(16)), b"\x00", -1),
        (Locator(bytes(16)), b"\x00", 2**32),
        (Locator(bytes(16)), b"\x00", True),
        (Locator(bytes(16)), b"\x00", 20.0),
    ],
)
def test_appointment_refuses_bad_values(locator: object, blob: object, delay: object) -> None:
    with pytest.raises(ValueError):
        Appointment(locator, blob, delay)  # type: ignore[arg-type]


@settings(max_examples=200)
@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
def test_uuid_is_ripemd160_of_locator_and_user(loc_a: bytes, loc_b: bytes) -> None:
    uuid_a = compute_uuid(Locator(loc_a), USER_ID)
    assert uuid_a.raw == crypto.ripemd160(loc_a + USER_ID.raw)
    assert (compute_uuid(Locator(loc_b), USER_ID) == uuid_a) == (loc_a == loc_b)


def test_uuid_differs_per_user() -> None:
    other = crypto.public_key((2).to_bytes(32, "big"))
    locator = Locator(bytes(16))
    assert compute_uuid(locator, USER_ID) != compute_uuid(locator, other)


def test_registration_receipt_layouts() -> None:
    user = UserId(b"\x02" + bytes(32))
    python = registration_receipt(Dialect.PYTHON, user, 1, 2, 3)
    rust = registration_receipt(Dialect.RUST, user, 1, 2, 3)
    assert python == user.raw + (1).to_bytes(4, "big") + (3).to_bytes(4, "big")
    assert rust == user.raw + (1).to_bytes(4, "big") + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")


@pytest.mark.parametrize("bad", [-1, 2**32, True])
@pytest.mark.parametrize("dialect", list(Dialect))
def test_receipts_refuse_values_outside_u32(bad: int, dialect: Dialect) -> None:
    user = UserId(b"\x02" + bytes(32))
    with pytest.raises(ValueError):
        registration_receipt(dialect, user, bad, 0, 0)
    with pytest.raises(ValueError):
        registration_receipt(dialect, user, 0, 0, bad)
    signature = crypto.sign(b"x", (3).to_bytes(32, "big"))
    with pytest.raises(ValueError):
        appointment_receipt(dialect, signature, bad)


def test_appointment_receipt_layouts() -> None:
    signature = crypto.sign(b"x", (3).to_bytes(32, "big"))
    seven = b"\x00\x00\x00\x07"
    assert appointment_receipt(Dialect.PYTHON, signature, 7) == zbase32.decode(signature) + seven
    assert appointment_receipt(Dialect.RUST, signature, 7) == signature.encode() + seven
    with pytest.raises(ValueError):
        appointment_receipt(Dialect.PYTHON, "not zbase32!", 7)
    with pytest.raises(ValueError):
        appointment_receipt(Dialect.RUST, "\u00e9", 7)
