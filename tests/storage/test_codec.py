"""The storage encodings: round trips, the version byte, hostile bytes, and the v1 -> v2 tracker migration."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from common import zbase32
from common.appointment import compute_uuid
from common.types import BlockHash, Dialect, Locator, Txid, UserId, Uuid
from teos.storage.codec import (
    AppointmentRecord,
    CodecError,
    TrackerRecord,
    UserRecord,
    decode_block_pointer,
    decode_recent_block,
    encode_block_pointer,
    encode_recent_block,
)
from tests.support.fakes import tracker_v1_bytes

USER = UserId(b"\x02" + os.urandom(32))


SIGNATURE = zbase32.encode(b"\x1f" + os.urandom(64))  # as Lightning's signmessage writes one


def appointment(dialect: Dialect = Dialect.RUST, signature: str = SIGNATURE) -> AppointmentRecord:
    locator = Locator(os.urandom(16))
    return AppointmentRecord(compute_uuid(locator, USER), locator, os.urandom(300), 144, USER, signature,
                             812_000, dialect)  # fmt: skip


def a_tracker(confirmed: bool = True) -> TrackerRecord:
    return TrackerRecord(
        appointment=appointment(), dispute_txid=Txid(os.urandom(32)), penalty_txid=Txid(os.urandom(32)),
        penalty_rawtx=os.urandom(200), broadcast_height=812_010,
        confirmed_in=BlockHash(os.urandom(32)) if confirmed else None,
        confirmed_height=812_011 if confirmed else 0,
        dispute_block=BlockHash(os.urandom(32)), dispute_height=812_009,
    )  # fmt: skip


@pytest.mark.parametrize("dialect", [Dialect.PYTHON, Dialect.RUST])
def test_records_round_trip(dialect: Dialect) -> None:
    record = appointment(dialect)
    assert AppointmentRecord.decode(record.encode()) == record
    user = UserRecord(USER, dialect, 9_999, 100, 4_420)
    assert UserRecord.decode(user.encode()) == user
    for confirmed in (True, False):
        t = a_tracker(confirmed)
        assert TrackerRecord.decode(t.encode()) == t


def test_every_record_starts_with_its_version() -> None:
    assert appointment().encode()[0] == AppointmentRecord.VERSION == 2
    assert UserRecord(USER, Dialect.RUST, 1, 2, 3, 7).encode()[0] == UserRecord.VERSION == 2
    assert UserRecord(USER, Dialect.RUST, 1, 2, 3).encode()[0] == 1  # not numbered yet: as before


@pytest.mark.parametrize("usernum", [None, 0, 127, 128, 16383, 2**40])
def test_user_records_keep_their_number(usernum: int | None) -> None:
    user = UserRecord(USER, Dialect.PYTHON, 5, 6, 7, usernum)
    assert UserRecord.decode(user.encode()).usernum == usernum


@pytest.mark.parametrize("signature", [SIGNATURE, "not z-base-32!"])
def test_appointment_bodies_round_trip_with_what_the_key_says(signature: str) -> None:
    record = appointment(Dialect.PYTHON, signature)
    body = record.encode_body()
    assert body[0] == (4 if signature == SIGNATURE else 5)
    assert AppointmentRecord.decode_body(body, record.locator, record.user_id) == record
    assert len(record.encode()) - len(body) == 16 + 33  # the locator and the user id are in the key
    for bad in (b"", b"\x02" + body[1:], body[:-1], body + b"\x00"):
        with pytest.raises(CodecError):
            AppointmentRecord.decode_body(bad, record.locator, record.user_id)
    assert a_tracker().encode()[0] == TrackerRecord.VERSION == 2


@pytest.mark.parametrize("signature", [SIGNATURE, "d" * 104, "not z-base-32!", ""])
def test_appointment_encodings_side_by_side(signature: str) -> None:
    """v2 for a signature in canonical z-base-32 (65 bytes), v3 (the text) for any other; v1 records
    written by earlier versions, and records whose uuid was not derived, read back unchanged."""
    record = appointment(Dialect.PYTHON, signature)
    encoded = record.encode()
    canonical = len(signature) == 104  # (every 104 alphabet characters encode 65 bytes, no padding)
    assert encoded[0] == (2 if canonical else 3)
    assert AppointmentRecord.decode(encoded) == record
    v1 = record._encode_v1()
    assert v1[0] == 1 and AppointmentRecord.decode(v1) == record
    assert len(v1) - len(encoded) >= (68 if canonical else 20)
    odd = AppointmentRecord(Uuid(os.urandom(20)), record.locator, record.encrypted_blob, 144, USER, signature,
                            812_000, Dialect.RUST)  # fmt: skip
    assert odd.encode()[0] == 1 and AppointmentRecord.decode(odd.encode()) == odd


def test_tracker_v1_to_v2_migration() -> None:
    """A v1 tracker decodes with no dispute block and height 0, and is written back as v2."""
    t = a_tracker()
    old = TrackerRecord.decode(tracker_v1_bytes(t))
    assert (old.dispute_block, old.dispute_height) == (None, 0)
    assert (old.appointment, old.penalty_txid, old.confirmed_in, old.confirmed_height) == (
        t.appointment, t.penalty_txid, t.confirmed_in, t.confirmed_height)  # fmt: skip
    rewritten = old.encode()
    assert rewritten[0] == 2 and TrackerRecord.decode(rewritten) == old


def test_unknown_versions_truncation_and_trailing_bytes_are_codec_errors() -> None:
    decoders: list[tuple[bytes, Callable[[bytes], object]]] = [
        (appointment().encode(), AppointmentRecord.decode),
        (UserRecord(USER, Dialect.RUST, 1, 2, 3).encode(), UserRecord.decode),
        (a_tracker().encode(), TrackerRecord.decode),
    ]
    for good, decode in decoders:
        for bad in (b"\x09" + good[1:], good[:-1], good + b"\x00", b""):
            with pytest.raises(CodecError):
                decode(bad)


def test_block_pointer_and_recent_block_encodings() -> None:
    h, prev = BlockHash(os.urandom(32)), BlockHash(os.urandom(32))
    assert decode_block_pointer(encode_block_pointer(h, 812_000)) == (h, 812_000)
    assert decode_recent_block(encode_recent_block(h, 812_000, prev)) == (h, 812_000, prev)
    assert decode_recent_block(encode_recent_block(h, 0, None)) == (h, 0, None)  # the genesis block
    with pytest.raises(CodecError):
        decode_block_pointer(os.urandom(35))
    with pytest.raises(CodecError):
        decode_recent_block(os.urandom(67))
